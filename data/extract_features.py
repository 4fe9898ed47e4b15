"""Per-video features for one's own videos: spatial (RGB) and temporal (optical flow) streams.

    python data/extract_features.py VIDEO_OR_FOLDER [...] --split val --out data/THUMOS14/feature \
        [--backbone resnet50|tiny] [--weights PATH|random] [--weights-temporal PATH] [--streams spatial,temporal]

writes, for each video and stream,

    <out>/<split>/<mode>DataX<pretrain>/<video>.npy    float32 [T, D]   (mode = spatial | temporal)

which is the per-video layout the loader reads (windows are sliced from it), and
a table <out>/<split>/video_info.csv with columns video,fps,frame_num,steps.
<pretrain> is --pretrain, by default the backbone's name.

Video names are file names without extension, whitespace replaced by '_'; the
annotation CSV must use the same names (the table lists them).

Steps. One step every 4 frames at the video's own fps: step t covers frames
4t..4t+3 and T = frame_num // 4 (floor: a last group of fewer than 4 frames is
dropped, so every step covers 4 real frames; the test windows of method.md §3
never reach past (frame_num - 9) // 4 steps). frame_num is the number of frames
actually decoded, not the container's claim.

Streams. Frames are resized so the short side is --size, then centre-cropped to
--size x --size.
- spatial: the RGB frame at the centre of the step (frame 4t+2), ImageNet-normalised,
  through a 2-D CNN.
- temporal: L = --flow-length (default 5, as in TSN) consecutive optical-flow fields
  around the centre, flow(k -> k+1) for k = 4t+2-L//2 ... 4t+2-L//2+L-1 (clamped to
  the video), x and y interleaved (x0, y0, x1, y1, ...), so 2L input channels;
  displacements in pixels are clipped to +-20 and divided by 20. Flow is OpenCV's
  TV-L1 when opencv-contrib is installed (--flow auto), else DIS; --flow dis is
  much faster on a CPU. Flow always runs on the CPU, on --flow-workers threads; the
  CNNs run batched on the GPU when there is one.

Backbones.
- resnet50 (torchvision, D = 2048): --weights PATH (a state dict of torchvision's
  resnet50), or, without --weights, torchvision's ImageNet weights when the machine
  can download them, else random weights with a warning. The flow network is a
  resnet50 whose first conv takes 2L channels: --weights-temporal PATH (2L or 3
  input channels), else it starts from the spatial weights by averaging the first
  conv over RGB (cross-modality initialisation). Such ImageNet-initialised flow
  features are far weaker than flow-trained ones.
- tiny (D = 64): a three-layer CNN defined here, random (seeded by --seed) or
  --weights PATH. It exists to test the pipeline quickly; its features carry
  little information.

Rerunning skips videos whose outputs are complete (every file is written
atomically). A video that cannot be decoded is reported and skipped; the others
are still done; the exit status is 1 when any failed.
"""
import argparse
import math
import os
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
import operations  # noqa: E402
from checkpoints import read_checkpoint  # noqa: E402
from config import parse_config  # noqa: E402
from fileio import atomic_open, atomic_path  # noqa: E402
from thumos14 import DEFAULT_FPS, feature_folder  # noqa: E402

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.mov', '.webm', '.m4v', '.mpg', '.mpeg', '.flv', '.wmv')
STREAMS = ('spatial', 'temporal')
BACKBONE_DIMS = {'resnet50': 2048, 'tiny': 64}
DEFAULT_SIZES = {'resnet50': 224, 'tiny': 64}
FLOW_BOUND = 20.0  # pixels; larger displacements are clipped (TSN's convention)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INFO_COLUMNS = ['video', 'fps', 'frame_num', 'steps']


class VideoError(Exception):
    """A video that cannot be decoded (or is too short); it is reported and skipped."""


def import_cv2():
    try:
        import cv2
    except ImportError:
        raise ValueError('feature extraction needs OpenCV: pip install -r requirements-extract.txt') from None
    return cv2


def import_torchvision():
    try:
        import torchvision
    except Exception as err:  # a torchvision built for another torch fails with RuntimeError, not ImportError
        raise ValueError(
            f'--backbone resnet50 needs torchvision, which does not import here ({type(err).__name__}: {err}).\n'
            'Install a torch / torchvision pair built for each other, e.g.\n'
            '  pip install torch==2.14.1 torchvision==0.29.1\n'
            'or use --backbone tiny to test the pipeline without it.') from None
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


def imagenet_resnet50_weights(torchvision):
    """torchvision's ImageNet weights, or None (with a warning) when they cannot be fetched."""
    try:
        weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
        return weights.get_state_dict(progress=False)
    except Exception as err:
        warnings.warn(f'could not fetch torchvision ResNet-50 ImageNet weights ({type(err).__name__}: {err})')
        return None


def build_backbones(streams, backbone, weights=None, weights_temporal=None, flow_length=5, seed=0):
    """{stream: nn.Module [B, C, H, W] -> [B, D]} in eval mode, on the CPU.

    weights: a path, 'random', or None (resnet50: torchvision's ImageNet weights when
    downloadable; tiny: random). Random weights are seeded so reruns give the same features.
    """
    if backbone not in BACKBONE_DIMS:
        raise ValueError(f'unknown backbone {backbone!r}; choose from {sorted(BACKBONE_DIMS)}')
    in_channels = {'spatial': 3, 'temporal': 2 * flow_length}
    nets = {}
    if backbone == 'tiny':
        for stream in streams:
            torch.manual_seed(seed + (stream == 'temporal'))
            nets[stream] = tiny_cnn(in_channels[stream])
            path = weights_temporal if stream == 'temporal' and weights_temporal else weights
            if path and path != 'random':
                load_weights(nets[stream], read_state_dict(path), path)
            else:
                print(f'note: tiny {stream} backbone with random weights (seed {seed}): for testing the pipeline')
    else:
        torchvision = import_torchvision()
        if weights == 'random':
            rgb_sd = None
        elif weights:
            rgb_sd = read_state_dict(weights)
        else:
            rgb_sd = imagenet_resnet50_weights(torchvision)
        if rgb_sd is None:
            print('!' * 78 + '\nWARNING: ResNet-50 with RANDOM weights: the features will be meaningless for '
                  'real videos.\nGive --weights PATH (a torchvision resnet50 state dict) for real use.\n' + '!' * 78,
                  file=sys.stderr)
        for stream in streams:
            torch.manual_seed(seed + (stream == 'temporal'))
            net = torchvision.models.resnet50(weights=None)
            net.fc = nn.Identity()
            sd = rgb_sd
            if stream == 'temporal':
                net.conv1 = nn.Conv2d(2 * flow_length, 64, 7, stride=2, padding=3, bias=False)
                if weights_temporal:
                    sd = read_state_dict(weights_temporal)
                if sd is not None:
                    sd = dict(sd)
                    w = sd['conv1.weight']
                    if w.shape[1] == 3:  # cross-modality initialisation: mean over RGB, one copy per channel
                        sd['conv1.weight'] = w.mean(1, keepdim=True).expand(-1, 2 * flow_length, -1, -1).clone()
            if sd is not None:
                load_weights(net, sd, weights_temporal if stream == 'temporal' and weights_temporal else
                             (weights or 'torchvision ImageNet'))
            nets[stream] = net
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
    h, w = frame.shape[:2]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    frame = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    y, x = (nh - size) // 2, (nw - size) // 2
    return frame[y:y + size, x:x + size]


def video_name(path):
    """File name without extension, whitespace as '_' (the THUMOS14 text formats split on whitespace)."""
    return '_'.join(os.path.splitext(os.path.basename(path))[0].split())


def iter_step_inputs(path, streams, size, flow_fn, flow_length, progress=False, pool=None):
    """Decode `path` once; yield ('info', fps, frame_count_claimed) then (t, rgb or None, flow or None) per step.

    rgb: uint8 [size, size, 3]; flow: float32 [2L, size, size]. Frames are read as a
    stream, so only a few are held at a time, whatever the video's length. With a thread
    pool, the flow of several frame pairs is computed at once (OpenCV releases the GIL).
    """
    cv2 = import_cv2()
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise VideoError(f'cannot open {path}')
    try:
        fps = cap.get(cv2.CAP_PROP_FPS)
        claimed = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        yield 'info', fps, claimed
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

        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=claimed or None, unit='frame', desc=video_name(path), leave=False)
        while True:
            ok, frame = cap.read()
            if not ok:
                break
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
            if bar is not None:
                bar.update(1)
            # A step is ready once its 4 frames are decoded and its last flow pair computed.
            while 4 * t + 4 <= n and (not want_flow or 4 * t + 2 - half + flow_length - 1 in flows):
                yield make_step(t, n - 2)
                t += 1
        if bar is not None:
            bar.close()
        if n < 4:
            raise VideoError(f'{path}: {n} frames decoded, a step needs 4' if n
                             else f'{path}: no frame could be decoded')
        compute_flows()
        for t in range(t, n // 4):
            yield make_step(t, n - 2)
        yield 'end', n, None
    finally:
        cap.release()


def prepare_batch(stream, items, device):
    if stream == 'spatial':
        x = torch.from_numpy(np.stack(items)).to(device).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        return (x - mean) / std
    return torch.from_numpy(np.stack(items)).to(device)


def extract_video(path, nets, size, flow_fn, flow_length=5, batch_size=32, device='cpu', progress=False,
                  pool=None):
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

    gen = iter_step_inputs(path, streams, size, flow_fn, flow_length, progress, pool)
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
    if not (fps and math.isfinite(fps) and fps > 0):
        warnings.warn(f'{path}: the container gives no frame rate; using {DEFAULT_FPS}')
        fps = DEFAULT_FPS
    if claimed and abs(claimed - frame_num) > max(8, 0.02 * claimed):
        warnings.warn(f'{path}: the container claims {claimed} frames, {frame_num} were decoded; using {frame_num}')
    return out, dict(video=video_name(path), fps=float(fps), frame_num=int(frame_num), steps=int(steps))


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


def missing_streams(name, streams, dirs, info):
    """Streams of video `name` still to extract: a file is complete when its rows match the table's steps."""
    row = info[info.video == name]
    if row.empty:
        return list(streams)
    steps = int(row.steps.iloc[0])
    todo = []
    for s in streams:
        p = os.path.join(dirs[s], name + '.npy')
        try:
            done = os.path.exists(p) and np.load(p, mmap_mode='r').shape[0] == steps
        except (ValueError, OSError):
            done = False
        if not done:
            todo.append(s)
    return todo


def extract_all(videos, out, split, pretrain, streams, backbone='tiny', weights=None, weights_temporal=None,
                size=None, flow='auto', flow_length=5, batch_size=32, device='auto', seed=0, progress=True,
                flow_workers=None):
    """Extract every video not done yet. Returns (info DataFrame of the split, {video path: error message})."""
    device = str(operations.resolve_device(device))
    import_cv2()  # once, before any video: without OpenCV none can be read
    size = size or DEFAULT_SIZES[backbone]
    dirs = {s: feature_folder(out, split, s, pretrain) for s in streams}
    table = info_path(out, split)
    info = read_info(table)
    todo = [(p, missing_streams(video_name(p), streams, dirs, info)) for p in videos]
    todo = [(p, s) for p, s in todo if s]
    skipped = len(videos) - len(todo)
    if skipped:
        print(f'{skipped} of {len(videos)} videos already extracted in {os.path.join(out, split)}: skipped')
    failures = {}
    if not todo:
        return info, failures
    nets = build_backbones(sorted({s for _, ss in todo for s in ss}), backbone, weights, weights_temporal,
                           flow_length, seed)
    nets = {s: n.to(device) for s, n in nets.items()}
    flow_fn = make_flow_fn(flow) if any('temporal' in ss for _, ss in todo) else None
    workers = flow_workers or min(8, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(workers) if flow_fn and workers > 1 else None
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    for i, (path, need) in enumerate(todo, 1):
        t0 = time.time()
        try:
            feats, row = extract_video(path, {s: nets[s] for s in need}, size, flow_fn, flow_length, batch_size,
                                       device, progress, pool)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # an undecodable video must not stop the others
            failures[path] = f'{type(err).__name__}: {err}'
            print(f'[{i}/{len(todo)}] FAILED {path}: {failures[path]}', file=sys.stderr)
            continue
        for s, f in feats.items():
            with atomic_path(os.path.join(dirs[s], row['video'] + '.npy')) as tmp:
                with open(tmp, 'wb') as fh:
                    np.save(fh, f)
        info = pd.concat([info[info.video != row['video']], pd.DataFrame([row])], ignore_index=True)
        write_info(table, info)
        dt = time.time() - t0
        print(f'[{i}/{len(todo)}] {row["video"]}: {row["frame_num"]} frames -> {row["steps"]} steps '
              f'({"+".join(need)}), {row["frame_num"] / dt:.1f} frames/s')
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
    try:
        cfg, args = parse_config(parser, argv)
        streams = parse_streams(args.streams)
        videos = list_videos(args.inputs, args.list)
        if not videos:
            raise ValueError('no videos given (files, folders or --list)')
        out = args.out or cfg.feature_path
        pretrain = args.pretrain or args.backbone
        _, failures = extract_all(videos, out, args.split, pretrain, streams, **backbone_kwargs(args, cfg))
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    done = len(videos) - len(failures)
    print(f'done: {done} of {len(videos)} videos have features in {os.path.join(out, args.split)} '
          f'(table {info_path(out, args.split)})')
    if failures:
        print(f'FAILED: {len(failures)} video(s):', file=sys.stderr)
        for p, msg in failures.items():
            print(f'  {p}: {msg}', file=sys.stderr)
        return 1
    return 0


def add_backbone_args(parser):
    """The extraction options, shared with detect.py."""
    parser.add_argument('--backbone', default='resnet50', choices=sorted(BACKBONE_DIMS),
                        help='resnet50 (torchvision, D=2048) or tiny (D=64, for testing the pipeline)')
    parser.add_argument('--weights', default=None,
                        help="spatial (and default temporal) backbone weights: a state-dict file, or 'random'")
    parser.add_argument('--weights-temporal', default=None, help='flow backbone weights (2L or 3 input channels)')
    parser.add_argument('--size', type=int, default=None, help='crop side in pixels (resnet50 224, tiny 64)')
    parser.add_argument('--flow', default='auto', choices=['auto', 'tvl1', 'dis'], help='optical-flow algorithm')
    parser.add_argument('--flow-length', type=int, default=5, help='flow fields per step (L; 2L input channels)')
    parser.add_argument('--batch', type=int, default=32, help='steps per CNN batch')
    parser.add_argument('--flow-workers', type=int, default=None,
                        help='threads computing optical flow (default: CPU cores, at most 8)')


def backbone_kwargs(args, cfg):
    if args.flow_length < 1:
        raise ValueError('--flow-length must be >= 1')
    return dict(backbone=args.backbone, weights=args.weights, weights_temporal=args.weights_temporal,
                size=args.size, flow=args.flow, flow_length=args.flow_length, batch_size=args.batch,
                device=cfg.device, seed=cfg.seed, flow_workers=args.flow_workers)


def parse_streams(text):
    streams = [s.strip() for s in text.split(',') if s.strip()]
    bad = [s for s in streams if s not in STREAMS]
    if bad or not streams:
        raise ValueError(f'--streams {text!r}: choose from spatial, temporal')
    return streams


if __name__ == '__main__':
    sys.exit(main())
