"""Annotations of one's own videos, a CSV of instances in seconds, as the field's annotation JSON.

    python data/make_annotation_json.py annotations.csv --video_info features/all/video_info.csv \
        --test_fraction 0.2 --seed 0 --out data/mine/annotations.json
    python data/make_annotation_json.py annotations.csv --video_info ... --test_videos test_list.txt --out ...

annotations.csv has the header `video,label,start_s,end_s` and one row per action instance (a
video without instances is a row with empty label, start_s and end_s: it still takes part, as
background). video_info.csv is the table data/extract_features.py writes (video,fps,frame_num,
steps): each video's fps and duration (frame_num / fps, the frames actually decoded) come from it.
The split: --test_videos FILE (one video name a line; the others train) or --test_fraction F
(that fraction of the videos, drawn with --seed). The JSON (subsets `training` and `testing`,
label_id the class's 0-based index in name order) is read with

    --data_source=json --annotation_json=OUT --train_subsets=training --test_subsets=testing

A bad row is refused naming its line: a video not in video_info.csv, a start that is not a number
or negative, an end at or before the start or past the video's end, a label that is empty.
"""
import argparse
import json
import os
import sys

if __package__ in (None, ''):  # run as a script: the repository's modules live one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fileio import atomic_open  # noqa: E402
from thumos14 import check_text_file  # noqa: E402

COLUMNS = ('video', 'label', 'start_s', 'end_s')
INFO_COLUMNS = ('video', 'fps', 'frame_num')
SUBSETS = ('training', 'testing')


def read_csv(path, columns, what):
    """A CSV of text cells with at least `columns`; ValueError naming the file."""
    if not os.path.isfile(path):
        raise ValueError(f'{path}: {what} not found')
    check_text_file(path, what, f'a CSV with the header {",".join(columns)}')
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f'{path}: cannot read as CSV: {err}') from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f'{path}: missing column(s) {missing}; the header must hold {",".join(columns)}')
    return df.apply(lambda col: col.str.strip())


def read_video_info(paths):
    """video -> (fps, duration s) of one or more video_info.csv; a bad row or a video listed
    twice with other values is an error naming the line."""
    rows = {}
    for path in paths:
        df = read_csv(path, INFO_COLUMNS, 'video info table')
        fps = pd.to_numeric(df['fps'], errors='coerce').to_numpy(np.float64)
        frames = pd.to_numeric(df['frame_num'], errors='coerce').to_numpy(np.float64)
        for i, video in enumerate(df['video']):
            if not video or not fps[i] > 0 or not np.isfinite(fps[i]) or not frames[i] >= 1:
                raise ValueError(f'{path}:{i + 2}: expected a video name, fps > 0 and frame_num >= 1, got '
                                 f'{video!r}, {df["fps"][i]!r}, {df["frame_num"][i]!r}')
            value = (float(fps[i]), float(frames[i]) / float(fps[i]))
            if rows.get(video, value) != value:
                raise ValueError(f'{path}:{i + 2}: video {video} is listed again with another fps or frame_num')
            rows[video] = value
    return rows


def read_instances(path, info):
    """The annotation rows, checked: (videos in file order, DataFrame of instances)."""
    df = read_csv(path, COLUMNS, 'annotation CSV')
    if len(df) == 0:
        raise ValueError(f'{path}: no rows after the header')
    line = np.arange(len(df)) + 2
    start = pd.to_numeric(df['start_s'], errors='coerce').to_numpy(np.float64)
    end = pd.to_numeric(df['end_s'], errors='coerce').to_numpy(np.float64)
    empty = ((df['label'] == '') & (df['start_s'] == '') & (df['end_s'] == '')).to_numpy()
    duration = df['video'].map({v: d for v, (_, d) in info.items()}).to_numpy(np.float64)

    def fail(mask, what):
        bad = np.flatnonzero(mask)
        if len(bad):
            i = bad[0]
            row = ','.join(df.loc[i, c] for c in COLUMNS)
            more = f' ({len(bad) - 1} more such rows)' if len(bad) > 1 else ''
            raise ValueError(f'{path}:{line[i]}: {what}: {row}{more}')

    fail((df['video'] == '').to_numpy(), 'empty video name')
    fail(np.isnan(duration), 'video not in the video info table (data/extract_features.py writes it; names are '
                             'file names without extension)')
    fail(~empty & (df['label'] == '').to_numpy(), 'empty label')
    fail(~empty & ~(np.isfinite(start) & np.isfinite(end)), 'start_s and end_s must be numbers (seconds)')
    fail(~empty & (start < 0), 'start_s is negative')
    fail(~empty & (end <= start), 'end_s is at or before start_s')
    fail(~empty & (end > duration + 1e-6), 'end_s is past the video\'s end (frame_num / fps in the video info table)')
    videos = list(dict.fromkeys(df['video']))
    inst = pd.DataFrame({'video': df['video'], 'label': df['label'], 'start': start, 'end': end})[~empty]
    return videos, inst.reset_index(drop=True)


def test_split(videos, test_videos=None, test_fraction=None, seed=0):
    """The set of test videos: those listed in the file `test_videos`, or a seeded fraction."""
    if test_videos is not None:
        with open(test_videos, encoding='utf-8') as f:
            listed = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
        for number, name in listed:
            if name not in videos:
                raise ValueError(f'{test_videos}:{number}: video {name} is not in the annotation CSV')
        chosen = {name for _, name in listed}
    else:
        if not 0 < test_fraction < 1:
            raise ValueError(f'--test_fraction must be in (0, 1), got {test_fraction}')
        count = min(max(1, round(test_fraction * len(videos))), len(videos) - 1)
        chosen = set(np.random.default_rng(seed).choice(videos, count, replace=False).tolist())
    if not chosen or len(chosen) == len(videos):
        raise ValueError(f'the split leaves {"no" if not chosen else "every"} video for testing; '
                         f'both subsets need videos ({len(videos)} videos in all)')
    return chosen


def annotation_json(videos, inst, info, test):
    """The field's JSON object: subsets, duration and fps per video, instances with label_id."""
    names = sorted(set(inst['label']))
    database = {}
    for video in videos:
        fps, duration = info[video]
        rows = inst[inst['video'] == video]
        database[video] = dict(subset=SUBSETS[video in test], duration=round(duration, 3), fps=fps, annotations=[
            dict(label=label, segment=[float(s), float(e)], label_id=names.index(label))
            for label, s, e in zip(rows['label'], rows['start'], rows['end'])])
    return {'version': 'own videos', 'database': database}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('annotations', help='CSV with the header video,label,start_s,end_s (seconds)')
    parser.add_argument('--video_info', nargs='+', required=True,
                        help='video_info.csv of data/extract_features.py (video,fps,frame_num,...), one or more')
    split = parser.add_mutually_exclusive_group(required=True)
    split.add_argument('--test_videos', help='file of the test videos\' names, one a line')
    split.add_argument('--test_fraction', type=float, help='this fraction of the videos, drawn with --seed, tests')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', required=True, help='the annotation JSON to write')
    args = parser.parse_args(argv)
    try:
        info = read_video_info(args.video_info)
        videos, inst = read_instances(args.annotations, info)
        test = test_split(videos, args.test_videos, args.test_fraction, args.seed)
        doc = annotation_json(videos, inst, info, test)
        with atomic_open(args.out) as f:
            json.dump(doc, f, indent=1)
            f.write('\n')
    except (ValueError, OSError) as err:
        raise SystemExit(f'error: {err}') from None
    labels = sorted(set(inst['label']))
    print(f'wrote {args.out}: {len(videos) - len(test)} training and {len(test)} testing videos, {len(inst)} '
          f'instances of {len(labels)} classes ({", ".join(labels)})')


if __name__ == '__main__':
    main()
