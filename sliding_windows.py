"""Sliding windows and their training boxes (docs/method.md §3), from annotation rows of any source.

The rows are a table with ANNOTATION_COLUMNS, one row per action instance, in frames: the
release's CSV (release_dataset.read_annotation) or the field's JSON (json_dataset.read_split).

    starts, videos = make_windows(anno, 'val', cfg)   # §3 windows: start frames and videos
    gt = make_gt(anno, starts, videos, cfg)           # boxes kept by the 0.9 rule
    starts, videos = read_window_info(path)           # a window list, window_info.log
"""
import os
import re

import numpy as np

from fileio import atomic_open
from thumos14 import CLASS_IDS, check_text_file, warn

ANNOTATION_COLUMNS = ('video', 'type', 'type_idx', 'startFrame', 'endFrame', 'frame_num')
TRIM_FRAMES = 9        # the released window generator ignores the last 9 frames of every video


def is_training(split, cfg):
    """Whether `split` (a split name or True / False) takes training windows."""
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


def make_gt(anno_df, starts, videos, cfg, class_ids=CLASS_IDS):
    """Boxes of the instances each window keeps (> cfg.overlap_ratio_threshold inside).

    Returns dict(start [W], video [W], offsets [W+1], label [M] (1..K: the position of type_idx
    in `class_ids`, THUMOS14's 20 ids by default), box [M,3] float32 (xmin, xmax, overlap
    ratio), xmin/xmax normalised to the window). Instances of a window keep the annotation
    file's order."""
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
    ids = np.asarray(class_ids, np.int64)
    order_of_ids = np.argsort(ids, kind='stable')
    type_idx = anno['type_idx'].to_numpy(np.int64)[inst]
    at = order_of_ids[np.clip(np.searchsorted(ids, type_idx, sorter=order_of_ids), 0, len(ids) - 1)]
    if len(type_idx) and not np.array_equal(ids[at], type_idx):
        bad = type_idx[ids[at] != type_idx][0]
        raise ValueError(f'class id {bad} of an instance is not one of the class ids {ids.tolist()}')
    label = at + 1
    offsets = np.concatenate([[0], np.cumsum(np.bincount(win, minlength=len(starts)))]).astype(np.int64)
    return dict(start=starts, video=videos, offsets=offsets, label=label, box=box.astype(np.float32))


def make_windows(anno_df, split, cfg, class_ids=CLASS_IDS):
    """method.md §3 windows of a split: (starts int64 [W], videos str [W]).

    `split` is 'val' / 'test' (cfg.train_split_set / cfg.test_split_set) or training=True/False.
    Training windows are the candidates that keep at least one instance (of `class_ids`, make_gt)."""
    training = is_training(split, cfg)
    starts, videos = candidate_windows(anno_df, training, cfg)
    if training:
        has_box = np.diff(make_gt(anno_df, starts, videos, cfg, class_ids)['offsets']) > 0
        starts, videos = starts[has_box], videos[has_box]
    return starts, videos


# --- window lists ---

WINDOW_LINE = re.compile(r'\s*(\d+)\s*,\s*(\S+)\s*')


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
                match = WINDOW_LINE.fullmatch(line.rstrip('\n'))
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
    """Write a window list read_window_info reads back, atomically."""
    if len(starts) != len(videos):
        raise ValueError(f'{path}: {len(starts)} starts but {len(videos)} videos')
    with atomic_open(path) as f:
        f.write(''.join(f'{int(s)}, {v}\n' for s, v in zip(starts, videos)))


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
