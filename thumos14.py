"""THUMOS14 facts and file formats, each defined once (docs/method.md §1-2).

- the 20 detection classes: THUMOS14 ids, names, the model's class indices (THUMOS14_CLASSES, a
  classes.ClassList);
- frame rates: the built-in table of the test videos that are not 30 fps, and the
  optional `video,fps` CSV (config field `fps_file`);
- the feature-folder name `<root>/<split>/<mode>DataX<pretrain>`;
- the field's annotation JSON (ActionFormer / OpenTAD: `{"database": {video: {...}}}`), read and
  checked into tables in seconds (docs/method.md §15; json_dataset.py turns them into frames);
- the result-file line `video start_s end_s class_id score` (writer and reader), and
  the whitespace-separated text the evaluation kit's files share.

Nothing here knows about models or configs: every other module may import it (it imports only
fileio and classes).
"""
import csv
import json
import os
import re
import warnings
from collections import Counter

import numpy as np
import pandas as pd

import classes
from fileio import atomic_open

# --- classes ---

# Model class index k (1..20) <-> THUMOS14 class id CLASS_REAL[k]; 0 is background.
CLASS_REAL = [0, 7, 9, 12, 21, 22, 23, 24, 26, 31, 33, 36, 40, 45, 51, 68, 79, 85, 92, 93, 97]
CLASS_NAMES = ['Background', 'BaseballPitch', 'BasketballDunk', 'Billiards', 'CleanAndJerk',
               'CliffDiving', 'CricketBowling', 'CricketShot', 'Diving', 'FrisbeeCatch',
               'GolfSwing', 'HammerThrow', 'HighJump', 'JavelinThrow', 'LongJump', 'PoleVault',
               'Shotput', 'SoccerPenalty', 'TennisSwing', 'ThrowDiscus', 'VolleyballSpiking']
NUM_CLASSES = len(CLASS_REAL)          # 20 actions + background: the width of every class head
CLASS_IDS = CLASS_REAL[1:]             # the 20 action ids, in model-index order
CLASS_NAME_OF_ID = dict(zip(CLASS_IDS, CLASS_NAMES[1:]))
CLASS_ID_OF_NAME = {name: cid for cid, name in CLASS_NAME_OF_ID.items()}
CLASS_INDEX_OF_ID = {cid: k for k, cid in enumerate(CLASS_REAL) if k > 0}
THUMOS14_CLASSES = classes.ClassList(tuple(CLASS_NAMES[1:]), tuple(CLASS_IDS))
# Every CliffDiving instance is also a Diving instance in the ground truth, so post-processing
# repeats each CliffDiving detection as Diving (§10).
CLIFF_DIVING, DIVING = 22, 26

# --- frame rates ---

DEFAULT_FPS = 30.0
# THUMOS14 test videos that are not 30 fps (the release hard-codes this table).
FPS_EXCEPTIONS = {'video_test_0000950': 25.0, 'video_test_0001058': 25.0,
                  'video_test_0001195': 25.0, 'video_test_0001255': 25.0,
                  'video_test_0001459': 25.0, 'video_test_0001207': 24.0}


class FpsTable(dict):
    """video -> fps; videos not in the table are DEFAULT_FPS. Callable too, and works with Series.map."""

    def __missing__(self, video):
        return DEFAULT_FPS

    def __call__(self, video):
        return self[video]


def video_fps(fps_file=''):
    """The fps of every video: `fps_file` (CSV `video,fps`, or the annotation JSON, whose every
    video has its fps) first, then FPS_EXCEPTIONS, then 30."""
    table = FpsTable(FPS_EXCEPTIONS)
    if not fps_file:
        return table
    if not os.path.isfile(fps_file):
        raise ValueError(f'{fps_file}: fps file not found')
    if fps_file.endswith('.json'):
        videos = read_annotation_json(fps_file, class_list=None)['videos']   # any dataset's labels
        table.update(zip(videos['video'], videos['fps'].tolist()))
        return table
    check_text_file(fps_file, 'fps file', 'a CSV "video,fps"')
    try:
        df = pd.read_csv(fps_file, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f'{fps_file}: cannot read as CSV: {err}') from None
    if list(df.columns[:2]) != ['video', 'fps']:
        raise ValueError(f'{fps_file}: the header must be "video,fps", got {",".join(df.columns)}')
    fps = pd.to_numeric(df['fps'], errors='coerce').to_numpy(np.float64)
    names = df['video'].str.strip()
    bad = np.flatnonzero(~(fps > 0) | ~np.isfinite(fps) | (names == '').to_numpy())
    if len(bad):
        raise ValueError(f'{fps_file}:{bad[0] + 2}: expected "<video>,<fps > 0>", got '
                         f'{df["video"].iloc[bad[0]]},{df["fps"].iloc[bad[0]]}')
    repeated = names.duplicated(keep='first').to_numpy()
    if repeated.any():
        i = int(np.flatnonzero(repeated)[0])
        first = int(np.flatnonzero((names == names.iloc[i]).to_numpy())[0])
        raise ValueError(f'{fps_file}:{i + 2}: video {names.iloc[i]} is listed again (first on line {first + 2}); '
                         f'give each video one frame rate')
    table.update(zip(names, fps.tolist()))
    return table


# --- the field's annotation JSON ---

# THUMOS14's subset names in the JSON -> this project's splits: THUMOS14 trains on its validation
# videos. Any other subset name is read too (ActivityNet: training, validation, testing).
JSON_SUBSETS = {'Validation': 'val', 'Test': 'test'}
AMBIGUOUS_LABEL = 'Ambiguous'   # not in the field's JSONs; read as the kit's Ambiguous intervals if there
VIDEO_FIELDS = ('subset', 'duration', 'fps', 'annotations')
# An instance may end this many frames past the video's duration (one I3D clip) and still count as
# inside it: durations are rounded frame counts.
SEGMENT_SLACK_FRAMES = 16


def read_annotation_json(path, class_list=THUMOS14_CLASSES):
    """The field's annotation JSON -> dict of DataFrames, times in seconds:

    videos (video, subset, split (JSON_SUBSETS, else empty), duration, fps), in file order;
    instances (video, label, class_id,
    start, end, end_in_video, past_end), in file order; ambiguous (video, start, end); classes (the
    ClassList used).

    class_list: the classes the labels must name (default THUMOS14's 20; class_id is then the
    THUMOS14 id); None: the file's own labels (classes.from_labels), or THUMOS14's when every
    label is a THUMOS14 class. Segments are as in the file: `past_end` marks an instance that
    starts at or after its video's duration or ends more than SEGMENT_SLACK_FRAMES past it (the
    field's THUMOS14 file has 30), `end_in_video` is its end cut at the duration; whoever reads
    the instances decides what to do with those. Every refusal (a video listed twice, a field
    given twice, a missing field, not a number, a negative start, an end at or before the start,
    an unknown label, a label_id that does not match its label) is one ValueError naming the
    file, the video and the field."""
    db = _json_database(path)
    rows, annos = [], []
    for video, entry in db.items():
        where = f'{path}: video {video}'
        if not isinstance(entry, dict):
            raise ValueError(f'{where}: expected an object with fields {", ".join(VIDEO_FIELDS)}')
        missing = [f for f in VIDEO_FIELDS if f not in entry]
        if missing:
            raise ValueError(f'{where}: missing field {missing[0]!r} (each video needs {", ".join(VIDEO_FIELDS)})')
        if not isinstance(entry['subset'], str) or not entry['subset'].strip():
            raise ValueError(f'{where}: field subset is {entry["subset"]!r}; expected a subset name '
                             f'(THUMOS14: {", ".join(JSON_SUBSETS)})')
        if not isinstance(entry['annotations'], list):
            raise ValueError(f'{where}: field annotations is not a list')
        rows.append((video, entry['subset'], entry['duration'], entry['fps']))
        annos += [(video, k, a) for k, a in enumerate(entry['annotations'])]
    videos = pd.DataFrame(rows, columns=['video', 'subset', 'duration', 'fps'])
    for field in ('duration', 'fps'):
        values = pd.to_numeric(videos[field], errors='coerce').to_numpy(np.float64)
        bad = np.flatnonzero(~(values > 0) | ~np.isfinite(values))
        if len(bad):
            raise ValueError(f'{path}: video {videos["video"][bad[0]]}: field {field} is '
                             f'{videos[field][bad[0]]!r}; expected a number > 0')
        videos[field] = values
    videos['split'] = videos['subset'].map(JSON_SUBSETS).fillna('')
    segments = _json_segments(path, annos, videos)
    ambiguous = (segments['label'] == AMBIGUOUS_LABEL).to_numpy()
    if class_list is None:
        class_list = json_class_list(segments['label'][~ambiguous], segments['label_id'][~ambiguous])
    instances = _json_classes(path, segments, class_list)
    return dict(videos=videos, instances=instances[~ambiguous].reset_index(drop=True),
                ambiguous=segments.loc[ambiguous, ['video', 'start', 'end']].reset_index(drop=True),
                classes=class_list)


def json_class_list(labels, label_ids):
    """The ClassList of a JSON's instance labels: THUMOS14's when every label is a THUMOS14 class
    (result files then carry THUMOS14 ids), else classes.from_labels."""
    labels = list(labels)
    if set(labels) <= set(CLASS_ID_OF_NAME):
        return THUMOS14_CLASSES
    ids = [None if pd.isna(i) else i for i in label_ids]
    return classes.from_labels(labels, ids)


class _JsonObject(dict):
    """A JSON object that remembers the keys it was given more than once (json.load keeps the
    last value of a repeated key without a word: a video listed twice would lose its first entry)."""

    def __init__(self, pairs):
        super().__init__(pairs)
        self.repeated = [key for key, count in Counter(key for key, _ in pairs).items() if count > 1]


def _json_database(path):
    if not os.path.isfile(path):
        raise ValueError(f'{path}: annotation JSON not found')
    check_text_file(path, 'annotation JSON', '{"database": {video: {...}}}')
    try:
        with open(path, encoding='utf-8') as f:
            top = json.load(f, object_pairs_hook=_JsonObject)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f'{path}: not JSON: {err}') from None
    if not isinstance(top, dict) or not isinstance(top.get('database'), dict):
        raise ValueError(f'{path}: missing field \'database\' (expected {{"database": {{video: {{...}}}}}})')
    db = top['database']
    if not db:
        raise ValueError(f'{path}: field database holds no video')
    if db.repeated:
        raise ValueError(f'{path}: video {db.repeated[0]}: listed more than once in field database '
                         f'({len(db.repeated)} such videos: {", ".join(db.repeated[:5])}); json keeps only the last '
                         f'entry: merge them into one')
    for video, entry in db.items():
        parts = [(f'video {video}', entry)] + [(f'video {video}: annotation {k}', a) for k, a in enumerate(
            entry.get('annotations', []) if isinstance(entry, dict) and isinstance(entry.get('annotations'), list)
            else [])]
        for where, obj in parts:
            if isinstance(obj, _JsonObject) and obj.repeated:
                raise ValueError(f'{path}: {where}: field {obj.repeated[0]} given more than once (json keeps '
                                 f'only the last value)')
    return db


def _json_segments(path, annos, videos):
    """The instances of every video as one table, checked with array operations."""
    entries = [a for _, _, a in annos]
    bad = next((i for i, a in enumerate(entries) if not isinstance(a, dict) or 'label' not in a
                or 'segment' not in a), None)
    if bad is not None:
        field = 'label' if isinstance(entries[bad], dict) and 'label' not in entries[bad] else 'segment'
        raise ValueError(f'{path}: video {annos[bad][0]}: annotation {annos[bad][1]}: missing field {field!r}')
    seg = [a['segment'] for a in entries]
    bad = next((i for i, s in enumerate(seg) if not isinstance(s, (list, tuple)) or len(s) != 2), None)
    if bad is not None:
        raise ValueError(f'{path}: video {annos[bad][0]}: annotation {annos[bad][1]}: field segment is '
                         f'{seg[bad]!r}; expected [start_s, end_s]')
    out = pd.DataFrame({'video': [v for v, _, _ in annos], 'number': [k for _, k, _ in annos],
                        'label': [a['label'] if isinstance(a['label'], str) else repr(a['label']) for a in entries],
                        'label_id': [a.get('label_id') for a in entries],
                        'start': pd.to_numeric(pd.Series([s[0] for s in seg], dtype=object), errors='coerce'),
                        'end': pd.to_numeric(pd.Series([s[1] for s in seg], dtype=object), errors='coerce')})
    info = videos.set_index('video').reindex(out['video'])
    duration, fps = info['duration'].to_numpy(), info['fps'].to_numpy()
    start, end = out['start'].to_numpy(np.float64), out['end'].to_numpy(np.float64)

    def fail(mask, what):
        i = np.flatnonzero(mask)
        if len(i):
            r = out.iloc[i[0]]
            raise ValueError(f'{path}: video {r["video"]}: annotation {r["number"]}: {what} '
                             f'(segment [{r["start"]}, {r["end"]}], label {r["label"]!r}, video duration '
                             f'{duration[i[0]]:g} s){f"; {len(i) - 1} more such" if len(i) > 1 else ""}')

    fail(~np.isfinite(start) | ~np.isfinite(end), 'field segment is not two numbers')
    fail(start < 0, 'field segment starts before the video')
    fail(end <= start, 'field segment ends at or before its start')
    out['end_in_video'] = np.minimum(end, duration)
    out['past_end'] = (start >= duration) | (end > duration + SEGMENT_SLACK_FRAMES / fps)
    return out


def _json_classes(path, segments, class_list):
    """The segments with class_id (0 for Ambiguous), their labels and label_ids checked against
    `class_list`."""
    out = segments

    def where(i):
        return f'{path}: video {out["video"][i]}: annotation {out["number"][i]}'

    amb = (out['label'] == AMBIGUOUS_LABEL).to_numpy()
    known = out['label'].isin(list(class_list.names)).to_numpy() | amb
    if not known.all():
        i = int(np.flatnonzero(~known)[0])
        shown = ', '.join(class_list.names[:25]) + (' ...' if len(class_list.names) > 25 else '')
        raise ValueError(f'{where(i)}: field label {out["label"][i]!r} is not a class of the dataset '
                         f'(classes: {shown}){f"; {int((~known).sum()) - 1} more such" if (~known).sum() > 1 else ""}')
    out['class_id'] = out['label'].map(class_list.id_of_name()).fillna(0).astype(np.int64)
    has_id = (~out['label_id'].isna()).to_numpy() & ~amb
    lid = pd.to_numeric(out['label_id'], errors='coerce').to_numpy(np.float64)
    if class_list == THUMOS14_CLASSES:
        # label_id is the class's 0-based index in name order in ActionFormer's file (k - 1 here);
        # the name is the fact, the number is only checked. Either numbering is accepted.
        index = out['label'].map({n: k - 1 for k, n in enumerate(CLASS_NAMES) if k}).to_numpy(np.float64)
        bad = has_id & (lid != index) & (lid != out['class_id'].to_numpy())
        expected = 'its 0-based index in name order, or its THUMOS14 id'
    else:
        # One label_id per label and one label per label_id: the numbering the classes follow.
        pairs = out.loc[has_id, ['label', 'label_id']].astype(str).drop_duplicates()
        clash = set(pairs['label'][pairs['label'].duplicated()]) | \
            set(pairs['label'][pairs['label_id'].duplicated(keep=False)])
        bad = has_id & out['label'].isin(clash).to_numpy()
        expected = 'one label_id per label and one label per label_id'
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f'{where(i)}: field label_id {out["label_id"].tolist()[i]!r} does not match the label '
                         f'{out["label"][i]!r} (expected {expected})')
    return out[['video', 'label', 'class_id', 'start', 'end', 'end_in_video', 'past_end']]


# --- feature folders ---

def feature_folder(root, split, mode, pretrain):
    """`<root>/<split>/<mode>DataX<pretrain>`: the release's name of one stream's feature folder."""
    return os.path.join(root, split, f'{mode}DataX{pretrain}')


# --- whitespace-separated text (result files and the kit's annotation files) ---

class InputWarning(UserWarning):
    """Legal but suspicious input data (a predictions file, a window list, annotations, ...)."""


class EvalWarning(InputWarning):
    """Legal but suspicious evaluation input (no detections, unknown classes, ...)."""


def warn(message, category=InputWarning, stacklevel=3):
    """warnings.warn for suspicious input: the message should name the file and line."""
    warnings.warn(message, category, stacklevel=stacklevel)


def format_warning(message, *args, **kwargs):
    """A script's warnings as one `warning: ...` line (set as warnings.formatwarning in main())."""
    return f'warning: {message}\n'


def check_text_file(path, what, expected):
    """ValueError naming `path` when its start shows it is not UTF-8 text: NUL bytes (a binary,
    UTF-16 or UTF-32 file) or a UTF-16/32 byte-order mark. Reads only the first 64 KiB."""
    with open(path, 'rb') as f:
        head = f.read(1 << 16)
    bom = next((name for mark, name in ((b'\xff\xfe', 'UTF-16/32 LE'), (b'\xfe\xff', 'UTF-16 BE'),
                                        (b'\x00\x00\xfe\xff', 'UTF-32 BE')) if head.startswith(mark)), None)
    nul = head.find(b'\0')
    if bom or nul >= 0:
        found = f'a {bom} byte-order mark' if bom else f'a NUL byte at byte {nul}'
        raise ValueError(f'{path}: not a text file ({found}: binary, or UTF-16/32 text); the {what} must be '
                         f'plain UTF-8 (or ASCII) text: {expected}')


def read_fields(path, ncols, what, numeric=()):
    """Whitespace-separated text -> DataFrame, one row per line (blank lines dropped).

    Columns `numeric` come back as float64 when every line parses (the fast path),
    else every column is text and the caller's checks find the bad line. The index is
    the 1-based line number, so errors can name file:line.
    """
    if not os.path.isfile(path):
        raise ValueError(f'{what} not found: {path}')
    check_text_file(path, what, f'{ncols} whitespace-separated fields per line')
    try:
        return _read_fields(path, ncols, numeric)
    except UnicodeDecodeError as err:
        raise ValueError(f'{path}: not a text file ({err.reason} at byte {err.start}); '
                         f'expected {ncols} whitespace-separated fields per line') from None


def _read_fields(path, ncols, numeric):
    # One spare column catches lines with too many fields; more than one spare makes
    # the C parser itself complain (with the line number).
    kwargs = dict(sep=r'\s+', header=None, names=range(ncols + 1), na_filter=False, skip_blank_lines=False,
                  quoting=csv.QUOTE_NONE, engine='c')
    try:
        df = pd.read_csv(path, dtype={k: (np.float64 if k in numeric else object) for k in range(ncols + 1)},
                         **kwargs)
        if len(df) and (df[ncols] != '').any():
            raise ValueError('too many fields')
        df.index = np.arange(1, len(df) + 1)
        return df[list(range(ncols))]
    except pd.errors.EmptyDataError:
        return pd.DataFrame({k: pd.Series(dtype=object) for k in range(ncols)})
    except UnicodeDecodeError:
        raise
    except (ValueError, pd.errors.ParserError):
        pass  # some line is not regular: read it all as text to say which one
    try:
        df = pd.read_csv(path, dtype=str, **kwargs)
    except pd.errors.ParserError as err:
        found = re.search(r'in line (\d+), saw (\d+)', str(err))
        if not found:
            raise ValueError(f'{path}: {str(err).strip()}') from None
        # The tokenizer stops at a line with too many fields; an earlier line may
        # have too few, and the first bad line is the one to report.
        df = pd.read_csv(path, dtype=str, nrows=int(found[1]) - 1, **kwargs)
        if len(df) == 0 or not ((df[ncols] != '') | (df[ncols - 1] == '') & ~(df == '').all(axis=1)).any():
            raise ValueError(f'{path}:{found[1]}: expected {ncols} fields, got {found[2]}') from None
    df.index = np.arange(1, len(df) + 1)
    blank = (df == '').all(axis=1).to_numpy()
    df = df[~blank]
    bad = (df[ncols] != '').to_numpy() | (df[ncols - 1] == '').to_numpy()
    if bad.any():
        line = df.index[np.argmax(bad)]
        nfields = int((df.loc[line] != '').sum())
        raise ValueError(f'{path}:{line}: expected {ncols} fields, got {nfields}')
    return df[list(range(ncols))]


def numeric_field(df, col, path, name, integer=False):
    """Column of strings -> finite float64 (or int64) array; the first bad line is an error."""
    text = df[col]
    if text.dtype == np.float64:
        values = text.to_numpy()
    else:
        values = pd.to_numeric(text, errors='coerce').to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if integer:
        bad |= values != np.round(values)
    if bad.any():
        i = np.argmax(bad)
        kind = 'an integer' if integer else 'a finite number'
        raise ValueError(f'{path}:{df.index[i]}: field {col + 1} ({name}) is {text.iloc[i]!r}, expected {kind}')
    return values.astype(np.int64) if integer else values


# --- result files ---

RESULT_FORMAT = '%s\t%.3f\t%.3f\t%d\t%.4f\n'   # video, start (s), end (s), class id, score
RESULT_COLUMNS = ['video', 'start', 'end', 'class_id', 'score']


def format_results(det):
    """The result-file text of a detections DataFrame (RESULT_COLUMNS)."""
    rows = zip(det['video'].tolist(), det['start'].tolist(), det['end'].tolist(),
               det['class_id'].tolist(), det['score'].tolist())
    return ''.join(map(RESULT_FORMAT.__mod__, rows))


def result_bytes(names, video, start, end, class_id, score, map_parts=None):
    """format_results' bytes, built in numpy: each field as right-aligned ASCII digits in a byte
    matrix, one row per line, 0 where a field is shorter than its column, and the 0s dropped.
    Values numpy cannot print exactly as % does (near a rounding tie, negative, huge,
    non-finite) are printed by Python. names [V]: the video names; video [N]: indices into them.
    map_parts(fn) -> [fn(slice), ...] may format blocks of lines in threads (default: one block).
    None when a name is not ASCII (its bytes would depend on the locale) or holds a NUL."""
    names = [str(v) for v in names]   # what '%s' prints
    if not all(name.isascii() and '\0' not in name for name in names):
        return None
    table = np.zeros((len(names), max(map(len, names), default=0)), np.uint8)
    for i, name in enumerate(names):   # a loop over videos: a few hundred
        table[i, :len(name)] = np.frombuffer(name.encode('ascii'), np.uint8)
    columns = [np.asarray(c) for c in (video, start, end, class_id, score)]
    map_parts = map_parts or (lambda fn: [fn(slice(0, len(columns[0])))])
    return b''.join(map_parts(lambda part: _lines_bytes(names, table, *[c[part] for c in columns])))


def _lines_bytes(names, table, video, start, end, class_id, score):
    """result_bytes of some detections: names and their bytes (table [V, width], 0-padded)."""
    n = len(video)
    class_id = class_id.astype(np.int64)
    start_text, start_ok = _fixed_digits(start, 3)
    end_text, end_ok = _fixed_digits(end, 3)
    score_text, score_ok = _fixed_digits(score, 4)
    class_text = _digits(np.maximum(class_id, 0), len(str(max(int(class_id.max(initial=0)), 0))))
    tab, newline = np.full((n, 1), ord('\t'), np.uint8), np.full((n, 1), ord('\n'), np.uint8)
    lines = np.concatenate([table[video], tab, start_text, tab, end_text, tab, class_text, tab, score_text, newline],
                           axis=1)
    # Lines with a value numpy cannot print as % does are printed by Python and spliced in.
    odd = np.flatnonzero(~(start_ok & end_ok & score_ok & (class_id >= 0)))
    lines[odd] = 0
    text = lines[lines != 0].tobytes()
    if not odd.size:
        return text
    length = np.count_nonzero(lines, axis=1)
    at = (np.cumsum(length) - length)[odd]   # where each odd line goes in the text
    pieces = np.split(np.frombuffer(text, np.uint8), at)
    values = zip(video[odd].tolist(), start[odd].tolist(), end[odd].tolist(), class_id[odd].tolist(),
                 score[odd].tolist())
    extra = [(RESULT_FORMAT % (names[v], *rest)).encode('ascii') for v, *rest in values]
    return b''.join(p for pair in zip(pieces, extra + [b'']) for p in (pair[0].tobytes(), pair[1]))


def _fixed_digits(values, decimals):
    """f'%.{decimals}f' % v of every value as right-aligned ASCII bytes [n, w] (0 = no byte),
    and where that is exact.

    k = x * 10^d rounded to an integer gives the digits. Below 1e9 the product is within
    1.2e-7 of the exact one, so k is what % prints (the exact value, correctly rounded) unless
    the product lies within 1e-6 of a half: those values, negative ones ('-0.000'), the huge
    and the non-finite (a few in a million) are not exact here.
    """
    x = np.asarray(values, np.float64)
    with np.errstate(invalid='ignore', over='ignore'):
        y = x * 10.0 ** decimals
        whole = np.floor(y)
        frac = y - whole
        exact = (y < 1e9) & ~np.signbit(x) & (np.abs(frac - 0.5) > 1e-6)
    units, part = np.divmod(np.where(exact, whole + (frac > 0.5), 0).astype(np.int64), 10 ** decimals)
    point = np.full((len(x), 1), ord('.'), np.uint8)
    width = len(str(int(units.max(initial=0))))
    return np.concatenate([_digits(units, width), point, _digits(part, decimals, pad=True)], axis=1), exact


def _digits(values, width, pad=False):
    """Decimal digits of non-negative int64 `values` below 10^width, right-aligned in [n, width]
    ASCII bytes: leading zeros are 0 (no byte), or '0' with `pad`; a value 0 is '0'. One
    division by 10 per digit (a scalar divisor, which numpy divides by fast)."""
    out = np.zeros((len(values), width), np.uint8)
    rest = values.astype(np.int32 if values.max(initial=0) < 2 ** 31 else np.int64)
    for j in range(width - 1, -1, -1):
        higher = rest // 10
        digit = (rest - higher * 10 + ord('0')).astype(np.uint8)
        out[:, j] = digit if pad or j == width - 1 else np.where(rest > 0, digit, 0)
        rest = higher
    return out


def write_results(path, det):
    """Write detections as a THUMOS14 result file (format_results' bytes), atomically."""
    codes, names = pd.factorize(det['video'])
    text = result_bytes(names, codes, det['start'], det['end'], det['class_id'], det['score'])
    if text is None:
        with atomic_open(path, 'w') as f:
            f.write(format_results(det))
        return
    with atomic_open(path, 'wb') as f:
        f.write(text)


def read_results(path, class_ids=None):
    """Read a THUMOS14 result file -> DataFrame(video, start, end, class_id, score), file order.

    '.mp4' is removed from video names (as the kit does). With `class_ids`, lines of
    other classes are counted, reported once and dropped; the count is in
    df.attrs['num_unknown'].
    """
    path = str(path)
    df = read_fields(path, 5, 'result file', numeric=(1, 2, 3, 4))
    out = pd.DataFrame({
        'video': df[0].str.replace('.mp4', '', regex=False).to_numpy(dtype=object),
        'start': numeric_field(df, 1, path, 'start'),
        'end': numeric_field(df, 2, path, 'end'),
        'class_id': numeric_field(df, 3, path, 'class id', integer=True),
        'score': numeric_field(df, 4, path, 'score'),
    })
    out.attrs['num_unknown'] = 0
    if len(out) == 0:
        warnings.warn(f'{path}: no detections; every AP is 0', EvalWarning, stacklevel=2)
    if class_ids is not None:
        out = drop_unknown_classes(out, class_ids, path)
    return out


def drop_unknown_classes(det, class_ids, source):
    """Detections of the classes `class_ids` only; the others are counted and reported once."""
    known = np.isin(det['class_id'].to_numpy(), np.asarray(class_ids))
    num_unknown = int((~known).sum()) + det.attrs.get('num_unknown', 0)
    if not known.all():
        ids = sorted(set(det['class_id'].to_numpy()[~known].tolist()))
        warnings.warn(f'{source}: {int((~known).sum())} detections with class ids {ids[:10]}'
                      f'{" ..." if len(ids) > 10 else ""} that are not THUMOS14 detection classes: ignored',
                      EvalWarning, stacklevel=3)
        det = det[known].reset_index(drop=True)
    det.attrs['num_unknown'] = num_unknown
    return det
