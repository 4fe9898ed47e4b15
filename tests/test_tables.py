"""The predictions CSV through pyarrow (same bytes, same table, same errors as the plain
writer and the pandas reader), the sweep NMS against the exact round-by-round one and a
plain greedy loop, the result text against thumos14.format_results, the threaded
post-processing, and test.py --predictions without torch."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import config as C
import postprocess as P
import predictions
import thumos14
from test_postprocess import sequential_nms

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def edge_values():
    """Values at and next to every place where repr or pyarrow change notation."""
    base = np.array([0.0, 1.0, 2.0, 0.1, 1 / 3, 123.0, 256.0, 512.0, 1e-4, 1e-5, 1e-6, 1e-7, 1e-9, 1e-10,
                     9.9e-7, 1.5e-6, 1e5, 1e9, 1e10, 9999999999.5, 1e15, 2.0 ** 53, 1e16, 1e17, 1e22, 1e100,
                     5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, np.inf, np.nan])
    with np.errstate(over='ignore'):
        near = np.concatenate([base, np.nextafter(base, np.inf), np.nextafter(base, -np.inf)])
    return np.concatenate([near, -near])


def random_values(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([
        rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n),                           # every exponent
        rng.random(n).astype(np.float32).astype(np.float64) * 10.0 ** rng.integers(-12, 12, n),  # float32 outputs
        np.round(rng.random(n) * 10.0 ** rng.integers(0, 20, n)),                             # whole numbers
        rng.integers(0, 10 ** 6, n) / 100.0,                                                  # short decimals
        rng.integers(0, 2 ** 63, n, dtype=np.uint64).view(np.float64)])                       # any bit pattern


@pytest.mark.parametrize('values', [edge_values(), random_values(40000)], ids=['edges', 'random'])
def test_float_text_is_repr(values):
    assert predictions.float_text(values).to_pylist() == [repr(v) for v in values.tolist()]


def random_table(n, seed=0, anchors=None):
    rng = np.random.default_rng(seed)
    scores = rng.dirichlet(np.full(21, 0.2), n).astype(np.float32).astype(np.float64)
    scores[rng.random(n) < 0.1, 3:] = 0.0          # exact zeros ("0.0")
    start = rng.integers(0, 40, n) * 256
    xmin = np.maximum(rng.uniform(-50, 512, n), 0).astype(np.float32).astype(np.float64) + start
    arrays = dict(video_name=rng.choice(np.array(['video_test_0000004', 'video_test_0001207', 'v 3'], object), n),
                  start=start, conf=rng.uniform(-0.2, 1.1, n), xmin=xmin, xmax=xmin + rng.choice([0.0, 16.0, 1e-5], n),
                  scores=scores)
    # Rows sorted by window, as test.py writes them (a window apart from its rows is warned about).
    order = np.lexsort((arrays['start'], arrays['video_name'].astype(str)))
    arrays = {k: v[order] for k, v in arrays.items()}
    return predictions.predictions_frame(arrays, anchors_per_window=anchors)


def plain_bytes(tmp_path, df):
    header = ','.join(list(df.columns))
    predictions._write_predictions_text(str(tmp_path / 'plain.csv'), df, header)
    return (tmp_path / 'plain.csv').read_bytes()


@pytest.mark.parametrize('anchors', [None, 7])
def test_arrow_writer_gives_the_plain_writers_bytes(tmp_path, anchors):
    df = random_table(7 * 300, anchors=anchors)
    assert predictions._predictions_arrow_table(df) is not None  # the pyarrow path is the one tested
    predictions.write_predictions(str(tmp_path / 'p.csv'), df)
    assert (tmp_path / 'p.csv').read_bytes() == plain_bytes(tmp_path, df)
    pd.testing.assert_frame_equal(predictions.read_predictions(str(tmp_path / 'p.csv')), df)


def test_writer_edge_cases_keep_the_plain_bytes(tmp_path):
    df = random_table(40, anchors=4)
    cases = {'empty': df.iloc[:0],
             'float start': df.assign(start=df['start'].astype(np.float64)),
             'comma in a name': df.assign(video_name=df['video_name'].replace('v 3', 'v,3')),
             'extreme floats': df.assign(conf=np.resize(edge_values()[np.isfinite(edge_values())], len(df)))}
    for name, case in cases.items():
        path = tmp_path / f'{name}.csv'
        predictions.write_predictions(str(path), case)
        assert path.read_bytes() == plain_bytes(tmp_path, case), name
    assert predictions._predictions_arrow_table(cases['comma in a name']) is None   # left to the plain writer


# ----------------------------------------------------------------------------- the sweep NMS

def rounds(group, start, end, threshold):
    """The exact round-by-round NMS (the release's loop, one kept box per group per round)."""
    with np.errstate(divide='ignore', invalid='ignore'):
        return P._nms_rounds(group, start, end, threshold)


def random_boxes(rng, n, groups, grid):
    group = np.sort(rng.integers(0, groups, n))
    start = rng.integers(0, grid, n) * rng.choice([1.0, 0.5, 1 / 3], n)
    length = rng.choice([0.0, 0.0, 1.0, 2.0, 5.0, 10.0, 40.0], n) * rng.choice([1.0, 1.0, 0.7, 1.25], n)
    return group, start, start + length


@pytest.mark.parametrize('seed', range(12))
def test_sweep_nms_equals_round_by_round(seed):
    rng = np.random.default_rng(seed)
    group, start, end = random_boxes(rng, 3000, 5, 200 if seed % 3 else 20)
    for threshold in (0.0, 0.2, 0.5, 1 / 3, 0.999, 1.0, 1.5):
        expected = rounds(group, start, end, threshold)
        np.testing.assert_array_equal(P.greedy_nms(group, start, end, threshold), expected)


def test_sweep_nms_at_exact_iou_threshold_and_touching_boxes():
    # IoU exactly 0.2 stays; just above goes; touching and identical points as the release.
    start = np.array([0.0, 8.0, 7.9, 10.0, 3.0, 3.0, 3.0])
    end = np.array([10.0, 12.0, 12.0, 20.0, 3.0, 3.0, 3.0])
    group = np.zeros(len(start), np.int64)
    for threshold in (0.2, 0.0):
        np.testing.assert_array_equal(P.greedy_nms(group, start, end, threshold),
                                      rounds(group, start, end, threshold))


def test_sweep_nms_with_reversed_and_non_finite_boxes():
    rng = np.random.default_rng(7)
    group, start, end = random_boxes(rng, 2000, 6, 100)
    end[rng.random(2000) < 0.02] -= 30.0           # reversed: exact slow path for their groups
    start[rng.integers(0, 2000, 3)] = np.nan
    end[rng.integers(0, 2000, 3)] = np.inf
    np.testing.assert_array_equal(P.greedy_nms(group, start, end, 0.2), rounds(group, start, end, 0.2))


# ----------------------------------------------------------------------------- test.py --predictions

def test_predictions_path_does_not_import_torch(shared, tmp_path):
    code = ('import sys, test; test.main(["--predictions", sys.argv[1], "--out", sys.argv[2]]); '
            'assert "torch" not in sys.modules, "torch imported"')
    out = tmp_path / 'r.txt'
    subprocess.run([sys.executable, '-c', code, str(shared / 'reference' / 'predict_temporal.csv'), str(out)],
                   cwd=REPO, check=True, capture_output=True)
    assert sorted(out.read_text().splitlines()) == sorted(
        (shared / 'reference' / 'result_temporal.txt').read_text().splitlines())


# ----------------------------------------------------------------------------- NMS with scores, against a plain loop

def greedy_reference(group, start, end, score, tie, threshold):
    """The release's NMS as a plain loop per group: best (score, then tie) first, drop every
    later box with IoU > threshold (NaN, 0/0, counts as overlap), repeat."""
    keep = np.zeros(len(group), bool)
    for g in np.unique(group):
        idx = np.flatnonzero(group == g)
        keep[idx[sequential_nms(start[idx], end[idx], score[idx], threshold, tie=tie[idx])]] = True
    return keep


def scored_boxes(rng, n, groups):
    """Boxes sorted by (group, start) with many equal scores, zero-width and identical boxes,
    dense enough that some runs of partners are longer than the sweep's band."""
    group, start, end = random_boxes(rng, n, groups, rng.choice([15, 60, 300]))
    same = rng.random(n) < 0.1
    start[same], end[same] = 40.0, 40.0 + rng.choice([0.0, 10.0], same.sum())   # identical boxes and points
    order = np.lexsort((start, group))
    score = rng.integers(0, 6, n) / 5.0          # ties everywhere
    tie = rng.permutation(n)
    return group[order], start[order], end[order], score, tie


@pytest.mark.parametrize('seed', range(10))
def test_scored_nms_equals_plain_greedy_loop(seed, monkeypatch):
    rng = np.random.default_rng(100 + seed)
    group, start, end, score, tie = scored_boxes(rng, 1500, 4)
    if seed % 2:
        # several threads on several runs of groups, as on a full-size table
        monkeypatch.setattr(P, 'PART_MIN', 64)
        monkeypatch.setattr(P, 'cpu_count', lambda: 3)
    for threshold in (0.2, 0.0, 0.7, 1.0):
        np.testing.assert_array_equal(P.nms_sorted(group, start, end, score, tie, threshold),
                                      greedy_reference(group, start, end, score, tie, threshold))


# ----------------------------------------------------------------------------- the result text

def test_result_text_is_format_results():
    rng = np.random.default_rng(5)
    n = 20000
    odd = np.array([0.0, -0.0, 0.0625, 0.0005, 1.0005, 0.03125, 999999.9995, 1e9, 123456789.5, 5e-324,
                    np.nan, np.inf, -np.inf, -1.5, 1e300])
    values = [np.concatenate([rng.random(n - len(odd)) * scale, odd]) for scale in (5000, 5000, 1)]
    det = dict(videos=np.array(['video_test_0000004', 'v', 'name with spaces', '7'], object),
               video=rng.integers(0, 4, n), start=rng.permutation(values[0]), end=rng.permutation(values[1]),
               class_id=rng.integers(0, 100, n), score=rng.permutation(values[2]))
    expected = thumos14.format_results(P.detections_frame(det)).encode()
    assert P.result_text(det) == expected
    assert P.result_text({**det, 'videos': np.array(['vidéo', 'v', 'w', 'x'], object)}) is None  # locale's bytes
    assert P.result_text({k: (v if k == 'videos' else v[:0]) for k, v in det.items()}) == b''


def test_write_results_writes_format_results_bytes(tmp_path):
    rng = np.random.default_rng(6)
    n = 5000
    odd = np.array([0.0, -0.0, 0.0005, 1.0005, 999999.9995, np.nan, np.inf, -1.5])
    frame = pd.DataFrame(dict(video=rng.choice(['video_test_0000004', 'b c', '7'], n),
                              start=np.concatenate([rng.random(n - len(odd)) * 900, odd]),
                              end=rng.random(n) * 900, class_id=rng.integers(0, 100, n), score=rng.random(n)))
    for det in (frame, frame.assign(video=frame['video'].replace('7', 'vidéo')), frame.iloc[:0]):
        path = tmp_path / 'r.txt'
        thumos14.write_results(path, det)   # the numpy path, or the text path for a non-ASCII name
        assert path.read_bytes() == thumos14.format_results(det).encode('utf-8')


def test_threaded_post_processing_reproduces_reference(shared, monkeypatch, tmp_path):
    # Small parts, so that top-3, candidates, NMS and the text run in several threads.
    monkeypatch.setattr(P, 'PART_MIN', 256)
    monkeypatch.setattr(P, 'cpu_count', lambda: 3)
    ref = shared / 'reference'
    P.process_file(str(ref / 'predict_temporal.csv'), str(tmp_path / 'r.txt'), C.Config(), thumos14.video_fps())
    assert sorted((tmp_path / 'r.txt').read_text().splitlines()) == sorted(
        (ref / 'result_temporal.txt').read_text().splitlines())
