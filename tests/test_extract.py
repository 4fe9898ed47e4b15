"""Feature extraction on small videos written here: steps, flow direction, failures, resuming."""
import glob
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch

cv2 = pytest.importorskip('cv2', reason='install requirements-extract.txt')  # CI installs it

import release_dataset  # noqa: E402
import sliding_windows  # noqa: E402
from data import extract_features as ef  # noqa: E402
import thumos14  # noqa: E402

torch.set_num_threads(2)
H, W = 48, 64


def write_video(path, frames, fps=25):
    """frames: uint8 [N, H, W] (gray) or [N, H, W, 3] (BGR), written with OpenCV's MJPG codec."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), fps, (frames.shape[2], frames.shape[1]))
    assert writer.isOpened()
    for f in frames:
        writer.write(f if f.ndim == 3 else cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    return str(path)


def moving_box(n, seed=0):
    """A bright box moving right over a dark, slightly noisy background."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 30, (n, H, W, 3), dtype=np.uint8)
    for i in range(n):
        x = (2 * i) % (W - 16)
        frames[i, 12:32, x:x + 16] = (40, 200, 250)
    return frames


def translating_texture(n, dx):
    """A smooth random texture moving dx pixels per frame (positive = right)."""
    rng = np.random.default_rng(1)
    big = cv2.GaussianBlur(rng.integers(0, 256, (H, W + 4 * n), dtype=np.uint8), (7, 7), 2)
    off = 2 * n
    return np.stack([big[:, off - dx * i: off - dx * i + W] for i in range(n)])


def random_nets(streams, backbone, seed=0, **kwargs):
    return ef.build_backbones(streams, backbone, ef.weight_sources(backbone, streams, random_weights=True, seed=seed),
                              seed=seed, **kwargs)


def run(args):
    return ef.main([str(a) for a in args] + ['--backbone', 'tiny', '--flow', 'dis', '--random-weights'])


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / 'videos'
    folder.mkdir()
    lengths = {'clip_a': 50, 'clip_b': 103, 'clip_c': 7}
    for name, n in lengths.items():
        write_video(folder / f'{name}.avi', moving_box(n, seed=n))
    return folder, lengths


def test_one_step_per_four_frames_and_table(videos, tmp_path, make_config):
    folder, lengths = videos
    out = tmp_path / 'feat'
    assert run([folder, '--split', 'test', '--out', out]) == 0
    info = pd.read_csv(out / 'test' / 'video_info.csv').set_index('video')
    assert sorted(info.index) == sorted(lengths)
    for name, n in lengths.items():
        assert info.loc[name, 'frame_num'] == n
        assert info.loc[name, 'steps'] == n // 4
        assert info.loc[name, 'fps'] == pytest.approx(25.0)
        for mode in ('spatial', 'temporal'):
            a = np.load(out / 'test' / f'{mode}DataXtiny' / f'{name}.npy')
            assert a.dtype == np.float32 and a.shape == (n // 4, ef.BACKBONE_DIMS['tiny'])
            assert np.isfinite(a).all()
            if n // 4 > 1:
                assert np.ptp(a, axis=0).max() > 0   # the box moves, so the steps differ
    # The table is a valid fps file and the loader slices the method.md §3 test windows from these files.
    cfg = make_config(feature_path=str(out), pretrain='tiny', fps_file=str(out / 'test' / 'video_info.csv'))
    assert thumos14.video_fps(cfg.fps_file)['clip_b'] == pytest.approx(25.0)
    anno = pd.DataFrame({'video': info.index, 'frame_num': info.frame_num.to_numpy()})
    starts, vids = sliding_windows.make_windows(anno, 'test', cfg)
    feats = release_dataset.load_features(cfg, 'test', starts, vids, mode='temporal')
    assert feats.shape == (len(starts), 128, ef.BACKBONE_DIMS['tiny'])
    b = np.load(out / 'test' / 'temporalDataXtiny' / 'clip_b.npy')
    i = list(vids).index('clip_b')
    np.testing.assert_array_equal(feats[i, :len(b)], b)
    np.testing.assert_array_equal(feats[i, len(b):], np.repeat(b[-1:], 128 - len(b), 0))


@pytest.mark.parametrize('workers', [1, 3])
def test_step_inputs_centre_frame_and_flow_stack(tmp_path, workers):
    """Frame i is uniform gray 10 i; a fake flow reports the pair's first frame index as x."""
    n, length = 17, 7
    frames = np.stack([np.full((H, W), 10 * i, np.uint8) for i in range(n)])
    path = write_video(tmp_path / 'ramp.avi', frames)

    def flow_fn(a, b):
        f = np.zeros(a.shape + (2,), np.float32)
        f[..., 0] = a.mean() / 10          # ~ index k of flow(k -> k+1)
        f[..., 1] = -b.mean() / 10         # ~ -(k + 1)
        return f

    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    gen = ef.iter_step_inputs(path, ['spatial', 'temporal'], 32, flow_fn, length, pool=pool)
    assert next(gen)[0] == 'info'
    steps = [s for s in gen if s[0] != 'end']
    assert [s[0] for s in steps] == list(range(n // 4))
    for t, rgb, flow in steps:
        assert rgb.shape == (32, 32, 3) and flow.shape == (2 * length, 32, 32)
        assert rgb.mean() == pytest.approx(10 * (4 * t + 2), abs=2)          # centre frame 4t+2
        ks = np.clip(np.arange(4 * t + 2 - length // 2, 4 * t + 2 - length // 2 + length), 0, n - 2)
        np.testing.assert_allclose(flow[0::2].mean((1, 2)), ks / ef.FLOW_BOUND, atol=0.02)
        np.testing.assert_allclose(flow[1::2].mean((1, 2)), -(ks + 1) / ef.FLOW_BOUND, atol=0.02)


@pytest.mark.parametrize('method,dx', [('dis', 2), ('dis', -2), ('tvl1', 2)])
def test_flow_sign_follows_motion(tmp_path, method, dx):
    if method == 'tvl1' and not hasattr(cv2, 'optflow'):
        pytest.skip('TV-L1 needs opencv-contrib')
    path = write_video(tmp_path / 'pan.avi', translating_texture(12, dx))
    gen = ef.iter_step_inputs(path, ['temporal'], 64, ef.make_flow_fn(method), 5)
    next(gen)
    flows = np.stack([s[2] for s in gen if s[0] != 'end'])
    x, y = flows[:, 0::2].mean(), flows[:, 1::2].mean()
    # dx pixels at 48 px height, resized to 64: about 1.33 dx pixels, / FLOW_BOUND
    assert np.sign(x) == np.sign(dx) and abs(x) > 0.5 * abs(dx) * 64 / 48 / ef.FLOW_BOUND
    assert abs(y) < abs(x) / 4


def test_bad_videos_reported_others_done(videos, tmp_path, capsys):
    folder, lengths = videos
    (folder / 'broken.mp4').write_bytes(b'\x00\x01 not a video ' * 200)
    (folder / 'empty.avi').write_bytes(b'')
    write_video(folder / 'short.avi', moving_box(3))
    out = tmp_path / 'feat'
    assert run([folder, '--split', 'val', '--out', out]) == 1
    err = capsys.readouterr().err
    summary = err[err.index('FAILED: 3 video(s)'):]
    for bad in ('broken.mp4', 'empty.avi', 'short.avi'):
        assert bad in summary
    for name in lengths:
        assert (out / 'val' / 'spatialDataXtiny' / f'{name}.npy').exists()
    assert not (out / 'val' / 'spatialDataXtiny' / 'broken.npy').exists()
    assert sorted(pd.read_csv(out / 'val' / 'video_info.csv').video) == sorted(lengths)


def test_rerun_skips_finished_and_redoes_incomplete(videos, tmp_path, monkeypatch):
    folder, _ = videos
    out = tmp_path / 'feat'
    args = [folder, '--split', 'val', '--out', out, '--streams', 'spatial,temporal']
    assert run(args) == 0
    tdir, sdir = out / 'val' / 'temporalDataXtiny', out / 'val' / 'spatialDataXtiny'
    before = np.load(tdir / 'clip_a.npy')

    calls = []
    real = ef.extract_video
    monkeypatch.setattr(ef, 'extract_video', lambda path, nets, *a, **k: calls.append(
        (os.path.basename(path), sorted(nets))) or real(path, nets, *a, **k))
    assert run(args) == 0
    assert calls == []                       # everything was finished

    (tdir / 'clip_a.npy').unlink()           # a stream missing
    with open(sdir / 'clip_b.npy', 'r+b') as f:  # a file cut short
        f.truncate(200)
    assert run(args) == 0
    assert sorted(calls) == [('clip_a.avi', ['temporal']), ('clip_b.avi', ['spatial'])]
    np.testing.assert_array_equal(np.load(tdir / 'clip_a.npy'), before)   # seeded weights: same features
    assert np.load(sdir / 'clip_b.npy').shape == (103 // 4, ef.BACKBONE_DIMS['tiny'])
    assert not [p for p in os.listdir(tdir) if not p.endswith(('.npy', '.json'))]   # no temporary files left


def test_list_file_and_bad_inputs(videos, tmp_path):
    folder, _ = videos
    lst = tmp_path / 'list.txt'
    lst.write_text(f'# two videos\n{folder / "clip_a.avi"}\n\n{folder / "clip_c.avi"}\n')
    out = tmp_path / 'feat'
    assert run(['--list', lst, '--split', 'test', '--out', out, '--streams', 'spatial']) == 0
    assert sorted(glob.glob('*.npy', root_dir=out / 'test' / 'spatialDataXtiny')) == ['clip_a.npy', 'clip_c.npy']
    assert not (out / 'test' / 'temporalDataXtiny').exists()
    lst.write_text(f'{folder / "clip_a.avi"}\n{folder / "nope.avi"}\n')
    with pytest.raises(SystemExit, match=r'list.txt, line 2: no such video'):
        run(['--list', lst, '--split', 'test', '--out', out])
    with pytest.raises(SystemExit, match='--streams'):
        run([folder, '--split', 'test', '--out', out, '--streams', 'rgb'])


def test_resnet50_without_torchvision_says_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__('sys').modules, 'torchvision', None)
    with pytest.raises(ValueError, match='pip install torch==2.14.1 torchvision==0.29.1'):
        random_nets(['spatial'], 'resnet50')


def test_resnet50_features(tmp_path):
    pytest.importorskip('torchvision')
    nets = random_nets(['spatial', 'temporal'], 'resnet50', flow_length=5)
    with torch.inference_mode():
        assert nets['spatial'](torch.zeros(2, 3, 64, 64)).shape == (2, 2048)
        assert nets['temporal'](torch.zeros(2, 10, 64, 64)).shape == (2, 2048)


def test_tiny_weights_from_file(tmp_path):
    nets = random_nets(['spatial'], 'tiny', seed=3)
    path = tmp_path / 'tiny.pt'
    torch.save({'state_dict': nets['spatial'].state_dict()}, path)
    again = ef.build_backbones(['spatial'], 'tiny', ef.weight_sources('tiny', ['spatial'], str(path)), seed=99)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(again['spatial'](x), nets['spatial'](x))
    with pytest.raises(ValueError, match='do not fit'):
        ef.build_backbones(['temporal'], 'tiny', ef.weight_sources('tiny', ['temporal'], str(path)))   # 3 vs 10 channels
