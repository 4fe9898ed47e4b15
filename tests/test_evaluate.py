"""THUMOS14 evaluation: the official kit's numbers, the ActivityNet-style metric, bad input."""
import json
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import evaluate
from conftest import REPO
import thumos14

VECTOR_FILES = ['Run-1', 'a_near_perfect', 'c_ties', 'd_ambiguous', 'e_no_gt_videos', 'g_missing_classes']


@pytest.mark.parametrize('stem', VECTOR_FILES)
def test_kit_matches_official_vectors(shared, stem):
    expected = json.loads((shared / 'eval_vectors' / f'{stem}.json').read_text())
    thresholds = [e['threshold'] for e in expected]
    res = evaluate.evaluate_kit(shared / 'eval_vectors' / f'{stem}.txt', shared / 'eval_annotation', thresholds)
    assert res['thresholds'] == thresholds
    assert res['class_ids'] == [int(k) for k in expected[0]['ap']]
    for t, e in enumerate(expected):
        for cid, ap in e['ap'].items():
            assert abs(res['per_class'][int(cid)][t] - ap) <= 1e-9, (stem, e['threshold'], cid)
        assert abs(res['map'][t] - e['map']) <= 1e-9
    assert res['map_avg_0.3_0.7'] == pytest.approx(np.mean(res['map'][2:]))


def test_kit_counts(shared):
    res = evaluate.evaluate_kit(shared / 'eval_vectors' / 'Run-1.txt', shared / 'eval_annotation', [0.5])
    lines = sum(len(p.read_text().splitlines()) for p in (shared / 'eval_annotation').glob('*_test.txt')
                if not p.name.startswith('Ambiguous'))
    assert res['num_gt_instances'] == lines
    assert res['num_ambiguous'] == len((shared / 'eval_annotation' / 'Ambiguous_test.txt').read_text().splitlines())
    assert res['num_detections'] == 1636
    assert 0 < res['num_gt_videos'] <= lines


# ---------------------------------------------------------------------------
# small hand-made ground truth

def make_gt(folder, gt_lines, amb_lines=()):
    """Two classes: 7 BaseballPitch, 9 BasketballDunk. gt_lines: (class_name, video, start, end)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'detclasslist.txt').write_text('7 BaseballPitch\n9 BasketballDunk\n')
    for name in ('BaseballPitch', 'BasketballDunk'):
        rows = [f'{v}  {s} {e}\n' for n, v, s, e in gt_lines if n == name]
        (folder / f'{name}_test.txt').write_text(''.join(rows))
    (folder / 'Ambiguous_test.txt').write_text(''.join(f'{v}  {s} {e}\n' for v, s, e in amb_lines))
    return folder


def dets(rows):
    return pd.DataFrame(rows, columns=['video', 'start', 'end', 'class_id', 'score'])


def ap_of(fn, det, gt_dir, thr, cid=7):
    return fn(det, gt_dir, [thr])['per_class'][cid][0]


def test_interpolation(tmp_path):
    gt = make_gt(tmp_path, [('BaseballPitch', 'v1', 0, 10), ('BaseballPitch', 'v1', 20, 30),
                            ('BaseballPitch', 'v1', 40, 50), ('BasketballDunk', 'v1', 0, 10)])
    # TP, FP, FP, TP, TP: precision at the TPs is 1, 1/2, 3/5.
    det = dets([('v1', 0, 10, 7, .9), ('v1', 60, 70, 7, .8), ('v1', 80, 90, 7, .7),
                ('v1', 20, 30, 7, .6), ('v1', 40, 50, 7, .5)])
    assert ap_of(evaluate.evaluate_kit, det, gt, .5) == pytest.approx((1 + 2 / 4 + 3 / 5) / 3)
    # Interpolated: the precision at recall 2/3 is lifted to 3/5.
    assert ap_of(evaluate.evaluate_anet, det, gt, .5) == pytest.approx((1 + 3 / 5 + 3 / 5) / 3)
    res = evaluate.evaluate_anet(det, gt, [.5])
    assert res['per_class'][9] == [0.0] and res['map'][0] == pytest.approx((1 + 3 / 5 + 3 / 5) / 3 / 2)


def test_threshold_inclusive_only_for_anet(tmp_path):
    gt = make_gt(tmp_path, [('BaseballPitch', 'v1', 0, 10), ('BasketballDunk', 'v1', 0, 10)])
    det = dets([('v1', 0, 5, 7, .9)])  # IoU exactly 0.5
    assert ap_of(evaluate.evaluate_kit, det, gt, .5) == 0.0
    assert ap_of(evaluate.evaluate_anet, det, gt, .5) == 1.0
    assert ap_of(evaluate.evaluate_kit, det, gt, .49) == 1.0


def test_ground_truth_vs_score_ordered_matching(tmp_path):
    gt = make_gt(tmp_path, [('BaseballPitch', 'v1', 0, 10), ('BaseballPitch', 'v1', 6, 16),
                            ('BasketballDunk', 'v1', 0, 10)])
    # d1 overlaps A (IoU 1/3) and B (9/11); d2 only A (0.32). The kit lets A (first in
    # the file) take its best, d1, leaving B nothing; score order gives d1 to B, d2 to A.
    det = dets([('v1', 5, 15, 7, .9), ('v1', 0, 3.2, 7, .8)])
    assert ap_of(evaluate.evaluate_kit, det, gt, .3) == pytest.approx(1 / 2)
    assert ap_of(evaluate.evaluate_anet, det, gt, .3) == pytest.approx(1.0)


def test_ambiguous_and_duplicates(tmp_path):
    gt = make_gt(tmp_path, [('BaseballPitch', 'v1', 0, 10), ('BaseballPitch', 'v1', 0, 10),
                            ('BasketballDunk', 'v1', 0, 10)], amb_lines=[('v1', 50, 60)])
    # A higher-scored false positive on an Ambiguous interval, one that only touches it.
    det = dets([('v1', 55, 65, 7, .9), ('v1', 0, 10, 7, .8), ('v1', 60, 70, 7, .1)])
    kit = evaluate.evaluate_kit(det, gt, [.5])
    anet = evaluate.evaluate_anet(det, gt, [.5])
    assert kit['num_gt_instances'] == 3 and anet['num_gt_instances'] == 2
    assert anet['num_duplicates_removed'] == 1
    # kit: the Ambiguous one is dropped, one TP of two instances.
    assert kit['per_class'][7][0] == pytest.approx(1 / 2)
    # anet: it is a false positive, one TP of the one (deduplicated) instance.
    assert anet['per_class'][7][0] == pytest.approx(1 / 2)
    assert ap_of(evaluate.evaluate_anet, det.iloc[1:], gt, .5) == 1.0


def test_reversed_interval_and_mp4(tmp_path):
    gt = make_gt(tmp_path, [('BaseballPitch', 'v1', 0, 10), ('BasketballDunk', 'v1', 0, 10)])
    path = tmp_path / 'r.txt'
    path.write_text('v1.mp4\t10\t0\t7\t0.5\n')
    for fn in (evaluate.evaluate_kit, evaluate.evaluate_anet):
        assert fn(path, gt, [.5])['per_class'][7] == [1.0]


# ---------------------------------------------------------------------------
# bad input

@pytest.mark.parametrize('text, line, message', [
    ('v1 0 10 7 0.5\nv1 0 10 7\n', 2, 'expected 5 fields, got 4'),
    ('v1 0 10 7 0.5\n\nv1 0 10 7 0.5 1\n', 3, 'expected 5 fields, got 6'),
    ('v1 0 10 7 0.5\nv1 0 10 7 0.5 1 2\n', 2, 'expected 5 fields, got 7'),
    ('v1 0 10 7 0.5\nv1 0 10\n\nv1 0 10 7 0.5 1 2\n', 2, 'expected 5 fields, got 3'),
    ('v1 0 10 7 0.5\nv1 0 10 7 high\n', 2, "field 5 (score) is 'high'"),
    ('v1 0 x 7 0.5\n', 1, "field 3 (end) is 'x'"),
    ('v1 0 10 7.5 0.5\n', 1, 'expected an integer'),
    ('v1 0 10 7 0.5\nv1 0 10 7 nan\n', 2, 'expected a finite number'),
])
def test_bad_lines_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / 'bad.txt'
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        thumos14.read_results(path)
    assert f'{path}:{line}:' in str(err.value) and message in str(err.value)


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / 'r.txt'
    path.write_text('v1 0 10 7 0.5\n\n  \nv2\t1\t2\t9\t0.25\n')
    det = thumos14.read_results(path)
    assert det['video'].tolist() == ['v1', 'v2'] and det['class_id'].tolist() == [7, 9]


def test_unknown_class_ids_reported_once_and_ignored(tmp_path):
    gt = make_gt(tmp_path / 'gt', [('BaseballPitch', 'v1', 0, 10), ('BasketballDunk', 'v1', 0, 10)])
    clean = 'v1 0 10 7 0.5\nv1 20 30 7 0.9\n'
    (tmp_path / 'clean.txt').write_text(clean)
    (tmp_path / 'mixed.txt').write_text('v1 0 10 3 0.99\n' + clean + 'v1 0 10 9 0.1\nv1 0 10 101 0.7\n')
    with pytest.warns(evaluate.EvalWarning) as record:
        mixed = evaluate.evaluate(tmp_path / 'mixed.txt', gt, [.5], metrics=('kit', 'anet'))
    assert len([w for w in record if 'not THUMOS14 detection classes' in str(w.message)]) == 1
    assert '[3, 101]' in str(record[0].message)
    clean_res = evaluate.evaluate(tmp_path / 'clean.txt', gt, [.5], metrics=('kit', 'anet'))
    for m in ('kit', 'anet'):
        assert mixed[m]['num_unknown'] == 2
        assert mixed[m]['per_class'][7] == clean_res[m]['per_class'][7] == [0.5]


def test_empty_result_gives_zeros_and_warns(shared, tmp_path):
    path = tmp_path / 'empty.txt'
    path.write_text('')
    with pytest.warns(evaluate.EvalWarning, match='no detections'):
        res = evaluate.evaluate(path, shared / 'eval_annotation', metrics=('kit', 'anet'))
    for r in res.values():
        assert r['map'] == [0.0] * 7 and r['map_avg_0.3_0.7'] == 0.0
        assert all(aps == [0.0] * 7 for aps in r['per_class'].values())


def test_missing_ground_truth_file(tmp_path):
    gt = make_gt(tmp_path / 'gt', [('BaseballPitch', 'v1', 0, 10), ('BasketballDunk', 'v1', 0, 10)])
    (gt / 'BasketballDunk_test.txt').unlink()
    with pytest.raises(ValueError, match='BasketballDunk_test.txt'):
        evaluate.evaluate_kit(dets([('v1', 0, 10, 7, .5)]), gt, [.5])
    (gt / 'BasketballDunk_test.txt').write_text('')
    with pytest.raises(ValueError, match='result file not found'):
        evaluate.evaluate_kit(tmp_path / 'nope.txt', gt, [.5])


def test_format_table_and_json(shared, tmp_path):
    res = evaluate.evaluate(shared / 'eval_vectors' / 'c_ties.txt', shared / 'eval_annotation',
                            metrics=('kit', 'anet'))
    table = evaluate.format_table(res['kit'])
    lines = table.splitlines()
    assert any(line.startswith('BaseballPitch') and ' 7 ' in line for line in lines)
    assert len([line for line in lines if line.split()[0] in res['kit']['class_names']]) == 20
    assert f"{100 * res['kit']['map'][4]:.2f}" in [line for line in lines if line.startswith('mAP ')][0]
    assert '3358 instances' in table
    evaluate.write_json(res, tmp_path / 'both.json')
    obj = json.loads((tmp_path / 'both.json').read_text())
    assert set(obj) == {'kit', 'anet'}
    for m in ('kit', 'anet'):
        assert set(obj[m]) == {'metric', 'thresholds', 'per_class', 'map', 'map_avg_0.3_0.7'}
        assert obj[m]['metric'] == m and obj[m]['map'] == res[m]['map']
        assert obj[m]['per_class']['97'] == res[m]['per_class'][97]
        assert obj[m]['map_avg_0.3_0.7'] == res[m]['map_avg_0.3_0.7']
    # Without 0.3..0.7 there is no average.
    one = evaluate.evaluate_kit(shared / 'eval_vectors' / 'c_ties.txt', shared / 'eval_annotation', [0.5])
    assert one['map_avg_0.3_0.7'] is None and 'n/a' in evaluate.format_table(one)


def test_cli(shared, tmp_path):
    src = (shared / 'eval_vectors' / 'g_missing_classes.txt').read_text().splitlines()
    result = tmp_path / 'small.txt'
    result.write_text('\n'.join(src[:300]) + '\n')
    out = tmp_path / 'out' / 'eval.json'
    run = subprocess.run([sys.executable, 'evaluate.py', str(result), f'--eval_gt_dir={shared / "eval_annotation"}',
                          '--thresholds', '0.3', '0.5', '--json', str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    obj = json.loads(out.read_text())
    lib = evaluate.evaluate_kit(result, shared / 'eval_annotation', [0.3, 0.5])
    assert obj['metric'] == 'kit' and obj['thresholds'] == [0.3, 0.5]
    assert obj['per_class'] == {str(k): v for k, v in lib['per_class'].items()} and obj['map'] == lib['map']
    assert 'VolleyballSpiking' in run.stdout and '3358 instances' in run.stdout
    # An unwritable --json fails first, before the (missing) result file is looked at.
    blocker = tmp_path / 'file'
    blocker.write_text('')
    run = subprocess.run([sys.executable, 'evaluate.py', str(tmp_path / 'missing.txt'), '--gt', str(tmp_path),
                          '--json', str(blocker / 'x.json')], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and 'x.json' in run.stderr and 'missing.txt' not in run.stderr


def test_greedy_match_handles_many_groups():
    # Two groups (0 and 1); within group 0 the outer items 0 then 1 want inner 0.
    outer = np.array([0, 0, 1, 2])
    inner = np.array([0, 1, 0, 2])
    iou = np.array([0.9, 0.6, 0.95, 0.7])
    hit, used = evaluate.greedy_match(outer, inner, iou, np.array([0, 0, 1]), 3, [0.5, 0.65, 0.8], strict=True)
    # t=0.5: o0 takes i0, o1 finds i0 taken -> nothing left; o2 takes i2.
    assert hit.tolist() == [[True, False, True], [True, False, True], [True, False, False]]
    assert used.tolist() == [[True, False, True], [True, False, True], [True, False, False]]
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        hit, used = evaluate.greedy_match(outer[:0], inner[:0], iou[:0], np.zeros(3, int), 3, [0.5], True)
    assert not hit.any() and not used.any()


def test_anet_ties_follow_file_order(tmp_path):
    gt = make_gt(tmp_path, [('BaseballPitch', 'v2', 0, 10), ('BasketballDunk', 'v1', 0, 10)])
    # Equal scores: the false positive (video v1) comes second in the file, so it ranks second.
    det = dets([('v2', 0, 10, 7, .5), ('v1', 0, 10, 7, .5)])
    assert ap_of(evaluate.evaluate_anet, det, gt, .5) == 1.0
    # The kit breaks the tie by video name: v1 first, so precision 1/2 at the TP.
    assert ap_of(evaluate.evaluate_kit, det, gt, .5) == 0.5


def anet_reference(det, gt_rows, thr, cid):
    """Plain-loop ActivityNet-style AP of one class (the textbook procedure)."""
    gts = [(v, min(s, e), max(s, e)) for n, v, s, e in dict.fromkeys(gt_rows) if n == cid]
    d = det[det['class_id'] == cid].reset_index(drop=True)
    d = d.iloc[np.lexsort((np.arange(len(d)), -d['score'].to_numpy()))]
    locked, tp = set(), []
    for v, s, e in zip(d['video'], d['start'], d['end']):
        s, e = min(s, e), max(s, e)
        best, best_iou = None, -1.0
        for k, (gv, gs, ge) in enumerate(gts):
            inter = max(0.0, min(e, ge) - max(s, gs))
            iou = inter / ((e - s) + (ge - gs) - inter)
            if gv == v and k not in locked and iou > best_iou:
                best, best_iou = k, iou
        ok = best is not None and best_iou >= thr
        if ok:
            locked.add(best)
        tp.append(ok)
    tp = np.array(tp, bool)
    prec = np.cumsum(tp) / np.arange(1, len(tp) + 1)
    env = np.maximum.accumulate(prec[::-1])[::-1]
    return float(env[tp].sum() / len(gts))


def test_anet_matches_plain_loop(tmp_path):
    rng = np.random.default_rng(3)
    names = {7: 'BaseballPitch', 9: 'BasketballDunk'}
    gt_rows = []
    for _ in range(40):
        cid, v, s = int(rng.choice([7, 9])), f'v{rng.integers(4)}', float(rng.integers(0, 200))
        gt_rows.append((cid, v, s, s + float(rng.integers(2, 20))))
    gt_rows.append(gt_rows[0])  # a repeated instance
    gt = make_gt(tmp_path, [(names[c], v, s, e) for c, v, s, e in gt_rows])
    base = rng.integers(len(gt_rows), size=300)
    det = dets([(gt_rows[b][1], gt_rows[b][2] + rng.normal(0, 3), gt_rows[b][3] + rng.normal(0, 3),
                 gt_rows[b][0] if rng.random() < .8 else 16 - gt_rows[b][0], round(rng.random(), 1))
                for b in base])
    res = evaluate.evaluate_anet(det, gt, [0.3, 0.5, 0.7])
    for t, thr in enumerate([0.3, 0.5, 0.7]):
        for cid in (7, 9):
            assert res['per_class'][cid][t] == pytest.approx(anet_reference(det, gt_rows, thr, cid), abs=1e-12)


def test_cli_summary_prints_only_the_map_rows(shared, capsys):
    import evaluate
    evaluate.main([str(shared / 'eval_vectors' / 'c_ties.txt'), '--gt', str(shared / 'eval_annotation'),
                   '--summary'])
    out = capsys.readouterr().out
    assert 'mAP avg 0.3:0.1:0.7' in out and '\nmAP ' in out
    assert 'BaseballPitch' not in out


def test_metric_choices_come_from_the_table(shared, capsys, monkeypatch):
    path = str(shared / 'eval_vectors' / 'c_ties.txt')
    gt = ['--gt', str(shared / 'eval_annotation'), '--thresholds', '0.5']
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        every = evaluate.main([path, *gt, '--metric', 'all', '--summary'])
        assert list(every) == list(evaluate.EVALUATORS)
        assert evaluate.main([path, *gt, '--metric', 'both', '--summary']) == every
        # A metric added to the table is a choice, and part of `all`.
        monkeypatch.setitem(evaluate.EVALUATORS, 'kit2', evaluate.evaluate_kit)
        every = evaluate.main([path, *gt, '--metric', 'all', '--summary'])
    assert list(every) == ['kit', 'anet', 'kit2'] and every['kit2']['map'] == every['kit']['map']
    out = capsys.readouterr().out
    assert 'protocol all (every video of the ground truth): 213 videos, 3358 instances' in out
