"""Time the post-processing of a full-size THUMOS14 test predictions table, stage by stage.

    python bench/bench_postprocess.py [--table=issue|realistic] [--windows=5103] [--repeat=3]
    python bench/bench_postprocess.py --write=predict_bench.csv      # the file, for test.py --predictions
    python bench/bench_postprocess.py --predictions=FILE             # the stages on an existing file

--table=issue (the default) is issue 15's table, the one the release is timed on:
5103 windows x 140 anchors = 714,420 rows, class logits N(0, 2) with +2 on background,
conf U(-0.2, 1.1), box centres U(0, 512) and widths U(8, 256); about 380k detections
survive. --table=realistic looks like a trained model's output (most anchors
confidently background, the rest mostly the video's class). Prints the seconds of each
stage: writing the predictions CSV, reading it, the post-processing (and of it the NMS,
summed over the threads that run it) and formatting the result file. --windows below
--videos gives one window to each of --windows videos.
"""
import os
import sys

if __package__ in (None, ''):  # run as a script: the repository's modules live one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import config  # noqa: E402
import postprocess as P  # noqa: E402
import predictions  # noqa: E402
import thumos14  # noqa: E402


def test_windows(rng, num_windows, num_videos):
    """(video names, video of each window, window start frames): window counts per video like
    THUMOS14 test (a few long videos, many short ones), a window every 256 frames. Every video
    has a window, so there are at most num_windows videos."""
    num_videos = max(1, min(num_videos, num_windows))
    weights = rng.lognormal(0.0, 0.8, num_videos)
    share = weights / weights.sum()
    per_video = np.maximum(1, np.floor(share * num_windows)).astype(np.int64)
    if per_video.sum() - per_video.max() >= num_windows:
        # The largest video cannot give up the windows that the one-window minimum adds:
        # one window each, the rest shared by weight.
        per_video = 1 + np.floor(share * (num_windows - num_videos)).astype(np.int64)
    per_video[np.argmax(per_video)] += num_windows - per_video.sum()
    names = np.array([f'video_test_{i:07d}' for i in range(num_videos)], dtype=object)
    win_video = np.repeat(np.arange(num_videos), per_video)
    win_start = (np.arange(num_windows) - np.repeat(np.cumsum(per_video) - per_video, per_video)) * 256
    return names, win_video, win_start


def synthetic_predictions(num_windows=5103, num_videos=210, foreground=0.1, seed=0, anchors=140):
    """Column arrays of a realistic predictions table (see the module docstring)."""
    rng = np.random.default_rng(seed)
    names, win_video, win_start = test_windows(rng, num_windows, num_videos)
    video_class = rng.integers(1, thumos14.NUM_CLASSES, len(names))

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


def issue_predictions(num_windows=5103, num_videos=210, seed=0, anchors=140):
    """Column arrays of the full-size table of issue 15, the one the release is timed on.

    Windows of 512 frames every 256 per video (counts as synthetic_predictions); class
    logits N(0, 2) with +2 on background, softmax; conf U(-0.2, 1.1); boxes of centre
    U(0, 512) and width U(8, 256) cut to the window as test.py cuts them. Values are
    float32 made float64, as the network's outputs are, so the CSV's numbers are as long
    as a real file's. About 381k detections survive the post-processing.
    """
    rng = np.random.default_rng(seed)
    names, win_video, win_start = test_windows(rng, num_windows, num_videos)
    n = num_windows * anchors
    logits = rng.normal(0.0, 2.0, (n, thumos14.NUM_CLASSES)).astype(np.float32)
    logits[:, 0] += 2
    scores = np.exp(logits - logits.max(1, keepdims=True))
    scores /= scores.sum(1, keepdims=True)
    conf = rng.uniform(-0.2, 1.1, n).astype(np.float32)
    centre = rng.uniform(0, 512, n).astype(np.float32)
    width = rng.uniform(8, 256, n).astype(np.float32)
    size = np.float32(512)
    row_start = np.repeat(win_start, anchors)
    xmin = np.maximum(centre - width / 2, np.float32(0)).astype(np.float64) + row_start
    xmax = np.minimum(centre + width / 2, size).astype(np.float64) + row_start
    return dict(video_name=np.repeat(names[win_video], anchors), start=row_start, conf=conf.astype(np.float64),
                xmin=xmin, xmax=xmax, scores=scores.astype(np.float64))


def time_stages(frame, cfg, fps_of, repeat):
    """Best seconds over `repeat` runs of the post-processing (postprocess.detections), of its
    NMS (summed over the threads that run it, one per core) and of the result text."""
    nms_times, orig = [], P.nms_sorted

    def timed_nms(*args, **kwargs):
        t = time.perf_counter()
        keep = orig(*args, **kwargs)
        nms_times[-1] += time.perf_counter() - t
        return keep
    P.nms_sorted = timed_nms
    try:
        nms_times.append(0.0)
        P.detections(frame.iloc[:1000], cfg, fps_of)  # warm-up
        times, write_times = [], []
        for _ in range(repeat):
            nms_times.append(0.0)
            t0 = time.perf_counter()
            det = P.detections(frame, cfg, fps_of)
            t1 = time.perf_counter()
            text = P.result_text(det) or thumos14.format_results(P.detections_frame(det))
            times.append(t1 - t0)
            write_times.append(time.perf_counter() - t1)
    finally:
        P.nms_sorted = orig
    return det, min(times), min(nms_times[1:]), min(write_times), len(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--table', choices=('issue', 'realistic'), default='issue')
    parser.add_argument('--windows', type=int, default=5103)
    parser.add_argument('--videos', type=int, default=210)
    parser.add_argument('--foreground', type=float, default=0.1, help='realistic table: non-background anchors')
    parser.add_argument('--write', default=None, help='write the table as a predictions CSV and stop')
    parser.add_argument('--predictions', default=None, help='time the stages on this predictions CSV')
    parser.add_argument('--repeat', type=int, default=3)
    try:
        cfg, args = config.parse_config(parser)
        if args.windows < 1 or args.videos < 1:
            raise ValueError(f'--windows and --videos must be at least 1, got {args.windows} and {args.videos}')
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    fps_of = thumos14.FpsTable()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.predictions
        if path is None:
            if args.table == 'issue':
                pred = issue_predictions(args.windows, args.videos, seed=cfg.seed)
            else:
                pred = synthetic_predictions(args.windows, args.videos, args.foreground, seed=cfg.seed)
            path = args.write or os.path.join(tmp, 'predict.csv')
            t0 = time.perf_counter()
            predictions.write_predictions(path, predictions.predictions_frame(pred, anchors_per_window=140))
            print(f'write predictions CSV ({os.path.getsize(path) / 1e6:.0f} MB): {time.perf_counter() - t0:.2f} s')
            if args.write:
                print(f'wrote {path}')
                return
        t0 = time.perf_counter()
        with P.small_pages():
            frame = predictions.read_predictions(path)
        print(f'read and validate: {time.perf_counter() - t0:.2f} s')
    with P.small_pages():   # as test.py --predictions runs
        det, total, nms, fmt, size = time_stages(frame, cfg, fps_of, args.repeat)
    kept = ((frame.score_0 < cfg.filter_neg_threshold) & (frame.conf > cfg.filter_conf_threshold)).sum()
    print(f'{len(frame):,} prediction rows ({kept:,} pass the filters) -> {len(det["video"]):,} detections')
    print(f'post-processing: best {total:.3f} s of {args.repeat} (NMS {nms:.3f} s summed over its threads, '
          f'on {P.cpu_count()} cores)')
    print(f'formatting the result text ({size / 1e6:.1f} MB): best {fmt:.3f} s')


if __name__ == '__main__':
    main()
