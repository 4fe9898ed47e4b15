"""fig/diagnose.py: DETAD error types on a hand-made case whose every count is known, normalised AP
against a hand computation, the sensitivity bins, the HTML report and the command line."""
import base64
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import evaluate
import thumos14
from conftest import REPO
from fig import diagnose as D

# Ground truth: BaseballPitch (7) A, B, C, E; BasketballDunk (9) D, F. Ambiguous on v2 and v3.
GT = [('BaseballPitch', 'v1', 10, 20), ('BaseballPitch', 'v1', 40, 50), ('BaseballPitch', 'v2', 0, 10),
      ('BaseballPitch', 'v3', 0, 10), ('BasketballDunk', 'v1', 60, 70), ('BasketballDunk', 'v3', 0, 30)]
AMBIGUOUS = [('v2', 80, 90), ('v3', 20, 25)]
# (video, start, end, class id, score, type under the kit's Ambiguous policy; None = dropped)
DETECTIONS = [
    ('v1', 10, 20, 7, .90, D.TP),        # A
    ('v1', 11, 20, 7, .80, D.DOUBLE),    # tIoU .9 with A, which d0 took
    ('v1', 60, 69, 7, .70, D.WRONG),     # tIoU .9 with the dunk D
    ('v1', 40, 44, 7, .60, D.LOC),       # tIoU .4 with B
    ('v1', 62, 65, 7, .50, D.CONF),      # tIoU .3 with the dunk D
    ('v1', 100, 110, 7, .40, D.BG),
    ('v2', 81, 85, 7, .35, None),        # background on an Ambiguous interval: dropped by the kit policy
    ('v2', 0, 10, 7, .30, D.TP),         # C
    ('v1', 40, 47, 7, .20, D.TP),        # B (tIoU .7), still free although scored lower than d3
    ('v1', 10, 19, 9, .90, D.WRONG),     # tIoU .9 with A (another class)
    ('v1', 60, 70, 9, .80, D.TP),        # D
    ('v3', 0, 10, 9, .70, D.WRONG),      # tIoU 1 with E (other class) beats tIoU 1/3 with F (own class)
    ('v3', 0, 30, 9, .60, D.TP),         # F, on an Ambiguous interval but a true positive: kept
    ('v1', 61, 70, 9, .50, D.DOUBLE),    # tIoU .9 with D, which d10 took
    ('v1', 21, 22, 7, .10, D.BG),        # touches nothing
    ('v1', 45, 65, 7, .05, D.LOC),       # tIoU .2 with B (own class) and .2 with D: localization first
]


def write_gt(folder, gt=GT, ambiguous=AMBIGUOUS):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'detclasslist.txt').write_text('7 BaseballPitch\n9 BasketballDunk\n')
    for name in ('BaseballPitch', 'BasketballDunk'):
        (folder / f'{name}_test.txt').write_text(''.join(f'{v} {s} {e}\n' for n, v, s, e in gt if n == name))
    (folder / 'Ambiguous_test.txt').write_text(''.join(f'{v} {s} {e}\n' for v, s, e in ambiguous))
    return folder


def write_result(path, rows):
    path.write_text(''.join('%s\t%.3f\t%.3f\t%d\t%.4f\n' % tuple(r[:5]) for r in rows))
    return path


@pytest.fixture
def case(tmp_path):
    gt_dir = write_gt(tmp_path / 'gt')
    result = write_result(tmp_path / 'result_hand.txt', DETECTIONS)
    gt = evaluate.read_ground_truth(gt_dir)
    return gt_dir, result, gt, thumos14.read_results(result, gt['class_ids'])


def labels_in_file_order(A):
    out = np.empty(len(A['det']['label']), np.int64)
    out[A['det']['index']] = np.where(A['det']['dropped'], -1, A['det']['label'])
    return out


def test_every_detection_gets_its_type(case):
    _, _, gt, det = case
    A = D.label_detections(det, gt, 0.5, 'kit')
    expected = [-1 if t is None else t for *_, t in DETECTIONS]
    assert labels_in_file_order(A).tolist() == expected
    kept = A['det']['label'][~A['det']['dropped']]
    assert np.bincount(kept, minlength=6).tolist() == [5, 2, 3, 2, 1, 2]
    assert int(A['det']['dropped'].sum()) == 1
    # Without the Ambiguous rule the dropped detection is background.
    B = D.label_detections(det, gt, 0.5, 'ignore')
    assert labels_in_file_order(B).tolist() == [D.BG if t is None else t for *_, t in DETECTIONS]
    assert A['npos'].tolist() == [4, 2]


def test_top_kg_breakdown(case):
    _, _, gt, det = case
    counts, per_class = D.fp_breakdown(D.label_detections(det, gt, 0.5, 'kit'))
    assert counts.shape == (10, 6)
    # top-1G: class 7 (G = 4) d0 d1 d2 d3, class 9 (G = 2) d9 d10
    assert counts[0].tolist() == [2, 1, 2, 1, 0, 0]
    # top-2G: class 7's best 8 of its 10 kept detections, all 5 of class 9 but d13
    assert counts[1].tolist() == [5, 1, 3, 1, 1, 1]
    for k in range(2, 10):
        assert counts[k].tolist() == [5, 2, 3, 2, 1, 2]
    assert per_class.tolist() == [[3, 1, 1, 2, 1, 2], [2, 1, 2, 0, 0, 0]]


def test_removal_gains_by_hand(case):
    _, _, gt, det = case
    base, gains = D.removal_gains(D.label_detections(det, gt, 0.5, 'kit'))
    # class 7 ranks T F F F F F T T F F over 4 instances: precisions 1, 2/7, 3/8, envelope 1, 3/8, 3/8
    # class 9 ranks F T F T F over 2: precisions 1/2, 2/4
    assert base == pytest.approx(((1 + 3 / 8 + 3 / 8) / 4 + (1 / 2 + 1 / 2) / 2) / 2, abs=1e-12)
    # without wrong labels: class 7 T F F F T T F F -> (1 + 3/7 + 3/7) / 4; class 9 T T F -> 1
    assert gains['wrong label'] == pytest.approx(((1 + 6 / 7) / 4 + 1) / 2 - base, abs=1e-12)
    # without background (d5, d14): class 7 T F F F F T T F -> (1 + 3/7 + 3/7) / 4; class 9 unchanged
    assert gains['background'] == pytest.approx(((1 + 6 / 7) / 4 + 0.5) / 2 - base, abs=1e-12)
    assert gains['localization error'] > 0 and set(gains) == set(D.ERRORS)


def test_normalised_ap_by_hand(case):
    _, _, gt, det = case
    A = D.label_detections(det, gt, 0.5, 'kit')
    r, _ = D.ranking(A)
    cls, tp = A['det']['cls'][r], A['det']['label'][r] == D.TP
    N = 3.0   # 6 instances, 2 classes
    ap_n = D.class_ap(cls, tp, A['npos'], N)
    # class 7, G = 4: P_N = R*N / (R*N + FP) is 1 at d0 (TP 1, FP 0), 1.5/6.5 at d7 (TP 2, FP 5),
    # 2.25/7.25 at d8 (TP 3, FP 5); the envelope keeps 1, 9/29, 9/29.
    assert ap_n[0] == pytest.approx((1 + 2 * 9 / 29) / 4, abs=1e-12)
    # class 9, G = 2: 1.5/2.5 at d10 (TP 1, FP 1) and 3/5 at d12 (TP 2, FP 2)
    assert ap_n[1] == pytest.approx(0.6, abs=1e-12)
    sens = D.sensitivity(A, np.full(A['V'], 100.0))
    assert sens['all']['norm'] == N
    assert sens['all']['norm_map'] == pytest.approx(((1 + 18 / 29) / 4 + 0.6) / 2, abs=1e-12)
    # With N = G the normalised precision is the plain one.
    plain = D.class_ap(cls, tp, A['npos'])
    assert D.class_ap(cls[cls == 1], tp[cls == 1], [0, 2], 2.0)[1] == pytest.approx(plain[1], abs=1e-12)


def test_bins_and_false_negatives(case, tmp_path):
    _, _, gt, det = case
    info_csv = tmp_path / 'video_info.csv'
    info_csv.write_text('video,fps,frame_num,steps\nv1,25,2500,625\nv2,30,6000,1500\n')
    info = D.read_video_info(info_csv, thumos14.video_fps())
    assert info == {'v1': 100.0, 'v2': 200.0}
    diag = D.diagnose(det, gt, 0.5, 'kit', info)
    names = list(diag['labels']['videos'])
    # v3 is not in the file: its last end (instance F, 30 s) is its length.
    assert [diag['lengths'][names.index(v)] for v in ('v1', 'v2', 'v3')] == [100.0, 200.0, 30.0]
    assert diag['num_length_from_info'] == 2
    chars = D.instance_characteristics(diag['labels'], diag['lengths'])
    # instances in file order: A B C E (class 7), D F (class 9)
    assert chars['length'].tolist() == [10, 10, 10, 10, 10, 30]
    assert chars['coverage'].tolist() == pytest.approx([.1, .1, .05, 1 / 3, .1, 1.0])
    assert chars['instances'].tolist() == [2, 2, 1, 1, 1, 1]
    sens = diag['sensitivity']
    assert sens['length']['instances'].tolist() == [0, 0, 5, 0, 1]
    assert sens['coverage']['instances'].tolist() == [0, 0, 1, 0, 5]
    assert sens['instances']['instances'].tolist() == [4, 2, 0, 0]
    # E (class 7 in v3) is the only instance no top-10G detection finds.
    assert sens['all']['fn_rate'] == pytest.approx(1 / 6)
    assert sens['length']['fn_rate'][[2, 4]].tolist() == pytest.approx([1 / 5, 0.0])
    assert sens['instances']['fn_rate'][:2].tolist() == pytest.approx([1 / 4, 0.0])
    assert np.isnan(sens['instances']['norm_map'][2]) and np.isnan(sens['length']['fn_rate'][0])
    # Bin S of instances per video holds A and B (class 7): d7's true positive (C) is ignored, the
    # false positives stay: P_N is 1 at d0 and 3/8 at d8 (TP 2, FP 5, R*N = 3) -> (1 + 3/8) / 2.
    assert sens['instances']['norm_map'][1] == pytest.approx((1 + 3 / 8) / 2, abs=1e-12)
    worst = diag['worst']
    assert worst['video'].tolist()[0] == 'v1'
    assert worst.iloc[0][list(D.ERRORS)].tolist() == [2, 2, 2, 1, 2]


def test_bin_edges():
    assert D.bin_of(np.array([0.5, 3, 3.001, 6, 12, 18, 18.5]), 'length').tolist() == [0, 0, 1, 1, 2, 3, 4]
    assert D.bin_of(np.array([.02, .021, .08, .5, 2.0]), 'coverage').tolist() == [0, 1, 3, 4, 4]
    assert D.bin_of(np.array([1, 2, 4, 5, 8, 9, 40]), 'instances').tolist() == [0, 1, 1, 2, 2, 3, 3]


def test_baseline_equals_activitynet_metric(tmp_path):
    """With Ambiguous intervals ignored, the matching and AP are the ActivityNet-style metric's."""
    rng = np.random.default_rng(5)
    gt_rows = []
    for k in range(14):
        s = float(rng.uniform(0, 80))
        gt_rows.append((['BaseballPitch', 'BasketballDunk'][k % 2], f'v{k % 3}', round(s, 1),
                        round(s + rng.uniform(1, 15), 1)))
    gt_dir = write_gt(tmp_path / 'gt', gt_rows, [('v1', 5, 9)])
    rows = []
    for _ in range(150):
        n, v, s, e = gt_rows[rng.integers(len(gt_rows))]
        j = rng.normal(0, 2, 2)
        rows.append((v, max(0, s + j[0]), e + j[1], int(rng.choice([7, 9])), float(rng.random())))
    result = write_result(tmp_path / 'r.txt', rows)
    gt = evaluate.read_ground_truth(gt_dir)
    det = thumos14.read_results(result, gt['class_ids'])
    for tiou in (0.3, 0.5, 0.7):
        base, _ = D.removal_gains(D.label_detections(det, gt, tiou, 'ignore'))
        assert base == pytest.approx(evaluate.evaluate_anet(det, gt_dir, [tiou])['map'][0], abs=1e-12)
        labels = D.label_detections(det, gt, tiou, 'kit')['det']['label']
        assert np.bincount(labels, minlength=6)[D.TP] == \
            np.bincount(D.label_detections(det, gt, tiou, 'ignore')['det']['label'], minlength=6)[D.TP]


def test_bad_inputs(case, tmp_path):
    _, _, gt, det = case
    with pytest.raises(ValueError, match='tiou'):
        D.label_detections(det, gt, 1.5)
    with pytest.raises(ValueError, match='ambiguous'):
        D.label_detections(det, gt, 0.5, 'drop')
    bad = tmp_path / 'info.csv'
    bad.write_text('video,fps\nv1,30\n')
    with pytest.raises(ValueError, match=r'info\.csv.*frame_num'):
        D.read_video_info(bad, thumos14.video_fps())
    bad.write_text('video,type,frame_num\nv1,x,300\nv2,x,zero\n')
    with pytest.raises(ValueError, match=r'info\.csv:3: field frame_num of video v2'):
        D.read_video_info(bad, thumos14.video_fps())
    with pytest.raises(ValueError, match='not found'):
        D.read_video_info(tmp_path / 'none.csv', thumos14.video_fps())


def test_annotation_csv_takes_fps_from_the_table(tmp_path):
    anno = tmp_path / 'anno.csv'
    anno.write_text('video,type,type_idx,startFrame,endFrame,frame_num\nv1,A,7,0,10,3000\nv1,A,7,20,30,3000\n'
                    'video_test_0000950,A,7,0,5,2500\n')
    assert D.read_video_info(anno, thumos14.video_fps()) == {'v1': 100.0, 'video_test_0000950': 100.0}


def check_report(path):
    page = path.read_text(encoding='utf-8')
    for section in ('setup', 'ap', 'false-positives', 'sensitivity', 'timelines', 'definitions'):
        assert f'id="{section}"' in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and all(s.startswith('data:image/png;base64,') for s in sources)
    for s in sources:
        assert base64.b64decode(s.split(',', 1)[1])[:8] == b'\x89PNG\r\n\x1a\n'
    assert all(h.startswith('#') for h in re.findall(r'href="([^"]*)"', page))
    assert not re.search(r'<(script|link|iframe)', page)
    assert 'Diagnosing Error in Temporal Action Detectors' in page
    return page


def test_html_report(case, tmp_path):
    gt_dir, result, _, _ = case
    out = tmp_path / 'out' / 'report.html'
    diag = D.write_report(result, gt_dir, out, 0.5)
    page = check_report(out)
    # the pooled top-10G row and the kit / ActivityNet-style tables
    assert '<td>10G</td><td>15</td><td>5 (33.3%)</td>' in page
    assert 'official THUMOS14 kit metric' in page and 'ActivityNet-style' in page
    assert 'no video info file given' in page and '1 detections dropped' in page
    assert diag['evals']['kit']['map'][4] == pytest.approx(
        evaluate.evaluate_kit(result, gt_dir, [0.5])['map'][0])


def test_cli(case, tmp_path):
    gt_dir, result, _, _ = case
    info = tmp_path / 'video_info.csv'
    info.write_text('video,fps,frame_num\nv1,25,2500\nv2,30,6000\nv3,30,900\n')
    run = subprocess.run([sys.executable, 'fig/diagnose.py', str(result), '--gt', str(gt_dir), '--out',
                          str(tmp_path / 'reports'), '--video_info', str(info), '--tiou', '0.5'],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = tmp_path / 'reports' / 'result_hand_diagnosis.html'
    assert f'wrote {out}' in run.stdout
    page = check_report(out)
    assert 'for 3 of the 3 annotated videos' in page
    run = subprocess.run([sys.executable, 'fig/diagnose.py', str(tmp_path / 'missing.txt'), '--gt', str(gt_dir),
                          '--out', str(tmp_path / 'reports')], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode != 0 and run.stderr.startswith('error: ') and 'missing.txt' in run.stderr


def test_tiou_equal_to_the_threshold_matches(tmp_path):
    """DETAD's true positive needs tIoU >= a (the kit's > a would miss these)."""
    gt_dir = write_gt(tmp_path / 'gt', [('BaseballPitch', 'v1', 0, 10), ('BasketballDunk', 'v1', 20, 30)], [])
    det = pd.DataFrame([('v1', 0, 5, 7, .9), ('v1', 5, 10, 7, .8), ('v1', 20, 25, 7, .7), ('v1', 9, 10, 7, .6)],
                       columns=thumos14.RESULT_COLUMNS)
    A = D.label_detections(det, evaluate.read_ground_truth(gt_dir), 0.5)
    # tIoU .5 -> true positive; .5 with the taken instance -> double; .5 with the dunk -> wrong label;
    # tIoU exactly .1 with its own instance -> localization error
    assert labels_in_file_order(A).tolist() == [D.TP, D.DOUBLE, D.WRONG, D.LOC]
