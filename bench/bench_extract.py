"""Feature-extraction speed of each backbone, in frames of video per second.

    python bench/bench_extract.py [--frames 200] [--width 320] [--height 240] [--backbones i3d,s3d,...] [--device auto]
    python bench/bench_extract.py --ranks 1,2 --videos 4 --frames 64 --backbones i3d [--device cpu]

Writes a synthetic video (a textured box moving over noise, 30 fps), extracts it once per
backbone and stream set with seeded random weights (speed does not depend on the weights;
nothing is downloaded) and prints one row per run: frames decoded / wall time of that
video (decoding, resizing, flow and the network; the one-time model set-up excluded).
Backbones that need torchvision are skipped, with a note, where it does not import.

With --ranks, writes --videos such videos and extracts them all with each number of processes
(1: `python data/extract_features.py`, n > 1: `torchrun --nproc_per_node=n`, each rank with
its share of the CPU cores or its own GPU): frames of all videos / wall time of the whole
command (start-up and model set-up included), and the speed-up over the first number.
"""
import argparse
import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

if __package__ in (None, ''):  # run as a script: the repository's modules live one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import extract_features as ef  # noqa: E402

RUNS = [   # (backbone, streams, flow)
    ('i3d', ['spatial'], None), ('i3d', ['temporal'], 'dis'), ('i3d', ['spatial', 'temporal'], 'dis'),
    ('s3d', ['spatial'], None), ('r2plus1d_18', ['spatial'], None), ('mvit_v2_s', ['spatial'], None),
    ('swin3d_t', ['spatial'], None), ('resnet50', ['spatial', 'temporal'], 'dis'),
    ('tiny', ['spatial', 'temporal'], 'dis'),
]


def write_video(path, frames, width, height, fps=30):
    cv2 = ef.import_cv2()
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'MJPG'), fps, (width, height))
    texture = rng.integers(0, 255, (height // 3, width // 4, 3), dtype=np.uint8)
    for i in range(frames):
        f = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
        x = (5 * i) % (width - texture.shape[1])
        f[height // 3: height // 3 + texture.shape[0], x:x + texture.shape[1]] = texture
        writer.write(f)
    writer.release()


def time_run(video, backbone, streams, flow, device, root):
    """Frames per second of one extraction, timed around the per-video work only."""
    spent = {}
    real = ef.extract_video if backbone in ef.FRAME_BACKBONES else ef.extract_clip_video

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = real(*args, **kwargs)
        spent['s'], spent['frames'] = time.perf_counter() - t0, out[1]['frame_num']
        return out
    setattr(ef, real.__name__, timed)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            _, failures = ef.extract_all([video], os.path.join(root, f'{backbone}-{"+".join(streams)}'), 'bench',
                                         backbone, streams, backbone=backbone, random_weights=True,
                                         flow=flow or 'auto', device=device, progress=False)
    finally:
        setattr(ef, real.__name__, real)
    if failures:
        raise ValueError(failures[video])
    return spent['frames'] / spent['s']


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def time_ranks(folder, frames, backbone, streams, flow, ranks, device, out):
    """Frames per second of extracting every video of `folder` with `ranks` processes, whole command timed."""
    launcher = [sys.executable] if ranks == 1 else [
        sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={ranks}', '--master_addr=127.0.0.1',
        f'--master_port={free_port()}']
    cmd = launcher + [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data', 'extract_features.py'),
                      folder, '--split', 'bench', '--out', out, '--backbone', backbone, '--streams', ','.join(streams),
                      '--random-weights', '--device', device] + (['--flow', flow] if flow else [])
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise ValueError(f'{" ".join(cmd)} failed:\n{done.stderr[-2000:]}')
    return frames / seconds


def bench_ranks(args, wanted):
    counts = [int(n) for n in args.ranks.split(',')]
    with tempfile.TemporaryDirectory() as root:
        folder = os.path.join(root, 'videos')
        os.makedirs(folder)
        for i in range(args.videos):
            write_video(os.path.join(folder, f'v{i}.avi'), args.frames, args.width, args.height)
        total = args.videos * args.frames
        print(f'{args.videos} videos of {args.frames} frames {args.width}x{args.height}, device {args.device}, '
              f'CPU threads {os.cpu_count()}; frames/s of the whole command')
        print(f'{"backbone":<12} {"streams":<17} {"flow":<5} ' + ' '.join(f'{f"{n} rank(s)":>10}' for n in counts)
              + f' {"speed-up":>9}')
        for backbone, streams, flow in RUNS:
            if backbone not in (wanted or ['i3d']):
                continue
            fps = [time_ranks(folder, total, backbone, streams, flow, n, args.device,
                              os.path.join(root, f'{n}-{backbone}-{"+".join(streams)}')) for n in counts]
            print(f'{backbone:<12} {"+".join(streams):<17} {flow or "-":<5} '
                  + ' '.join(f'{f:10.1f}' for f in fps) + f' {fps[-1] / fps[0]:8.2f}x', flush=True)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--frames', type=int, default=200)
    parser.add_argument('--width', type=int, default=320)
    parser.add_argument('--height', type=int, default=240)
    parser.add_argument('--backbones', default=None, help='comma-separated subset (default: all; --ranks: i3d)')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--ranks', default=None, help='e.g. 1,2: whole jobs with these numbers of processes')
    parser.add_argument('--videos', type=int, default=4, help='--ranks: videos in the job')
    args = parser.parse_args(argv)
    wanted = args.backbones.split(',') if args.backbones else None
    if args.ranks:
        return bench_ranks(args, wanted)
    with tempfile.TemporaryDirectory() as root:
        video = os.path.join(root, 'bench.avi')
        write_video(video, args.frames, args.width, args.height)
        print(f'{args.frames} frames {args.width}x{args.height}, device {args.device}, CPU threads '
              f'{os.cpu_count()}')
        print(f'{"backbone":<12} {"streams":<17} {"flow":<5} {"frames/s":>9}')
        for backbone, streams, flow in RUNS:
            if wanted and backbone not in wanted:
                continue
            try:
                fps = time_run(video, backbone, streams, flow, args.device, root)
            except ValueError as err:
                print(f'{backbone:<12} skipped: {str(err).splitlines()[0]}')
                continue
            print(f'{backbone:<12} {"+".join(streams):<17} {flow or "-":<5} {fps:9.1f}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
