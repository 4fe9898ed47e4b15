"""The release's data source (cfg.data_source = 'release'): its folders, read as they were released.

    <data_dir>/<split>/thumos14_<split>_annotation.csv   annotation rows (read_annotation)
    <data_dir>/<split>/window_info.log                   the window list, `<start_frame>, <video>` a line
    <data_dir>/val/gt.npz                                the training boxes (save_gt / load_gt), or the
                                                         release's gt_info.pkl + gt_label.pkl
    <feature_path>/<split>/<mode>DataX<pretrain>/       features in any layout of feature_files.py

data/gen_data_info.py writes window_info.log and gt.npz (write_split_info). What load_data reads:

    gt = load_train_gt(cfg)                           # training windows and their boxes
    starts, videos = test_windows(cfg)                # the test split's window list
    x = load_features(cfg, 'val', starts, videos)     # [W, 128, D]; mode concat: both streams side by side
    classes = class_list(cfg)                         # THUMOS14's 20, with their official ids
"""
import os
import zipfile
import zlib

import numpy as np
import pandas as pd

from config import CONCAT_STREAMS, get_anno_path, get_data_x_path
from feature_files import read_feature_folder
from fileio import atomic_path
from safe_pickle import safe_unpickle
from sliding_windows import (ANNOTATION_COLUMNS, check_windows_against_annotation, is_training, make_gt,
                             make_windows, read_window_info, write_window_info)
from thumos14 import CLASS_INDEX_OF_ID, NUM_CLASSES, THUMOS14_CLASSES, check_text_file, warn


# --- the annotation CSV and the split's files ---

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


def write_split_info(anno_path, split, out_dir, cfg, windows=None):
    """Write out_dir/window_info.log and, for the training split, out_dir/gt.npz; returns the window count.

    `windows` (a window_info.log) replaces the generated list, e.g. to follow the released order."""
    anno = read_annotation(anno_path)
    training = is_training(split, cfg)
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


# --- what load_data reads ---

def load_train_gt(cfg):
    """Window list and ground truth of the training split, in window-list order.

    Reads gt.npz; without it, the release's gt_info.pkl + gt_label.pkl; without those, the boxes
    are computed from the annotation CSV for the windows of window_info.log."""
    split = cfg.train_split_set
    folder = os.path.join(cfg.data_dir, split)
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


def class_list(cfg):
    """THUMOS14's classes: the release's files carry THUMOS14 class ids."""
    if cfg.class_list:
        raise ValueError(f'class_list: {cfg.class_list} is given, but data_source=release holds THUMOS14\'s 20 '
                         f'classes; a class list applies to a dataset in the JSON layout (data_source=json)')
    return THUMOS14_CLASSES


def test_windows(cfg, path=None):
    """(starts, videos) of the test split's window list: `path`, or <data_dir>/<test split>/window_info.log.

    When the test annotation CSV is there (testing does not need it), the list must fit it."""
    path = path or os.path.join(cfg.data_dir, cfg.test_split_set, 'window_info.log')
    starts, videos = read_window_info(path)
    anno_path = get_anno_path(cfg, cfg.test_split_set)
    if os.path.isfile(anno_path):
        try:
            anno = read_annotation(anno_path)
        except ValueError as err:
            warn(f'cannot check the window list {path} against the test annotation: {err}')
        else:
            check_windows_against_annotation(anno, anno_path, starts, videos, path, False, cfg)
    return starts, videos


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
    return read_feature_folder(folder, starts, videos, indices, cfg.input_steps, np.dtype(cfg.feature_dtype), mmap)
