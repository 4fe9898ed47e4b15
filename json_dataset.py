"""A dataset in the field's JSON format, read in place (cfg.data_source = 'json'; 'i3d' is its old
name): one annotation JSON for every video and one `<video>.npy` of features per video.

ActionFormer, TriDet, TemporalMaxer and the OpenTAD zoo share this format (docs/method.md §15):

    <annotation_json>    {"database": {video: {"subset": name, "duration": s, "fps": f,
                          "annotations": [{"label": name, "segment": [start_s, end_s], "label_id": k}]}}}
    <feature_dir>/<video>.npy   [T, D] float: the streams' channel ranges (spatial_channels,
                                temporal_channels) side by side, or one stream (streams)

one step every F = frames_per_step frames at the video's own fps, step t a clip of C =
clip_frames frames (frames F t .. F t + C - 1, centred on frame F t + C / 2). THUMOS14 with the
field's two-stream I3D features is F = 4, C = 16, subsets Validation (train) and Test.

Frames here are the video's own frames. A window is input_steps steps = input_steps * F frames
(config.resolve_defaults keeps the method's 128-step windows and 32 / 64-step strides for any
F), so boxes, post-processing and frames -> seconds (frame / fps) are those of the release. What
load_data reads through this module:

    anno, videos = read_split(cfg, 'val')    # JSON seconds -> annotation rows in frames (sliding_windows.py)
    gt = load_train_gt(cfg)                  # §3 windows and boxes of the train_subsets' videos
    starts, names = test_windows(cfg)        # §3 windows of every test_subsets video
    x = load_features(cfg, 'test', starts, names, 'concat')   # [W, 128, D] of the windows
    classes = class_list(cfg)                # the JSON's labels, or the class-list file cfg.class_list

Time must agree between the JSON and the features, or every box is misplaced without a word:
a feature file whose length does not fit its video's duration at its fps and F (more than a
clip and a step apart: another stride, another frame rate, a truncated extraction) is refused,
as is a file ending before an instance. The field's own files need two tolerances, each one
warning that counts and names: instances past their video's end (THUMOS14 has 30; training
clips those that start inside the video to its end and drops those that start at or after it;
evaluation keeps them as they are), and videos without a feature file (left out).

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
from feature_files import CLIP_FRAMES, FRAMES_PER_STEP, load_npy, read_video_files, step_offset
from sliding_windows import make_gt, make_windows, read_window_info


# --- frames, steps, seconds ---

def seconds_to_frames(seconds, fps):
    """Seconds -> frames (real-valued) at the video's frame rate."""
    return np.asarray(seconds, np.float64) * fps


def frames_to_seconds(frames, fps):
    """Frames -> seconds; a detection's frames (window start + window_size x, §9) become seconds so (§10)."""
    return np.asarray(frames, np.float64) / fps


def step_centre_frame(step, frames_per_step=FRAMES_PER_STEP, clip_frames=CLIP_FRAMES):
    """The frame at the centre of feature step t: F t + C / 2 (4t + 8 for THUMOS14's I3D)."""
    return frames_per_step * np.asarray(step) + clip_frames / 2


def frame_to_step(frame, frames_per_step=FRAMES_PER_STEP, clip_frames=CLIP_FRAMES):
    """The step coordinate of a frame, the inverse of step_centre_frame: f / F - C / (2 F)
    (ActionFormer's `s * fps / 4 - 2` of a time s in seconds)."""
    return (np.asarray(frame, np.float64) - clip_frames / 2) / frames_per_step


def window_steps(starts, steps, frames_per_step=FRAMES_PER_STEP, clip_frames=CLIP_FRAMES):
    """[W, steps] feature steps read by the windows starting at frames `starts`, before they are
    cut to the file: s // F + offset + j, the step centred on frame F (s // F) + F j, the first
    frame of the window's j-th cell (offset -C / (2 F); feature_files.step_offset says how a
    fraction is rounded) (§15)."""
    offset = step_offset(frames_per_step, clip_frames)
    return np.asarray(starts, np.int64)[:, None] // frames_per_step + offset + np.arange(steps)


def covered_frames(num_steps, frames_per_step=FRAMES_PER_STEP, clip_frames=CLIP_FRAMES):
    """Frames [0, n) seen by the clips of a file of `num_steps` steps: the last clip ends at F(T-1) + C."""
    return frames_per_step * (np.asarray(num_steps) - 1) + clip_frames


def _steps_of(cfg):
    return dict(frames_per_step=cfg.frames_per_step, clip_frames=cfg.clip_frames)


def stream_channels(cfg, mode=None):
    """Channel indices of `mode` (temporal, spatial, or concat: RGB then flow); None = every channel."""
    mode = mode or cfg.mode
    modes = CONCAT_STREAMS if mode == 'concat' else (mode,)
    absent = [m for m in modes if m not in cfg.streams]
    if absent:
        raise ValueError(f'mode {mode}: the features hold no {absent[0]} stream (streams: {",".join(cfg.streams)})')
    channels = np.concatenate([np.arange(*getattr(cfg, f'{m}_channels')) for m in modes])
    full = np.array_equal(channels, np.arange(feature_width(cfg)))
    return None if full else channels   # a whole row is read without a gather


def feature_width(cfg):
    """The width every feature file must have: the end of the last stream's channels."""
    return max(getattr(cfg, f'{m}_channels')[1] for m in cfg.streams)


def _channel_settings(cfg):
    return ', '.join(f'{m}_channels {getattr(cfg, f"{m}_channels")}' for m in cfg.streams)


# --- the JSON, one split ---

def split_subsets(cfg, split):
    """The JSON subsets of `split`: cfg.train_subsets for 'val' / 'train' / cfg.train_split_set
    (or True), cfg.test_subsets for 'test' / cfg.test_split_set (or False)."""
    if split is True or split in ('val', 'train', cfg.train_split_set):
        return tuple(cfg.train_subsets)
    if split is False or split in ('test', cfg.test_split_set):
        return tuple(cfg.test_subsets)
    raise ValueError(f'split {split!r} has no subset in the annotation JSON; the splits are '
                     f'{cfg.train_split_set} (train_subsets {",".join(cfg.train_subsets)}) and '
                     f'{cfg.test_split_set} (test_subsets {",".join(cfg.test_subsets)})')


def read_json(cfg):
    """thumos14.read_annotation_json of cfg.annotation_json, with the classes of the `id name`
    file cfg.class_list (every label must name one of them), else the file's own classes
    (THUMOS14's 20 with their official ids when every label is one of them)."""
    listed = None
    if cfg.class_list:
        if not os.path.isfile(cfg.class_list):
            raise ValueError(f'class_list: {cfg.class_list} not found (a file of `id name` lines)')
        listed = classes.read_class_list(cfg.class_list)
    return thumos14.read_annotation_json(cfg.annotation_json, class_list=listed)


def class_list(cfg):
    """The classes (a classes.ClassList, in model class order 1..K): read_json's."""
    return read_json(cfg)['classes']


def read_split(cfg, split, db=None):
    """(annotation rows (sliding_windows.ANNOTATION_COLUMNS), in frames; video table
    video, subset, duration, fps, frame_num, steps) of one split of the JSON.

    Frames are seconds * fps rounded (an instance keeps at least one frame); frame_num is
    duration * fps rounded. For training, instances past their video's end are clipped to it,
    or dropped when they start at or after it (one warning). Videos without a feature file are
    reported by name and left out; a file that does not fit its video's time is refused."""
    subsets = split_subsets(cfg, split)
    training = subsets == tuple(cfg.train_subsets)
    db = db or read_json(cfg)
    per_subset = db['videos'].groupby('subset', sort=False)['video']
    unknown = [s for s in subsets if s not in per_subset.groups]
    if unknown:
        name = 'train_subsets' if training else 'test_subsets'
        present = ', '.join(f'{s!r} ({len(v)} videos, e.g. {v.iloc[0]})' for s, v in per_subset)
        raise ValueError(f'{cfg.annotation_json}: field subset: no video of subset {unknown[0]!r} ({name}); '
                         f'the subsets of the file are {present}')
    videos = db['videos'][db['videos']['subset'].isin(subsets)].reset_index(drop=True)
    videos['frame_num'] = np.rint(seconds_to_frames(videos['duration'], videos['fps'])).astype(np.int64)
    inst = db['instances'][db['instances']['video'].isin(videos['video'])].reset_index(drop=True)
    if training:
        inst = _inside_videos(cfg, inst, videos)
    per_video = videos.set_index('video')
    fps, frame_num = (inst['video'].map(per_video[c]).to_numpy() for c in ('fps', 'frame_num'))
    start = np.minimum(np.rint(seconds_to_frames(inst['start'], fps)), frame_num - 1).astype(np.int64)
    end = np.clip(np.rint(seconds_to_frames(inst['end'], fps)), start + 1, frame_num).astype(np.int64)
    anno = pd.DataFrame({'video': inst['video'], 'type': inst['label'], 'type_idx': inst['class_id'],
                         'startFrame': start, 'endFrame': end, 'frame_num': frame_num})
    videos['steps'] = _feature_steps(cfg, videos, anno)
    missing = videos['steps'].to_numpy() < 0
    what = '/'.join(subsets)
    if missing.all():
        raise ValueError(f'{cfg.feature_dir}: no feature file <video>.npy for any of the {len(videos)} '
                         f'{what} videos of {cfg.annotation_json} (e.g. {videos["video"][0]}.npy)')
    if missing.any():
        names = videos['video'][missing].tolist()
        lost = int(anno['video'].isin(names).sum())
        fate = 'are never trained on' if training else 'count as misses in the evaluation'
        thumos14.warn(f'{cfg.feature_dir}: no feature file for {len(names)} of the {len(videos)} {what} '
                      f'videos, left out (their {lost} instances {fate}): {", ".join(names)}')
        videos = videos[~missing].reset_index(drop=True)
        anno = anno[~anno['video'].isin(names)].reset_index(drop=True)
    return anno, videos


def _inside_videos(cfg, inst, videos):
    """The training instances cut to their video: those reaching past the end by more than the
    JSON's rounding (thumos14 past_end) are clipped to the end when they start inside the video,
    dropped when they start at or after its end, with one warning naming them."""
    duration = inst['video'].map(videos.set_index('video')['duration']).to_numpy()
    late = inst['past_end'].to_numpy()
    if not late.any():
        return inst
    dropped = inst['start'].to_numpy() >= duration
    counts = inst.loc[late, 'video'].value_counts(sort=False)
    thumos14.warn(f'{cfg.annotation_json}: field segment: {int(late.sum())} training instances reach past their '
                  f'video\'s duration: {int((late & ~dropped).sum())} clipped to the end, {int(dropped.sum())} '
                  f'dropped (they start at or after it); the evaluation keeps them as they are. Videos: '
                  + ', '.join(f'{v} ({n})' for v, n in counts.items()))
    return inst[~dropped].reset_index(drop=True)


# A file may be this much longer or shorter than its video (frames): one clip and one step covers
# extractors that pad the last clip or drop it, and durations rounded to 0.01 s.
def length_slack(cfg):
    return cfg.clip_frames + cfg.frames_per_step


def _feature_steps(cfg, videos, anno):
    """Steps T of each video's file (-1 where there is none). A file of another width, not
    floating point, empty, ending before an instance or not as long as the video is an error."""
    width = feature_width(cfg)
    steps = np.full(len(videos), -1, np.int64)
    for i, video in enumerate(videos['video']):
        path = os.path.join(cfg.feature_dir, f'{video}.npy')
        if not os.path.isfile(path):
            continue
        a = load_npy(path, mmap=True)   # the header only
        if a.ndim != 2 or a.shape[1] != width or a.dtype.kind != 'f' or len(a) == 0:
            raise ValueError(f'{path}: video {video}: feature shape {list(a.shape)} ({a.dtype}), expected '
                             f'[T >= 1, {width}] floats (width: {_channel_settings(cfg)})')
        steps[i] = len(a)
    have = steps > 0
    covered = covered_frames(steps, **_steps_of(cfg))
    last = anno.groupby('video')['endFrame'].max().reindex(videos['video']).fillna(0).to_numpy(np.int64)
    short = np.flatnonzero(have & (last > covered + cfg.clip_frames))
    if len(short):
        i = short[0]
        raise ValueError(f'{os.path.join(cfg.feature_dir, videos["video"][i])}.npy: video {videos["video"][i]}: '
                         f'feature file shorter than its annotations: {steps[i]} steps cover frames up to '
                         f'{covered[i]}, an instance (field segment) ends at frame {last[i]} '
                         f'({last[i] / videos["fps"][i]:.2f} s at {videos["fps"][i]:g} fps)')
    frame_num = videos['frame_num'].to_numpy(np.int64)
    off = np.flatnonzero(have & (np.abs(covered - frame_num) > length_slack(cfg)))
    if len(off):
        raise ValueError(_length_message(cfg, videos.iloc[off[0]], steps[off[0]], len(off)))
    return steps


def _length_message(cfg, video, steps, count):
    """Why a feature file does not fit its video: what the file's length would mean instead."""
    f, c = cfg.frames_per_step, cfg.clip_frames
    expected = max(1, (int(video['frame_num']) - c) // f + 1)
    seen_frames = f * (steps - 1) + c
    return (f'{os.path.join(cfg.feature_dir, video["video"])}.npy: video {video["video"]}: {steps} feature steps '
            f'do not fit the video: field duration {video["duration"]:g} s at field fps {video["fps"]:g} is '
            f'{video["frame_num"]} frames, {expected} steps of {f} frames (frames_per_step) with {c}-frame clips '
            f'(clip_frames), within {length_slack(cfg)} frames; the file\'s length would mean '
            f'{seen_frames / video["duration"]:.2f} fps, or '
            f'{(video["frame_num"] - c) / max(steps - 1, 1):.2f} frames a step, or a truncated extraction. Check fps, frames_per_step and the extraction'
            + (f' ({count} such videos)' if count > 1 else ''))


# --- what load_data reads ---

def load_train_gt(cfg):
    """The §3 training windows of the train_subsets' videos and their boxes (sliding_windows.make_gt's dict)."""
    db = read_json(cfg)
    ids = db['classes'].ids
    anno, _ = read_split(cfg, True, db)
    starts, videos = make_windows(anno, True, cfg, ids)
    if len(starts) == 0:
        raise ValueError(f'{cfg.annotation_json}: field annotations: no training window keeps an instance')
    return make_gt(anno, starts, videos, cfg, ids)


def test_windows(cfg, path=None):
    """(starts, videos): the window list `path`, or the §3 test windows of every test video with a feature file."""
    if path:
        return read_window_info(path)
    _, videos = read_split(cfg, False)
    return make_windows(videos[['video', 'frame_num']], False, cfg)


def load_features(cfg, split, starts, videos, mode=None, indices=None, folder=None, mmap=False):
    """[len(indices), input_steps, D] features of the windows (starts, videos): window step j is
    file step s // F + offset + j, cut to [0, T - 1] (window_steps), channels of `mode`
    (stream_channels). Same arguments as release_dataset.load_features; `folder` overrides
    cfg.feature_dir; `split` and `mmap` are not used (one folder; the windows overlap, so
    they are always gathered)."""
    folder = folder or cfg.feature_dir
    starts, videos = np.asarray(starts, np.int64), np.asarray(videos, str)
    if len(starts) != len(videos):
        raise ValueError(f'{len(starts)} window starts but {len(videos)} window videos')
    indices = np.arange(len(starts)) if indices is None else np.asarray(indices, np.int64)
    channels = stream_channels(cfg, mode)
    if len(indices):
        path = os.path.join(folder, f'{videos[indices[0]]}.npy')
        width = load_npy(path, mmap=True).shape[-1]
        if width != feature_width(cfg):
            raise ValueError(f'{path}: video {videos[indices[0]]}: feature width {width}, expected '
                             f'{feature_width(cfg)} ({_channel_settings(cfg)})')
    layout = f'steps of {cfg.frames_per_step} frames, {cfg.clip_frames}-frame clips'
    return read_video_files(folder, starts, videos, indices, cfg.input_steps, np.dtype(cfg.feature_dtype),
                            step_offset(cfg.frames_per_step, cfg.clip_frames), channels,
                            cfg.frames_per_step, layout)
