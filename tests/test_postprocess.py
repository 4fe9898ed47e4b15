"""Post-processing (method.md §10): the release's result file, its quirks, and NMS against a plain loop."""
import math

import numpy as np
import pandas as pd
import pytest

import config as C
import postprocess as P
import predictions
import thumos14

FPS = thumos14.video_fps()  # the built-in THUMOS14 frame rates


def table(rows):
    """A predictions DataFrame from dicts with video, start, conf, xmin, xmax, scores {k: p} (rest 0)."""
    out = []
    for r in rows:
        scores = np.zeros(21)
        for k, p in r.get('scores', {}).items():
            scores[k] = p
        out.append(dict(video_name=r.get('video', 'video_test_0000004'), start=r.get('start', 0),
                        conf=r.get('conf', 0.5), xmin=r['xmin'], xmax=r['xmax'],
                        **{f'score_{k}': scores[k] for k in range(21)}))
    return pd.DataFrame(out, columns=predictions.PRED_COLUMNS)


def lines(det):
    return sorted(thumos14.format_results(det).splitlines())


# ----------------------------------------------------------------------------- a plain reference

def sequential_nms(start, end, score, threshold, tie=None):
    """Keep the best, drop every later one with IoU > threshold (NaN included), repeat; ties: the
    higher `tie` first (default: the later box)."""
    tie = range(len(score)) if tie is None else tie
    order = sorted(range(len(score)), key=lambda i: (-score[i], -tie[i]))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            inter = min(end[i], end[j]) - max(start[i], start[j])
            union = (end[i] - start[i]) + (end[j] - start[j]) - inter
            iou = inter / union if union != 0 else (math.nan if inter == 0 else math.copysign(math.inf, inter))
            if iou <= threshold:
                rest.append(j)
        order = rest
    return keep


def reference_post_process(df, cfg, fps_of):
    """method.md §10 row by row, written for clarity."""
    out = []
    for video in dict.fromkeys(df.video_name):
        v = df[(df.video_name == video) & (df.score_0 < cfg.filter_neg_threshold)
               & (df.conf > cfg.filter_conf_threshold)]
        cands = [[], [], []]
        for _, r in v.iterrows():
            s = [r[f'score_{k}'] / (1 + math.exp(-r.conf)) for k in range(1, 21)]
            for k in range(3):
                best = s.index(max(s))
                cands[k].append((thumos14.CLASS_REAL[best + 1], s[best], r.xmin, r.xmax))
                s[best] = 0.0
        cands = cands[0] + cands[1] + cands[2]
        cands += [(26, sc, a, b) for c, sc, a, b in cands if c == 22]
        for c in sorted({c for c, *_ in cands}):
            group = [x for x in cands if x[0] == c]
            keep = sequential_nms([x[2] for x in group], [x[3] for x in group], [x[1] for x in group],
                                  cfg.nms_threshold)
            fps = fps_of(video)
            out += [thumos14.RESULT_FORMAT % (video, group[i][2] / fps, group[i][3] / fps, c, group[i][1]) for i in keep]
    return sorted(line.rstrip('\n') for line in out)


def default_fps(video):
    return thumos14.FPS_EXCEPTIONS.get(video, thumos14.DEFAULT_FPS)


# ----------------------------------------------------------------------------- the release's output

def test_reproduces_reference_result_file(shared):
    ref = shared / 'reference'
    pred = predictions.read_predictions(str(ref / 'predict_temporal.csv'))
    det = P.post_process(pred, C.Config(), fps_of=FPS)
    expected = sorted((ref / 'result_temporal.txt').read_text().splitlines())
    assert len(expected) > 1000
    assert lines(det) == expected


def test_result_file_written_atomically_in_thumos_format(shared, tmp_path):
    ref = shared / 'reference'
    out = tmp_path / 'sub' / 'result.txt'
    P.process_file(str(ref / 'predict_temporal.csv'), str(out), C.Config(), fps_of=FPS)
    text = out.read_text()
    assert sorted(text.splitlines()) == sorted((ref / 'result_temporal.txt').read_text().splitlines())
    assert [p.name for p in out.parent.iterdir()] == ['result.txt']  # no temporary left behind
    back = thumos14.read_results(str(out))
    assert len(back) == len(text.splitlines()) and set(back.columns) == {'video', 'start', 'end', 'class_id', 'score'}


def test_matches_plain_reference_on_reference_subset(shared):
    pred = predictions.read_predictions(str(shared / 'reference' / 'predict_temporal.csv')).iloc[::7]
    cfg = C.Config()
    assert lines(P.post_process(pred, cfg, fps_of=FPS)) == reference_post_process(pred, cfg, default_fps)


# ----------------------------------------------------------------------------- quirks

def test_filters_are_strict():
    cfg = C.Config()
    rows = [dict(xmin=0, xmax=30, conf=0.5, scores={0: 0.98, 1: 0.02}),         # score_0 == 0.98: dropped
            dict(xmin=60, xmax=90, conf=0.1, scores={0: 0.5, 2: 0.5}),          # conf == 0.1: dropped
            dict(xmin=120, xmax=150, conf=0.1001, scores={0: 0.9799, 3: 0.0201})]  # kept
    det = P.post_process(table(rows), cfg, fps_of=FPS)
    assert set(det['start'] * 30) == {120}


def test_three_candidates_with_sigmoid_conf_and_ties_lowest_class_first():
    conf = 0.3
    det = P.post_process(table([dict(xmin=0, xmax=60, conf=conf,
                                     scores={0: 0.2, 2: 0.2, 4: 0.2, 6: 0.2, 8: 0.2})]), C.Config(), fps_of=FPS)
    s = 0.2 / (1 + math.exp(-conf))
    # Four classes tie: the three lowest indices (2, 4, 6 -> ids 9, 21, 23) win; id 26 (index 8) does not.
    assert sorted(det['class_id']) == [thumos14.CLASS_REAL[2], thumos14.CLASS_REAL[4], thumos14.CLASS_REAL[6]]
    np.testing.assert_allclose(det['score'], s, rtol=0, atol=1e-15)


def test_all_zero_rest_gives_lowest_zero_class_with_score_zero():
    # Only class 3 is non-zero: the 2nd and 3rd candidates are class 1 (index 0 of the
    # zeroed scores) with score 0; NMS then keeps one of the two identical boxes.
    det = P.post_process(table([dict(xmin=30, xmax=90, scores={0: 0.5, 3: 0.5})]), C.Config(), fps_of=FPS)
    fmt = thumos14.RESULT_FORMAT.strip()
    assert lines(det) == sorted([fmt % ('video_test_0000004', 1.0, 3.0, 12, 0.5 / (1 + math.exp(-0.5))),
                                 fmt % ('video_test_0000004', 1.0, 3.0, 7, 0.0)])
    # Class 1 itself is the top class: the zeroed class 1 is picked again with score 0,
    # and NMS keeps the scored one.
    det = P.post_process(table([dict(xmin=30, xmax=90, scores={0: 0.5, 1: 0.3, 5: 0.2})]), C.Config(), fps_of=FPS)
    got = det.sort_values(['class_id', 'score']).reset_index(drop=True)
    assert list(got['class_id']) == [7, 22, 26]
    assert got['score'][0] == pytest.approx(0.3 / (1 + math.exp(-0.5)))


def test_cliff_diving_repeated_as_diving_and_nms_with_real_diving():
    sig = 1 / (1 + math.exp(-0.5))
    rows = [dict(xmin=0, xmax=100, scores={0: 0.1, 5: 0.6, 9: 0.3}),   # CliffDiving first
            dict(xmin=10, xmax=100, scores={0: 0.1, 8: 0.5, 9: 0.4})]  # Diving, overlapping, lower
    det = P.post_process(table(rows), C.Config(), fps_of=FPS)
    cliff = det[det.class_id == 22]
    diving = det[det.class_id == 26]
    assert len(cliff) == 1 and cliff['score'].iloc[0] == pytest.approx(0.6 * sig)
    # The copy (0.6) beats the row's own Diving score (0.5) on an overlapping box.
    assert len(diving) == 1 and diving['score'].iloc[0] == pytest.approx(0.6 * sig)
    assert diving['start'].iloc[0] == cliff['start'].iloc[0]


def test_equal_scores_later_candidate_wins_nms():
    # Same scores, overlapping boxes: the release's argsort()[::-1] puts the later row first.
    rows = [dict(xmin=0, xmax=90, scores={0: 0.2, 1: 0.8}), dict(xmin=30, xmax=120, scores={0: 0.2, 1: 0.8})]
    det = P.post_process(table(rows), C.Config(), fps_of=FPS)
    assert list(det.query('class_id == 7')['start']) == [1.0]


def test_zero_length_boxes():
    cfg = C.Config()
    same = [dict(xmin=60, xmax=60, scores={0: 0.1, 1: 0.9}), dict(xmin=60, xmax=60, scores={0: 0.2, 1: 0.8})]
    det = P.post_process(table(same), cfg, fps_of=FPS)
    assert (det.class_id == 7).sum() == 1  # 0/0 counts as overlap: one survives
    apart = [dict(xmin=60, xmax=60, scores={0: 0.1, 1: 0.9}), dict(xmin=90, xmax=90, scores={0: 0.2, 1: 0.8}),
             dict(xmin=0, xmax=120, scores={0: 0.2, 1: 0.7})]
    det = P.post_process(table(apart), cfg, fps_of=FPS)
    assert (det.class_id == 7).sum() == 3  # distinct points and a point inside a box (IoU 0) all stay


def test_fps_per_video():
    cfg = C.Config()
    rows = [dict(video=v, xmin=480, xmax=960, scores={0: 0.1, 1: 0.9})
            for v in ('video_test_0001207', 'video_test_0001255', 'video_test_0000004')]
    det = P.post_process(table(rows), cfg, fps_of=FPS).query('class_id == 7').set_index('video')
    assert det.loc['video_test_0001207', 'start'] == 20.0 and det.loc['video_test_0001207', 'end'] == 40.0
    assert det.loc['video_test_0001255', 'start'] == 480 / 25
    assert det.loc['video_test_0000004', 'end'] == 32.0
    det = P.post_process(table(rows), cfg, fps_of=thumos14.FpsTable({'video_test_0000004': 60.0})).query('class_id == 7')
    assert det.set_index('video').loc['video_test_0000004', 'end'] == 16.0
    det = P.post_process(table(rows), cfg, fps_of=lambda v: 10.0).query('class_id == 7')
    assert (det['start'] == 48.0).all()
    with pytest.raises(ValueError, match='fps'):
        P.post_process(table(rows), cfg, fps_of=lambda v: 0.0)


def test_empty_after_filters_writes_empty_file(tmp_path):
    det = P.post_process(table([dict(xmin=0, xmax=10, scores={0: 1.0})]), C.Config(), fps_of=FPS)
    assert len(det) == 0
    thumos14.write_results(str(tmp_path / 'r.txt'), det)
    assert (tmp_path / 'r.txt').read_text() == ''


# ----------------------------------------------------------------------------- NMS against the loop

@pytest.mark.parametrize('seed', range(6))
def test_vectorised_nms_equals_sequential(seed):
    rng = np.random.default_rng(seed)
    n = 400
    group = rng.integers(0, 7, n)
    start = rng.integers(0, 60, n).astype(float) * 4
    length = rng.choice([0.0, 0.0, 8.0, 16.0, 40.0, 100.0], n) * rng.uniform(0.5, 1.5, n)
    if seed % 2:
        length[rng.random(n) < 0.05] *= -1  # reversed boxes take the exact round-by-round path
    end = start + length
    score = rng.integers(0, 20, n) / 20.0  # many ties
    order = np.lexsort((-np.arange(n), -score, group))
    keep = P.greedy_nms(group[order], start[order], end[order], 0.2)
    got = set(order[keep].tolist())
    expected = set()
    for g in np.unique(group):
        idx = np.flatnonzero(group == g)
        expected |= {int(idx[i]) for i in sequential_nms(start[idx], end[idx], score[idx], 0.2)}
    assert got == expected


def test_random_predictions_match_plain_reference():
    rng = np.random.default_rng(3)
    n = 300
    scores = rng.dirichlet(np.full(21, 0.3), n)
    scores[rng.random(n) < 0.2, 4:] = 0.0  # rows whose rest underflows to zero
    scores[rng.random(n) < 0.2, 2:] = 0.0  # one action class only: two zero-score candidates
    scores /= scores.sum(1, keepdims=True)
    start = rng.integers(0, 8, n) * 256
    xmin = np.maximum(rng.uniform(-20, 480, n), 0).round(2)
    xmax = np.minimum(xmin + rng.choice([0.0, 16, 64, 200], n), 512)
    df = pd.DataFrame(dict(video_name=rng.choice(['video_test_0001207', 'video_test_0000051', 'video_test_0001255'], n),
                           start=start, conf=rng.uniform(-0.2, 1.2, n), xmin=xmin + start, xmax=xmax + start))
    df = pd.concat([df, pd.DataFrame(scores, columns=predictions.SCORE_COLUMNS)], axis=1)
    cfg = C.Config()
    assert lines(P.post_process(df, cfg, fps_of=FPS)) == reference_post_process(df, cfg, default_fps)


# ----------------------------------------------------------------------------- predictions CSV

def test_predictions_csv_round_trip_exact(tmp_path, shared):
    pred = predictions.read_predictions(str(shared / 'reference' / 'predict_temporal.csv'))
    path = tmp_path / 'p.csv'
    predictions.write_predictions(str(path), pred)
    back = predictions.read_predictions(str(path))
    pd.testing.assert_frame_equal(back, pred)
    assert path.read_text().splitlines()[0] == ','.join(predictions.PRED_COLUMNS)


@pytest.mark.parametrize('edit, message', [
    (lambda t: t.replace(',score_20', ',score_x'), r"line 1: missing columns \['score_20'\]"),
    (lambda t: _replace_field(t, 3, 'conf', 'abc'), r"line 3: column conf: 'abc'"),
    (lambda t: _replace_field(t, 2, 'start', '1.5'), 'line 2: column start'),
    (lambda t: _replace_field(t, 4, 'xmax', ''), 'line 4: column xmax'),
    (lambda t: _replace_field(t, 5, 'video_name', ''), 'line 5: empty video_name'),
])
def test_bad_predictions_name_file_and_line(tmp_path, edit, message):
    df = table([dict(xmin=i, xmax=i + 10, scores={0: 0.5, 1: 0.5}) for i in range(5)])
    path = tmp_path / 'bad.csv'
    path.write_text(edit(df.to_csv(index=False)))
    with pytest.raises(ValueError, match=message) as err:
        predictions.read_predictions(str(path))
    assert str(path) in str(err.value)


def _replace_field(text, line, column, value):
    rows = text.split('\n')
    header = rows[0].split(',')
    fields = rows[line - 1].split(',')
    fields[header.index(column)] = value
    rows[line - 1] = ','.join(fields)
    return '\n'.join(rows)


def test_missing_predictions_file(tmp_path):
    with pytest.raises(ValueError, match='not found'):
        predictions.read_predictions(str(tmp_path / 'nope.csv'))


def test_predictions_file_round_trips_byte_for_byte(shared, tmp_path):
    # The writer reproduces what the release's pandas wrote, byte for byte.
    source = shared / 'reference' / 'predict_temporal.csv'
    predictions.write_predictions(str(tmp_path / 'p.csv'), predictions.read_predictions(str(source)))
    assert (tmp_path / 'p.csv').read_bytes() == source.read_bytes()
