"""Timing of evaluate.py on a large synthetic result file.

    python bench/bench_eval.py [--gt DIR] [--lines 200000] [--seed 0] [--out FILE]

Writes a seeded result file (jittered copies of ground-truth instances, some with
the wrong class, and random detections on the ground-truth videos), then prints
the time to read it and to evaluate it at 7 thresholds with each metric.
"""
import os
import sys

if __package__ in (None, ''):  # run as a script: the repository's modules live one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import config  # noqa: E402
import evaluate  # noqa: E402
import thumos14  # noqa: E402


def make_result_file(path, gt, num_lines, seed):
    """Write `num_lines` detections for the ground truth `gt` (evaluate.read_ground_truth)."""
    rng = np.random.default_rng(seed)
    g = gt['gt']
    class_ids = gt['class_ids']
    videos = np.unique(np.concatenate([g['video'].to_numpy(), gt['ambiguous']['video'].to_numpy()]).astype(str))
    n_copy = num_lines // 4
    pick = rng.integers(0, len(g), n_copy)
    length = (g['end'].to_numpy() - g['start'].to_numpy())[pick]
    start = g['start'].to_numpy()[pick] + rng.normal(0, 0.2, n_copy) * length
    end = g['end'].to_numpy()[pick] + rng.normal(0, 0.2, n_copy) * length
    cls = class_ids[g['cls'].to_numpy()[pick]]
    wrong = rng.random(n_copy) < 0.2
    cls[wrong] = rng.choice(class_ids, wrong.sum())
    n_rand = num_lines - n_copy
    r_start = rng.uniform(0, 1500, n_rand)
    det = pd.DataFrame({
        'video': np.concatenate([g['video'].to_numpy()[pick].astype(str), rng.choice(videos, n_rand)]),
        'start': np.concatenate([start, r_start]),
        'end': np.concatenate([end, r_start + rng.exponential(6, n_rand)]),
        'class_id': np.concatenate([cls, rng.choice(class_ids, n_rand)]),
        'score': np.round(rng.random(num_lines), 4),
    }).sample(frac=1, random_state=seed)
    det.to_csv(path, sep='\t', header=False, index=False, float_format='%.2f')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--gt', default='../shared/thumos14/eval_annotation')
    parser.add_argument('--lines', type=int, default=200000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default=None, help='keep the result file here (default: a temporary file)')
    try:
        cfg, args = config.parse_config(parser)
        gt = evaluate.read_ground_truth(args.gt)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    with tempfile.TemporaryDirectory() as tmp:
        path = args.out or os.path.join(tmp, 'bench_result.txt')
        make_result_file(path, gt, args.lines, args.seed)
        print(f'{args.lines} detections, {len(gt["gt"])} instances, thresholds {evaluate.DEFAULT_THRESHOLDS}')
        t0 = time.perf_counter()
        det = thumos14.read_results(path, gt['class_ids'])
        t1 = time.perf_counter()
        print(f'read the result file: {t1 - t0:6.2f} s')
        for metric, fn in evaluate.EVALUATORS.items():
            t0 = time.perf_counter()
            res = fn(det, args.gt, evaluate.DEFAULT_THRESHOLDS)
            t1 = time.perf_counter()
            print(f'{metric:>4}: {t1 - t0:6.2f} s for 7 thresholds (mAP@0.5 {100 * res["map"][4]:.2f})')
        t0 = time.perf_counter()
        evaluate.evaluate(path, args.gt, evaluate.DEFAULT_THRESHOLDS, metrics=('kit', 'anet'))
        print(f'read + both metrics: {time.perf_counter() - t0:6.2f} s')


if __name__ == '__main__':
    main()
