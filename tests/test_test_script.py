"""test.py end to end with a small random main-stream checkpoint, and its failures."""
import numpy as np
import pandas as pd
import pytest
import torch

import checkpoints
import operations
import postprocess as P
import predictions
import sliding_windows
import test as T
import thumos14

FPS = thumos14.video_fps()

DIM = 16
STARTS = np.array([0, 256, 512, 0, 0])
VIDEOS = np.array(['video_test_0001207'] * 3 + ['video_test_0000004', 'video_test_0000051'])
ARGS = ['--mode', 'temporal', '--pretrain', 'tiny', '--method', 'main_stream',
        '--data_dir=data', '--feature_path=feat', '--device=cpu', '--batch_size=2']


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, make_config):
    """data/test/window_info.log, per-window features and models/<run>/model-ep-{1,2}.pt."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp('run')
    sliding_windows.write_window_info(str(root / 'data' / 'test' / 'window_info.log'), STARTS, VIDEOS)
    folder = root / 'feat' / 'test' / 'temporalDataXtiny'
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(len(STARTS), 128, DIM)).astype(np.float32)
    for i, f in enumerate(feats):
        np.save(folder / f'{i}.npy', f)
    cfg = make_config(method='main_stream', mode='temporal', pretrain='tiny')
    torch.manual_seed(0)
    model = checkpoints.build_model(cfg, DIM)
    run = root / 'models' / 'temporal_tiny_main_stream'
    run.mkdir(parents=True)
    torch.save({'model': model.state_dict(), 'method': 'main_stream', 'feature_dim': DIM,
                'config': cfg.to_dict(), 'epoch': 10}, run / 'model-ep-10.pt')
    (run / 'model-ep-9.pt').write_bytes(b'an older epoch: never read')
    return dict(root=root, feats=feats, model=model, cfg=cfg, ckpt=run / 'model-ep-10.pt')


def outputs(root):
    return sorted(p.name for p in (root / 'results').iterdir()) if (root / 'results').exists() else []


def test_predict_windows_every_window_once_spec9(workdir):
    cfg = workdir['cfg']
    pred = T.predict_windows(workdir['model'], workdir['feats'], STARTS, VIDEOS, cfg, batch_size=2)
    assert list(pred.columns) == predictions.PRED_COLUMNS + ['anchor'] and len(pred) == len(STARTS) * 140
    with torch.no_grad():
        p = operations.predict(workdir['model'](torch.as_tensor(workdir['feats'])), cfg)
    w = 3  # the third window (video_test_0001207, start 512), anchor by anchor
    rows = pred.iloc[w * 140:(w + 1) * 140]
    assert (rows.video_name == VIDEOS[w]).all() and (rows.start == STARTS[w]).all()
    np.testing.assert_allclose(rows[predictions.SCORE_COLUMNS].to_numpy(), p['class_prob'][w].numpy(), atol=1e-6)
    np.testing.assert_allclose(rows.conf, p['conf'][w].numpy(), atol=1e-5)
    np.testing.assert_allclose(rows.xmin, np.maximum(p['xmin'][w].numpy() * 512, 0) + STARTS[w], atol=1e-3)
    np.testing.assert_allclose(rows.xmax, np.minimum(p['xmax'][w].numpy() * 512, 512) + STARTS[w], atol=1e-3)
    assert ((pred.xmin - pred.start) >= 0).all() and ((pred.xmax - pred.start) <= 512).all()


def test_end_to_end_cli(workdir, monkeypatch, capsys):
    root = workdir['root']
    monkeypatch.chdir(root)
    T.main(ARGS)
    assert 'model-ep-10.pt' in capsys.readouterr().out  # the newest checkpoint, by epoch number
    pred = predictions.read_predictions(str(root / 'results' / 'predict_temporal_tiny_main_stream.csv'))
    assert len(pred) == len(STARTS) * 140
    assert list(pd.unique(pred.video_name)) == list(dict.fromkeys(VIDEOS))
    expected = P.post_process(pred, workdir['cfg'], fps_of=FPS)
    text = (root / 'results' / 'result_temporal_tiny_main_stream.txt').read_text()
    assert text == thumos14.format_results(expected) and len(text.splitlines()) > 0
    # Re-post-processing the predictions file gives the same result file.
    out = root / 'again.txt'
    T.main(['--predictions', str(root / 'results' / 'predict_temporal_tiny_main_stream.csv'), '--out', str(out)])
    assert out.read_text() == text


def test_features_override_packed_file_and_windows(workdir, tmp_path, monkeypatch, make_config):
    monkeypatch.chdir(workdir['root'])
    packed = tmp_path / 'packed_test.npy'
    np.save(packed, workdir['feats'][:4])
    windows = tmp_path / 'win.log'
    sliding_windows.write_window_info(str(windows), STARTS[:4], VIDEOS[:4])
    pred_path, result_path = tmp_path / 'p.csv', tmp_path / 'r.txt'
    cfg = make_config(mode='temporal', pretrain='tiny', method='main_stream', data_dir='data', feature_path='feat',
                      device='cpu', batch_size=2)
    pred, det = T.run_test(cfg, str(workdir['ckpt']), str(packed), str(windows), str(pred_path), str(result_path),
                           log=lambda *a: None)
    assert len(pred) == 4 * 140 and result_path.read_text() == thumos14.format_results(det)
    # A packed array that does not fit the window list.
    with pytest.raises(ValueError, match='does not fit the window list'):
        T.run_test(cfg, str(workdir['ckpt']), str(packed), None, str(tmp_path / 'p2.csv'), str(tmp_path / 'r2.txt'))
    assert not (tmp_path / 'r2.txt').exists()


def run_fails(root, extra, message, monkeypatch):
    monkeypatch.chdir(root)
    before = outputs(root)
    with pytest.raises(SystemExit, match=message):
        T.main(ARGS + extra)
    assert outputs(root) == before  # nothing half-written


def test_missing_checkpoint(workdir, monkeypatch):
    run_fails(workdir['root'], ['--checkpoint', 'models/nope.pt'], 'checkpoint models/nope.pt not found', monkeypatch)
    run_fails(workdir['root'], ['--pretrain', 'other'], r'no checkpoint model-ep-<epoch>.pt in models/temporal_other',
              monkeypatch)


def test_checkpoint_of_other_method_or_dimension(workdir, tmp_path, monkeypatch):
    other = tmp_path / 'other.pt'
    torch.save({'model': {}, 'method': 'decouple_ssad', 'feature_dim': DIM, 'config': {}, 'epoch': 1}, other)
    run_fails(workdir['root'], ['--checkpoint', str(other)], 'decouple_ssad model, but method is main_stream',
              monkeypatch)
    wide = tmp_path / 'wide.pt'
    torch.save({'model': workdir['model'].state_dict(), 'method': 'main_stream', 'feature_dim': 32,
                'config': workdir['cfg'].to_dict(), 'epoch': 1}, wide)
    run_fails(workdir['root'], ['--checkpoint', str(wide)], 'dimension 32, but the data has dimension 16', monkeypatch)


def test_missing_features_for_a_window(workdir, tmp_path, monkeypatch):
    feats = tmp_path / 'feat' / 'test' / 'temporalDataXtiny'
    feats.mkdir(parents=True)
    for i in (0, 1, 3, 4):  # window 2 missing
        np.save(feats / f'{i}.npy', workdir['feats'][i])
    run_fails(workdir['root'], ['--features', str(feats)], r'2\.npy: feature file not found', monkeypatch)
    run_fails(workdir['root'], ['--features', str(tmp_path / 'none')], 'not found', monkeypatch)


def test_predictions_mode_takes_no_model_arguments(workdir, monkeypatch):
    run_fails(workdir['root'], ['--predictions', 'x.csv', '--checkpoint', 'y.pt'], 'takes no --checkpoint',
              monkeypatch)
    run_fails(workdir['root'], ['--predictions', 'x.csv'], 'x.csv: predictions file not found', monkeypatch)
