"""The training and test sets as train.py and test.py read them, from cfg.data_source:
'release' (the release's files, load_data.py) or 'i3d' (the field's JSON and features, i3d.py).

    data = load_train_data(cfg)   # features [W, 128, D] + dense padded ground truth
    data = load_test_data(cfg)    # features [W, 128, D] + the windows' starts and videos
"""
import os

import numpy as np

import i3d
import load_data
from config import get_anno_path
from thumos14 import warn


def _first_batch(cfg, w):
    return np.arange(min(cfg.batch_size, w) if cfg.small_num_data_for_test else w)


def _source(cfg):
    """(training ground truth, test windows, feature reader) of cfg.data_source."""
    if cfg.data_source == 'i3d':
        return i3d.load_train_gt, i3d.test_windows, i3d.load_features
    return load_data.load_train_gt, None, load_data.load_features


def load_train_data(cfg, mode=None):
    """dict(features [W,128,D], gt_label [W,Mmax], gt_box [W,Mmax,2], gt_valid [W,Mmax], starts, videos)."""
    train_gt, _, read_features = _source(cfg)
    gt = train_gt(cfg)
    keep = _first_batch(cfg, len(gt['start']))
    features = read_features(cfg, cfg.train_split_set, gt['start'], gt['video'], mode, indices=keep)
    gt_label, gt_box, gt_valid = load_data.pad_gt(gt)
    return dict(features=features, gt_label=gt_label[keep], gt_box=gt_box[keep], gt_valid=gt_valid[keep],
                starts=gt['start'][keep], videos=gt['video'][keep])


def load_test_data(cfg, mode=None, windows=None, features=None):
    """dict(features [W,128,D], starts, videos) of the test split.

    `windows` overrides `<data_dir>/<test split>/window_info.log` (with data_source=i3d: the
    §3 windows of the JSON's test videos), `features` the feature folder."""
    _, test_windows, read_features = _source(cfg)
    if windows is None and test_windows is None:
        windows = os.path.join(cfg.data_dir, cfg.test_split_set, 'window_info.log')
    starts, videos = load_data.read_window_info(windows) if windows else test_windows(cfg)
    anno_path = get_anno_path(cfg, cfg.test_split_set)
    if cfg.data_source == 'release' and os.path.isfile(anno_path):
        # not needed to test; when there, the window list must fit it
        try:
            anno = load_data.read_annotation(anno_path)
        except ValueError as err:
            warn(f'cannot check the window list {windows} against the test annotation: {err}')
        else:
            load_data.check_windows_against_annotation(anno, anno_path, starts, videos, windows, False, cfg)
    keep = _first_batch(cfg, len(starts))
    feats = read_features(cfg, cfg.test_split_set, starts, videos, mode, indices=keep, folder=features)
    return dict(features=feats, starts=starts[keep], videos=videos[keep])
