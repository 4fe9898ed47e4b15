"""Two-stream fusion (method.md §11): alignment check, weights, fused filter, fuse.py."""
import numpy as np
import pandas as pd
import pytest

import config as C
import fuse
import postprocess as P
import predictions
import thumos14

FPS = thumos14.video_fps()


def stream(seed, n=280, videos=('video_test_0000004', 'video_test_0001207')):
    """A predictions table of n rows (two windows per video, 70 anchors each)."""
    rng = np.random.default_rng(seed)
    per = n // (2 * len(videos))
    video = np.repeat(np.array(videos, dtype=object), 2 * per)
    start = np.tile(np.repeat([0, 256], per), len(videos))
    xmin = rng.uniform(0, 400, n)
    scores = rng.dirichlet(np.full(21, 0.5), n)
    df = pd.DataFrame(dict(video_name=video, start=start, conf=rng.uniform(0, 1, n),
                           xmin=xmin + start, xmax=xmin + rng.uniform(5, 100, n) + start))
    return pd.concat([df, pd.DataFrame(scores, columns=predictions.SCORE_COLUMNS)], axis=1)


def test_weights_default_is_release_two_thirds():
    t, s = stream(0), stream(1)
    fused = fuse.fuse_predictions(t, s, C.Config())
    cols = ['conf', 'xmin', 'xmax'] + predictions.SCORE_COLUMNS
    # Bit for bit the release's t * 2 / 3 + s * 1 / 3.
    np.testing.assert_array_equal(fused[cols].to_numpy(), t[cols].to_numpy() * 2 / 3 + s[cols].to_numpy() * 1 / 3)
    assert list(fused['video_name']) == list(t['video_name']) and list(fused['start']) == list(t['start'])


@pytest.mark.parametrize('w', [0.5, 0.9, 0.123456789])
def test_weights_follow_config(w, make_config):
    t, s = stream(0), stream(1)
    cfg = make_config(fuse_temporal_weight=w)
    fused = fuse.fuse_predictions(t, s, cfg)
    np.testing.assert_allclose(fused['score_3'], w * t['score_3'] + (1 - w) * s['score_3'], rtol=1e-12)
    np.testing.assert_allclose(fused['xmax'], w * t['xmax'] + (1 - w) * s['xmax'], rtol=1e-12)


def test_misaligned_rows_refused_naming_first_row(make_config):
    t, s = stream(0), stream(1)
    s.loc[17, 'start'] = 512
    s.loc[40, 'video_name'] = 'video_test_0000099'
    with pytest.raises(ValueError, match=r'row 17 \(line 19\).*start 0.*start 512'):
        fuse.fuse_predictions(t, s, make_config(), names=('t.csv', 's.csv'))
    with pytest.raises(ValueError, match='280 prediction rows.*279'):
        fuse.fuse_predictions(t, s.iloc[:-1], make_config())


def test_fused_filter_and_then_single_stream_filters(make_config):
    t, s = stream(0), stream(1)
    cfg = C.Config()
    fused = fuse.fuse_predictions(t, s, cfg)
    # Default: fused score_0 < 0.99, then the single-stream filters as released (score_0 < 0.98, conf > 0.1).
    base = P.post_process(fused[(fused.score_0 < 0.98) & (fused.conf > 0.1)], cfg, fps_of=FPS)
    got = P.post_process(fused, cfg, fused=True, fps_of=FPS)
    assert len(got) > 0 and thumos14.format_results(got) == thumos14.format_results(base)
    # A tighter fused threshold drops more rows.
    cut = float(np.median(fused.score_0))
    strict = make_config(filter_neg_threshold_fuse=cut)
    got = P.post_process(fused, strict, fused=True, fps_of=FPS)
    assert thumos14.format_results(got) == thumos14.format_results(P.post_process(fused[fused.score_0 < cut], cfg, fps_of=FPS))
    assert 0 < len(got) < len(base)


def test_fuse_files_and_cli(tmp_path, make_config):
    t, s = stream(0), stream(1)
    predictions.write_predictions(str(tmp_path / 't.csv'), t)
    predictions.write_predictions(str(tmp_path / 's.csv'), s)
    out = tmp_path / 'fused.txt'
    fuse.main(['--temporal', str(tmp_path / 't.csv'), '--spatial', str(tmp_path / 's.csv'), '--out', str(out)])
    cfg = make_config()
    expected = P.post_process(fuse.fuse_predictions(t, s, cfg), cfg, fused=True, fps_of=FPS)
    assert out.read_text() == thumos14.format_results(expected)


def test_cli_default_paths_and_overrides(tmp_path, monkeypatch, make_config):
    monkeypatch.chdir(tmp_path)
    predictions.write_predictions('results/predict_temporal_X_main_stream.csv', stream(0))
    predictions.write_predictions('results/predict_spatial_X_main_stream.csv', stream(1))
    fuse.main(['--pretrain', 'X', '--method', 'main_stream', '--fuse_temporal_weight=0.5'])
    cfg = make_config(fuse_temporal_weight=0.5)
    expected = P.post_process(fuse.fuse_predictions(stream(0), stream(1), cfg), cfg, fused=True, fps_of=FPS)
    assert (tmp_path / 'results' / 'result_fuse_X_main_stream.txt').read_text() == thumos14.format_results(expected)
    with pytest.raises(SystemExit, match='spatial-stream predictions .*not found'):
        fuse.main(['--pretrain', 'X', '--method', 'main_stream', '--spatial', 'nope.csv'])


def test_cli_misaligned_writes_nothing(tmp_path):
    t, s = stream(0), stream(1)
    s = s.iloc[::-1].reset_index(drop=True)
    predictions.write_predictions(str(tmp_path / 't.csv'), t)
    predictions.write_predictions(str(tmp_path / 's.csv'), s)
    out = tmp_path / 'fused.txt'
    with pytest.raises(SystemExit, match=r'do not align at row 0 \(line 2\)'):
        fuse.main(['--temporal', str(tmp_path / 't.csv'), '--spatial', str(tmp_path / 's.csv'), '--out', str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['s.csv', 't.csv']
