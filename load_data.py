"""The data as train.py, test.py and detect.py read it, from the source that cfg.data_source names.

    data = load_train_data(cfg)    # features [W, 128, D] + dense padded ground truth
    data = load_test_data(cfg)     # features [W, 128, D] + the windows' starts and videos
    data = load_video_data(cfg, video, frame_num, folder)   # one video's test windows (detect.py)
    classes = class_list(cfg)      # the data's classes (classes.ClassList); a model has 1 + K outputs
    for idx in epoch_batches(len(data['features']), cfg, epoch): ...

A data source is a module with four functions, named by its row of config.DATA_SOURCES:

    load_train_gt(cfg)              training windows and their boxes (sliding_windows.make_gt's dict)
    test_windows(cfg, path=None)    (starts, videos) of the test split; `path` is a window_info.log
    load_features(cfg, split, starts, videos, mode=None, indices=None, folder=None, mmap=False)
                                    [len(indices), 128, D] features of those windows
    class_list(cfg)                 the classes of its instances (classes.ClassList), in model order

release_dataset.py reads the release's folders ('release'), json_dataset.py a dataset in the
field's JSON format ('json', or its old name 'i3d'); a new source is one such module and one row
of the table. Below
the sources: sliding_windows.py (§3 windows and boxes from annotation rows, window lists),
feature_files.py (the feature layouts and sidecars) and safe_pickle.py (the release's pickles).
"""
import importlib

import numpy as np
import pandas as pd

from config import DATA_SOURCES
from feature_files import FRAMES_PER_STEP, read_feature_folder
from sliding_windows import make_windows


def data_source(cfg):
    """The module that reads cfg.data_source (its row of config.DATA_SOURCES)."""
    if cfg.data_source not in DATA_SOURCES:
        raise ValueError(f'data_source: {cfg.data_source!r} is not a data source; use one of {", ".join(DATA_SOURCES)}')
    return importlib.import_module(DATA_SOURCES[cfg.data_source])


def class_list(cfg):
    """The data's classes (classes.ClassList): model class k (1..K) is class_list.names[k - 1]."""
    return data_source(cfg).class_list(cfg)


def _first_batch(cfg, w):
    return np.arange(min(cfg.batch_size, w) if cfg.small_num_data_for_test else w)


def load_train_data(cfg, mode=None):
    """dict(features [W,128,D], gt_label [W,Mmax], gt_box [W,Mmax,2], gt_valid [W,Mmax], starts, videos)."""
    source = data_source(cfg)
    gt = source.load_train_gt(cfg)
    keep = _first_batch(cfg, len(gt['start']))
    features = source.load_features(cfg, cfg.train_split_set, gt['start'], gt['video'], mode, indices=keep)
    gt_label, gt_box, gt_valid = pad_gt(gt)
    return dict(features=features, gt_label=gt_label[keep], gt_box=gt_box[keep], gt_valid=gt_valid[keep],
                starts=gt['start'][keep], videos=gt['video'][keep])


def load_test_data(cfg, mode=None, windows=None, features=None):
    """dict(features [W,128,D], starts, videos) of the test split.

    `windows` overrides the source's test windows (`<data_dir>/<test split>/window_info.log`, or
    with data_source=json the §3 windows of the JSON's test videos), `features` the feature folder."""
    source = data_source(cfg)
    starts, videos = source.test_windows(cfg, windows)
    keep = _first_batch(cfg, len(starts))
    feats = source.load_features(cfg, cfg.test_split_set, starts, videos, mode, indices=keep, folder=features)
    return dict(features=feats, starts=starts[keep], videos=videos[keep])


def load_video_data(cfg, video, frame_num, folder):
    """dict(features [W,128,D], starts, videos): the §3 test windows of one video of `frame_num`
    frames, and their features from `folder` (any layout of feature_files.py, whose steps are
    4 frames: a model of windows of other steps would see them at another time scale)."""
    if cfg.frames_per_step != FRAMES_PER_STEP:
        raise ValueError(f'{folder}: features of {FRAMES_PER_STEP} frames a step, but the model\'s windows are '
                         f'steps of {cfg.frames_per_step} frames (frames_per_step): extract features with the '
                         f'settings the model was trained on, or train on {FRAMES_PER_STEP}-frame steps')
    starts, videos = make_windows(pd.DataFrame({'video': [video], 'frame_num': [frame_num]}), False, cfg)
    features = read_feature_folder(folder, starts, videos, np.arange(len(starts)), cfg.input_steps,
                                   np.dtype(cfg.feature_dtype))
    return dict(features=features, starts=starts, videos=videos)


# --- batches ---

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
