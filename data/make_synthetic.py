"""A seeded synthetic dataset in the on-disk layout of THUMOS14, for demos, tests and benchmarks.

    python data/make_synthetic.py --out data/synthetic                 # demo size, seconds
    python data/make_synthetic.py --out /big/disk/synth --size full    # 4741 / 5103 windows, D = 2048, packed

then run any stage with

    --data_dir=DIR/thumos14 --feature_path=DIR/feature --eval_gt_dir=DIR/thumos14/eval_annotation --pretrain=synthetic

(optionally --fps_file=DIR/thumos14/video_fps.csv; the one 25 fps test video, video_test_0000950,
is also in the built-in fps table). It writes

    DIR/thumos14/{val,test}/thumos14_<split>_annotation.csv, window_info.log, val/gt.npz
    DIR/thumos14/eval_annotation/<Class>_test.txt, Ambiguous_test.txt, detclasslist.txt (seconds)
    DIR/thumos14/video_fps.csv
    DIR/feature/{val,test}/{temporal,spatial}DataX<pretrain>/0.npy ... (or packed.npy, or <video>.npy)

or, with --layout i3d, the field's layout instead (docs/method.md §15; run with --data_source=json):

    DIR/annotations/thumos14.json     {"database": {video: {subset, duration, fps, annotations}}}
    DIR/i3d_features/<video>.npy      [T, 2 D]: RGB (spatial) channels, then flow (temporal); one step
                                      every 4 frames, step t a 16-frame clip centred on frame 4t + 8

or, with --layout json, a dataset of any classes, frame rate and steps in the field's layout
(--classes, --class_names, --fps, --frames_per_step, --clip_frames, --videos; subsets training
and testing), for the general path beside the THUMOS14 one:

    DIR/annotations/dataset.json      {"database": {video_00000: {subset, duration, fps, annotations}}}
    DIR/features/<video>.npy          [T, 2 D]: RGB, then flow; step t the clip of frames F t .. F t + C - 1

In the THUMOS14 layouts, videos hold several instances of one to three of the 20 classes, a few frames to several hundred
frames long. A feature step is Gaussian noise plus a slowly drifting per-video background; inside
an instance it adds the class direction (related classes share part of theirs), a class-agnostic
"action" direction, and start / end patterns on the first and last steps. Each stream sees each
class with its own strength (strong in one stream, weak in the other) and its own noise, so that
fusing the two streams pays. Ambiguous intervals carry a faint class signal.
Window counts are exact: each split ends with filler videos sized to hit the target.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

if __package__ in (None, ''):  # run as a script: the repository's modules live one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import feature_files  # noqa: E402
import release_dataset  # noqa: E402
from config import parse_config  # noqa: E402
from sliding_windows import ANNOTATION_COLUMNS, TRIM_FRAMES, make_windows, read_window_info  # noqa: E402
from thumos14 import CLASS_IDS, CLASS_NAME_OF_ID, CLIFF_DIVING, DIVING, feature_folder  # noqa: E402

SIZES = {  # windows (train, test), feature dim, video length range (frames), classes per video
    'demo': dict(train_windows=200, test_windows=150, dim=64, length=(800, 2000), classes=(2, 3), density=2.5),
    'full': dict(train_windows=4741, test_windows=5103, dim=2048, length=(1500, 15000), classes=(1, 2), density=1.0),
}
# Median instance length per class id, frames at 30 fps (roughly those of THUMOS14 val).
MEDIAN_FRAMES = {7: 100, 9: 50, 12: 100, 21: 290, 22: 80, 23: 30, 24: 30, 26: 70, 31: 50, 33: 160, 36: 200,
                 40: 130, 45: 170, 51: 190, 68: 200, 79: 150, 85: 90, 92: 50, 93: 80, 97: 40}
# Classes whose feature directions overlap, so that they can be confused.
RELATED = [(22, 26), (23, 24), (36, 79, 93), (40, 51, 68), (45, 93)]
FPS_25_VIDEO = 'video_test_0000950'
MAX_INSTANCE = 450          # frames; longer instances never fit a 512-frame window


# --- videos and instances ---

def random_instances(rng, frame_num, classes, density=1.0):
    """Non-overlapping (class_id, start, end) in frames, THUMOS-like lengths, in time order."""
    out, t = [], int(rng.integers(0, 150))
    while True:
        cid = int(rng.choice(classes))
        length = int(np.clip(rng.lognormal(np.log(MEDIAN_FRAMES[cid]), 0.5), 6, MAX_INSTANCE))
        if t + length > frame_num - 10:
            return out
        out.append((cid, t, t + length))
        t += length + int(rng.integers(20, 400) / density)


def filler_instances(rng, frame_num, classes, period=250):
    """One instance (<= 120 frames) in every `period` frames: every 512-frame window keeps one."""
    out = []
    for slot in range((frame_num - TRIM_FRAMES) // period):
        cid = int(rng.choice(classes))
        length = int(np.clip(rng.lognormal(np.log(min(MEDIAN_FRAMES[cid], 90)), 0.4), 6, 120))
        start = slot * period + int(rng.integers(0, period - length + 1))
        out.append((cid, start, start + length))
    return out


def frames_for_count(count, stride, size=512):
    """frame_num of a video with exactly `count` sliding windows of this stride (method.md §3)."""
    trimmed = size if count == 1 else size + stride * (count - 2) + 1
    return trimmed + TRIM_FRAMES


def window_count(videos, training, cfg):
    rows = annotation_rows(videos)
    if not rows:
        return 0
    return len(make_windows(pd.DataFrame(rows), training, cfg)[0])


def make_split(rng, split, target, spec, names, cfg):
    """Videos (dicts) of one split whose window count is exactly `target`."""
    training = split == 'val'
    stride = cfg.train_stride if training else cfg.test_stride
    order = rng.permutation(CLASS_IDS)
    videos, total, j = [], 0, 0

    def new_video(frame_num, instances):
        return dict(name=names[len(videos)], frame_num=int(frame_num), fps=30.0, instances=instances)

    # A short video first: no training window / one padded test window (method.md §3).
    short = new_video(int(rng.integers(300, 500)), [])
    short['instances'] = random_instances(rng, short['frame_num'], order[:1], density=2) or [(int(order[0]), 40, 120)]
    videos.append(short)
    total = window_count(videos, training, cfg)
    lo, hi = spec['length']
    while True:
        k = int(rng.integers(spec['classes'][0], spec['classes'][1] + 1))
        classes = order[(j + np.arange(k)) % len(order)]     # round robin: every class turns up
        j += k
        frame_num = int(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        video = new_video(frame_num, random_instances(rng, frame_num, classes, spec['density']))
        count = window_count(videos + [video], training, cfg) - total
        if total + count > target - 8 or len(videos) >= len(names) - 40:
            break
        videos.append(video)
        total += count
    # Filler videos bring the count to the target exactly.
    while total < target:
        need = min(target - total, 16)
        classes = order[(j + np.arange(2)) % len(order)]
        j += 2
        frame_num = frames_for_count(need, stride)
        video = new_video(frame_num, filler_instances(rng, frame_num, classes))
        count = window_count(videos + [video], training, cfg) - total
        if count != need:
            raise RuntimeError(f'filler video has {count} windows instead of {need}')
        videos.append(video)
        total += count
    if not training:
        # One test video at 25 fps; CliffDiving is also Diving in the THUMOS14 test ground truth.
        names_sorted = sorted(v['name'] for v in videos)
        videos[[v['name'] for v in videos].index(names_sorted[len(names_sorted) // 2])]['name'] = FPS_25_VIDEO
        for v in videos:
            if v['name'] == FPS_25_VIDEO:
                v['fps'] = 25.0
            v['ambiguous'] = ambiguous_intervals(rng, v) if rng.random() < 0.3 else []
    return videos


def ambiguous_intervals(rng, video):
    """One or two intervals in the gaps between instances."""
    edges = [0] + [x for _, s, e in video['instances'] for x in (s, e)] + [video['frame_num'] - 10]
    gaps = [(a + 10, b - 10) for a, b in zip(edges[::2], edges[1::2]) if b - a > 80]
    out = []
    for g in rng.permutation(len(gaps))[:int(rng.integers(1, 3))] if gaps else []:
        a, b = gaps[g]
        length = int(rng.integers(20, min(b - a, 150) + 1))
        start = int(rng.integers(a, b - length + 1))
        out.append((start, start + length))
    return sorted(out)


def annotation_rows(videos, diving_copies=False):
    """Annotation CSV rows; diving_copies repeats CliffDiving as Diving, as the THUMOS14 test CSV does."""
    rows = []
    for v in videos:
        for cid, s, e in v['instances']:
            rows.append(dict(video=v['name'], type=CLASS_NAME_OF_ID[cid], type_idx=cid, startFrame=s, endFrame=e,
                             frame_num=v['frame_num']))
            if diving_copies and cid == CLIFF_DIVING:
                rows.append(dict(rows[-1], type=CLASS_NAME_OF_ID[DIVING], type_idx=DIVING))
    return rows


# --- features ---

def stream_params(rng, dim, num_streams=2):
    """Directions shared by the streams, strengths and noise per stream."""
    def unit(n):
        a = rng.standard_normal((n, dim))
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    cls = {cid: u for cid, u in zip(CLASS_IDS, unit(len(CLASS_IDS)))}
    for group in RELATED:   # related classes share a common part of their direction
        common = unit(1)[0]
        for cid in group:
            mixed = 0.5 * common + 0.866 * cls[cid]
            cls[cid] = mixed / np.linalg.norm(mixed)
    action, start, end, drift = unit(4)
    # Per class, one stream strong and the other weaker (which one varies by class).
    share = rng.uniform(0.2, 0.8, len(CLASS_IDS))
    streams = []
    for m in range(num_streams):
        w = share if m == 0 else 1 - share
        streams.append(dict(cls={cid: cls[cid] * (2.0 + 4.0 * w[k]) for k, cid in enumerate(CLASS_IDS)},
                            action=action * (1.2 if m == 0 else 0.8), start=start * (2.5 if m == 0 else 1.8),
                            end=end * (2.5 if m == 0 else 1.8), drift=drift, noise=1.0 if m == 0 else 1.2))
    return streams


def video_features(rng, video, p, dim):
    """[T, dim] float32 features of one video for one stream; T = frame_num // 4."""
    steps = video['frame_num'] // feature_files.FRAMES_PER_STEP
    x = rng.standard_normal((steps, dim), dtype=np.float32) * np.float32(p['noise'])
    # A slow background drift along one direction plus a per-video offset.
    knots = rng.standard_normal(steps // 32 + 2)
    drift = np.interp(np.arange(steps) / 32, np.arange(len(knots)), knots)
    x += (drift[:, None] * p['drift'] * 0.8 + 0.3 * rng.standard_normal(dim)).astype(np.float32)
    for cid, s, e in video['instances']:
        a, b = s // 4, max(s // 4 + 1, -(-e // 4))
        x[a:b] += (p['cls'][cid] + p['action']).astype(np.float32)
        edge = min(2, b - a)
        x[a:a + edge] += p['start'].astype(np.float32)
        x[b - edge:b] += p['end'].astype(np.float32)
    for s, e in video.get('ambiguous', []):
        cid = CLASS_IDS[int(rng.integers(len(CLASS_IDS)))]
        x[s // 4:-(-e // 4)] += (0.35 * p['cls'][cid]).astype(np.float32)
    return x


def write_features(seeds, videos, starts, wvideos, p, dim, folder, layout, dtype):
    """Write one stream of one split in `layout` (window | packed | video); seeds: one per video."""
    os.makedirs(folder, exist_ok=True)
    packed = None
    if layout == 'packed':
        packed = np.lib.format.open_memmap(os.path.join(folder, feature_files.PACKED_NAME), mode='w+',
                                           dtype=np.dtype(dtype), shape=(len(starts), 128, dim))
    for seed, v in zip(seeds, videos):
        # One generator per video, so that writing in pieces needs one video in memory at a time.
        x = video_features(np.random.default_rng(seed), v, p, dim)
        if layout == 'video':
            np.save(os.path.join(folder, f'{v["name"]}.npy'), x.astype(dtype))
            continue
        rows = np.flatnonzero(wvideos == v['name'])
        if not len(rows):
            continue
        step = np.minimum(starts[rows, None] // 4 + np.arange(128), len(x) - 1)
        windows = x[step]
        if packed is not None:
            packed[rows] = windows.astype(dtype)
        else:
            for r, w in zip(rows, windows):
                np.save(os.path.join(folder, f'{r}.npy'), w.astype(dtype))
    if packed is not None:
        packed.flush()


# --- the field's layout (--layout i3d) ---

I3D_JSON = os.path.join('annotations', 'thumos14.json')
I3D_FEATURES = 'i3d_features'


def i3d_features(seeds, video, streams, dim, dtype):
    """[T, 2 dim]: the spatial stream's channels, then the temporal stream's, as the field's files.

    T = (frame_num - 16) // 4 + 1 clips fit the video; step t sees frames 4t .. 4t + 15 and carries
    the signal of the 4-frame step holding its centre, frame 4t + 8: step t + 2 of video_features."""
    clips = (video['frame_num'] - 16) // feature_files.FRAMES_PER_STEP + 1
    parts = [video_features(np.random.default_rng(seeds[m]), video, streams[m], dim)[2:2 + clips]
             for m in (1, 0)]   # streams[1] is the spatial (RGB) one, streams[0] the temporal (flow) one
    return np.concatenate(parts, axis=1).astype(dtype)


def i3d_database(videos):
    """The JSON object of both splits: seconds at each video's fps; label_id the 0-based class index."""
    database = {}
    for split, subset in (('val', 'Validation'), ('test', 'Test')):
        for v in sorted(videos[split], key=lambda v: v['name']):
            rows = annotation_rows([v], diving_copies=split == 'test')
            database[v['name']] = dict(subset=subset, duration=v['frame_num'] / v['fps'], fps=v['fps'], annotations=[
                dict(label=r['type'], segment=[r['startFrame'] / v['fps'], r['endFrame'] / v['fps']],
                     label_id=CLASS_IDS.index(r['type_idx'])) for r in rows])
    return {'version': 'synthetic', 'database': database}


def write_i3d(stage, videos, streams, feature_seqs, dim, dtype):
    """DIR/annotations/thumos14.json and DIR/i3d_features/<video>.npy under the staging folder."""
    os.makedirs(os.path.join(stage, 'annotations'))
    with open(os.path.join(stage, I3D_JSON), 'w') as f:
        json.dump(i3d_database(videos), f)
    folder = os.path.join(stage, I3D_FEATURES)
    os.makedirs(folder)
    for k, split in enumerate(('val', 'test')):
        seeds = [feature_seqs[2 * k + m].spawn(len(videos[split])) for m in (0, 1)]
        for j, v in enumerate(videos[split]):
            np.save(os.path.join(folder, f'{v["name"]}.npy'), i3d_features((seeds[0][j], seeds[1][j]), v, streams, dim,
                                                                         dtype))
    return ('annotations', I3D_FEATURES)


# --- any dataset in the field's layout (--layout json) ---

JSON_ANNOTATION = os.path.join('annotations', 'dataset.json')
JSON_FEATURES = 'features'
JSON_SUBSETS = ('training', 'testing')


def json_dataset(rng, num_videos, class_names, fps, seconds, max_instances=4):
    """{video: dict(subset, duration, fps, annotations)}: instances of 2 to 12 s in seconds, 1 to
    max_instances a video, apart; the first third of the videos are testing, the rest training."""
    database = {}
    for k in range(num_videos):
        duration = round(float(rng.uniform(*seconds)), 2)
        annotations, t = [], float(rng.uniform(1, 8))
        for _ in range(int(rng.integers(1, max_instances + 1))):
            length = float(rng.uniform(2, 12))
            if t + length > duration - 1:
                break
            label = int(rng.integers(len(class_names)))
            annotations.append(dict(label=class_names[label], segment=[round(t, 2), round(t + length, 2)],
                                    label_id=label))
            t += length + float(rng.uniform(3, 20))
        database[f'video_{k:05d}'] = dict(subset=JSON_SUBSETS[0 if k >= num_videos // 3 else 1], duration=duration,
                                          fps=fps, annotations=annotations)
    return database


def json_features(rng, entry, directions, frames_per_step, clip_frames):
    """[T, 2 dim] (RGB stream, then flow) of one video: T clips of clip_frames frames every
    frames_per_step frames fit the video; a step whose clip is centred inside an instance
    (frame F t + C / 2) carries the instance's class direction, plus start / end patterns on the
    instance's first and last step."""
    frame_num = round(entry['duration'] * entry['fps'])
    steps = max(1, (frame_num - clip_frames) // frames_per_step + 1)
    centre = (frames_per_step * np.arange(steps) + clip_frames / 2) / entry['fps']   # seconds
    cls, start, end = directions
    x = rng.standard_normal((steps, cls.shape[1]), dtype=np.float32)
    for a in entry['annotations']:
        inside = np.flatnonzero((centre >= a['segment'][0]) & (centre < a['segment'][1]))
        if len(inside):
            x[inside] += 3 * cls[a['label_id']]
            x[inside[:2]] += 3 * start
            x[inside[-2:]] += 3 * end
    return x


def make_json_synthetic(out, seed=0, class_names=tuple(f'action{k}' for k in range(1, 8)), fps=25.0,
                        frames_per_step=8, clip_frames=16, dim=16, num_videos=30, seconds=(40, 120)):
    """DIR/annotations/dataset.json (subsets training and testing) and DIR/features/<video>.npy
    [T, 2 dim] of a dataset of len(class_names) classes at `fps`, one step every frames_per_step
    frames, each a clip of clip_frames frames. Returns a summary dict."""
    if len(set(class_names)) != len(class_names) or not all(class_names):
        raise ValueError(f'class names must be distinct and non-empty, got {list(class_names)}')
    rng = np.random.default_rng(seed)
    database = json_dataset(rng, num_videos, list(class_names), float(fps), seconds)
    units = rng.standard_normal((len(class_names) + 2, dim)).astype(np.float32)
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    directions = (units[:-2], units[-2], units[-1])
    os.makedirs(out, exist_ok=True)
    stage = tempfile.mkdtemp(prefix='.synthetic-', dir=out)
    try:
        os.makedirs(os.path.join(stage, 'annotations'))
        with open(os.path.join(stage, JSON_ANNOTATION), 'w') as f:
            json.dump({'version': 'synthetic', 'database': database}, f, indent=1)
        os.makedirs(os.path.join(stage, JSON_FEATURES))
        for video, entry in database.items():
            rgb, flow = (json_features(rng, entry, directions, frames_per_step, clip_frames) for _ in range(2))
            np.save(os.path.join(stage, JSON_FEATURES, f'{video}.npy'), np.concatenate([rgb, flow], axis=1))
        _swap_in(out, stage, ('annotations', JSON_FEATURES))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dict(videos=len(database), classes=list(class_names), dim=2 * dim,
                instances=sum(len(e['annotations']) for e in database.values()))


# --- evaluation ground truth ---

def write_eval_gt(folder, test_videos):
    os.makedirs(folder, exist_ok=True)
    rows = pd.DataFrame(annotation_rows(test_videos, diving_copies=True))
    fps = {v['name']: v['fps'] for v in test_videos}
    rows['start_s'] = rows['startFrame'] / rows['video'].map(fps)
    rows['end_s'] = rows['endFrame'] / rows['video'].map(fps)
    rows = rows.sort_values(['video', 'startFrame'])
    for cid in CLASS_IDS:
        name = CLASS_NAME_OF_ID[cid]
        sub = rows[rows['type_idx'] == cid]
        with open(os.path.join(folder, f'{name}_test.txt'), 'w') as f:
            f.write(''.join(f'{v}  {s:.1f} {e:.1f}\n' for v, s, e in zip(sub['video'], sub['start_s'], sub['end_s'])))
    with open(os.path.join(folder, 'Ambiguous_test.txt'), 'w') as f:
        for v in sorted(test_videos, key=lambda v: v['name']):
            f.write(''.join(f'{v["name"]}  {s / v["fps"]:.1f} {e / v["fps"]:.1f}\n' for s, e in v['ambiguous']))
    with open(os.path.join(folder, 'detclasslist.txt'), 'w') as f:
        f.write(''.join(f'{cid} {CLASS_NAME_OF_ID[cid]}\n' for cid in CLASS_IDS))


# --- the whole dataset ---

def make_synthetic(out, cfg, seed=0, size='demo', dim=None, train_windows=None, test_windows=None,
                   layout=None, dtype=None, pretrain='synthetic'):
    """Write the dataset under `out` (see the module docstring); returns a summary dict."""
    spec = dict(SIZES[size])
    dim = dim or spec['dim']
    layout = layout or ('window' if size == 'demo' else 'packed')
    dtype = dtype or ('float64' if layout == 'window' else 'float16' if size == 'full' else 'float32')
    targets = {'val': train_windows or spec['train_windows'], 'test': test_windows or spec['test_windows']}
    layout_seq, param_seq, *feature_seqs = np.random.SeedSequence(seed).spawn(6)
    rng = np.random.default_rng(layout_seq)
    numbers = rng.permutation(np.setdiff1d(np.arange(1, 1600), [950]))
    val_names = [f'video_validation_{n:07d}' for n in numbers[:800]]
    test_names = [f'video_test_{n:07d}' for n in numbers[:800]]
    videos = {'val': make_split(rng, 'val', targets['val'], spec, val_names, cfg),
              'test': make_split(rng, 'test', targets['test'], spec, test_names, cfg)}
    streams = stream_params(np.random.default_rng(param_seq), dim)

    os.makedirs(out, exist_ok=True)
    stage = tempfile.mkdtemp(prefix='.synthetic-', dir=out)
    try:
        if layout == 'i3d':
            _swap_in(out, stage, write_i3d(stage, videos, streams, feature_seqs, dim, dtype))
            return dict(train_windows=window_count(videos['val'], True, cfg),
                        test_windows=window_count(videos['test'], False, cfg), dim=2 * dim, layout=layout,
                        dtype=dtype, val_videos=len(videos['val']), test_videos=len(videos['test']),
                        instances={s: sum(len(v['instances']) for v in videos[s]) for s in videos})
        data_dir, feature_dir = os.path.join(stage, 'thumos14'), os.path.join(stage, 'feature')
        summary = {}
        for k, split in enumerate(('val', 'test')):
            split_dir = os.path.join(data_dir, split)
            os.makedirs(split_dir)
            csv = os.path.join(split_dir, f'thumos14_{split}_annotation.csv')
            pd.DataFrame(annotation_rows(videos[split], diving_copies=split == 'test'),
                         columns=list(ANNOTATION_COLUMNS)).to_csv(csv, index=False)
            # The window lists and boxes come from the written CSV, as for the real data.
            summary[split] = release_dataset.write_split_info(csv, split, split_dir, cfg)
            starts, wvideos = read_window_info(os.path.join(split_dir, 'window_info.log'))
            for m, mode in enumerate(('temporal', 'spatial')):
                seeds = feature_seqs[2 * k + m].spawn(len(videos[split]))
                folder = feature_folder(feature_dir, split, mode, pretrain)
                write_features(seeds, videos[split], starts, wvideos, streams[m], dim, folder, layout, dtype)
        write_eval_gt(os.path.join(data_dir, 'eval_annotation'), videos['test'])
        pd.DataFrame([(v['name'], v['fps']) for s in ('val', 'test') for v in videos[s]],
                     columns=['video', 'fps']).to_csv(os.path.join(data_dir, 'video_fps.csv'), index=False)
        _swap_in(out, stage, ('thumos14', 'feature'))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dict(train_windows=summary['val'], test_windows=summary['test'], dim=dim, layout=layout, dtype=dtype,
                val_videos=len(videos['val']), test_videos=len(videos['test']),
                instances={s: sum(len(v['instances']) for v in videos[s]) for s in videos})


def _swap_in(out, stage, names):
    """Swap the finished folders in; an interrupted run leaves only the hidden staging folder."""
    for name in names:
        target = os.path.join(out, name)
        if os.path.exists(target):
            os.replace(target, os.path.join(stage, f'old-{name}'))
        os.replace(os.path.join(stage, name), target)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, help='output folder (gets thumos14/ and feature/)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--size', choices=sorted(SIZES), default='demo',
                        help='demo: 200 / 150 windows, D = 64, per-window files; full: 4741 / 5103, D = 2048, packed')
    parser.add_argument('--dim', type=int, default=None, help='feature dimension D (default by --size)')
    parser.add_argument('--train_windows', type=int, default=None, help='training windows (default by --size)')
    parser.add_argument('--test_windows', type=int, default=None, help='test windows (default by --size)')
    parser.add_argument('--layout', choices=['window', 'packed', 'video', 'i3d', 'json'], default=None,
                        help='window: 0.npy ... (released); packed: packed.npy; video: <video>.npy; '
                             'i3d: THUMOS14 in the field\'s JSON + <video>.npy [T, 2 D] (RGB then flow, 16-frame '
                             'clips); json: any dataset in that layout (the options below)')
    json_options = parser.add_argument_group('--layout json')
    json_options.add_argument('--classes', type=int, default=7, help='number of classes (default 7)')
    json_options.add_argument('--class_names', default=None, help='comma-separated class names (default action1..)')
    json_options.add_argument('--fps', type=float, default=25.0, help='frame rate of every video (default 25)')
    json_options.add_argument('--frames_per_step', dest='json_frames_per_step', type=int, default=8,
                              help='frames between feature steps (default 8)')
    json_options.add_argument('--clip_frames', dest='json_clip_frames', type=int, default=16,
                              help='frames one step sees (default 16)')
    json_options.add_argument('--videos', type=int, default=30, help='number of videos (default 30)')
    parser.add_argument('--dtype', choices=['float64', 'float32', 'float16'], default=None,
                        help='feature dtype on disk (default float64 per window as released, float16 packed for full)')
    parser.add_argument('--pretrain', default='synthetic', help='feature folder suffix <mode>DataX<pretrain>')
    t = time.time()
    try:
        cfg, args = parse_config(parser)
        if args.layout == 'json':
            return main_json(args, t)
        for name in ('dim', 'train_windows', 'test_windows'):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise ValueError(f'--{name} must be >= 1')
        info = make_synthetic(args.out, cfg, args.seed, args.size, args.dim, args.train_windows, args.test_windows,
                              args.layout, args.dtype, args.pretrain)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    print(f'{args.out}: {info["train_windows"]} training windows ({info["val_videos"]} videos, '
          f'{info["instances"]["val"]} instances), {info["test_windows"]} test windows ({info["test_videos"]} videos, '
          f'{info["instances"]["test"]} instances), D = {info["dim"]}, {info["layout"]} {info["dtype"]} features, '
          f'{time.time() - t:.1f} s')
    if info['layout'] == 'i3d':
        half = info['dim'] // 2
        print(f'use: --data_source=json --annotation_json={args.out}/{I3D_JSON} '
              f'--feature_dir={args.out}/{I3D_FEATURES} --spatial_channels=0,{half} --temporal_channels={half},{info["dim"]}')
        return
    print(f'use: --data_dir={args.out}/thumos14 --feature_path={args.out}/feature '
          f'--eval_gt_dir={args.out}/thumos14/eval_annotation --pretrain={args.pretrain} '
          f'--fps_file={args.out}/thumos14/video_fps.csv')


def main_json(args, t):
    """--layout json: a dataset of any classes, fps and steps in the field's layout."""
    names = args.class_names.split(',') if args.class_names else [f'action{k}' for k in range(1, args.classes + 1)]
    try:
        if len(names) != args.classes and args.class_names:
            raise ValueError(f'--class_names gives {len(names)} names, --classes is {args.classes}')
        for name in ('fps', 'json_frames_per_step', 'json_clip_frames', 'videos', 'classes'):
            if not getattr(args, name) > 0:
                raise ValueError(f'--{name.removeprefix("json_")} must be > 0')
        info = make_json_synthetic(args.out, args.seed, names, args.fps, args.json_frames_per_step,
                                   args.json_clip_frames, args.dim or 16, args.videos)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    half = info['dim'] // 2
    print(f'{args.out}: {info["videos"]} videos, {info["instances"]} instances of {len(names)} classes, '
          f'D = {info["dim"]}, {time.time() - t:.1f} s')
    print(f'use: --data_source=json --annotation_json={args.out}/{JSON_ANNOTATION} '
          f'--feature_dir={args.out}/{JSON_FEATURES} --spatial_channels=0,{half} --temporal_channels={half},'
          f'{info["dim"]} --frames_per_step={args.json_frames_per_step} --clip_frames={args.json_clip_frames} '
          f'--train_subsets={JSON_SUBSETS[0]} --test_subsets={JSON_SUBSETS[1]}')


if __name__ == '__main__':
    main()
