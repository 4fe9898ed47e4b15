"""Post-processing (method.md §10) and two-stream fusion (method.md §11), vectorised.

From a predictions table (one row per anchor per window) to THUMOS14 detections:

1. keep rows with score_0 < 0.98 and conf > 0.1;
2. s_k = score_k * sigmoid(conf); three candidates per row, found as the release
   finds them: take the first argmax, set it to 0, take the first argmax again
   (so in a row whose other scores are all 0 the next candidate is the lowest
   class whose score is then 0, with score 0);
3. every CliffDiving (22) candidate repeated as Diving (26);
4. greedy NMS per (video, class) with the release's unclamped IoU, where 0/0
   (identical zero-length boxes) counts as overlapping;
5. frames / fps -> seconds.

The whole table is processed at once. NMS finds the pairs of candidates that would
suppress each other with a sweep over the boxes sorted by start (1-D intervals: a box
can only conflict with the next few starts), for all (video, class) groups together,
then decides them in a few vectorised rounds.
Ties in score are broken as the release's `argsort()[::-1]` breaks them for small
groups: the later candidate in the release's concatenation order goes first.
"""
from fractions import Fraction

import numpy as np
import pandas as pd

import thumos14
from predictions import ANCHOR_COLUMN, SCORE_COLUMNS, prediction_arrays, read_predictions, window_runs
from thumos14 import CLASS_REAL, CLIFF_DIVING, DIVING

CANDIDATES_PER_ROW = 3


# ----------------------------------------------------------------------------- fps

def _fps_array(videos, fps_of):
    """fps of each name in `videos` (a short array of unique names); fps_of maps video -> fps
    (a mapping, or a function of the name)."""
    fps = np.empty(len(videos), np.float64)
    for i, video in enumerate(videos):
        try:
            fps[i] = float(fps_of(video) if callable(fps_of) else fps_of[video])
        except KeyError:
            raise ValueError(f'video {video}: no frame rate given') from None
    bad = ~(fps > 0) | ~np.isfinite(fps)
    if bad.any():
        raise ValueError(f'video {videos[np.flatnonzero(bad)[0]]}: fps {fps[bad][0]} is not a positive number')
    return fps


# ----------------------------------------------------------------------------- method.md §10

def top3_candidates(scores, conf):
    """The release's three candidates per row.

    scores [N, K] (softmax, column 0 background), conf [N] raw.
    Returns (cls [N, 3] model class index 1..20, score [N, 3]) in float64 like the release.
    """
    s = scores[:, 1:] * (1.0 / (1.0 + np.exp(-conf)))[:, None]
    rows = np.arange(len(s))
    cls = np.empty((len(s), CANDIDATES_PER_ROW), np.int64)
    val = np.empty((len(s), CANDIDATES_PER_ROW), np.float64)
    for k in range(CANDIDATES_PER_ROW):
        # np.argmax returns the first maximum, as list.index(max(list)) does; zeroing
        # the taken maximum (rather than masking it) is the release's behaviour.
        cls[:, k] = np.argmax(s, axis=1)
        val[:, k] = s[rows, cls[:, k]]
        s[rows, cls[:, k]] = 0.0
    return cls + 1, val


def _nms_rounds(group, start, end, threshold):
    """Greedy NMS in rounds: each round keeps the first undecided candidate of every group
    and drops the candidates of its group that overlap it. Exact for any input; as many
    rounds as the largest number of detections kept in one group."""
    n = len(group)
    keep = np.zeros(n, bool)
    idx = np.arange(n)
    g, s, e = group, start, end
    d = e - s
    while idx.size:
        head = np.ones(idx.size, bool)
        head[1:] = g[1:] != g[:-1]
        heads = np.flatnonzero(head)
        h = heads[np.cumsum(head) - 1]  # position of each candidate's group head
        inter = np.minimum(e[h], e) - np.maximum(s[h], s)
        iou = inter / (d[h] + d - inter)
        alive = iou <= threshold
        alive[heads] = False
        keep[idx[heads]] = True
        idx, g, s, e, d = idx[alive], g[alive], s[alive], e[alive], d[alive]
    return keep


def _conflict_pairs(group, start, end, threshold):
    """Every pair (a, b), a < b, of candidates of one group with IoU > threshold or NaN, by a sweep.

    Sorted by (group, start), a box p can only be suppressed by, or suppress, a later box q
    if q starts before s_p + (1 - t) * len_p: inter <= e_p - s_q and union >= len_p, so
    IoU > t needs e_p - s_q > t * len_p (and 0/0 needs s_q = s_p). Round k compares every
    box with the k-th next one at once; a box leaves the sweep at the first q out of its
    reach (starts only grow), so the loop runs over offsets, never over boxes, and each
    round's work is the pairs still in reach. Needs end >= start, finite, threshold >= 0.
    """
    n = len(group)
    o = np.lexsort((start, group)).astype(np.int32 if n < 2 ** 31 else np.int64)
    g, s, e = group[o], start[o], end[o]
    d = e - s
    # The bound in floating point: a margin far above the rounding of e - s and of the IoU.
    reach = s + max(1.0 - threshold, 0.0) * d + 1e-9 * (np.abs(s) + d + 1.0)
    # One past the last position of each box's group: the sweep never crosses a group.
    bounds = np.append(np.flatnonzero(g[1:] != g[:-1]) + 1, n)
    stop = np.repeat(bounds, np.diff(bounds, prepend=0)).astype(o.dtype)
    p = np.arange(n, dtype=o.dtype)
    out_a, out_b = [], []
    k = 1
    while p.size:
        q = p + k
        q[q >= n] = n - 1   # out of range only where the group check below fails anyway
        near = (p + k < stop[p]) & (s[q] <= reach[p])
        p, q = p[near], q[near]
        inter = np.minimum(e[p], e[q]) - s[q]
        hit = ~(inter / (d[p] + d[q] - inter) <= threshold)
        out_a.append(o[p[hit]])
        out_b.append(o[q[hit]])
        k += 1
    a = np.concatenate(out_a) if out_a else np.zeros(0, o.dtype)
    b = np.concatenate(out_b) if out_b else np.zeros(0, o.dtype)
    return np.minimum(a, b), np.maximum(a, b)


def _nms_graph(group, start, end, threshold):
    """Greedy NMS on the conflict pairs: an edge from each candidate to every lower-priority
    one it would suppress; a candidate is kept once every parent is decided and none is kept.
    Needs threshold >= 0 and end >= start, so that boxes that do not touch never suppress
    each other. As many rounds as the longest chain of suppressions (a handful)."""
    n = len(group)
    src, dst = _conflict_pairs(group, start, end, threshold)
    state = np.zeros(n, np.int8)  # 0 undecided, 1 kept, 2 suppressed
    while True:
        undecided = state == 0
        if not undecided.any():
            return state == 1
        parent = state[src]
        blocked = np.zeros(n, bool)
        killed = np.zeros(n, bool)
        blocked[dst[parent == 0]] = True
        killed[dst[parent == 1]] = True
        state[undecided & killed] = 2
        state[undecided & ~killed & ~blocked] = 1
        live = (state[dst] == 0) & (state[src] != 2)
        src, dst = src[live], dst[live]


def greedy_nms(group, start, end, threshold):
    """Greedy NMS of candidates already sorted by (group, priority); returns a keep mask.

    Equals the release's sequential NMS run on each group: keep the first, drop every
    later one with IoU > threshold, repeat; IoU = inter / (len_a + len_b - inter) with
    inter = min(end) - max(start) unclamped, and NaN (0/0) counting as overlap.
    Groups holding a reversed or non-finite box (where the unclamped IoU can suppress boxes
    that do not touch) go through the exact round-by-round version.
    """
    group = np.asarray(group)
    start = np.asarray(start, np.float64)
    end = np.asarray(end, np.float64)
    keep = np.zeros(len(group), bool)
    if not len(group):
        return keep
    odd = ~(end >= start) | ~np.isfinite(start) | ~np.isfinite(end)
    slow = np.isin(group, group[odd]) if threshold >= 0 else np.ones(len(group), bool)
    with np.errstate(divide='ignore', invalid='ignore'):
        if slow.any():
            keep[slow] = _nms_rounds(group[slow], start[slow], end[slow], threshold)
        fast = ~slow
        if fast.any():
            keep[fast] = _nms_graph(group[fast], start[fast], end[fast], threshold)
    return keep


def post_process(pred, cfg, fps_of, fused=False):
    """method.md §10 on a predictions table (DataFrame or column arrays); method.md §11's extra filter when `fused`.

    fps_of: video -> fps, e.g. thumos14.video_fps(cfg.fps_file), a dict or a function.
    Returns a DataFrame of detections with columns video, start, end (seconds),
    class_id (THUMOS14 id), score; order carries no meaning.
    """
    a = prediction_arrays(pred)
    mask = np.ones(len(a['conf']), bool)
    if fused:
        mask &= a['scores'][:, 0] < cfg.filter_neg_threshold_fuse
    # The release applies the single-stream filters to fused rows as well.
    mask &= (a['scores'][:, 0] < cfg.filter_neg_threshold) & (a['conf'] > cfg.filter_conf_threshold)
    rows = np.flatnonzero(mask)
    n = len(rows)

    video_code, videos = pd.factorize(a['video_name'][rows])
    cls, score = top3_candidates(a['scores'][rows], a['conf'][rows])
    class_id = np.asarray(CLASS_REAL, np.int64)[cls]

    # Candidates in the release's order within a video: all first choices (row order),
    # then all second, then all third, then the Diving copies of CliffDiving candidates.
    row = np.tile(np.arange(n), CANDIDATES_PER_ROW)
    cand_class = class_id.T.reshape(-1)
    cand_score = score.T.reshape(-1)
    cliff = np.flatnonzero(cand_class == CLIFF_DIVING)
    row = np.concatenate([row, row[cliff]])
    cand_class = np.concatenate([cand_class, np.full(len(cliff), DIVING)])
    cand_score = np.concatenate([cand_score, cand_score[cliff]])

    # NMS priority: (video, class) group, then score descending, then later candidate first.
    # The candidates are in that release order already, so a stable sort of the reversed
    # array by (group, -score) gives it.
    cand_video = video_code[row]
    group = cand_video * (max(CLASS_REAL) + 1) + cand_class
    rev = np.arange(len(group))[::-1]
    order = rev[np.lexsort((-cand_score[rev], group[rev]))]
    group = group[order]
    start = a['xmin'][rows][row[order]]
    end = a['xmax'][rows][row[order]]
    keep = greedy_nms(group, start, end, cfg.nms_threshold)

    kept = order[keep]
    fps = _fps_array(np.asarray(videos, dtype=object), fps_of)
    kv = cand_video[kept]
    return pd.DataFrame({'video': np.asarray(videos, dtype=object)[kv],
                         'start': a['xmin'][rows][row[kept]] / fps[kv],
                         'end': a['xmax'][rows][row[kept]] / fps[kv],
                         'class_id': cand_class[kept],
                         'score': cand_score[kept]})


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
    warning says so. Returns the fused DataFrame, unfiltered: post_process(..., fused=True)
    applies the fused filter.
    """
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
    cols = ['conf', 'xmin', 'xmax'] + SCORE_COLUMNS
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


# ----------------------------------------------------------------------------- files

def process_file(pred_path, out_path, cfg, fps_of):
    """Re-post-process an existing predictions CSV into a result file; returns the detections."""
    det = post_process(read_predictions(pred_path), cfg, fps_of)
    thumos14.write_results(out_path, det)
    return det


def fuse_files(temporal_path, spatial_path, out_path, cfg, fps_of):
    """method.md §11 from two predictions CSVs into a result file; returns the detections."""
    fused = fuse_predictions(read_predictions(temporal_path), read_predictions(spatial_path), cfg,
                             names=(temporal_path, spatial_path))
    det = post_process(fused, cfg, fps_of, fused=True)
    thumos14.write_results(out_path, det)
    return det
