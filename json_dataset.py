"""A dataset in the field's JSON format, read in place (cfg.data_source = 'i3d'): one annotation
JSON for every video and one `<video>.npy` of features per video.

ActionFormer, TriDet, TemporalMaxer and the OpenTAD zoo share this format (docs/method.md §15);
THUMOS14 with two-stream I3D features is the one read here today:

    <i3d_annotation>     {"database": {video: {"subset": "Validation" | "Test", "duration": s, "fps": f,
                          "annotations": [{"label": name, "segment": [start_s, end_s], "label_id": k}]}}}
    <i3d_feature_dir>/<video>.npy   [T, 2048] float: RGB channels [0, 1024), flow [1024, 2048)

one step every 4 frames at the video's own fps, step t a 16-frame clip (frames 4t .. 4t + 15,
centred on frame 4t + 8). What load_data reads through this module:

    anno, videos = read_split(cfg, 'val')    # JSON seconds -> annotation rows in frames (sliding_windows.py)
    gt = load_train_gt(cfg)                  # §3 windows and boxes of the Validation videos
    starts, names = test_windows(cfg)        # §3 windows of every Test video
    x = load_features(cfg, 'test', starts, names, 'concat')   # [W, 128, D] of the windows
    classes = class_list(cfg)                # the JSON's labels, or the class-list file cfg.class_list

Why a reader and not a one-time converter into the release's files: the JSON and the folder stay
the only copy (no second copy of 10+ GB of features, nothing to regenerate when either changes),
each file is memory-mapped and only the steps of its windows are read, and a stream is a column
range of the same file, so the RGB, flow and concatenated inputs need no files of their own.
"""
import os

import numpy as np
import pandas as pd

import classes
import thumos14
from config import CONCAT_STREAMS
from feature_files import CLIP_FRAMES, FRAMES_PER_STEP, STEP_CONVENTIONS, load_npy, read_video_files
from sliding_windows import make_gt, make_windows, read_window_info

OFFSET_STEPS = -STEP_CONVENTIONS['clip16']   # 2: step t is centred on frame 4t + 8


# --- frames, steps, seconds ---

def seconds_to_frames(seconds, fps):
    """Seconds -> frames (real-valued) at the video's frame rate."""
    return np.asarray(seconds, np.float64) * fps


def frames_to_seconds(frames, fps):
    """Frames -> seconds; a detection's frames (window start + 512 x, §9) become seconds so (§10)."""
    return np.asarray(frames, np.float64) / fps


def step_centre_frame(step):
    """The frame at the centre of feature step t: 4t + 8."""
    return FRAMES_PER_STEP * np.asarray(step) + CLIP_FRAMES // 2


def frame_to_step(frame):
    """The step coordinate of a frame, the inverse of step_centre_frame: f / 4 - 2
    (ActionFormer's `s * fps / 4 - 2` of a time s in seconds)."""
    return np.asarray(frame, np.float64) / FRAMES_PER_STEP - OFFSET_STEPS


def window_steps(starts, steps):
    """[W, steps] feature steps read by the windows starting at frames `starts`, before they are
    cut to the file: s // 4 - 2 + j, the step centred on frame 4 (s // 4) + 4j, the first frame of
    the window's j-th 4-frame cell (§15)."""
    return np.asarray(starts, np.int64)[:, None] // FRAMES_PER_STEP - OFFSET_STEPS + np.arange(steps)


def covered_frames(num_steps):
    """Frames [0, n) seen by the clips of a file of `num_steps` steps: the last clip ends at 4(T-1) + 16."""
    return FRAMES_PER_STEP * (np.asarray(num_steps) - 1) + CLIP_FRAMES


def stream_channels(cfg, mode=None):
    """Channel indices of `mode` (temporal, spatial, or concat: RGB then flow); None = every channel."""
    ranges = {'spatial': cfg.i3d_spatial_channels, 'temporal': cfg.i3d_temporal_channels}
    modes = CONCAT_STREAMS if (mode or cfg.mode) == 'concat' else (mode or cfg.mode,)
    channels = np.concatenate([np.arange(*ranges[m]) for m in modes])
    full = np.array_equal(channels, np.arange(feature_width(cfg)))
    return None if full else channels   # a whole row is read without a gather


def feature_width(cfg):
    """The width every feature file must have: the end of the later stream's channels."""
    return max(cfg.i3d_spatial_channels[1], cfg.i3d_temporal_channels[1])


# --- the JSON, one split ---

def _subset(split):
    names = {v: k for k, v in thumos14.JSON_SUBSETS.items()}
    if split not in names:
        raise ValueError(f'split {split!r} has no subset in the annotation JSON; the JSON\'s subsets '
                         f'are {", ".join(f"{k} ({v})" for k, v in thumos14.JSON_SUBSETS.items())}')
    return names[split]


def read_split(cfg, split):
    """(annotation rows (sliding_windows.ANNOTATION_COLUMNS), in frames; video table
    video, subset, duration, fps, frame_num, steps) of one split of the JSON.

    Frames are seconds * fps rounded (an instance keeps at least one frame); frame_num is
    duration * fps rounded. Videos without a feature file are reported by name and left out."""
    subset = _subset(split)
    db = thumos14.read_annotation_json(cfg.i3d_annotation, class_list=class_list(cfg))
    videos = db['videos'][db['videos']['subset'] == subset].reset_index(drop=True)
    if len(videos) == 0:
        raise ValueError(f'{cfg.i3d_annotation}: field subset: no video of subset {subset}')
    videos['frame_num'] = np.rint(seconds_to_frames(videos['duration'], videos['fps'])).astype(np.int64)
    inst = db['instances'][db['instances']['video'].isin(videos['video'])].reset_index(drop=True)
    per_video = videos.set_index('video')
    fps, frame_num = (inst['video'].map(per_video[c]).to_numpy() for c in ('fps', 'frame_num'))
    start = np.minimum(np.rint(seconds_to_frames(inst['start'], fps)), frame_num - 1).astype(np.int64)
    end = np.clip(np.rint(seconds_to_frames(inst['end'], fps)), start + 1, frame_num).astype(np.int64)
    anno = pd.DataFrame({'video': inst['video'], 'type': inst['label'], 'type_idx': inst['class_id'],
                         'startFrame': start, 'endFrame': end, 'frame_num': frame_num})
    videos['steps'] = _feature_steps(cfg, videos, anno)
    missing = videos['steps'].to_numpy() < 0
    if missing.all():
        raise ValueError(f'{cfg.i3d_feature_dir}: no feature file <video>.npy for any of the {len(videos)} '
                         f'{subset} videos of {cfg.i3d_annotation} (e.g. {videos["video"][0]}.npy)')
    if missing.any():
        names = videos['video'][missing].tolist()
        lost = int(anno['video'].isin(names).sum())
        fate = 'are never trained on' if subset == 'Validation' else 'count as misses in the evaluation'
        thumos14.warn(f'{cfg.i3d_feature_dir}: no feature file for {len(names)} of the {len(videos)} {subset} '
                      f'videos, left out (their {lost} instances {fate}): {", ".join(names)}')
        videos = videos[~missing].reset_index(drop=True)
        anno = anno[~anno['video'].isin(names)].reset_index(drop=True)
    return anno, videos


def _feature_steps(cfg, videos, anno):
    """Steps T of each video's file (-1 where there is none); a file of another width, not
    floating point, empty, or ending more than one clip before its last instance is an error."""
    width = feature_width(cfg)
    steps = np.full(len(videos), -1, np.int64)
    for i, video in enumerate(videos['video']):
        path = os.path.join(cfg.i3d_feature_dir, f'{video}.npy')
        if not os.path.isfile(path):
            continue
        a = load_npy(path, mmap=True)   # the header only
        if a.ndim != 2 or a.shape[1] != width or a.dtype.kind != 'f' or len(a) == 0:
            raise ValueError(f'{path}: video {video}: feature shape {list(a.shape)} ({a.dtype}), expected '
                             f'[T >= 1, {width}] floats (width: the i3d_spatial_channels '
                             f'{cfg.i3d_spatial_channels} and i3d_temporal_channels {cfg.i3d_temporal_channels})')
        steps[i] = len(a)
    last = anno.groupby('video')['endFrame'].max().reindex(videos['video']).fillna(0).to_numpy(np.int64)
    # One clip of slack: files from other extractors end a few steps early or late.
    short = np.flatnonzero((steps > 0) & (last > covered_frames(steps) + CLIP_FRAMES))
    if len(short):
        i = short[0]
        raise ValueError(f'{os.path.join(cfg.i3d_feature_dir, videos["video"][i])}.npy: video {videos["video"][i]}: '
                         f'feature file shorter than its annotations: {steps[i]} steps cover frames up to '
                         f'{covered_frames(steps[i])}, an instance (field segment) ends at frame {last[i]} '
                         f'({last[i] / videos["fps"][i]:.2f} s at {videos["fps"][i]:g} fps)')
    return steps


# --- what load_data reads ---

def load_train_gt(cfg):
    """The §3 training windows of the Validation videos and their boxes (sliding_windows.make_gt's dict)."""
    anno, _ = read_split(cfg, cfg.train_split_set)
    class_ids = class_list(cfg).ids
    starts, videos = make_windows(anno, True, cfg, class_ids)
    if len(starts) == 0:
        raise ValueError(f'{cfg.i3d_annotation}: field annotations: no training window keeps an instance')
    return make_gt(anno, starts, videos, cfg, class_ids)


def class_list(cfg):
    """The classes (classes.ClassList): the `id name` file cfg.class_list, whose classes every label
    of the JSON must name; else the JSON's labels (THUMOS14's 20 with their official ids when every
    label is a THUMOS14 class, else in label_id order, or by name, with ids 1..K)."""
    if cfg.class_list:
        if not os.path.isfile(cfg.class_list):
            raise ValueError(f'class_list: {cfg.class_list} not found (a file of `id name` lines)')
        return classes.read_class_list(cfg.class_list)
    return thumos14.read_annotation_json(cfg.i3d_annotation, class_list=None)['classes']


def test_windows(cfg, path=None):
    """(starts, videos): the window list `path`, or the §3 test windows of every Test video with a feature file."""
    if path:
        return read_window_info(path)
    _, videos = read_split(cfg, cfg.test_split_set)
    return make_windows(videos[['video', 'frame_num']], False, cfg)


def load_features(cfg, split, starts, videos, mode=None, indices=None, folder=None, mmap=False):
    """[len(indices), input_steps, D] features of the windows (starts, videos): window step j is
    file step s // 4 - 2 + j, cut to [0, T - 1] (window_steps), channels of `mode`
    (stream_channels). Same arguments as release_dataset.load_features; `folder` overrides
    cfg.i3d_feature_dir; `split` and `mmap` are not used (one folder; the windows overlap, so
    they are always gathered)."""
    folder = folder or cfg.i3d_feature_dir
    starts, videos = np.asarray(starts, np.int64), np.asarray(videos, str)
    if len(starts) != len(videos):
        raise ValueError(f'{len(starts)} window starts but {len(videos)} window videos')
    indices = np.arange(len(starts)) if indices is None else np.asarray(indices, np.int64)
    if len(indices):
        path = os.path.join(folder, f'{videos[indices[0]]}.npy')
        width = load_npy(path, mmap=True).shape[-1]
        if width != feature_width(cfg):
            raise ValueError(f'{path}: video {videos[indices[0]]}: feature width {width}, expected '
                             f'{feature_width(cfg)} (i3d_spatial_channels, i3d_temporal_channels)')
    return read_video_files(folder, starts, videos, indices, cfg.input_steps, np.dtype(cfg.feature_dtype),
                            -OFFSET_STEPS, stream_channels(cfg, mode))
