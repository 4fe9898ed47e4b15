"""Plots of THUMOS14 detection results: per-class AP bars and precision-recall curves.

    python fig/plot_eval.py results/result_fuse_KnetV3_decouple_ssad.txt [more.txt ...] \
        --gt data/thumos14/eval_annotation --out fig/class_ap.png [--threshold 0.5] [--paper] [--pr-out fig/pr.png]

--paper adds the per-class AP@0.5 published in the authors' per-class figure (see PAPER_AP50).
"""
import os
import sys

if __package__ in (None, ''):  # run as a script: the repository's modules live one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import config  # noqa: E402
import evaluate  # noqa: E402
import fileio  # noqa: E402
import thumos14  # noqa: E402

# Per-class AP@0.5 (%) on THUMOS14 test, fused streams, as published in the authors'
# per-class figure (release fig/plot_class_ap.py), classes in detclasslist order
# (BaseballPitch ... VolleyballSpiking), then the mAP that figure shows. The figure's
# third row is the original SSAD paper (Lin et al. 2017, 24.6), not the main-stream
# SSAD of the Decouple-SSAD paper (31.2), whose per-class APs are not published. The
# KnetV3 per-class values average 43.2 while the figure (and the paper) say 43.7.
PAPER_AP50 = {
    'Decouple-SSAD KnetV3 (paper)': ([33.2, 28.3, 7.6, 48.1, 56.9, 14.0, 5.5, 58.8, 11.9, 42.1,
                                      75.2, 76.6, 83.8, 94.6, 84.0, 40.8, 15.1, 9.3, 71.4, 6.8], 43.7),
    'Decouple-SSAD UCF101 (paper)': ([22.4, 21.0, 6.0, 36.5, 55.3, 18.2, 2.6, 53.1, 9.8, 36.3,
                                      68.8, 52.0, 65.8, 78.2, 80.3, 31.1, 8.5, 4.9, 56.8, 8.6], 35.8),
    'SSAD, Lin et al. 2017 (paper)': ([29.3, 9.2, 4.7, 35.6, 46.1, 10.0, 1.9, 17.6, 6.6, 13.3,
                                       51.6, 21.6, 42.7, 71.3, 58.1, 21.8, 13.3, 8.8, 24.8, 3.9], 24.6),
}
PAPER_CLASS_IDS = thumos14.CLASS_IDS


def _threshold_index(res, threshold):
    idx = np.flatnonzero(np.isclose(res['thresholds'], threshold, atol=1e-9))
    if len(idx) == 0:
        raise ValueError(f'threshold {threshold} was not evaluated (have {res["thresholds"]})')
    return int(idx[0])


def _save(fig, path):
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', dpi=120)
    plt.close(fig)


def plot_class_ap(series, out_png, threshold=0.5, paper=False):
    """Grouped bars of per-class AP (%) and mAP at one threshold.

    series: list of (label, result dict from evaluate_kit / evaluate_anet).
    paper: also draw PAPER_AP50 (only at threshold 0.5, where it was published).
    """
    if paper and not np.isclose(threshold, 0.5):
        raise ValueError('the paper published per-class AP at tIoU 0.5 only')
    first = series[0][1]
    class_ids, names = first['class_ids'], first['class_names']
    bars = []
    for label, res in series:
        t = _threshold_index(res, threshold)
        bars.append((label, [100 * res['per_class'][c][t] for c in class_ids] + [100 * res['map'][t]]))
    if paper:
        for label, (values, map50) in PAPER_AP50.items():
            by_id = dict(zip(PAPER_CLASS_IDS, values))
            bars.append((label, [by_id.get(c, np.nan) for c in class_ids] + [map50]))
    n = len(bars)
    x = np.arange(len(class_ids) + 1)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(min(24, 8 + 0.1 * n * len(x)), 5.5))
    for k, (label, values) in enumerate(bars):
        ax.bar(x + (k - (n - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, [f'{nm} ({c})' for nm, c in zip(names, class_ids)] + ['mAP'], rotation=45, ha='right')
    ax.set_ylabel(f'AP@{threshold:g} (%)')
    ax.set_ylim(0, 118)  # room for the legend above the bars
    ax.set_yticks(np.arange(0, 101, 20))
    ax.set_xlim(-0.6, len(x) - 0.4)
    ax.grid(True, axis='y', alpha=0.4)
    ax.legend(fontsize=8, loc='upper left', ncol=2)
    ax.set_title(f'THUMOS14 test, per-class AP at tIoU {threshold:g} ({first["metric"]} metric)')
    fig.tight_layout()
    _save(fig, out_png)


def plot_pr_curves(results, out_png, threshold_index, title=''):
    """Per-class precision-recall curves, one panel per class, one line per result.

    results: {label: result dict computed with return_pr=True} (e.g. evaluate.evaluate's
    {metric: result}) or a single such dict.
    """
    if 'metric' in results:
        results = {results['metric']: results}
    first = next(iter(results.values()))
    class_ids, names = first['class_ids'], first['class_names']
    cols = 5
    rows = -(-len(class_ids) // cols)
    # Fixed spacing: tight_layout on 20 panels costs seconds.
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.6 * rows), squeeze=False,
                             gridspec_kw=dict(left=0.04, right=0.99, bottom=0.04, top=0.92, hspace=0.4, wspace=0.2))
    for ax in axes.flat[len(class_ids):]:
        ax.axis('off')
    for label, res in results.items():
        if 'pr' not in res:
            raise ValueError(f'{label}: no precision-recall curves (evaluate with return_pr=True)')
        curves = res['pr'][threshold_index]
        for ax, cid, name in zip(axes.flat, class_ids, names):
            rec, prec = curves[cid]
            ap = res['per_class'][cid][threshold_index]
            ax.plot(rec, prec, lw=1, label=f'{label} AP {100 * ap:.1f}')
            ax.set_title(f'{name} ({cid})', fontsize=9)
    for ax in axes.flat[:len(class_ids)]:
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc='upper right')
    thr = first['thresholds'][threshold_index]
    fig.suptitle(f'{title} precision-recall at tIoU {thr:g} (x: recall, y: precision)'.strip())
    _save(fig, out_png)


def main(argv=None):
    parser = argparse.ArgumentParser(description='per-class AP and precision-recall plots of THUMOS14 results')
    parser.add_argument('results', nargs='+', help='result files (video start_s end_s class_id score)')
    parser.add_argument('--gt', default=None, help='annotation folder (default: config eval_gt_dir)')
    parser.add_argument('--subset', default='test')
    parser.add_argument('--out', required=True, help='per-class AP bar chart (PNG)')
    parser.add_argument('--threshold', type=float, default=0.5)
    parser.add_argument('--metric', choices=list(evaluate.EVALUATORS), default='kit')
    parser.add_argument('--paper', action='store_true', help="add the paper's per-class AP@0.5")
    parser.add_argument('--pr-out', default=None, help='also write precision-recall curves (PNG)')
    try:
        cfg, args = config.parse_config(parser, argv)
        gt_dir = args.gt or cfg.eval_gt_dir
        for path in (args.out, args.pr_out):
            if path:
                fileio.check_writable(path)
        if args.paper and not np.isclose(args.threshold, 0.5):
            raise ValueError('--paper needs --threshold 0.5 (the paper published per-class AP at 0.5 only)')
        series = {}
        for path in args.results:
            label = os.path.splitext(os.path.basename(path))[0]
            while label in series:
                label += "'"
            series[label] = evaluate.evaluate(path, gt_dir, [args.threshold], args.subset, (args.metric,),
                                              return_pr=bool(args.pr_out))[args.metric]
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    plot_class_ap(list(series.items()), args.out, args.threshold, args.paper)
    print(f'wrote {args.out}')
    if args.pr_out:
        plot_pr_curves(series, args.pr_out, 0)
        print(f'wrote {args.pr_out}')


if __name__ == '__main__':
    main()
