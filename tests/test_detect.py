"""detect.py end to end on a generated video with tiny checkpoints and the tiny backbone."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

cv2 = pytest.importorskip('cv2', reason='install requirements-extract.txt')  # CI installs it

from checkpoints import build_model  # noqa: E402
import classes  # noqa: E402
import config as C  # noqa: E402
from data import extract_features as ef  # noqa: E402
import detect  # noqa: E402
import fuse  # noqa: E402
import postprocess  # noqa: E402
import predictions  # noqa: E402
import thumos14  # noqa: E402

torch.set_num_threads(2)
DIM = ef.BACKBONE_DIMS['tiny']


def write_video(path, n=150, fps=30):
    rng = np.random.default_rng(n)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), fps, (64, 48))
    for i in range(n):
        f = rng.integers(0, 30, (48, 64, 3), dtype=np.uint8)
        x = (3 * i) % 48
        f[10:34, x:x + 16] = (30, 180, 240)
        writer.write(f)
    writer.release()
    return str(path)


def save_checkpoint(path, cfg, feature_dim=DIM):
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, feature_dim)
    torch.save({'model': model.state_dict(), 'method': cfg.method, 'feature_dim': feature_dim,
                'config': cfg.to_dict(), 'epoch': 1}, path)
    return str(path)


def run(args):
    return detect.main([str(a) for a in args] + ['--backbone', 'tiny', '--flow', 'dis', '--device=cpu',
                                                '--random-weights'])


@pytest.fixture(scope='module')
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp('v') / 'my clip.avi')


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory, make_config):
    folder = tmp_path_factory.mktemp('ckpt')
    temporal = make_config(mode='temporal', method='main_stream', pretrain='tiny', seed=1)
    spatial = make_config(mode='spatial', method='decouple_ssad', pretrain='tiny', seed=2)
    return save_checkpoint(folder / 't.pt', temporal), save_checkpoint(folder / 's.pt', spatial)


def test_two_streams_end_to_end(video, checkpoints, tmp_path, make_config):
    t_ckpt, s_ckpt = checkpoints
    out = tmp_path / 'out'
    # Keep every candidate, so the random models give detections to check.
    assert run([video, '--checkpoint', t_ckpt, '--checkpoint-spatial', s_ckpt, '--out', out,
                '--filter_conf_threshold=-1e9', '--filter_neg_threshold=1.0',
                '--filter_neg_threshold_fuse=1.0']) == 0

    info = pd.read_csv(out / 'features' / 'detect' / 'video_info.csv')
    assert info.video.tolist() == ['my_clip'] and info.frame_num[0] == 150 and info.steps[0] == 150 // 4
    preds = {m: predictions.read_predictions(out / f'predict_{m}.csv') for m in ('temporal', 'spatial')}
    anchors = sum(C.Config().num_anchors) * len(C.Config().aspect_ratios)
    for p in preds.values():   # a 150-frame video: one (padded) test window at frame 0
        assert len(p) == anchors and set(p.start) == {0} and set(p.video_name) == {'my_clip'}

    doc = json.loads((out / 'detections.json').read_text())
    assert doc['video'] == 'my_clip' and doc['fps'] == pytest.approx(30)
    assert doc['duration_s'] == pytest.approx(5.0) and doc['streams'] == ['spatial', 'temporal']
    dets = doc['detections']
    assert dets, 'no detections with the filters off'
    assert [d['score'] for d in dets] == sorted((d['score'] for d in dets), reverse=True)
    for d in dets:
        assert d['label'] == thumos14.CLASS_NAME_OF_ID[d['class_id']]
        assert 0 <= d['start'] <= d['end'] <= 5.0 + 1e-3     # cut at the video's end

    # The result file holds the same detections, and they are the fusion of the two prediction files.
    txt = thumos14.read_results(out / 'detections.txt')
    assert len(txt) == len(dets)
    cfg = make_config(filter_conf_threshold=-1e9, filter_neg_threshold=1.0, filter_neg_threshold_fuse=1.0)
    ref = postprocess.post_process(fuse.fuse_predictions(preds['temporal'], preds['spatial'], cfg),
                                   cfg, {'my_clip': 30.0}, fused=True)
    ref = ref[ref.start < 5.0].assign(end=ref.end.clip(upper=5.0))
    key = ['class_id', 'start', 'end']
    got = txt.sort_values(key + ['score']).reset_index(drop=True)
    ref = ref.round({'start': 3, 'end': 3, 'score': 4}).sort_values(key + ['score']).reset_index(drop=True)
    np.testing.assert_array_equal(got.class_id, ref.class_id)
    np.testing.assert_allclose(got[['start', 'end', 'score']], ref[['start', 'end', 'score']], atol=1e-3)

    png = (out / 'timeline.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 1000


def test_single_stream_reuses_features(video, checkpoints, tmp_path, capsys):
    t_ckpt, _ = checkpoints
    out = tmp_path / 'out'
    assert run([video, '--checkpoint', t_ckpt, '--out', out]) == 0
    assert (out / 'predict_temporal.csv').exists() and not (out / 'predict_spatial.csv').exists()
    assert not (out / 'features' / 'detect' / 'spatialDataXtiny').exists()
    doc = json.loads((out / 'detections.json').read_text())
    assert doc['streams'] == ['temporal']
    assert len(thumos14.read_results(out / 'detections.txt')) == len(doc['detections'])
    capsys.readouterr()
    assert run([video, '--checkpoint', t_ckpt, '--out', out, '--nms_threshold=0.5']) == 0
    assert 'already extracted' in capsys.readouterr().out


def test_clear_errors(video, checkpoints, tmp_path, make_config):
    wide = tmp_path / 'wide.pt'   # only the header matters: the width is checked before the model is built
    torch.save({'model': {}, 'method': 'main_stream', 'feature_dim': 2048, 'config': make_config().to_dict()}, wide)
    with pytest.raises(SystemExit, match=r'dimension 2048, but backbone .tiny. has dimension 64'):
        run([video, '--checkpoint', wide, '--out', tmp_path / 'o'])
    spatial = checkpoints[1]
    with pytest.raises(SystemExit, match='must be the temporal'):
        run([video, '--checkpoint', spatial, '--checkpoint-spatial', spatial, '--out', tmp_path / 'o'])
    with pytest.raises(SystemExit, match='not found'):
        run([tmp_path / 'missing.mp4', '--checkpoint', spatial])
    assert not (tmp_path / 'o').exists()    # nothing extracted before the checks


def test_a_checkpoint_of_other_classes_detects_under_their_names(video, checkpoints, tmp_path, make_config, capsys):
    names = ('pour', 'stir', 'chop')
    cfg = C.with_classes(make_config(mode='temporal', method='main_stream', pretrain='tiny', seed=3),
                         classes.ClassList(names, (1, 2, 3)))
    torch.manual_seed(cfg.seed)
    path = tmp_path / 'toy.pt'
    torch.save({'model': build_model(cfg, DIM).state_dict(), 'method': cfg.method, 'feature_dim': DIM,
                'config': cfg.to_dict(), 'epoch': 1, 'classes': {'names': list(names), 'ids': [1, 2, 3]}}, path)
    out = tmp_path / 'out'
    assert run([video, '--checkpoint', path, '--out', out, '--filter_conf_threshold=-1e9',
                '--filter_neg_threshold=1.0']) == 0
    dets = json.loads((out / 'detections.json').read_text())['detections']
    assert dets and {d['label'] for d in dets} <= set(names)
    assert all(d['label'] == names[d['class_id'] - 1] for d in dets)
    assert dets[0]['label'] in capsys.readouterr().out   # the best ones are printed by name
    assert classes.read_class_list(out / 'detections.classes.txt').names == names
    assert predictions.read_predictions_and_classes(out / 'predict_temporal.csv')[1].names == names
    # beside a spatial checkpoint of THUMOS14's classes: refused in one line, before any extraction
    with pytest.raises(SystemExit) as err:
        run([video, '--checkpoint', path, '--checkpoint-spatial', checkpoints[1], '--out', tmp_path / 'o'])
    message = str(err.value)
    assert '\n' not in message and '3 classes (pour, stir, chop)' in message and '20 classes' in message
    assert not (tmp_path / 'o').exists()
