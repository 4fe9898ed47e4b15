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
import os
from fractions import Fraction

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

import thumos14
from fileio import atomic_open, atomic_path
from thumos14 import CLASS_REAL, CLIFF_DIVING, DIVING, NUM_CLASSES

SCORE_COLUMNS = [f'score_{k}' for k in range(NUM_CLASSES)]
PRED_COLUMNS = ['video_name', 'start', 'conf', 'xmin', 'xmax'] + SCORE_COLUMNS
# Optional last column: the anchor's index inside its window (0..A-1), so that fusion can
# check that both streams list the same anchors in the same order. The release's files lack it.
ANCHOR_COLUMN = 'anchor'
CANDIDATES_PER_ROW = 3


# ----------------------------------------------------------------------------- predictions table

def prediction_arrays(pred):
    """Column arrays of a predictions table given as a DataFrame or a dict.

    A dict may hold `scores` [N, K] instead of the K = NUM_CLASSES score_k columns.
    Returns dict(video_name [N] str, start [N] int64, conf, xmin, xmax [N] float64, scores [N, K] float64).
    """
    if isinstance(pred, pd.DataFrame):
        missing = [c for c in PRED_COLUMNS if c not in pred.columns]
        if missing:
            raise ValueError(f'predictions table lacks columns {missing}')
        scores = pred[SCORE_COLUMNS].to_numpy(np.float64)
        get = pred.__getitem__
    else:
        scores = pred['scores'] if 'scores' in pred else np.stack([pred[c] for c in SCORE_COLUMNS], 1)
        get = pred.__getitem__
    out = dict(video_name=np.asarray(get('video_name'), dtype=object),
               start=np.asarray(get('start'), dtype=np.int64),
               conf=np.asarray(get('conf'), dtype=np.float64),
               xmin=np.asarray(get('xmin'), dtype=np.float64),
               xmax=np.asarray(get('xmax'), dtype=np.float64),
               scores=np.asarray(scores, dtype=np.float64))
    n = len(out['video_name'])
    for key, value in out.items():
        if len(value) != n:
            raise ValueError(f'predictions table: column {key} has {len(value)} rows, video_name has {n}')
    if out['scores'].ndim != 2 or out['scores'].shape[1] != NUM_CLASSES:
        raise ValueError(f'predictions table: scores must be [N, {NUM_CLASSES}], got {out["scores"].shape}')
    return out


def predictions_frame(arrays, anchors_per_window=None):
    """The predictions CSV's DataFrame (method.md §2 column order) from column arrays.

    An `anchor` array in `arrays`, or `anchors_per_window` = A (rows are A anchors of each
    window in turn, in the model's anchor order), adds the last column `anchor` (0..A-1).
    """
    scores = np.asarray(arrays['scores'])
    n = len(scores)
    extra = {}
    if ANCHOR_COLUMN in arrays:
        extra[ANCHOR_COLUMN] = np.asarray(arrays[ANCHOR_COLUMN], np.int64)
        if len(extra[ANCHOR_COLUMN]) != n:
            raise ValueError(f'predictions table: column anchor has {len(extra[ANCHOR_COLUMN])} rows, scores has {n}')
    elif anchors_per_window is not None:
        a = int(anchors_per_window)
        if a <= 0 or n % a:
            raise ValueError(f'predictions table: {n} rows are not whole windows of {anchors_per_window} anchors')
        extra[ANCHOR_COLUMN] = np.tile(np.arange(a, dtype=np.int64), n // a)
    # One column per score: pandas takes the column arrays as they are, where a 2-d block
    # would be transposed and copied (20x slower for the test set's 714k rows).
    return pd.DataFrame({'video_name': arrays['video_name'], 'start': arrays['start'],
                         'conf': arrays['conf'], 'xmin': arrays['xmin'], 'xmax': arrays['xmax'],
                         **{name: scores[:, i] for i, name in enumerate(SCORE_COLUMNS)}, **extra}, copy=False)


def read_predictions(path):
    """Read and validate a predictions CSV; ValueError naming the file and line on bad input.

    The optional last column `anchor` (anchor index in the window) is kept when present.
    pandas' C reader, not pyarrow's: on the test set's 714k rows it is the faster of the two
    here (0.8 s against 1.2 s on 2 cores), and it names the first bad line of a broken file.
    """
    if not os.path.isfile(path):
        raise ValueError(f'{path}: predictions file not found')
    thumos14.check_text_file(path, 'predictions file', f'a CSV with the header {",".join(PRED_COLUMNS[:6])},...')
    try:
        # Blank lines kept (as empty rows) so that row i is file line i + 2 in error messages.
        df = pd.read_csv(path, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f'{path}: empty file, expected a header line {",".join(PRED_COLUMNS)}') from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f'{path}: not a predictions CSV: {err}') from None
    except ValueError as err:   # e.g. NUL bytes or a broken encoding that pandas reports so
        raise ValueError(f'{path}: not a predictions CSV: {err}') from None
    df = _checked_predictions(df, path)
    _warn_scattered_windows(df, path)
    return df


def _checked_predictions(df, path):
    """The table read from `path` with its columns typed; the first bad line is an error."""
    missing = [c for c in PRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f'{path}, line 1: missing columns {missing}; the header must be {",".join(PRED_COLUMNS)}')
    names = df['video_name']
    bad = names.isna().to_numpy() | (names.astype(str).str.strip() == '').to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f'{path}, line {i + 2}: empty video_name')
    columns = PRED_COLUMNS + ([ANCHOR_COLUMN] if ANCHOR_COLUMN in df.columns else [])
    for col in columns[1:]:
        values = pd.to_numeric(df[col], errors='coerce').to_numpy(np.float64)
        bad = ~np.isfinite(values)
        integer = col in ('start', ANCHOR_COLUMN)
        if integer:
            bad |= (values != np.round(values)) | (values < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            kind = {'start': 'an integer frame', ANCHOR_COLUMN: 'an anchor index 0, 1, ...'}.get(col, 'a finite number')
            raise ValueError(f'{path}, line {i + 2}: column {col}: {df[col].iloc[i]!r} is not {kind}')
        df[col] = values.astype(np.int64) if integer else values
    df['video_name'] = names.astype(str)
    return df[columns]


def _window_runs(video, start):
    """Start row of every run of consecutive rows of one window (video, start), plus len."""
    n = len(video)
    new = np.ones(n, bool)
    new[1:] = (video[1:] != video[:-1]) | (start[1:] != start[:-1])
    return np.append(np.flatnonzero(new), n)


def _warn_scattered_windows(df, path):
    """A window whose rows are not all together (the file holds it twice, apart) is suspicious:
    its anchors would be post-processed twice. Repeats next to each other are legal (the
    released window lists repeat the end-aligned window)."""
    video = df['video_name'].to_numpy(dtype=object)
    start = df['start'].to_numpy(np.int64)
    runs = _window_runs(video, start)[:-1]
    if not len(runs):
        return
    key = pd.Series(video[runs]).astype(str) + '@' + pd.Series(start[runs]).astype(str)
    again = key.duplicated(keep='first').to_numpy()
    # a repeat right after the same window is a consecutive repeat, already one run
    if again.any():
        j = int(np.flatnonzero(again)[0])
        first = int(runs[int(np.flatnonzero((key == key.iloc[j]).to_numpy())[0])])
        thumos14.warn(f'{path}:{runs[j] + 2}: video_name, start: window ({video[runs[j]]}, {start[runs[j]]}) appears '
                      f'again, apart from its rows from line {first + 2} ({int(again.sum())} such repeats); '
                      f'check that the file is not two predictions files concatenated')


def write_predictions(path, pred):
    """Write a predictions table (DataFrame or column arrays) as the method.md §2 CSV, atomically.

    Floats are written in full precision (Python's repr), so reading the file back gives the
    same numbers. The bytes are those of the plain-Python writer below (which pandas' to_csv
    wrote before it); pyarrow's CSV writer produces them about 10x faster.
    """
    df = pred if isinstance(pred, pd.DataFrame) else predictions_frame(pred)
    header = ','.join(PRED_COLUMNS + ([ANCHOR_COLUMN] if ANCHOR_COLUMN in df.columns else []))
    table = _predictions_arrow_table(df)
    if table is None:
        _write_predictions_text(path, df, header)
        return
    with atomic_path(path) as tmp:
        with pa.OSFile(tmp, 'wb') as sink:
            sink.write((header + '\n').encode())
            pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, quoting_style='none'))


def _predictions_arrow_table(df):
    """The predictions CSV's fields as pyarrow columns of text, or None when only the plain
    writer gives today's bytes: video names a CSV writer must quote (',', '"', line breaks),
    names that are not text, starts that are neither integers nor floats."""
    video = pa.array(df['video_name'].to_numpy(object), from_pandas=True)
    if not pa.types.is_string(video.type) or video.null_count:
        return None
    uniques = video.unique().to_pylist()
    if any(any(ch in v for ch in ',"\r\n') for v in uniques):
        return None
    start = df['start'].to_numpy()
    if start.dtype.kind in 'iu':
        start = pa.array(start.astype(np.int64))   # "256", as f'{256}'
    elif start.dtype.kind == 'f':
        start = float_text(start)                    # "256.0", as f'{256.0}'
    else:
        return None
    columns = [video, start] + [float_text(df[c].to_numpy(np.float64)) for c in PRED_COLUMNS[2:]]
    if ANCHOR_COLUMN in df.columns:
        anchor = df[ANCHOR_COLUMN].to_numpy()
        if anchor.dtype.kind not in 'iuf' or not np.isfinite(anchor).all():
            return None
        columns.append(pa.array(anchor.astype(np.int64)))   # int(a), as the plain writer writes it
    return pa.table(columns, names=[f'c{i}' for i in range(len(columns))])


def float_text(values):
    """[repr(v) for v in values] as a pyarrow string array, mostly in C++.

    pyarrow's float-to-text cast gives the shortest round-trip digits, as repr does, but
    another notation in some ranges: fixed below 1e10 against repr's 1e16, down to 1e-6
    against repr's 1e-4, no '.0' on whole numbers, one-digit exponents ('1e-7' for
    '1e-07'). Where the two agree (1e-4 <= |v| < 1e10 not whole, |v| >= 1e16) the cast
    is kept; every other value (a few % of a predictions file) is formatted by repr.
    """
    x = np.ascontiguousarray(values, np.float64)
    text = pc.cast(pa.array(x), pa.string())
    a = np.abs(x)
    with np.errstate(invalid='ignore'):
        agree = ((a >= 1e-4) & (a < 1e10) & (x != np.floor(x))) | ((a >= 1e16) & (a < np.inf))
    fix = np.flatnonzero(~agree)
    if not fix.size:
        return text
    # Fixed values appended after the cast's and picked by index: a take is much faster
    # than pyarrow's replace_with_mask on string arrays.
    pick = np.arange(len(x))
    pick[fix] = len(x) + np.arange(fix.size)
    extra = pa.array(list(map(repr, x[fix].tolist())), pa.string())
    return pa.concat_arrays([text, extra]).take(pa.array(pick))


def _write_predictions_text(path, df, header):
    """The exact-bytes writer in plain Python (floats as repr), for tables pyarrow cannot write so."""
    heads = [f'{video},{start},' for video, start in zip(df['video_name'].tolist(), df['start'].tolist())]
    values = df[PRED_COLUMNS[2:]].to_numpy(np.float64).tolist()
    if ANCHOR_COLUMN in df.columns:
        # The anchor index goes last, so the method.md §2 columns stay byte for byte as they are.
        tails = [f',{int(a)}\n' for a in df[ANCHOR_COLUMN].tolist()]
    else:
        tails = ['\n'] * len(heads)
    with atomic_open(path) as f:
        f.write(header + '\n')
        f.writelines(head + ','.join(map(repr, row)) + tail for head, row, tail in zip(heads, values, tails))


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
    runs = _window_runs(video, start)
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
