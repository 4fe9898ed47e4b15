"""Two-stream fusion (method.md §11): the temporal and spatial streams' predictions into one
result file. fuse_predictions averages two predictions tables, fuse_files two
predictions CSVs into a result file (detect.py and the script below use them); the
post-processing that follows is postprocess.py's.

    python fuse.py --pretrain UCF101 --method decouple_ssad [--key=value ...]
    python fuse.py --temporal CSV --spatial CSV --out TXT [--key=value ...]

The first form reads results/predict_temporal_<pretrain>_<method>.csv and
results/predict_spatial_<pretrain>_<method>.csv and writes
results/result_fuse_<pretrain>_<method>.txt (with its class list beside it for classes other
than THUMOS14's) and the ActivityNet-style results JSON result_fuse_<pretrain>_<method>.json.
Both files must hold predictions of the same classes (the class list beside each, else
THUMOS14's), of the same windows in the same order, and the anchors of each window in the same order
(checked with their `anchor` column when both have one; without it a warning says the
order cannot be verified); otherwise the first row that differs is named.
conf, xmin, xmax and every score_k become w * temporal + (1 - w) * spatial
(w = fuse_temporal_weight, 2/3); rows with fused score_0 >= filter_neg_threshold_fuse
are dropped, then the post-processing of test.py applies (its filters included, as released).
"""
import argparse
import dataclasses
import os
import warnings
from fractions import Fraction

import numpy as np
import pandas as pd

import classes
import config
import postprocess
import thumos14
from fileio import check_writable
from predictions import ANCHOR_COLUMN, num_scores, read_predictions_and_classes, score_columns, window_runs


# ----------------------------------------------------------------------------- method.md §11

def weighted_average(t, s, w):
    """w * t + (1 - w) * s, rounded as the release rounds t * 2 / 3 + s * 1 / 3 when w is a simple fraction."""
    frac = Fraction(w).limit_denominator(1000)
    if abs(float(frac) - w) < 1e-12:
        p, q = frac.numerator, frac.denominator
        return t * p / q + s * (q - p) / q
    return w * t + (1.0 - w) * s


def fuse_predictions(temporal, spatial, cfg, names=('temporal', 'spatial')):
    """method.md §11: weighted average of two aligned predictions tables (DataFrames).

    Rows must describe the same windows in the same order, and the same anchors of each
    window in the same order; otherwise ValueError naming the first row (and file line)
    that differs. The anchor order is checked with the `anchor` column when both tables
    have one; without it only the number of rows of each window can be checked, and a
    warning says so. Both must have the same score columns. Returns the fused DataFrame,
    unfiltered: post_process(..., fused=True) applies the fused filter.
    """
    widths = [num_scores(df.columns) for df in (temporal, spatial)]
    if widths[0] != widths[1]:
        raise ValueError(f'{names[0]} has {widths[0]} score columns, {names[1]} has {widths[1]}: '
                         f'they are not predictions of the same classes')
    if len(temporal) != len(spatial):
        raise ValueError(f'{names[0]} has {len(temporal)} prediction rows, {names[1]} has {len(spatial)}: '
                         f'they are not predictions of the same windows')
    tv = np.asarray(temporal['video_name'], dtype=object)
    sv = np.asarray(spatial['video_name'], dtype=object)
    ts = np.asarray(temporal['start'], dtype=np.int64)
    ss = np.asarray(spatial['start'], dtype=np.int64)
    differ = (tv != sv) | (ts != ss)
    if differ.any():
        i = int(np.flatnonzero(differ)[0])
        raise ValueError(f'predictions do not align at row {i} (line {i + 2}): {names[0]} has '
                         f'{tv[i]} start {ts[i]}, {names[1]} has {sv[i]} start {ss[i]}; '
                         f'both streams must be predicted over the same window list')
    cols = ['conf', 'xmin', 'xmax'] + score_columns(widths[0])
    t_values = temporal[cols].to_numpy(np.float64)
    s_values = spatial[cols].to_numpy(np.float64)
    for name, values in zip(names, (t_values, s_values)):
        bad = ~np.isfinite(values)
        if bad.any():
            i, j = (int(k[0]) for k in np.nonzero(bad))
            raise ValueError(f'{name}:{i + 2}: {cols[j]}: {values[i, j]} is not a finite number (row {i}); '
                             f'the fused row would be {values[i, j]} too: fix or regenerate that stream')
    has_anchor = [ANCHOR_COLUMN in df.columns for df in (temporal, spatial)]
    fused = pd.DataFrame({'video_name': tv, 'start': ts})
    if all(has_anchor):
        ta = np.asarray(temporal[ANCHOR_COLUMN], np.int64)
        sa = np.asarray(spatial[ANCHOR_COLUMN], np.int64)
        differ = ta != sa
        if differ.any():
            i = int(np.flatnonzero(differ)[0])
            raise ValueError(f'{names[1]}:{i + 2}: anchor: {sa[i]}, but {names[0]}:{i + 2} has anchor {ta[i]} '
                             f'(row {i}, window {tv[i]} start {ts[i]}; {int(differ.sum())} rows differ): the anchors '
                             f'of a window are not in the same order in both streams; write both predictions files '
                             f'with test.py, unsorted and unfiltered')
        fused[ANCHOR_COLUMN] = ta
    else:
        _check_window_sizes(tv, ts, names)
        lacking = ' and '.join(n for n, h in zip(names, has_anchor) if not h)
        thumos14.warn(f'{lacking}: no anchor column: cannot verify that both streams list the anchors of each '
                      f'window in the same order (only their windows and row counts were checked); '
                      f'write the predictions with a test.py that adds it', stacklevel=3)
    mixed = weighted_average(t_values, s_values, cfg.fuse_temporal_weight)
    out = pd.concat([fused[['video_name', 'start']], pd.DataFrame(mixed, columns=cols)], axis=1)
    if ANCHOR_COLUMN in fused.columns:
        out[ANCHOR_COLUMN] = fused[ANCHOR_COLUMN].to_numpy()
    return out


def _check_window_sizes(video, start, names):
    """Without anchor ids, every window must hold the same number A of rows (test.py writes
    one row per anchor); a window listed k times in a row holds k * A. Otherwise rows were
    dropped or added, and rows cannot be paired anchor by anchor."""
    runs = window_runs(video, start)
    if len(runs) < 2:
        return
    size = np.diff(runs)
    values, counts = np.unique(size, return_counts=True)
    a = int(values[np.argmax(counts)])   # the most common count: one row per anchor
    bad = size % a != 0
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        i = int(runs[k])
        raise ValueError(f'{names[0]}:{i + 2}: video_name, start: window ({video[i]}, {start[i]}) has {size[k]} rows, '
                         f'where most windows have {a} ({int(bad.sum())} windows differ, the same in both streams): '
                         f'rows were dropped or added, so the anchors cannot be paired; '
                         f'fuse unfiltered predictions files as test.py writes them')


def fuse_files(temporal_path, spatial_path, out_path, cfg, fps_of, json_path=None):
    """method.md §11 from two predictions CSVs of the same classes into a result file (its class
    list beside it, and the results JSON when json_path is given); returns the detections."""
    temporal, temporal_classes = read_predictions_and_classes(temporal_path)
    spatial, spatial_classes = read_predictions_and_classes(spatial_path)
    classes.check_same(temporal_classes, spatial_classes, temporal_path, spatial_path)
    fused = fuse_predictions(temporal, spatial, cfg, names=(temporal_path, spatial_path))
    det = postprocess.detections(fused, cfg, fps_of, fused=True, class_list=temporal_classes)
    postprocess.write_result_files(out_path, det, temporal_classes, json_path)
    return postprocess.detections_frame(det)


# ----------------------------------------------------------------------------- the script

def stream_predict_path(cfg, mode):
    return config.get_predict_result_path(dataclasses.replace(cfg, mode=mode))


def fuse(cfg, temporal=None, spatial=None, out=None):
    """Fuse two predictions CSVs (default: the run's) into a result file -> (its path, the detections)."""
    temporal = temporal or stream_predict_path(cfg, 'temporal')
    spatial = spatial or stream_predict_path(cfg, 'spatial')
    out = out or config.get_fuse_result_path(cfg)
    for path, mode in ((temporal, 'temporal'), (spatial, 'spatial')):
        if not os.path.isfile(path):
            raise ValueError(f'{mode}-stream predictions {path} not found; run python test.py --mode {mode} '
                             f'--pretrain {cfg.pretrain} --method {cfg.method} first, or give --{mode} CSV')
    if os.path.abspath(temporal) == os.path.abspath(spatial):
        raise ValueError(f'--temporal and --spatial are the same file {temporal}')
    json_path = config.get_results_json_path(out)
    check_writable(out)
    check_writable(json_path)
    fps_of = thumos14.video_fps(cfg.fps_file)
    return out, fuse_files(temporal, spatial, out, cfg, fps_of, json_path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--pretrain', default=None, help='feature set name, e.g. UCF101 | KnetV3')
    parser.add_argument('--method', default=None, help=' | '.join(config.METHODS))
    parser.add_argument('--temporal', default=None, help='temporal-stream predictions CSV')
    parser.add_argument('--spatial', default=None, help='spatial-stream predictions CSV')
    parser.add_argument('--out', default=None, help='result file (default results/result_fuse_<pretrain>_<method>.txt)')
    warnings.formatwarning = thumos14.format_warning
    try:
        cfg, args = config.parse_config(parser, argv)
        out, det = fuse(cfg, args.temporal, args.spatial, args.out)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    print(f'wrote {out} ({len(det):,} detections, temporal weight {cfg.fuse_temporal_weight:.4g})')


if __name__ == '__main__':
    main()
