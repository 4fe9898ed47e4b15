"""Time the post-processing of a full-size THUMOS14 test predictions table.

    python bench_postprocess.py [--windows=5103] [--videos=210] [--foreground=0.1] [--csv]

Builds a seeded synthetic table the size of the real one (5103 windows x 140 anchors
= 714,420 rows) that looks like a trained model's output: most anchors confidently
background, the rest mostly the video's own action class, boxes spread over the
anchor scales. Prints the rows, the detections and the seconds taken; --csv also
times writing and reading the predictions CSV.
"""
import argparse
import os
import tempfile
import time

import numpy as np

import config as C
import postprocess as P
import thumos14


def synthetic_predictions(num_windows=5103, num_videos=210, foreground=0.1, seed=0, anchors=140):
    """Column arrays of a realistic predictions table (see the module docstring)."""
    rng = np.random.default_rng(seed)
    # Window counts per video like THUMOS14 test (a few long videos, many short ones).
    weights = rng.lognormal(0.0, 0.8, num_videos)
    per_video = np.maximum(1, np.floor(weights / weights.sum() * num_windows)).astype(np.int64)
    per_video[np.argmax(per_video)] += num_windows - per_video.sum()
    names = np.array([f'video_test_{i:07d}' for i in range(num_videos)], dtype=object)
    win_video = np.repeat(np.arange(num_videos), per_video)
    win_start = (np.arange(num_windows) - np.repeat(np.cumsum(per_video) - per_video, per_video)) * 256
    video_class = rng.integers(1, thumos14.NUM_CLASSES, num_videos)

    n = num_windows * anchors
    row_window = np.repeat(np.arange(num_windows), anchors)
    # Anchor geometry as method.md §5: three layers of 16, 8, 4 positions x 5 ratios.
    centre, width = [], []
    for positions, scale in zip((16, 8, 4), (1 / 16, 1 / 8, 1 / 4)):
        c = np.repeat((np.arange(positions) + 0.5) / positions, 5)
        w = np.tile(scale * np.array([0.5, 0.75, 1.0, 1.5, 2.0]), positions)
        centre.append(c), width.append(w)
    centre, width = np.tile(np.concatenate(centre), num_windows), np.tile(np.concatenate(width), num_windows)
    x = centre + 0.1 * width * rng.standard_normal(n)
    w = width * np.exp(0.1 * rng.standard_normal(n))
    xmin = np.maximum((x - w / 2) * 512, 0).astype(np.float32).astype(np.float64)
    xmax = np.minimum((x + w / 2) * 512, 512).astype(np.float32).astype(np.float64)

    # Class logits: background dominates except on a `foreground` fraction of anchors,
    # which mostly favour the video's class.
    logits = rng.normal(0.0, 1.0, (n, thumos14.NUM_CLASSES))
    fg = rng.random(n) < foreground
    logits[~fg, 0] += 10.0
    own = video_class[win_video[row_window]]
    other = rng.integers(1, thumos14.NUM_CLASSES, n)
    favoured = np.where(rng.random(n) < 0.8, own, other)
    logits[np.flatnonzero(fg), favoured[fg]] += rng.uniform(2.0, 6.0, fg.sum())
    scores = np.exp(logits - logits.max(1, keepdims=True)).astype(np.float32)
    scores /= scores.sum(1, keepdims=True)
    conf = np.where(fg, rng.uniform(0.0, 1.0, n), rng.uniform(-0.2, 0.4, n)).astype(np.float32)
    return dict(video_name=names[win_video[row_window]], start=win_start[row_window],
                conf=conf.astype(np.float64), xmin=xmin + win_start[row_window],
                xmax=xmax + win_start[row_window], scores=scores.astype(np.float64))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--windows', type=int, default=5103)
    parser.add_argument('--videos', type=int, default=210)
    parser.add_argument('--foreground', type=float, default=0.1, help='fraction of non-background anchors')
    parser.add_argument('--csv', action='store_true', help='also time writing and reading the CSV')
    parser.add_argument('--repeat', type=int, default=3)
    try:
        cfg, args = C.parse_config(parser)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    fps_of = thumos14.FpsTable()

    pred = synthetic_predictions(args.windows, args.videos, args.foreground, seed=cfg.seed)
    frame = P.predictions_frame(pred)
    P.post_process(frame.iloc[:1000], cfg, fps_of)  # warm-up
    times, write_times = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        det = P.post_process(frame, cfg, fps_of)
        t1 = time.perf_counter()
        text = thumos14.format_results(det)
        times.append(t1 - t0)
        write_times.append(time.perf_counter() - t1)
    kept = ((frame.score_0 < cfg.filter_neg_threshold) & (frame.conf > cfg.filter_conf_threshold)).sum()
    print(f'{len(frame):,} prediction rows ({kept:,} pass the filters) -> {len(det):,} detections')
    print(f'post-processing: best {min(times):.3f} s, median {np.median(times):.3f} s over {args.repeat} runs')
    print(f'formatting the result text ({len(text) / 1e6:.1f} MB): best {min(write_times):.3f} s')
    if args.csv:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'predict.csv')
            t0 = time.perf_counter()
            P.write_predictions(path, frame)
            t1 = time.perf_counter()
            P.read_predictions(path)
            t2 = time.perf_counter()
        print(f'predictions CSV: write {t1 - t0:.2f} s, read and validate {t2 - t1:.2f} s')


if __name__ == '__main__':
    main()
