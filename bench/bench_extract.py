"""Feature-extraction speed of each backbone, in frames of video per second.

    python bench/bench_extract.py [--frames 200] [--width 320] [--height 240] [--backbones i3d,s3d,...] [--device auto]

Writes a synthetic video (a textured box moving over noise, 30 fps), extracts it once per
backbone and stream set with seeded random weights (speed does not depend on the weights;
nothing is downloaded) and prints one row per run: frames decoded / wall time of that
video (decoding, resizing, flow and the network; the one-time model set-up excluded).
Backbones that need torchvision are skipped, with a note, where it does not import.
"""
import os
import sys

if __package__ in (None, ''):  # run as a script: the repository's modules live one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--frames', type=int, default=200)
    parser.add_argument('--width', type=int, default=320)
    parser.add_argument('--height', type=int, default=240)
    parser.add_argument('--backbones', default=None, help='comma-separated subset (default: all)')
    parser.add_argument('--device', default='auto')
    args = parser.parse_args(argv)
    wanted = args.backbones.split(',') if args.backbones else None
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
