"""Post-processing (method.md §10), vectorised; fuse.py fuses two streams (§11) and then calls it.

From a predictions table (one row per anchor per window) to detections (THUMOS14's, or those of
any class list: model class k becomes the class list's k-th id):

1. keep rows with score_0 < 0.98 and conf > 0.1;
2. s_k = score_k * sigmoid(conf); three candidates per row, found as the release
   finds them: take the first argmax, set it to 0, take the first argmax again
   (so in a row whose other scores are all 0 the next candidate is the lowest
   class whose score is then 0, with score 0);
3. every CliffDiving (22) candidate repeated as Diving (26), when the classes are THUMOS14's;
4. greedy NMS per (video, class) with the release's unclamped IoU, where 0/0
   (identical zero-length boxes) counts as overlapping;
5. frames / fps -> seconds.

The whole table is processed at once, with no loop over rows, candidates or boxes, in a
thread per core where the work splits (numpy releases the GIL in its array loops): rows
for the top-3, whole videos for candidates and NMS, lines for the result text. NMS sorts
the candidates by (video, class, start), finds with a sweep every pair that would suppress
each other (1-D intervals: a box can only conflict with the next few starts), as an edge
from the higher priority to the lower, and decides them in a few vectorised rounds, exactly
as the release's sequential loop does. Ties in score are broken as the release's
`argsort()[::-1]` breaks them for small groups: the later candidate in the release's
concatenation order goes first. The result file is written from the arrays by
thumos14.result_bytes, the lines formatted in a thread per core.
"""
import contextlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

import classes
import thumos14
from fileio import atomic_open, atomic_path
from predictions import prediction_arrays, read_predictions_and_classes
from thumos14 import CLIFF_DIVING, DIVING, THUMOS14_CLASSES

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

ROWS_AT_ONCE = 1 << 15   # rows scored at once: a [20, rows] float64 block of 5 MB, reused


def _top3_of_rows(columns, rows, conf):
    """The three candidates of each of `rows` from the K score columns and conf: cls [3, n]
    (model index 1..K-1), val [3, n]. Blocks of rows, so the class scores stay in cache and
    no [n, K] table is allocated."""
    cls = np.empty((CANDIDATES_PER_ROW, len(rows)), np.int64)
    val = np.empty((CANDIDATES_PER_ROW, len(rows)), np.float64)

    def run(part):   # a thread per part: numpy releases the GIL in its loops
        for lo in range(part.start, part.stop, ROWS_AT_ONCE):
            block = slice(lo, min(lo + ROWS_AT_ONCE, part.stop))
            cls[:, block], val[:, block] = _top3(_class_scores(columns, rows[block], conf))
    in_threads(run, _parts(len(rows)))
    return cls, val


def _class_scores(columns, rows, conf):
    """s_k = score_k * sigmoid(conf) of `rows`, class-major [K - 1, n]: one contiguous row per
    class, gathered column by column, so no [N, K] copy of the whole table is made."""
    sig = 1.0 / (1.0 + np.exp(-conf[rows]))
    s = np.empty((len(columns) - 1, len(rows)), np.float64)
    for k, column in enumerate(columns[1:]):
        np.multiply(column[rows], sig, out=s[k])
    return s


def _top3(s):
    """Three candidates from class-major scores s [K - 1, n] (zeroed in place), as the release
    finds them: cls [3, n] (model index 1..K-1), val [3, n]."""
    m, n = s.shape
    flat = s.reshape(-1)
    cls = np.empty((CANDIDATES_PER_ROW, n), np.int64)
    val = np.empty((CANDIDATES_PER_ROW, n), np.float64)
    for k in range(CANDIDATES_PER_ROW):
        # The first maximum, as list.index(max(list)) finds it: the first class equal to the
        # column's max, found class by class over contiguous rows (an argmax across the class
        # axis transposes); with a NaN, np.argmax's first NaN. Zeroing the taken maximum
        # (rather than masking it) is the release's behaviour.
        top = s.max(axis=0)
        if np.isnan(top).any():
            cls[k] = np.argmax(s, axis=0)
        else:
            cls[k] = m - 1
            for j in range(m - 2, -1, -1):
                np.copyto(cls[k], j, where=s[j] == top)
        at = cls[k] * n + np.arange(n)
        val[k] = flat[at]
        flat[at] = 0.0
    return cls + 1, val


def repeated_classes(class_list):
    """[K + 1] model class -> the model class its candidates are repeated as (0: none): THUMOS14's
    CliffDiving as Diving (every CliffDiving instance is a Diving one too); no repeats elsewhere."""
    repeat = np.zeros(len(class_list.names) + 1, np.int64)
    if tuple(class_list) == tuple(THUMOS14_CLASSES):
        index = {cid: k + 1 for k, cid in enumerate(class_list.ids)}
        repeat[index[CLIFF_DIVING]] = index[DIVING]
    return repeat


def _candidates(video, by_start, cls, val, repeat):
    """Every candidate of §10 steps 2-3 of the rows `by_start`, in (video, class, xmin) order,
    the order the NMS sweeps.

    video [n] codes of the filtered rows; by_start: some of them, sorted by (video, xmin);
    cls, val [3, n] from _top3; repeat: repeated_classes. Returns dict(row, class_index (model
    class 1..K), score, tie, group) per candidate.
    `tie` is the candidate's position in the release's list (per video: first choices in row
    order, then second, then third, then the Diving copies of CliffDiving candidates in that
    order): among equal scores the larger goes first. The six candidate slots of each row
    (three choices, three possible Diving copies) are laid out row by row, so one stable sort
    by group (a radix sort on 16-bit keys), empty slots last, gives the order. Groups are in
    model-class order, which for THUMOS14 is its id order.
    """
    n = cls.shape[1]
    width = len(repeat)
    small = np.min_scalar_type(width)
    index = cls[:, by_start].T.astype(small)                              # [n, 3], rows by start
    copy = repeat.astype(small)[index]                                    # Diving copies, or 0: none
    slot_class = np.concatenate([index, copy], axis=1)                    # [n, 6]
    first = video[by_start].astype(np.int64) * width
    # The group of every slot, empty slots after all groups; 16 bits where they fit (radix sort).
    kind = np.uint16 if 0 <= first.min(initial=0) and first.max(initial=0) + width < 2 ** 16 else np.int64
    group = first.astype(kind)[:, None] + slot_class
    present = slot_class != 0
    group[~present] = first.max(initial=0) + width
    at = np.argsort(group.reshape(-1), kind='stable')[:np.count_nonzero(present)]
    group = group.reshape(-1)[at]
    rank, slot = np.divmod(at, 2 * CANDIDATES_PER_ROW)
    row = by_start[rank]
    return dict(row=row, class_index=slot_class.reshape(-1)[at].astype(np.int64), group=group.astype(np.int64),
                tie=slot * n + row, score=val.reshape(-1)[slot % CANDIDATES_PER_ROW * n + row])


def _small_keys(keys):
    """`keys` as uint16 when they fit, for which numpy's stable sort is a radix sort."""
    if len(keys) and 0 <= keys.min() and keys.max() < 2 ** 16:
        return keys.astype(np.uint16)
    return keys


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


BLOCK = 1 << 17   # boxes, or pairs, tested at once: bounds the sweep's temporaries (and keeps them in cache)


def _conflict_edges(group, start, end, score, tie, threshold):
    """Every pair of candidates of one group with IoU > threshold (or 0/0), as edges
    (winner, loser): the winner has the higher (score, tie). Positions in the input, which
    must be sorted by (group, start), finite, with end >= start and threshold >= 0; two
    lists of arrays (winners, losers), a pair of arrays per block of tests.

    Box p's partners are the run of the next count[p] boxes (_reach_counts). The pairs at
    offset k (p, p + k) are tested for every p at once on contiguous slices while most boxes
    still have a k-th partner (on THUMOS tables 80% of pairs are at offsets <= 8): that
    costs per box, not per pair, and needs no gathers. The pairs of the longer runs beyond
    are listed one by one.
    """
    n = len(group)
    d = end - start
    count = _reach_counts(group, start, d, threshold)
    at_least = np.cumsum(np.bincount(count)[::-1])[::-1]   # at_least[k]: boxes with count >= k
    band = int(np.count_nonzero(at_least[1:] >= n / 4))
    src, dst = [], []
    for lo in range(0, n, BLOCK):
        for k in range(1, band + 1):
            p, q = slice(lo, min(lo + BLOCK, n - k)), slice(lo + k, min(lo + BLOCK + k, n))
            hit = (count[p] >= k) & _overlaps(end[p], start[q], end[q], d[p], d[q], threshold)
            if hit.size:
                at = np.flatnonzero(hit) + lo
                _add_edges(src, dst, at, at + k, score, tie)
    rest = np.maximum(count - band, 0)
    total = np.cumsum(rest)
    cuts = np.searchsorted(total, np.arange(BLOCK, total[-1], BLOCK))   # about BLOCK pairs each
    for lo, hi in zip(np.append(0, cuts), np.append(cuts, n)):
        p, q = _run_pairs(lo, rest[lo:hi])
        q += band
        hit = _overlaps(end[p], start[q], end[q], d[p], d[q], threshold)
        _add_edges(src, dst, p[hit], q[hit], score, tie)
    return src, dst


def _reach_counts(group, start, d, threshold):
    """For each box (sorted by group, start) the number of next boxes of its group that may
    overlap it by more than the threshold.

    A later-starting box q can overlap p by more than t only if s_q <= s_p + (1 - t) * len_p
    (inter <= e_p - s_q and union >= len_p); the bound has a margin far above the rounding
    of e - s and of the IoU. One searchsorted finds where each run ends: the starts are made
    one increasing sequence by adding a multiple of a power of two per group, and rounding
    is monotone, so every s_q within the bound is counted (a few more may be, and are tested).
    """
    n = len(group)
    reach = start + max(1.0 - threshold, 0.0) * d + 1e-9 * (np.abs(start) + d + 1.0)
    first = np.ones(n, bool)
    first[1:] = group[1:] != group[:-1]
    span = 2.0 ** np.ceil(np.log2(2.0 * max(np.abs(start).max(), np.abs(reach).max()) + 2.0))
    lift = (np.cumsum(first) - 1) * span
    stop = np.searchsorted(start + lift, reach + lift, side='right')
    bounds = np.append(np.flatnonzero(first), n)
    np.minimum(stop, np.repeat(bounds[1:], np.diff(bounds)), out=stop)   # never past the group
    return stop - np.arange(1, n + 1)


def _overlaps(end_p, start_q, end_q, len_p, len_q, threshold):
    """IoU > threshold, or NaN (0/0), as the release computes it, for q starting at or after p
    (so max(start) is start_q): inter = min(end) - start_q, iou = inter / (len_p + len_q - inter)."""
    inter = np.minimum(end_p, end_q)
    inter -= start_q
    union = len_p + len_q
    union -= inter
    return ~(np.divide(inter, union, out=union) <= threshold)


def _run_pairs(lo, count):
    """(p, q) for p = lo, lo + 1, ... and q = p + 1 .. p + count[p - lo] (intp: the fastest index)."""
    p = np.arange(lo, lo + len(count))
    # q = p + 1 + (rank of the pair within p's run) = (pair index) - (first pair of p's run - p - 1)
    shift = np.cumsum(count) - count - p - 1
    return np.repeat(p, count), np.arange(int(count.sum())) - np.repeat(shift, count)


def _add_edges(src, dst, p, q, score, tie):
    """Append the pairs (p, q) to the edge lists, each as (winner, loser)."""
    p_wins = _wins(p, q, score, tie)
    src.append(np.where(p_wins, p, q))
    dst.append(np.where(p_wins, q, p))


def _wins(p, q, score, tie):
    """Whether p goes before q: the higher score, or among equal scores the higher tie (looked
    up for the few equal pairs only)."""
    sp, sq = score[p], score[q]
    p_wins = sp > sq
    same = np.flatnonzero(sp == sq)
    p_wins[same] = tie[p[same]] > tie[q[same]]
    return p_wins


def _resolve(n, src, dst):
    """Greedy NMS on the edges winner -> loser (lists of edge arrays): a candidate is kept
    once every winner over it is suppressed, and suppressed as soon as one is kept. Each round
    keeps the candidates that no undecided one beats and suppresses what they beat; as many
    rounds as the longest chain of suppressions (a handful), each over the edges still
    undecided at both ends. The lists are not joined: the first round, over all edges, leaves
    a few percent of them."""
    state = np.zeros(n, np.int8)  # 0 undecided, 1 kept, 2 suppressed
    while src:
        beaten = np.zeros(n, bool)
        for loser in dst:
            beaten[loser] = True
        kept = ~beaten & (state == 0)
        state[kept] = 1
        for winner, loser in zip(src, dst):
            state[loser[kept[winner]]] = 2
        live = [(state[winner] == 0) & (state[loser] == 0) for winner, loser in zip(src, dst)]
        src = [winner[keep] for winner, keep in zip(src, live) if keep.any()]
        dst = [loser[keep] for loser, keep in zip(dst, live) if keep.any()]
    return state != 2


def nms_sorted(group, start, end, score, tie, threshold, threads=True):
    """Greedy NMS per group; the candidates sorted by (group, start); returns the keep mask.

    Priority: higher score first, then higher `tie` (the release's order among equal scores).
    Equals the release's sequential NMS run on each group in priority order: keep the first,
    drop every later one with IoU > threshold, repeat; IoU = inter / (len_a + len_b - inter)
    with inter = min(end) - max(start) unclamped, and NaN (0/0) counting as overlap. Groups
    holding a reversed or non-finite box (where the unclamped IoU can suppress boxes that do
    not touch), or a NaN score, go through the exact round-by-round version. With `threads`,
    runs of whole groups are swept in a thread per core.
    """
    group, start, end = np.asarray(group), np.asarray(start, np.float64), np.asarray(end, np.float64)
    score, tie = np.asarray(score, np.float64), np.asarray(tie)
    keep = np.zeros(len(group), bool)
    if not len(group):
        return keep
    # Coordinates beyond 2^52 (frames!) would make the sweep's lifted starts overflow or lose
    # all precision; they are exact in the slow version too.
    odd = ~(end >= start) | ~(np.abs(start) < 2.0 ** 52) | ~(np.abs(end) < 2.0 ** 52) | np.isnan(score)
    if not (threshold >= 0):
        odd[:] = True
    if not odd.any():   # the usual case: no copies
        return _nms_fast(group, start, end, score, tie, threshold, threads)
    slow = np.isin(group, group[odd])
    idx = np.flatnonzero(slow)
    idx = idx[np.lexsort((-tie[idx], -score[idx], group[idx]))]   # priority order
    with np.errstate(divide='ignore', invalid='ignore'):
        keep[idx] = _nms_rounds(group[idx], start[idx], end[idx], threshold)
    fast = np.flatnonzero(~slow)
    keep[fast] = _nms_fast(group[fast], start[fast], end[fast], score[fast], tie[fast], threshold, threads)
    return keep


def _nms_fast(group, start, end, score, tie, threshold, threads):
    """The sweep and the rounds (finite, well-formed boxes sorted by group, start), on runs of
    whole groups in threads: groups are independent, and numpy releases the GIL in its loops."""
    def run(part):
        with np.errstate(divide='ignore', invalid='ignore'):   # per thread: 0/0 is an overlap
            return _resolve(part.stop - part.start, *_conflict_edges(
                group[part], start[part], end[part], score[part], tie[part], threshold))
    parts = _group_parts(group) if threads else [slice(0, len(group))]
    return np.concatenate([np.zeros(0, bool)] + in_threads(run, parts))


PART_MIN = 1 << 16   # items per thread at least: below that a thread costs more than it saves


def _parts(n):
    """range(n) as slices of about equal length, one per core but at least PART_MIN long."""
    parts = max(1, min(cpu_count(), n // PART_MIN))
    cuts = [n * i // parts for i in range(parts + 1)]
    return [slice(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:])]


def _group_parts(group):
    """_parts of the sorted `group`, each cut moved to the next group start."""
    n = len(group)
    starts = np.append(np.flatnonzero(group[1:] != group[:-1]) + 1, n)
    cuts = np.unique(starts[np.searchsorted(starts, [part.stop for part in _parts(n)[:-1]])])
    edges = [0] + cuts.tolist() + [n]
    return [slice(lo, hi) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def cpu_count():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)


def in_threads(function, parts):
    """[function(part) for part in parts], in a thread each when there are several."""
    if len(parts) < 2:
        return [function(part) for part in parts]
    with ThreadPoolExecutor(len(parts)) as pool:
        return list(pool.map(function, parts))


def greedy_nms(group, start, end, threshold):
    """Greedy NMS of candidates already sorted by (group, priority); returns a keep mask
    (nms_sorted, with the input order as the priority)."""
    group, start = np.asarray(group), np.asarray(start, np.float64)
    by_start = np.lexsort((start, group))
    keep = np.empty(len(group), bool)
    keep[by_start] = nms_sorted(group[by_start], start[by_start], np.asarray(end, np.float64)[by_start],
                                np.zeros(len(group)), -by_start, threshold)
    return keep


def detections(pred, cfg, fps_of, fused=False, class_list=THUMOS14_CLASSES):
    """method.md §10 on a predictions table (DataFrame or column arrays); method.md §11's extra filter when `fused`.

    fps_of: video -> fps, e.g. thumos14.video_fps(cfg.fps_file), a dict or a function.
    class_list: the classes of score_1 .. score_K (classes.ClassList; a table of another width
    is a ValueError). Returns dict(videos [V] names, video [M] index into videos, start, end
    (seconds), class_id (the class list's id), score) of the M detections, in (video, class,
    priority) order.
    """
    a = prediction_arrays(pred)
    if len(a['scores']) != len(class_list.names) + 1:
        raise ValueError(f'predictions table: {len(a["scores"])} score columns, but its classes are '
                         f'{classes.brief(class_list)} (background + one score per class)')
    repeat = repeated_classes(class_list)
    class_ids = np.asarray((0,) + tuple(class_list.ids), np.int64)
    mask = np.ones(len(a['conf']), bool)
    if fused:
        mask &= a['scores'][0] < cfg.filter_neg_threshold_fuse
    # The release applies the single-stream filters to fused rows as well.
    mask &= (a['scores'][0] < cfg.filter_neg_threshold) & (a['conf'] > cfg.filter_conf_threshold)
    rows = np.flatnonzero(mask)

    video, videos = _video_codes(a, rows)
    xmin, xmax = a['xmin'][rows], a['xmax'][rows]
    cls, val = _top3_of_rows(a['scores'], rows, a['conf'])
    by_start = np.argsort(xmin)   # equal starts in any order: only start order matters to the sweep
    by_start = by_start[np.argsort(_small_keys(video)[by_start], kind='stable')]

    def run(part):
        """Candidates, NMS and the kept in the release's NMS order ((video, class), score
        descending, later first) of some whole videos: a thread each, videos are independent."""
        cand = _candidates(video, by_start[part], cls, val, repeat)
        row = cand['row']
        keep = nms_sorted(cand['group'], xmin[row], xmax[row], cand['score'], cand['tie'], cfg.nms_threshold,
                          threads=False)
        kept = np.flatnonzero(keep)
        kept = kept[np.argsort(-cand['tie'][kept])]
        kept = kept[np.argsort(-cand['score'][kept], kind='stable')]
        kept = kept[np.argsort(_small_keys(cand['group'][kept]), kind='stable')]
        return row[kept], class_ids[cand['class_index'][kept]], cand['score'][kept]
    parts = in_threads(run, _group_parts(video[by_start]))
    kr, class_id, score = (np.concatenate([np.zeros(0, dtype)] + [p[i] for p in parts])
                           for i, dtype in enumerate((np.intp, np.int64, np.float64)))
    fps = _fps_array(videos, fps_of)
    kv = video[kr]
    return dict(videos=videos, video=kv, start=xmin[kr] / fps[kv], end=xmax[kr] / fps[kv],
                class_id=class_id, score=score)


def _video_codes(a, rows):
    """(code of each of `rows`, names): codes number the videos in order of first appearance
    among `rows`, as pd.factorize of their names would. The whole column is factorized once
    (fast on pandas' Arrow strings), then the few codes renumbered."""
    code, names = a['video_code'], a['videos']
    if (code[rows] < 0).any():   # missing names: factorized as the release's object array would be
        code, names = pd.factorize(np.asarray(a['video_name'], dtype=object)[rows])
        return code, np.asarray(names, dtype=object)
    code, used = pd.factorize(code[rows])
    return code, np.asarray(names, dtype=object)[used]


def post_process(pred, cfg, fps_of, fused=False, class_list=THUMOS14_CLASSES):
    """method.md §10 on a predictions table (DataFrame or column arrays); method.md §11's extra filter when `fused`.

    fps_of: video -> fps, e.g. thumos14.video_fps(cfg.fps_file), a dict or a function.
    Returns a DataFrame of detections with columns video, start, end (seconds),
    class_id (the id of class_list, THUMOS14's by default), score; order carries no meaning.
    """
    return detections_frame(detections(pred, cfg, fps_of, fused, class_list))


def detections_frame(det):
    """detections() output as the DataFrame post_process returns."""
    videos = det['videos']
    if all(isinstance(v, str) for v in videos):
        # The same str column, from the few names: not one Python string per detection to convert.
        video = pd.Series(pd.Index(videos).take(det['video']))
    else:
        video = videos[det['video']]
    return pd.DataFrame({'video': video, 'start': det['start'], 'end': det['end'],
                         'class_id': det['class_id'], 'score': det['score']})


# ----------------------------------------------------------------------------- files

@contextlib.contextmanager
def small_pages():
    """For scripts: within the block numpy does not ask for transparent huge pages (madvise),
    unless NUMPY_MADVISE_HUGEPAGE says otherwise (the setting is the whole process's).

    Post-processing a full table allocates and drops about 1 GB of arrays in a few seconds. On
    the project's 2-core VMs the kernel zeroes a fresh 2 MB page at about 400 MB/s against
    2 GB/s for 4 KB pages, so huge pages cost test.py --predictions 1.5 s of system time (a
    third of its run, measured). NUMPY_MADVISE_HUGEPAGE=0 does the same from the environment.
    """
    core = getattr(np, '_core', None) or getattr(np, 'core', None)   # numpy 2, numpy 1
    setter = getattr(getattr(core, 'multiarray', None), '_set_madvise_hugepage', None)
    if setter is None or 'NUMPY_MADVISE_HUGEPAGE' in os.environ:
        yield
        return
    previous = setter(False)
    try:
        yield
    finally:
        setter(previous)


def result_text(det):
    """The bytes thumos14.format_results writes for detections() output (thumos14.result_bytes),
    the lines formatted in a thread per core; None when a video name is not ASCII."""
    columns = [np.asarray(det[key]) for key in ('video', 'start', 'end', 'class_id', 'score')]
    return thumos14.result_bytes(det['videos'], *columns, map_parts=lambda fn: in_threads(fn, _parts(len(columns[0]))))


def write_detections(path, det):
    """Write detections() output as a THUMOS14 result file, atomically: thumos14.write_results' bytes."""
    text = result_text(det)
    if text is None:
        thumos14.write_results(path, detections_frame(det))
        return
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(text)


def write_results_json(path, det, class_list):
    """Detections (a DataFrame as post_process returns, or detections() output) as the field's
    ActivityNet-style results JSON, atomically: {"results": {video: [{"label": name, "segment":
    [start_s, end_s], "score": p}, ...]}}, each video's best first, videos in first-seen order."""
    frame = det if isinstance(det, pd.DataFrame) else detections_frame(det)
    name_of = class_list.name_of_id()
    rows = frame.iloc[np.argsort(-frame['score'].to_numpy(np.float64), kind='stable')]
    results = {str(video): [] for video in pd.unique(frame['video'])}
    for video, cid, start, end, score in zip(rows['video'].tolist(), rows['class_id'].tolist(),
                                             rows['start'].tolist(), rows['end'].tolist(), rows['score'].tolist()):
        results[str(video)].append({'label': name_of[cid], 'segment': [start, end], 'score': score})
    with atomic_open(path, 'w') as f:
        json.dump({'results': results}, f)


def write_result_files(path, det, class_list, json_path=None):
    """The result file `path` (detections() output, with the class list's ids), its class list
    beside it for classes other than THUMOS14's (absent: THUMOS14's; a stale one is removed) and,
    when json_path is given, the ActivityNet-style results JSON."""
    classes.write_beside(path, class_list, implied=THUMOS14_CLASSES)
    write_detections(path, det)
    if json_path:
        write_results_json(json_path, det, class_list)


def process_file(pred_path, out_path, cfg, fps_of, json_path=None):
    """Re-post-process an existing predictions CSV (of the classes beside it, else THUMOS14's)
    into a result file, its class list beside it and, when json_path is given, the results JSON;
    returns the detections."""
    pred, class_list = read_predictions_and_classes(pred_path)
    det = detections(pred, cfg, fps_of, class_list=class_list)
    write_result_files(out_path, det, class_list, json_path)
    return detections_frame(det)
