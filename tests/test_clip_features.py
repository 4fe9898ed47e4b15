"""Clip backbones for own videos: Inception-I3D's parameter layout, the 16-frame clip per 4-frame step
convention, sidecars and re-extraction, torchvision's video networks and RAFT (random weights)."""
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

cv2 = pytest.importorskip('cv2', reason='install requirements-extract.txt')  # CI installs it
import feature_files  # noqa: E402
from data import clip_features as cf  # noqa: E402
from data import extract_features as ef  # noqa: E402
from data import inception_i3d  # noqa: E402
from tests.test_extract import moving_box, write_video  # noqa: E402


def has_torchvision():
    try:
        import torchvision  # noqa: F401
    except Exception:  # a torchvision built for another torch raises RuntimeError
        return False
    return True


needs_torchvision = pytest.mark.skipif(not has_torchvision(), reason='needs torchvision (requirements-extract.txt)')


# ---------------------------------------------------------------- Inception-I3D

def expected_i3d_shapes(in_channels):
    """Parameter and buffer shapes of the public PyTorch I3D files (rgb_imagenet.pt: 3 input channels,
    flow_imagenet.pt: 2), written out from the architecture: the paper's figure 3 with GoogLeNet's widths."""
    shapes = {}

    def unit(name, cin, cout, k):
        shapes[f'{name}.conv3d.weight'] = (cout, cin, k, k, k)
        for p in ('weight', 'bias', 'running_mean', 'running_var'):
            shapes[f'{name}.bn.{p}'] = (cout,)

    unit('Conv3d_1a_7x7', in_channels, 64, 7)
    unit('Conv3d_2b_1x1', 64, 64, 1)
    unit('Conv3d_2c_3x3', 64, 192, 3)
    cin = 192
    for name, (b0, b1a, b1b, b2a, b2b, b3b) in [
            ('Mixed_3b', (64, 96, 128, 16, 32, 32)), ('Mixed_3c', (128, 128, 192, 32, 96, 64)),
            ('Mixed_4b', (192, 96, 208, 16, 48, 64)), ('Mixed_4c', (160, 112, 224, 24, 64, 64)),
            ('Mixed_4d', (128, 128, 256, 24, 64, 64)), ('Mixed_4e', (112, 144, 288, 32, 64, 64)),
            ('Mixed_4f', (256, 160, 320, 32, 128, 128)), ('Mixed_5b', (256, 160, 320, 32, 128, 128)),
            ('Mixed_5c', (384, 192, 384, 48, 128, 128))]:
        unit(f'{name}.b0', cin, b0, 1)
        unit(f'{name}.b1a', cin, b1a, 1)
        unit(f'{name}.b1b', b1a, b1b, 3)
        unit(f'{name}.b2a', cin, b2a, 1)
        unit(f'{name}.b2b', b2a, b2b, 3)
        unit(f'{name}.b3b', cin, b3b, 1)
        cin = b0 + b1b + b2b + b3b
    assert cin == 1024
    shapes['logits.conv3d.weight'] = (400, 1024, 1, 1, 1)
    shapes['logits.conv3d.bias'] = (400,)
    return shapes


@pytest.mark.parametrize('stream,channels', [('spatial', 3), ('temporal', 2)])
def test_i3d_state_dict_is_the_public_files_layout(stream, channels):
    net = inception_i3d.InceptionI3d(inception_i3d.IN_CHANNELS[stream])
    got = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith('num_batches_tracked')}
    assert got == expected_i3d_shapes(channels)


def test_i3d_loads_an_old_style_file_and_refuses_a_wrong_one(tmp_path):
    torch.manual_seed(0)
    src = inception_i3d.InceptionI3d(2)
    # Files saved by old PyTorch releases have no batch-norm step counters.
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith('num_batches_tracked')}
    path = tmp_path / 'flow_imagenet.pt'
    torch.save(sd, path)
    dst = ef.build_backbones(['temporal'], 'i3d', ef.weight_sources('i3d', ['temporal'], None, str(path)))['temporal']
    x = torch.randn(1, 2, 16, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(dst(x), src.eval()(x))
    with pytest.raises(ValueError, match='do not fit Inception-I3D'):   # a flow file for the RGB stream
        ef.build_backbones(['spatial'], 'i3d', ef.weight_sources('i3d', ['spatial'], str(path)))
    del sd['Mixed_5c.b0.bn.bias']
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r'1 missing.*Mixed_5c.b0.bn.bias'):
        ef.build_backbones(['temporal'], 'i3d', ef.weight_sources('i3d', ['temporal'], None, str(path)))


def test_same_padding_and_feature_map_sizes():
    x = torch.zeros(1, 1, 7, 8, 9)
    # n % s == 0: k - s; otherwise k - n % s; the smaller half first (TensorFlow's SAME).
    assert inception_i3d.same_padding(x, (3, 3, 3), (2, 2, 2)).shape[2:] == (7 + 2, 8 + 1, 9 + 2)
    assert inception_i3d.same_padding(x, (1, 3, 3), (1, 2, 2)).shape[2:] == (7, 8 + 1, 9 + 2)
    padded = inception_i3d.same_padding(torch.ones(1, 1, 1, 1, 4), (1, 1, 3), (1, 1, 2))
    assert padded[0, 0, 0, 0].tolist() == [1, 1, 1, 1, 0]
    net = inception_i3d.InceptionI3d(3).eval()
    seen = {}
    net.Mixed_5c.register_forward_hook(lambda m, i, o: seen.update(shape=tuple(o.shape)))
    with torch.inference_mode():
        assert net(torch.zeros(1, 3, 16, 224, 224)).shape == (1, 1024)
    assert seen['shape'] == (1, 1024, 2, 7, 7)   # what the public extractor's 2x7x7 average pool expects


# ---------------------------------------------------------------- clips per step

@pytest.mark.parametrize('n', [1, 5, 16, 17, 19, 20, 37, 64])
@pytest.mark.parametrize('per_batch', [1, 3])
def test_clip_t_sees_frames_4t_to_4t_plus_15(n, per_batch):
    """Frame k carries the value k; flow pair (k -> k+1) carries (k + 0.5) / 10 pixels (inside the +-20
    clip): the clips say what they saw."""
    frames = [np.full((2, 2, 3), k, np.uint8) for k in range(n)]
    streams = ['spatial'] if n == 1 else ['spatial', 'temporal']

    def rgb_prep(arr):
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float()

    def pair_flows(a, b):
        assert (b[:, 0, 0, 0].astype(int) == a[:, 0, 0, 0].astype(int) + 1).all()   # consecutive frames
        return torch.from_numpy((a[:, :, :, :2].transpose(0, 3, 1, 2).astype(np.float32) + 0.5) / 10)

    out = list(cf.clip_batches(frames, streams, rgb_prep, pair_flows, size=2, clips_per_batch=per_batch))
    assert out[-1] == ('end', n)
    got = {s: torch.cat([b[s] for b in out[:-1]]) for s in streams}
    steps = cf.num_clips(n)
    assert steps == max(1, (n - 16) // 4 + 1)
    t = np.arange(steps)[:, None]
    want_rgb = np.minimum(4 * t + np.arange(16), n - 1)           # a short video repeats its last frame
    assert got['spatial'].shape == (steps, 3, 16, 2, 2)
    np.testing.assert_array_equal(got['spatial'][:, 0, :, 0, 0].numpy(), want_rgb)
    if 'temporal' in streams:
        want_flow = (np.minimum(4 * t + np.arange(16), n - 2) + 0.5) / 10 / cf.FLOW_BOUND   # I3D's scaling
        np.testing.assert_allclose(got['temporal'][:, 0, :, 0, 0].numpy(), want_flow, rtol=1e-6)


def test_clip_features_pair_with_windows_like_the_field_files(tmp_path):
    """A per-video folder of clip16 files and the I3D layout read the same numbers for every window."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 3)).astype(np.float32)
    per_video, layout = tmp_path / 'spatialDataXi3d', tmp_path / 'i3d_features'
    for folder in (per_video, layout):
        folder.mkdir()
        np.save(folder / 'v.npy', a)
        feature_files.write_sidecar(str(folder / 'v.npy'), dict(video='v', stream='spatial', steps=40,
                                                                   step_convention='clip16', settings={}))
    starts, videos = np.array([0, 8, 64, 100]), np.array(['v'] * 4)
    idx = np.arange(4)
    x = feature_files.read_video_files(str(per_video), starts, videos, idx, 16, np.float32)
    y = feature_files.read_video_files(str(layout), starts, videos, idx, 16, np.float32, step_offset=-2)
    np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(x[1], a[np.clip(8 // 4 - 2 + np.arange(16), 0, 39)])
    # Frame features (one frame per step) in the I3D layout would be misaligned: refused.
    feature_files.write_sidecar(str(layout / 'v.npy'), dict(video='v', stream='spatial', steps=40,
                                                              step_convention='frame4', settings={}))
    with pytest.raises(ValueError, match=r'v.json: step_convention .frame4.'):
        feature_files.read_video_files(str(layout), starts, videos, idx, 16, np.float32, step_offset=-2)
    # Without a sidecar a per-video file is the release's convention.
    (per_video / 'v.json').unlink()
    z = feature_files.read_video_files(str(per_video), starts, videos, idx, 16, np.float32)
    np.testing.assert_array_equal(z[1], a[8 // 4 + np.arange(16)])
    (per_video / 'v.json').write_text('{"step_convention": ')
    with pytest.raises(ValueError, match='v.json: not a readable feature sidecar'):
        feature_files.read_video_files(str(per_video), starts, videos, idx, 16, np.float32)


# ---------------------------------------------------------------- the script, end to end

I3D_ARGS = ['--backbone', 'i3d', '--size', '32', '--flow', 'dis', '--device', 'cpu', '--batch', '2']


def extract(video, out, *extra):
    return ef.main([str(video), '--split', 'val', '--out', str(out), *I3D_ARGS, *extra])


def test_i3d_at_25_fps_steps_sidecars_and_layout_file(tmp_path):
    n = 45
    write_video(tmp_path / 'my video.avi', moving_box(n), fps=25)
    out = tmp_path / 'feat'
    assert extract(tmp_path / 'my video.avi', out, '--random-weights') == 0
    info = pd.read_csv(out / 'val' / 'video_info.csv')
    assert info.to_dict('records') == [dict(video='my_video', fps=25.0, frame_num=n, steps=(n - 16) // 4 + 1)]
    streams = {}
    for s in ('spatial', 'temporal'):
        path = out / 'val' / f'{s}DataXi3d' / 'my_video.npy'
        streams[s] = np.load(path)
        assert streams[s].shape == (8, 1024) and np.isfinite(streams[s]).all()
        doc = json.loads(path.with_suffix('.json').read_text())
        assert doc['step_convention'] == 'clip16' and doc['fps'] == 25.0 and doc['steps'] == 8
        assert doc['settings']['backbone'] == 'i3d' and 'random_seed' in doc['settings']['weights']
        assert (doc['settings'].get('flow') == 'dis') == (s == 'temporal')
    both = np.load(out / 'i3d_features' / 'my_video.npy')
    np.testing.assert_array_equal(both, np.concatenate([streams['spatial'], streams['temporal']], 1))
    doc = json.loads((out / 'i3d_features' / 'my_video.json').read_text())
    assert doc['settings']['spatial']['channels'] == [0, 1024]
    assert doc['settings']['temporal']['channels'] == [1024, 2048]
    (out / 'i3d_features' / 'my_video.npy').unlink()   # the streams are done: a rerun only rebuilds the layout file
    assert extract(tmp_path / 'my video.avi', out, '--random-weights') == 0
    np.testing.assert_array_equal(np.load(out / 'i3d_features' / 'my_video.npy'), both)


def test_no_weights_is_refused_and_a_changed_setting_re_extracts(tmp_path, monkeypatch, capsys):
    write_video(tmp_path / 'v.avi', moving_box(24), fps=25)
    out = tmp_path / 'feat'
    with pytest.raises(SystemExit, match=r'i3d \(spatial stream\) has no weights: give --weights rgb_imagenet.pt'):
        extract(tmp_path / 'v.avi', out)
    torch.manual_seed(0)
    rgb, flow = tmp_path / 'rgb.pt', tmp_path / 'flow.pt'
    torch.save(inception_i3d.InceptionI3d(3).state_dict(), rgb)
    torch.save(inception_i3d.InceptionI3d(2).state_dict(), flow)
    weights = ['--weights', str(rgb), '--weights-temporal', str(flow)]
    calls = []
    real = ef.extract_clip_video
    monkeypatch.setattr(ef, 'extract_clip_video', lambda path, nets, *a, **k: calls.append(sorted(nets))
                        or real(path, nets, *a, **k))
    assert extract(tmp_path / 'v.avi', out, *weights) == 0
    side = json.loads((out / 'val' / 'spatialDataXi3d' / 'v.json').read_text())
    assert side['settings']['weights'] == {'file': 'rgb.pt', 'sha256': hashlib.sha256(rgb.read_bytes()).hexdigest()}
    assert extract(tmp_path / 'v.avi', out, *weights) == 0            # same settings: reused
    with pytest.raises(SystemExit, match=r'rgb.pt do not fit Inception-I3D.*size mismatch'):   # RGB file for flow
        extract(tmp_path / 'v.avi', out, *weights[:2], '--weights-temporal', str(rgb))
    assert calls == [['spatial', 'temporal']]
    torch.save(inception_i3d.InceptionI3d(2).state_dict(), flow)     # new flow weights: that stream redone
    assert extract(tmp_path / 'v.avi', out, *weights) == 0
    assert calls[-1] == ['temporal'] and 'made with other settings' in capsys.readouterr().out
    assert extract(tmp_path / 'v.avi', out, *weights, '--size', '64') == 0   # another crop: both redone
    assert calls[-1] == ['spatial', 'temporal']
    assert extract(tmp_path / 'v.avi', out, '--random-weights') == 0
    assert calls[-1] == ['spatial', 'temporal'] and len(calls) == 4


@needs_torchvision
@pytest.mark.parametrize('backbone', ['s3d', 'r2plus1d_18', 'mvit_v2_s', 'swin3d_t'])
def test_torchvision_video_backbones(tmp_path, backbone):
    n = 20
    write_video(tmp_path / 'v.avi', moving_box(n), fps=30)
    out = tmp_path / 'feat'
    assert ef.main([str(tmp_path / 'v.avi'), '--split', 'test', '--out', str(out), '--backbone', backbone,
                    '--streams', 'spatial', '--random-weights', '--device', 'cpu']) == 0
    a = np.load(out / 'test' / f'spatialDataX{backbone}' / 'v.npy')
    assert a.shape == ((n - 16) // 4 + 1, cf.CLIP_BACKBONES[backbone][0]) and np.isfinite(a).all()
    np.testing.assert_array_equal(np.load(out / f'{backbone}_features' / 'v.npy'), a)
    assert json.loads((out / 'test' / f'spatialDataX{backbone}' / 'v.json').read_text())['step_convention'] == 'clip16'
    with pytest.raises(SystemExit, match='RGB stream only'):
        ef.main([str(tmp_path / 'v.avi'), '--split', 'test', '--out', str(out), '--backbone', backbone,
                 '--random-weights'])


@needs_torchvision
def test_torchvision_weights_refused_offline_without_random_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))

    def offline(url, dst, **kwargs):
        raise OSError('Network is unreachable')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    with pytest.raises(ValueError, match=r'cannot download .*s3d.*--random-weights'):
        ef.weight_sources('s3d', ['spatial'])


@needs_torchvision
def test_raft_flow_in_pixels_and_only_for_clips(tmp_path):
    torch.manual_seed(0)
    import torchvision
    raft = cf.RaftFlow(torchvision, None, 'cpu', updates=2)
    frames = np.random.default_rng(0).integers(0, 255, (3, 68, 76, 3), dtype=np.uint8)   # sides not multiples of 8
    flow = raft(frames[:-1], frames[1:])
    assert flow.shape == (2, 2, 68, 76) and flow.dtype == torch.float32 and torch.isfinite(flow).all()
    write_video(tmp_path / 'v.avi', moving_box(17), fps=25)   # one clip, 16 flow fields
    with pytest.raises(SystemExit, match='--flow raft computes flow for 16-frame clips'):
        ef.main([str(tmp_path / 'v.avi'), '--split', 'val', '--out', str(tmp_path / 'f'), '--backbone', 'tiny',
                 '--flow', 'raft', '--random-weights'])
    assert extract(tmp_path / 'v.avi', tmp_path / 'f', '--random-weights', '--flow', 'raft', '--size', '64') == 0
    doc = json.loads((tmp_path / 'f' / 'val' / 'temporalDataXi3d' / 'v.json').read_text())
    assert doc['settings']['flow'] == 'raft' and 'random_seed' in doc['settings']['flow_weights']


def test_detect_on_i3d_features(tmp_path, make_config):
    import detect
    from tests.test_detect import save_checkpoint
    from tests.test_detect import write_video as write_noisy_video
    video = write_noisy_video(tmp_path / 'v.avi', n=120, fps=30)
    cfg = make_config(mode='temporal', method='main_stream', pretrain='i3d', seed=1)
    ckpt = save_checkpoint(tmp_path / 't.pt', cfg, feature_dim=inception_i3d.FEATURE_DIM)
    out = tmp_path / 'out'
    assert detect.main([video, '--checkpoint', ckpt, '--out', str(out), *I3D_ARGS, '--random-weights',
                        '--filter_conf_threshold=-1e9', '--filter_neg_threshold=1.0']) == 0
    doc = json.loads((out / 'features' / 'detect' / 'temporalDataXi3d' / 'v.json').read_text())
    assert doc['step_convention'] == 'clip16' and doc['steps'] == (120 - 16) // 4 + 1
    assert json.loads((out / 'detections.json').read_text())['detections']   # random model: every candidate kept


def test_torchvision_backbone_crop_is_fixed(tmp_path):
    write_video(tmp_path / 'v.avi', moving_box(16), fps=25)
    with pytest.raises(SystemExit, match=r'--size 64: s3d crops to 224, as its weights document'):
        ef.main([str(tmp_path / 'v.avi'), '--split', 'val', '--out', str(tmp_path / 'f'), '--backbone', 's3d',
                 '--streams', 'spatial', '--size', '64', '--random-weights'])


def test_extraction_options_checked(tmp_path):
    write_video(tmp_path / 'v.avi', moving_box(16), fps=25)
    for extra, message in [(['--size', '0'], '--size must be >= 1'),
                           (['--flow-weights', 'raft.pth'], '--flow-weights are RAFT weights')]:
        with pytest.raises(SystemExit, match=message):
            extract(tmp_path / 'v.avi', tmp_path / 'f', '--random-weights', *extra)
