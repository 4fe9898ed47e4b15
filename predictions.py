"""The predictions table (docs/method.md §2): one row per anchor per window, the columns
video_name, start, conf, xmin, xmax, score_0 .. score_K (background, then the K classes;
THUMOS14: score_20) and, last, the anchor's index in its window; its CSV writer (the release's
bytes, through pyarrow) and its reader.

The classes of a predictions CSV: THUMOS14's, or those of the class list written beside it
(classes.path_beside: predict_<run>.csv -> predict_<run>.classes.txt) for any other class set.

test.py and detect.py write it; post-processing and fusion (postprocess.py) read it.
"""
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

import classes
import thumos14
from fileio import atomic_open, atomic_path


def score_columns(num_scores):
    """score_0 (background) .. score_{num_scores - 1}."""
    return [f'score_{k}' for k in range(num_scores)]


def pred_columns(num_scores):
    return BASE_COLUMNS + score_columns(num_scores)


BASE_COLUMNS = ['video_name', 'start', 'conf', 'xmin', 'xmax']
SCORE_COLUMNS = score_columns(thumos14.NUM_CLASSES)   # THUMOS14's: background + 20 classes
PRED_COLUMNS = pred_columns(thumos14.NUM_CLASSES)
# Optional last column: the anchor's index inside its window (0..A-1), so that fusion can
# check that both streams list the same anchors in the same order. The release's files lack it.
ANCHOR_COLUMN = 'anchor'


def num_scores(columns):
    """K + 1: the number of score_0, score_1, ... columns, in a row from score_0."""
    have, k = set(columns), 0
    while f'score_{k}' in have:
        k += 1
    return k


def prediction_arrays(pred):
    """Column arrays of a predictions table given as a DataFrame or a dict, without copying
    what is float64 already (a DataFrame's columns come as views).

    A dict may hold `scores` [N, K + 1] instead of the score_k columns; a table has at least
    score_0 and score_1.
    Returns dict(video_name [N] as given, video_code [N] and videos [V]: pd.factorize of the
    names (code -1: a missing name), start [N] int64, conf, xmin, xmax [N] float64,
    scores: a list of the K score columns, each [N] float64).
    """
    if isinstance(pred, pd.DataFrame):
        missing = [c for c in pred_columns(max(num_scores(pred.columns), 2)) if c not in pred.columns]
        if missing:
            raise ValueError(f'predictions table lacks columns {missing}')
        scores = [pred[c].to_numpy(np.float64) for c in score_columns(num_scores(pred.columns))]
    elif 'scores' in pred:
        block = np.asarray(pred['scores'], dtype=np.float64)
        if block.ndim != 2 or block.shape[1] < 2:
            raise ValueError(f'predictions table: scores must be [N, K + 1] (background and K >= 1 classes), '
                             f'got {block.shape}')
        scores = [block[:, k] for k in range(block.shape[1])]
    else:
        scores = [np.asarray(pred[c], dtype=np.float64) for c in score_columns(max(num_scores(pred), 2))]
    names = pred['video_name']
    code, videos = pd.factorize(names if isinstance(names, pd.Series) else np.asarray(names, dtype=object))
    out = dict(video_name=names, video_code=code, videos=np.asarray(videos, dtype=object),
               start=np.asarray(pred['start'], dtype=np.int64),
               conf=np.asarray(pred['conf'], dtype=np.float64),
               xmin=np.asarray(pred['xmin'], dtype=np.float64),
               xmax=np.asarray(pred['xmax'], dtype=np.float64))
    n = len(code)
    for key, value in list(out.items())[3:] + [(c, s) for c, s in zip(score_columns(len(scores)), scores)]:
        if len(value) != n:
            raise ValueError(f'predictions table: column {key} has {len(value)} rows, video_name has {n}')
    out['scores'] = scores
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
                         **{name: scores[:, i] for i, name in enumerate(score_columns(scores.shape[1]))},
                         **extra}, copy=False)


def read_predictions(path):
    """Read and validate a predictions CSV; ValueError naming the file and line on bad input,
    score columns that do not fit its classes (class_list_of) included.

    The optional last column `anchor` (anchor index in the window) is kept when present.
    pandas' C reader, not pyarrow's: on the test set's 714k rows it is the faster of the two
    here (0.8 s against 1.2 s on 2 cores), and it names the first bad line of a broken file.
    """
    return read_predictions_and_classes(path)[0]


def read_predictions_and_classes(path):
    """(read_predictions(path), its classes (class_list_of))."""
    if not os.path.isfile(path):
        raise ValueError(f'{path}: predictions file not found')
    class_list = class_list_of(path)
    thumos14.check_text_file(path, 'predictions file', f'a CSV with the header {",".join(PRED_COLUMNS[:6])},...')
    try:
        # Blank lines kept (as empty rows) so that row i is file line i + 2 in error messages.
        df = pd.read_csv(path, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f'{path}: empty file, expected a header line '
                         f'{",".join(pred_columns(len(class_list.names) + 1))}') from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f'{path}: not a predictions CSV: {err}') from None
    except ValueError as err:   # e.g. NUL bytes or a broken encoding that pandas reports so
        raise ValueError(f'{path}: not a predictions CSV: {err}') from None
    df = _checked_predictions(df, path, class_list)
    _warn_scattered_windows(df, path)
    return df, class_list


def class_list_of(path):
    """The classes of the predictions CSV `path`: its class list beside it (classes.path_beside),
    else THUMOS14's."""
    return classes.read_beside(path, implied=thumos14.THUMOS14_CLASSES)


def _checked_predictions(df, path, class_list):
    """The table read from `path` with its columns typed; the first bad line is an error, and so
    are score columns other than score_0 .. score_K of the K classes of class_list.

    Columns the reader typed float64 (int64 below 2^53) already are checked where they lie;
    only others are converted, so a good file's table is not copied.
    """
    expected = pred_columns(len(class_list.names) + 1)
    beside = classes.path_beside(path)
    whose = (f'{classes.brief(class_list)}, its class list {beside}' if os.path.isfile(beside)
             else f'THUMOS14\'s 20 classes, as no class list {beside} is beside it')
    missing = [c for c in expected if c not in df.columns]
    if missing:
        raise ValueError(f'{path}, line 1: missing columns {missing}; the header must be {",".join(expected)} '
                         f'(background + {whose})')
    if num_scores(df.columns) > len(expected) - len(BASE_COLUMNS):
        raise ValueError(f'{path}, line 1: {num_scores(df.columns)} score columns (score_0 .. '
                         f'score_{num_scores(df.columns) - 1}), but the classes are {whose}: a predictions '
                         f'file has background + one score per class')
    names = df['video_name']
    # Blank names: looked for among the distinct names first (a few hundred, not a row each).
    if names.isna().any() or any(str(v).strip() == '' for v in names.unique()):
        bad = names.isna().to_numpy() | (names.astype(str).str.strip() == '').to_numpy()
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f'{path}, line {i + 2}: empty video_name')
    columns = expected + ([ANCHOR_COLUMN] if ANCHOR_COLUMN in df.columns else [])
    for col in columns[1:]:
        integer = col in ('start', ANCHOR_COLUMN)
        values = df[col].to_numpy()
        if values.dtype == (np.int64 if integer else np.float64):
            # int64 at or above 2^53 take the float round trip below, as they always have
            good = ((values >= 0) & (values < 2 ** 53)).all() if integer else np.isfinite(values).all()
            if good:
                continue
        values = pd.to_numeric(df[col], errors='coerce').to_numpy(np.float64)
        bad = ~np.isfinite(values)
        if integer:
            bad |= (values != np.round(values)) | (values < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            kind = {'start': 'an integer frame', ANCHOR_COLUMN: 'an anchor index 0, 1, ...'}.get(col, 'a finite number')
            raise ValueError(f'{path}, line {i + 2}: column {col}: {df[col].iloc[i]!r} is not {kind}')
        df[col] = values.astype(np.int64) if integer else values
    df['video_name'] = names.astype(str)
    return df if list(df.columns) == columns else df[columns]


def window_runs(video, start):
    """Start row of every run of consecutive rows of one window (video, start), plus len."""
    n = len(video)
    new = np.ones(n, bool)
    # np.asarray: `video` may be a pandas array (Arrow strings compare without Python objects)
    new[1:] = np.asarray(video[1:] != video[:-1], dtype=bool) | (start[1:] != start[:-1])
    return np.append(np.flatnonzero(new), n)


def _warn_scattered_windows(df, path):
    """A window whose rows are not all together (the file holds it twice, apart) is suspicious:
    its anchors would be post-processed twice. Repeats next to each other are legal (the
    released window lists repeat the end-aligned window)."""
    video = df['video_name'].array
    start = df['start'].to_numpy(np.int64)
    runs = window_runs(video, start)[:-1]
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


def write_predictions(path, pred, class_list=thumos14.THUMOS14_CLASSES):
    """Write a predictions table (DataFrame or column arrays) as the method.md §2 CSV, atomically,
    and for classes other than THUMOS14's their class list beside it (classes.path_beside; a
    stale one is removed), so that a reader knows what score_k means.

    Floats are written in full precision (Python's repr), so reading the file back gives the
    same numbers. The bytes are those of the plain-Python writer below (which pandas' to_csv
    wrote before it); pyarrow's CSV writer produces them about 10x faster.
    """
    df = pred if isinstance(pred, pd.DataFrame) else predictions_frame(pred)
    columns = pred_columns(num_scores(df.columns))
    if len(columns) != len(class_list.names) + 1 + len(BASE_COLUMNS):
        raise ValueError(f'{path}: the table has {len(columns) - len(BASE_COLUMNS)} score columns, but its classes '
                         f'are {classes.brief(class_list)} (background + one score per class)')
    classes.write_beside(path, class_list, implied=thumos14.THUMOS14_CLASSES)
    header = ','.join(columns + ([ANCHOR_COLUMN] if ANCHOR_COLUMN in df.columns else []))
    table = _predictions_arrow_table(df, columns)
    if table is None:
        _write_predictions_text(path, df, header, columns)
        return
    with atomic_path(path) as tmp:
        with pa.OSFile(tmp, 'wb') as sink:
            sink.write((header + '\n').encode())
            pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, quoting_style='none'))


def _predictions_arrow_table(df, columns=None):
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
    columns = columns or pred_columns(num_scores(df.columns))
    arrays = [video, start] + [float_text(df[c].to_numpy(np.float64)) for c in columns[2:]]
    if ANCHOR_COLUMN in df.columns:
        anchor = df[ANCHOR_COLUMN].to_numpy()
        if anchor.dtype.kind not in 'iuf' or not np.isfinite(anchor).all():
            return None
        arrays.append(pa.array(anchor.astype(np.int64)))   # int(a), as the plain writer writes it
    return pa.table(arrays, names=[f'c{i}' for i in range(len(arrays))])


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


def _write_predictions_text(path, df, header, columns=None):
    """The exact-bytes writer in plain Python (floats as repr), for tables pyarrow cannot write so."""
    columns = columns or pred_columns(num_scores(df.columns))
    heads = [f'{video},{start},' for video, start in zip(df['video_name'].tolist(), df['start'].tolist())]
    values = df[columns[2:]].to_numpy(np.float64).tolist()
    if ANCHOR_COLUMN in df.columns:
        # The anchor index goes last, so the method.md §2 columns stay byte for byte as they are.
        tails = [f',{int(a)}\n' for a in df[ANCHOR_COLUMN].tolist()]
    else:
        tails = ['\n'] * len(heads)
    with atomic_open(path) as f:
        f.write(header + '\n')
        f.writelines(head + ','.join(map(repr, row)) + tail for head, row, tail in zip(heads, values, tails))
