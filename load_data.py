"""THUMOS14 data: annotations, sliding windows, training boxes, features, batches.

Everything the other stages read goes through here (docs/method.md §2, §3, §8, §14):

    anno = read_annotation(csv)                      # validated annotation rows
    starts, videos = make_windows(anno, 'val', cfg)  # method.md §3 sliding windows
    gt = make_gt(anno, starts, videos, cfg)          # boxes kept by the 0.9 rule
    features = load_features(cfg, 'val', starts, videos)  # [W, 128, D] of a feature folder
    for idx in epoch_batches(len(starts), cfg, epoch): ...

Feature layouts under `<feature_path>/<split>/<mode>DataX<pretrain>/`, tried in this order:
  packed.npy      one [W, 128, D] array (float32 or float16), window i = row i; written by
                  data/pack_features.py from the per-window folder; memory-mappable.
  0.npy ...       one [128, D] file per window, window i = `<i>.npy` (the released layout).
  <video>.npy     one [T, D] file per video, one step per 4 frames; window at start frame s
                  is steps s // 4 .. s // 4 + 127, a short tail padded with the last step.
Mode `concat` (early fusion) reads the spatial and the temporal folder and puts them side by side.
The field's JSON and <video>.npy folder (cfg.data_source = 'i3d') are read by i3d.py, which builds on
this module; dataset.py picks between the two for train.py and test.py.
"""
import builtins
import os
import pickle
import re
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

import feature_sidecar
from config import CONCAT_STREAMS, get_anno_path, get_data_x_path
from fileio import atomic_open, atomic_path
from thumos14 import CLASS_INDEX_OF_ID, NUM_CLASSES, check_text_file, warn

ANNOTATION_COLUMNS = ('video', 'type', 'type_idx', 'startFrame', 'endFrame', 'frame_num')
TRIM_FRAMES = 9        # the released window generator ignores the last 9 frames of every video
FRAMES_PER_STEP = feature_sidecar.FRAMES_PER_STEP
PACKED_NAME = 'packed.npy'


# --- annotations ---

def read_annotation(path):
    """Read and validate a `thumos14_<split>_annotation.csv` (method.md §2).

    Errors name the file and the line (line 1 is the header). A file with no instance is an
    error (every window would be background); repeated rows are warned about."""
    if not os.path.isfile(path):
        raise ValueError(f'{path}: annotation file not found')
    check_text_file(path, 'annotation file', f'a CSV with the header {",".join(ANNOTATION_COLUMNS)}')
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f'{path}: cannot read as CSV: {err}') from None
    except ValueError as err:   # NUL bytes, UTF-16 and the like, as pandas reports them
        raise ValueError(f'{path}: cannot read as CSV: {err}') from None
    missing = [c for c in ANNOTATION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f'{path}: missing column(s) {missing}; the header must be {",".join(ANNOTATION_COLUMNS)}')
    df = df[list(ANNOTATION_COLUMNS)].copy()
    if len(df) == 0:
        raise ValueError(f'{path}:2: no annotation rows after the header: with no action instance every window '
                         f'would be background; give the rows {",".join(ANNOTATION_COLUMNS)}, one per instance')
    lines = np.arange(len(df)) + 2

    def fail(mask, what):
        bad = np.flatnonzero(np.asarray(mask))
        if len(bad):
            i = bad[0]
            row = ','.join(str(df[c].iloc[i]) for c in ANNOTATION_COLUMNS)
            more = f' (and {len(bad) - 1} more rows)' if len(bad) > 1 else ''
            raise ValueError(f'{path}:{lines[i]}: {what}: {row}{more}')

    fail(df['video'].str.strip() == '', 'empty video name')
    for col in ('type_idx', 'startFrame', 'endFrame', 'frame_num'):
        fail(~df[col].str.strip().str.fullmatch(r'-?\d+'), f'{col} is not an integer')
        df[col] = df[col].astype(np.int64)
    df['video'] = df['video'].str.strip()
    fail(~df['type_idx'].isin(list(CLASS_INDEX_OF_ID)),
         f'unknown class id (type_idx); THUMOS14 ids are {sorted(CLASS_INDEX_OF_ID)}')
    fail(df['startFrame'] < 0, 'startFrame is negative')
    fail(df['endFrame'] <= df['startFrame'], 'endFrame <= startFrame')
    fail(df['frame_num'] <= 0, 'frame_num must be positive')
    fail(df.groupby('video')['frame_num'].transform('nunique') > 1, 'frame_num differs between rows of one video')
    fail(df['endFrame'] > df['frame_num'], 'endFrame is beyond frame_num, the video\'s length; '
         'fix the instance or the frame count')
    repeated = df.duplicated(['video', 'type_idx', 'startFrame', 'endFrame'], keep='first').to_numpy()
    if repeated.any():
        i = int(np.flatnonzero(repeated)[0])
        same = (df[['video', 'type_idx', 'startFrame', 'endFrame']] == df.iloc[i][['video', 'type_idx', 'startFrame',
                                                                                 'endFrame']]).all(axis=1)
        first = int(np.flatnonzero(same.to_numpy())[0])
        warn(f'{path}:{lines[i]}: instance repeats line {lines[first]} ({df["video"].iloc[i]}, '
             f'type_idx {df["type_idx"].iloc[i]}, frames {df["startFrame"].iloc[i]}-{df["endFrame"].iloc[i]}); '
             f'{int(repeated.sum())} repeated rows in all, each trains as a second box')
    return df.reset_index(drop=True)


def _is_training(split, cfg):
    if isinstance(split, (bool, np.bool_)):
        return bool(split)
    if split in (cfg.train_split_set, 'val', 'train'):
        return True
    if split in (cfg.test_split_set, 'test'):
        return False
    raise ValueError(f'unknown split {split!r}: expected {cfg.train_split_set!r} or {cfg.test_split_set!r}')


# --- sliding windows (method.md §3) ---

def candidate_windows(anno_df, training, cfg):
    """All sliding windows of every annotated video, before the training filter.

    Videos in name order, starts ascending; the end-aligned window is kept even when a stride
    window already starts there (the released lists have such repeats)."""
    per_video = anno_df.groupby('video', sort=True)['frame_num'].first()
    names = per_video.index.to_numpy(dtype=str)
    length = per_video.to_numpy(np.int64) - TRIM_FRAMES
    stride = cfg.train_stride if training else cfg.test_stride
    size = cfg.window_size
    n = np.maximum((length + stride - size) // stride, 0)
    if not training:
        n = np.maximum(n, 1)                      # a short test video still gets one (padded) window
    tail = length > size
    counts = n + tail
    video_of = np.repeat(np.arange(len(names)), counts)
    first = np.cumsum(counts) - counts
    k = np.arange(counts.sum()) - first[video_of]  # position of the window inside its video
    starts = np.where(k < n[video_of], k * stride, length[video_of] - size).astype(np.int64)
    return starts, names[video_of]


def make_gt(anno_df, starts, videos, cfg):
    """Boxes of the instances each window keeps (> cfg.overlap_ratio_threshold inside).

    Returns dict(start [W], video [W], offsets [W+1], label [M] (1..20), box [M,3] float32
    (xmin, xmax, overlap ratio), xmin/xmax normalised to the window). Instances of a window
    keep the annotation file's order."""
    starts = np.asarray(starts, dtype=np.int64)
    videos = np.asarray(videos, dtype=str)
    if len(starts) != len(videos):
        raise ValueError(f'{len(starts)} window starts but {len(videos)} window videos')
    # Pair every window with every instance of its video, then keep the pairs that pass the rule.
    anno = anno_df.reset_index(drop=True)
    order = np.argsort(anno['video'].to_numpy(dtype=str), kind='stable')
    inst_video = anno['video'].to_numpy(dtype=str)[order]
    lo = np.searchsorted(inst_video, videos, side='left')
    hi = np.searchsorted(inst_video, videos, side='right')
    per_window = hi - lo
    win = np.repeat(np.arange(len(starts)), per_window)
    rank = np.arange(per_window.sum()) - np.repeat(np.cumsum(per_window) - per_window, per_window)
    inst = order[lo[win] + rank]
    s = anno['startFrame'].to_numpy(np.float64)[inst]
    e = anno['endFrame'].to_numpy(np.float64)[inst]
    w0 = starts[win].astype(np.float64)
    w1 = w0 + cfg.window_size
    inside = np.minimum(w1, e) - np.maximum(s, w0)
    ratio = inside / (e - s)
    keep = ratio > cfg.overlap_ratio_threshold
    win, inst, ratio = win[keep], inst[keep], ratio[keep]
    box = np.stack([(np.maximum(s[keep], w0[keep]) - w0[keep]) / cfg.window_size,
                    (np.minimum(e[keep], w1[keep]) - w0[keep]) / cfg.window_size, ratio], axis=1)
    id_to_index = np.zeros(max(CLASS_INDEX_OF_ID) + 1, dtype=np.int64)
    id_to_index[list(CLASS_INDEX_OF_ID)] = list(CLASS_INDEX_OF_ID.values())
    label = id_to_index[anno['type_idx'].to_numpy(np.int64)[inst]]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(win, minlength=len(starts)))]).astype(np.int64)
    return dict(start=starts, video=videos, offsets=offsets, label=label, box=box.astype(np.float32))


def make_windows(anno_df, split, cfg):
    """method.md §3 windows of a split: (starts int64 [W], videos str [W]).

    `split` is 'val' / 'test' (cfg.train_split_set / cfg.test_split_set) or training=True/False.
    Training windows are the candidates that keep at least one instance."""
    training = _is_training(split, cfg)
    starts, videos = candidate_windows(anno_df, training, cfg)
    if training:
        has_box = np.diff(make_gt(anno_df, starts, videos, cfg)['offsets']) > 0
        starts, videos = starts[has_box], videos[has_box]
    return starts, videos


# --- window lists ---

_WINDOW_LINE = re.compile(r'\s*(\d+)\s*,\s*(\S+)\s*')


def read_window_info(path):
    """Read a `window_info.log` (`<start_frame>, <video>` per line) -> (starts int64, videos str)."""
    if not os.path.isfile(path):
        raise ValueError(f'{path}: window list not found (data/gen_data_info.py writes it)')
    check_text_file(path, 'window list', '"<start_frame>, <video>" per line')
    starts, videos = [], []
    with open(path, encoding='utf-8') as f:
        number = 0
        try:
            for number, line in enumerate(f, 1):
                match = _WINDOW_LINE.fullmatch(line.rstrip('\n'))
                if not match:
                    raise ValueError(f'{path}:{number}: expected "<start_frame>, <video>", got {line.rstrip()!r}')
                starts.append(int(match.group(1)))
                videos.append(match.group(2))
        except UnicodeDecodeError as err:
            raise ValueError(f'{path}:{number + 1}: not UTF-8 text ({err.reason}); expected '
                             f'"<start_frame>, <video>" per line') from None
    if not starts:
        raise ValueError(f'{path}: window list is empty')
    return np.array(starts, dtype=np.int64), np.array(videos, dtype=str)


def write_window_info(path, starts, videos):
    if len(starts) != len(videos):
        raise ValueError(f'{path}: {len(starts)} starts but {len(videos)} videos')
    with atomic_open(path) as f:
        f.write(''.join(f'{int(s)}, {v}\n' for s, v in zip(starts, videos)))


def write_split_info(anno_path, split, out_dir, cfg, windows=None):
    """Write out_dir/window_info.log and, for the training split, out_dir/gt.npz; returns the window count.

    `windows` (a window_info.log) replaces the generated list, e.g. to follow the released order."""
    anno = read_annotation(anno_path)
    training = _is_training(split, cfg)
    starts, videos = read_window_info(windows) if windows else make_windows(anno, training, cfg)
    if windows:
        check_windows_against_annotation(anno, anno_path, starts, videos, windows, training, cfg)
    if training:
        gt = make_gt(anno, starts, videos, cfg)
        empty = np.flatnonzero(np.diff(gt['offsets']) == 0)
        if len(empty):
            i = empty[0]
            raise ValueError(f'{windows}:{i + 1}: window ({starts[i]}, {videos[i]}) keeps no instance of {anno_path}')
        save_gt(os.path.join(out_dir, 'gt.npz'), gt)
    write_window_info(os.path.join(out_dir, 'window_info.log'), starts, videos)
    return len(starts)


# --- training ground truth ---

GT_FIELDS = ('start', 'video', 'offsets', 'label', 'box')


def save_gt(path, gt):
    check_gt(gt, path)
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:   # a file object, so numpy does not append '.npz' to the temporary name
            np.savez(f, start=np.asarray(gt['start'], np.int64), video=np.asarray(gt['video'], dtype=str),
                     offsets=np.asarray(gt['offsets'], np.int64), label=np.asarray(gt['label'], np.int64),
                     box=np.asarray(gt['box'], np.float32))


def check_gt(gt, path='ground truth'):
    """Raise ValueError naming `path` and the field when the arrays do not fit together."""
    missing = [k for k in GT_FIELDS if k not in gt]
    if missing:
        raise ValueError(f'{path}: missing array(s) {missing}')
    w, m = len(gt['start']), len(gt['label'])
    offsets = np.asarray(gt['offsets'])
    problems = []
    if len(gt['video']) != w:
        problems.append(f'video has {len(gt["video"])} entries, start has {w}')
    if offsets.shape != (w + 1,):
        problems.append(f'offsets has shape {offsets.shape}, expected ({w + 1},) for {w} windows')
    elif offsets[0] != 0 or offsets[-1] != m or np.any(np.diff(offsets) < 0):
        problems.append(f'offsets must rise from 0 to the number of boxes ({m})')
    if np.shape(gt['box']) != (m, 3):
        problems.append(f'box has shape {np.shape(gt["box"])}, expected ({m}, 3)')
    label = np.asarray(gt['label'])
    if m and (label.min() < 1 or label.max() >= NUM_CLASSES):
        bad = int(np.flatnonzero((label < 1) | (label >= NUM_CLASSES))[0])
        problems.append(f'label[{bad}] = {label[bad]} is not a class index 1..{NUM_CLASSES - 1}')
    box = np.asarray(gt['box'], dtype=np.float64)
    if box.shape == (m, 3) and not np.isfinite(box).all():
        problems.append(f'box[{int(np.flatnonzero(~np.isfinite(box).all(1))[0])}] is not finite')
    if problems:
        raise ValueError(f'{path}: ' + '; '.join(problems))


def load_gt(path):
    """Read a gt.npz written by save_gt (no pickles)."""
    if not os.path.isfile(path):
        raise ValueError(f'{path}: ground-truth file not found (data/gen_data_info.py writes it)')
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError(f'a single .npy array, not an .npz archive of {", ".join(GT_FIELDS)}')
        with z:
            gt = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as err:
        # BadZipFile: a truncated or foreign file ("File is not a zip file" says no path).
        raise ValueError(f'{path}: cannot read as .npz: {err}; regenerate it with data/gen_data_info.py') from None
    check_gt(gt, path)
    gt['video'] = gt['video'].astype(str)
    return gt


def pad_gt(gt):
    """Dense per-window ground truth, so a batch is an index-select.

    Returns gt_label int64 [W, Mmax] (0 = padding), gt_box float32 [W, Mmax, 2] (xmin, xmax),
    gt_valid bool [W, Mmax]."""
    offsets = np.asarray(gt['offsets'], dtype=np.int64)
    counts = np.diff(offsets)
    w, mmax = len(counts), max(int(counts.max(initial=0)), 1)
    win = np.repeat(np.arange(w), counts)
    slot = np.arange(offsets[-1]) - offsets[win]
    gt_label = np.zeros((w, mmax), np.int64)
    gt_box = np.zeros((w, mmax, 2), np.float32)
    gt_valid = np.zeros((w, mmax), bool)
    gt_label[win, slot] = gt['label']
    gt_box[win, slot] = np.asarray(gt['box'])[:, :2]
    gt_valid[win, slot] = True
    return gt_label, gt_box, gt_valid


# --- released pickles ---

import io  # noqa: E402 - used by the restricted unpickler only
import operator  # noqa: E402
import pickletools  # noqa: E402

# What a pickle may build is bounded by its size: BUILD_FACTOR bytes per byte of file (at least
# BUILD_MIN in all). A released ground-truth pickle only builds what it holds (arrays come with
# their data), so this refuses nothing real, only a few bytes that claim gigabytes.
BUILD_FACTOR = 16
BUILD_MIN = 1 << 20


def _latin1_encode(text, encoding='latin1'):
    # Pickles written by Python 3 with protocol 2 store bytes as _codecs.encode(str, 'latin1').
    if encoding.lower().replace('-', '') != 'latin1':
        raise pickle.UnpicklingError(f'refused _codecs.encode with encoding {encoding!r}')
    return text.encode('latin1')


def _count_size(args, kwargs):
    """Bytes bytes(x) / bytearray(x) will allocate beyond its argument: x itself when it is an integer."""
    value = args[0] if args else kwargs.get('source')
    if value is not None and not isinstance(value, (str, bytes, bytearray, list, tuple)) \
            and hasattr(type(value), '__index__'):
        return max(operator.index(value), 0)
    return 0


def _array_bytes(shape, dtype):
    shape = (shape,) if hasattr(type(shape), '__index__') else tuple(shape)
    count = 1
    for n in shape:
        count *= max(operator.index(n), 0)   # Python integers: no overflow to a small number
    return count * np.dtype(dtype).itemsize


def _ndarray_size(args, kwargs):
    shape = args[0] if args else kwargs.get('shape', ())
    dtype = args[1] if len(args) > 1 else kwargs.get('dtype', float)
    return _array_bytes(shape, dtype)


def _reconstruct_size(args, kwargs):   # _reconstruct(subtype, shape, dtype): an empty array of that shape
    return _array_bytes(args[1], args[2]) if len(args) >= 3 else 0


def _scalar_size(args, kwargs):
    return np.dtype(args[0]).itemsize if args else 0


def _allowed_globals():
    """{(module, name): (callable, size)}: size(args, kwargs) is what a call allocates, or None."""
    allowed = {('builtins', n): (getattr(builtins, n), None)
               for n in ('list', 'dict', 'tuple', 'set', 'frozenset', 'int', 'float', 'complex', 'bool', 'str')}
    allowed.update({('builtins', n): (getattr(builtins, n), _count_size) for n in ('bytearray', 'bytes')})
    allowed.update({('__builtin__', n): f for (_, n), f in list(allowed.items())})
    allowed[('_codecs', 'encode')] = (_latin1_encode, None)
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        allowed[(module, '_reconstruct')] = (multiarray._reconstruct, _reconstruct_size)
        allowed[(module, 'scalar')] = (multiarray.scalar, _scalar_size)
    numeric = np._core.numeric if hasattr(np, '_core') else np.core.numeric
    for module in ('numpy.core.numeric', 'numpy._core.numeric'):   # arrays in pickle protocol 5
        allowed[(module, '_frombuffer')] = (numeric._frombuffer, None)   # a view of bytes in the file
    allowed[('numpy', 'ndarray')] = (np.ndarray, _ndarray_size)
    allowed[('numpy', 'dtype')] = (np.dtype, None)
    for name in dir(np.dtypes):   # numpy >= 1.25 pickles dtypes as numpy.dtypes.Float32DType etc.
        if name.endswith('DType') and name not in ('StringDType',):
            allowed[('numpy.dtypes', name)] = (getattr(np.dtypes, name), None)
    return allowed


_LENGTH_FIELDS = {pickletools.TAKEN_FROM_ARGUMENT1: (1, False), pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
                  pickletools.TAKEN_FROM_ARGUMENT4U: (4, False), pickletools.TAKEN_FROM_ARGUMENT8U: (8, False)}


def _check_opcodes(data):
    """Walk the opcodes of `data` (without running them); UnpicklingError for one that would make
    the C unpickler allocate what the file cannot hold: a counted string or frame (BINBYTES8,
    BYTEARRAY8, FRAME, ...) longer than the rest of the file, which it allocates before reading,
    or a memo index (LONG_BINPUT, PUT) beyond the file's length, which grows the memo to twice it."""
    pos, end = 0, len(data)
    while pos < end:
        op = pickletools.code2op.get(chr(data[pos]))
        if op is None:
            return   # the unpickler reports it
        at, pos = pos, pos + 1
        arg = op.arg
        if arg is None:
            if op.name == 'STOP':
                return
            continue
        if arg.n >= 0:
            value = int.from_bytes(data[pos:pos + arg.n], 'little')
            pos += arg.n
            if op.name == 'FRAME' and value > end - pos:
                raise pickle.UnpicklingError(f'byte {at}: FRAME of {value:,} bytes, but {end - pos:,} remain')
        elif arg.n == pickletools.UP_TO_NEWLINE:
            line_end = data.find(b'\n', pos)
            if op.name in ('GLOBAL', 'INST') and line_end >= 0:
                line_end = data.find(b'\n', line_end + 1)
            if line_end < 0:
                return
            value, pos = data[pos:line_end], line_end + 1
            if op.name in ('PUT', 'GET') and value.strip().isdigit():
                value = int(value)
        else:
            width, signed = _LENGTH_FIELDS[arg.n]
            value = int.from_bytes(data[pos:pos + width], 'little', signed=signed)
            pos += width
            if value > end - pos:
                raise pickle.UnpicklingError(f'byte {at}: {op.name} claims {value:,} bytes, but {end - pos:,} remain')
            pos += max(value, 0)
            continue
        if op.name in ('PUT', 'BINPUT', 'LONG_BINPUT') and isinstance(value, int) and value > end:
            raise pickle.UnpicklingError(f'byte {at}: {op.name} memo index {value:,} in a file of {end:,} bytes')


class _RestrictedUnpickler(pickle.Unpickler):
    """Only the allowed globals, and all they build together within `budget` bytes."""
    allowed = None

    def __init__(self, file, budget, **kwargs):
        super().__init__(file, **kwargs)
        self.budget = budget

    def find_class(self, module, name):
        found = self.allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f'refused to load {module}.{name}: only numpy arrays, dtypes and built-in containers are allowed')
        function, size = found
        if size is None:
            return function

        def bounded(*args, **kwargs):
            # numpy.ndarray is both a bounded call and the class argument of _reconstruct
            args = tuple(getattr(a, 'unpickled_global', a) for a in args)
            try:
                need = size(args, kwargs)
            except (TypeError, ValueError, OverflowError):
                need = 0   # arguments the call itself will refuse
            if need > self.budget:
                raise pickle.UnpicklingError(
                    f'refused {module}.{name} of {need:,} bytes: more than this file may build '
                    f'({self.budget:,} bytes left of {BUILD_FACTOR} x its size)')
            self.budget -= need
            return function(*args, **kwargs)
        bounded.unpickled_global = function
        return bounded


def safe_unpickle(path):
    """Load a pickle that may only hold numpy arrays, dtypes and built-in containers.

    Anything else (a function, a class, os.system, ...) is refused with a ValueError naming the
    file, before it can run, and so are a few bytes that would allocate gigabytes (bytearray of
    a huge integer, an empty array of a huge shape, a huge memo index or counted string): what
    the pickle builds is bounded by BUILD_FACTOR x its size. Python 2 pickles (the release's)
    are read with latin1 strings."""
    if not os.path.isfile(path):
        raise ValueError(f'{path}: file not found')
    _RestrictedUnpickler.allowed = _RestrictedUnpickler.allowed or _allowed_globals()
    try:
        with open(path, 'rb') as f:
            data = f.read()
        _check_opcodes(data)
        budget = max(BUILD_MIN, BUILD_FACTOR * len(data))
        # from memory: a file object would preallocate whatever length an opcode claims
        return _RestrictedUnpickler(io.BytesIO(data), budget, encoding='latin1').load()
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, ValueError, IndexError,
            KeyError, OverflowError, MemoryError, RecursionError) as err:
        raise ValueError(f'{path}: unsafe or unreadable pickle: {type(err).__name__}: {err}') from None
    except OSError as err:
        raise ValueError(f'{path}: cannot read: {err.strerror or err}') from None


def load_released_gt(window_info_path, gt_info_path, gt_label_path):
    """The release's training ground truth (window_info.log, gt_info.pkl, gt_label.pkl) as a gt dict."""
    starts, videos = read_window_info(window_info_path)
    info, onehot = safe_unpickle(gt_info_path), safe_unpickle(gt_label_path)
    for path, items, width in ((gt_info_path, info, 3), (gt_label_path, onehot, NUM_CLASSES)):
        if not isinstance(items, list) or len(items) != len(starts):
            n = len(items) if isinstance(items, list) else type(items).__name__
            raise ValueError(f'{path}: expected a list of {len(starts)} arrays (one per line of '
                             f'{window_info_path}), got {n}')
        for i, a in enumerate(items):
            if not isinstance(a, np.ndarray) or a.ndim != 2 or a.shape[1] != width:
                raise ValueError(f'{path}: entry {i} is not an [n, {width}] array')
    counts = np.array([len(a) for a in info])
    bad = np.flatnonzero(counts != np.array([len(a) for a in onehot]))
    if len(bad):
        raise ValueError(f'{gt_label_path}: entry {bad[0]} has a different number of instances than {gt_info_path}')
    box = np.concatenate(info).astype(np.float32) if len(info) else np.zeros((0, 3), np.float32)
    label = np.concatenate(onehot).argmax(1).astype(np.int64)
    gt = dict(start=starts, video=videos, offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
              label=label, box=box)
    check_gt(gt, gt_label_path)
    return gt


# --- features ---

def _check_array(a, path, shape=None):
    """Features must be floating point; `shape` (None entries = any) or else [W, steps, D]."""
    if a.dtype.kind != 'f':
        raise ValueError(f'{path}: features must be floating point, got dtype {a.dtype}')
    if shape is None:
        if a.ndim != 3:
            raise ValueError(f'{path}: expected a [W, 128, D] array, got shape {list(a.shape)}')
    elif a.ndim != len(shape) or any(n is not None and n != m for n, m in zip(shape, a.shape)):
        want = ', '.join('?' if n is None else str(n) for n in shape)
        raise ValueError(f'{path}: expected shape [{want}], got {list(a.shape)}')


def _check_finite(a, path, what='entry', numbers=None, chunk=64):
    """ValueError naming `path` and the first entry (window or step) of `a` holding NaN or inf.

    Run it on the array as the network will read it (after any cast): a float64 value beyond
    float16 / float32 range is finite in the file and inf in memory. numbers[i] is the
    number to report for entry i (default i)."""
    # In chunks: a whole-array isfinite on several GB would double the memory.
    for i in range(0, len(a), chunk):
        part = np.asarray(a[i:i + chunk])
        ok = np.isfinite(part).reshape(len(part), -1).all(1)
        if not ok.all():
            j = i + int(np.flatnonzero(~ok)[0])
            raise ValueError(f'{path}: NaN or inf in {what} {j if numbers is None else numbers[j]}'
                             f' (as {part.dtype}); fix or regenerate the features')


def feature_layout(folder):
    """Which layout a feature folder holds: 'packed', 'window' or 'video' (ValueError if none)."""
    if os.path.isfile(os.path.join(folder, PACKED_NAME)):
        return 'packed'
    if os.path.isfile(os.path.join(folder, '0.npy')):
        return 'window'
    if os.path.isdir(folder) and any(n.endswith('.npy') for n in os.listdir(folder)):
        return 'video'
    raise ValueError(f'{folder}: no features found (expected {PACKED_NAME}, 0.npy ... or <video>.npy)')


def _load_npy(path, mmap=False):
    try:
        a = np.load(path, allow_pickle=False, mmap_mode='r' if mmap else None)
    except FileNotFoundError:
        raise ValueError(f'{path}: feature file not found') from None
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f'{path}: cannot read as .npy: {err}') from None
    if not isinstance(a, np.ndarray):   # an .npz archive under a .npy name
        raise ValueError(f'{path}: an .npz archive, not a .npy array; save one array per file with np.save')
    return a


def load_features(cfg, split, starts, videos, mode=None, indices=None, folder=None, mmap=False):
    """Features of the windows `indices` (default all) of the window list (starts, videos).

    Returns [len(indices), cfg.input_steps, D] in cfg.feature_dtype. D comes from the data.
    `folder` overrides `<feature_path>/<split>/<mode>DataX<pretrain>`. With mmap=True a packed
    array of the right dtype is returned memory-mapped (read-only) instead of read. Mode concat
    (early fusion) without `folder` reads the spatial and the temporal folder, side by side.
    NaN or inf in what the network would read (after the cast) is an error naming the file."""
    starts = np.asarray(starts, np.int64)
    videos = np.asarray(videos, str)
    if len(starts) != len(videos):
        raise ValueError(f'{len(starts)} window starts but {len(videos)} window videos')
    w = len(starts)
    indices = np.arange(w) if indices is None else np.asarray(indices, np.int64)
    if len(indices) and (indices.min() < 0 or indices.max() >= w):
        raise ValueError(f'window index out of range 0..{w - 1}')
    if (mode or cfg.mode) == 'concat' and folder is None:
        # Early fusion: the two streams' folders, window by window, channels side by side.
        parts = [load_features(cfg, split, starts, videos, m, indices) for m in CONCAT_STREAMS]
        return np.concatenate(parts, axis=2)
    folder = folder or get_data_x_path(cfg, split, mode)
    dtype = np.dtype(cfg.feature_dtype)
    layout = feature_layout(folder)
    if layout == 'packed':
        return _packed_features(folder, w, indices, cfg.input_steps, dtype, mmap)
    if layout == 'window':
        return _window_features(folder, w, indices, cfg.input_steps, dtype)
    return _video_features(folder, starts, videos, indices, cfg.input_steps, dtype)


def _packed_features(folder, w, indices, steps, dtype, mmap):
    path = os.path.join(folder, PACKED_NAME)
    packed = _load_npy(path, mmap=True)
    _check_array(packed, path)
    if packed.shape[0] != w or packed.shape[1] != steps:
        raise ValueError(f'{path}: shape {list(packed.shape)} does not fit the window list '
                         f'({w} windows of {steps} steps); repack it for this window list')
    if mmap and packed.dtype == dtype and np.array_equal(indices, np.arange(w)):
        _check_finite(packed, path, 'window')
        return packed
    out = np.empty((len(indices), steps, packed.shape[2]), dtype)
    for i in range(0, len(indices), 256):   # sequential reads of a few hundred MB at a time
        out[i:i + 256] = packed[indices[i:i + 256]]
    _check_finite(out, path, 'window', indices)
    return out


def _window_features(folder, w, indices, steps, dtype):
    beyond = os.path.join(folder, f'{w}.npy')
    if os.path.exists(beyond):
        raise ValueError(f'{beyond}: the folder holds more windows than the window list ({w}); '
                         f'features and window list do not belong together')
    out, dim = None, None
    for j, i in enumerate(indices):
        path = os.path.join(folder, f'{i}.npy')
        a = _load_npy(path)
        _check_array(a, path, (steps, dim))
        if out is None:
            dim = a.shape[1]
            out = np.empty((len(indices), steps, dim), dtype)
        out[j] = a
        _check_finite(out[j], path, 'step')
    return out if out is not None else np.zeros((0, steps, 0), dtype)


def _video_features(folder, starts, videos, indices, steps, dtype, step_offset=None, channels=None):
    """Per-video files: slice each video once for all of its windows, several videos at a
    time (numpy copies without holding the GIL; the reads are what takes the time).

    The window at frame s reads steps s // 4 + offset + j (j < steps), cut to the file's
    steps (repeating the first or the last); the offset is the file's step convention
    (feature_sidecar.step_offset: from its sidecar, else `step_offset`, else 0).
    `channels` (index array) picks columns of each step."""
    sel_videos = videos[indices]
    names = np.unique(sel_videos)
    if len(names) == 0:
        return np.zeros((0, steps, 0), dtype)
    first_path = os.path.join(folder, f'{names[0]}.npy')
    first_array = _load_npy(first_path, mmap=True)
    _check_array(first_array, first_path, (None, None))
    dim = first_array.shape[1]
    out = np.empty((len(indices), steps, dim if channels is None else len(channels)), dtype)

    def fill(video):
        path = os.path.join(folder, f'{video}.npy')
        a = _load_npy(path, mmap=True)
        _check_array(a, path, (None, dim))
        if len(a) == 0:
            raise ValueError(f'{path}: no feature steps')
        rows = np.flatnonzero(sel_videos == video)
        first = starts[indices[rows]] // FRAMES_PER_STEP + feature_sidecar.step_offset(path, step_offset)
        late = first >= len(a)
        if late.any():
            r = rows[np.flatnonzero(late)[0]]
            raise ValueError(f'{path}: window {indices[r]} starts at frame {starts[indices[r]]}, '
                             f'past the {len(a)} feature steps of the video')
        step = np.clip(first[:, None] + np.arange(steps), 0, len(a) - 1)   # short tail: repeat the last step
        lo = int(step.min())
        block = a[lo:step.max() + 1]
        block = np.asarray(block if channels is None else block[:, channels]).astype(dtype, copy=False)
        _check_finite(block, path, 'step', np.arange(lo, lo + len(block)))
        out[rows] = block[step - lo]

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for done in [pool.submit(fill, video) for video in names]:
            done.result()   # the first bad file in video order raises
    return out


# --- what training and testing read ---

def _split_dir(cfg, split):
    return os.path.join(cfg.data_dir, split)


def load_train_gt(cfg):
    """Window list and ground truth of the training split, in window-list order.

    Reads gt.npz; without it, the release's gt_info.pkl + gt_label.pkl; without those, the boxes
    are computed from the annotation CSV for the windows of window_info.log."""
    split = cfg.train_split_set
    folder = _split_dir(cfg, split)
    info_path = os.path.join(folder, 'window_info.log')
    starts, videos = read_window_info(info_path)
    npz = os.path.join(folder, 'gt.npz')
    pkl_info, pkl_label = os.path.join(folder, 'gt_info.pkl'), os.path.join(folder, 'gt_label.pkl')
    if os.path.isfile(npz):
        gt = load_gt(npz)
        source = npz
    elif os.path.isfile(pkl_info) and os.path.isfile(pkl_label):
        gt = load_released_gt(info_path, pkl_info, pkl_label)
        source = pkl_info
    else:
        source = get_anno_path(cfg, split)
        anno = read_annotation(source)
        check_windows_against_annotation(anno, source, starts, videos, info_path, True, cfg)
        gt = make_gt(anno, starts, videos, cfg)
    if len(gt['start']) != len(starts):
        raise ValueError(f'{source}: {len(gt["start"])} windows, but {info_path} lists {len(starts)}')
    bad = np.flatnonzero((gt['start'] != starts) | (gt['video'] != videos))
    if len(bad):
        i = bad[0]
        raise ValueError(f'{source}: window {i} is ({gt["start"][i]}, {gt["video"][i]}) but line {i + 1} of '
                         f'{info_path} is ({starts[i]}, {videos[i]})')
    return gt


def _names(values, limit=5):
    values = list(values)
    return ', '.join(values[:limit]) + (f' ... ({len(values)} in all)' if len(values) > limit else '')


def check_windows_against_annotation(anno, anno_path, starts, videos, info_path, training, cfg):
    """A window list and the annotation it is meant for must agree.

    - a window of a video the annotation does not have: an error for training (it could only
      train as background), a warning for testing (its detections cannot be scored);
    - a window starting at or beyond the video's frame_num: an error;
    - a video that has method.md §3 windows (in training: windows that keep an instance)
      but none in the list: a warning (its instances are never seen: missed at test time,
      never learned in training).
    """
    frames = anno.groupby('video', sort=True)['frame_num'].first()
    known = np.isin(videos, frames.index.to_numpy(dtype=str))
    if not known.all():
        i = int(np.flatnonzero(~known)[0])
        unknown = list(dict.fromkeys(videos[~known].tolist()))
        what = (f'{info_path}:{i + 1}: video: {videos[i]} is not in {anno_path} '
                f'({int((~known).sum())} windows of {len(unknown)} such videos: {_names(unknown)})')
        if training:
            raise ValueError(f'{what}; its windows have no instances to learn: use the window list '
                             f'data/gen_data_info.py writes for this annotation file')
        warn(f'{what}; detections on them cannot be scored')
    num = frames.reindex(videos[known]).to_numpy(np.int64)
    beyond = np.flatnonzero(known)[starts[known] >= num]
    if len(beyond):
        i = int(beyond[0])
        raise ValueError(f'{info_path}:{i + 1}: start: window ({starts[i]}, {videos[i]}) starts at or beyond the '
                         f'{frames[videos[i]]} frames {anno_path} gives the video ({len(beyond)} such windows); '
                         f'the window list does not belong to this annotation: regenerate it with data/gen_data_info.py')
    missing = np.setdiff1d(np.unique(make_windows(anno, training, cfg)[1]), videos)
    if len(missing):
        count = int(anno['video'].isin(missing).sum())
        warn(f'{anno_path}: video: {len(missing)} annotated videos have no window in {info_path}: {_names(missing)}; '
             f'their {count} instances are ' + ('never trained on' if training else 'missed at evaluation')
             + '; regenerate the window list with data/gen_data_info.py if that is not intended')


# --- batches ---

def epoch_batches(num_windows, cfg, epoch):
    """Index arrays of the batches of one epoch.

    Default: every window exactly once, reshuffled each epoch from cfg.seed + epoch.
    cfg.reshuffle_each_epoch=False: one shuffle (from cfg.seed) for every epoch, as released.
    cfg.released_batching=True: the release's batches of exactly batch_size: the full ones, plus
    one made of the last batch_size windows when more than 6 are left over (fewer are dropped).
    cfg.small_num_data_for_test: only the first batch_size windows take part."""
    n = min(num_windows, cfg.batch_size) if cfg.small_num_data_for_test else num_windows
    bs = cfg.batch_size
    rng = np.random.default_rng(cfg.seed + epoch if cfg.reshuffle_each_epoch else cfg.seed)
    order = rng.permutation(n).astype(np.int64)
    if not cfg.released_batching:
        return [order[i:i + bs] for i in range(0, n, bs)]
    full = n // bs
    batches = [order[i * bs:(i + 1) * bs] for i in range(full)]
    if n - full * bs > 6:
        batches.append(order[-bs:])
    return batches
