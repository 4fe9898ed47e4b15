"""Timeline of detections against the ground truth, for chosen videos of any THUMOS14 result file.

    python fig/visualize.py results/result_fuse_UCF101_decouple_ssad.txt --gt data/thumos14/eval_annotation \
        --videos video_test_0000004 video_test_0000006 --out fig/timeline.png [--min-score 0.1] [--top 20]

One panel per video, one row per class (ground truth or detected), one colour per class.
In each row the ground-truth instances are the outlined bars on top (ambiguous segments
hatched grey across the panel) and the detections are the bars below, their opacity
and label giving the score. Without --videos the three videos with the most detections
above --min-score are shown. --top keeps the K best detections per video (0 = all).
"""
import os
import sys

if __package__ in (None, ''):  # run as a script: the repository's modules live one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import config as C  # noqa: E402
import evaluate  # noqa: E402
import thumos14  # noqa: E402
from fileio import atomic_path  # noqa: E402

UNKNOWN_COLOR = (0.5, 0.5, 0.5, 1.0)


def class_color(class_id, class_ids=None):
    """A class's colour: its place in class_ids (default THUMOS14's) on the tab20 palette, grey
    for a class not there."""
    ids = thumos14.CLASS_IDS if class_ids is None or len(class_ids) == 0 else np.asarray(class_ids).tolist()
    if int(class_id) not in ids:
        return UNKNOWN_COLOR
    return plt.get_cmap('tab20')(ids.index(int(class_id)) % 20)


def timeline_panels(det, gt, videos=None, min_score=0.0, top=20, num_videos=3, source='detections',
                    check_names=True):
    """Per video: (video, detections shown (best first), ground truth, ambiguous segments, class ids of the rows)."""
    truth = gt['gt'].assign(class_id=np.asarray(gt['class_ids'])[gt['gt']['cls'].to_numpy()])
    det = det[det['score'] >= min_score]
    if not videos:
        videos = det['video'].value_counts().index[:num_videos].tolist()
        if not videos:
            raise ValueError(f'{source}: no detections with score >= {min_score} to show')
    known = set(det['video']) | set(truth['video'])
    unknown = [v for v in videos if v not in known]
    if unknown and check_names:
        raise ValueError(f'video {unknown[0]} is neither in {source} (score >= {min_score}) nor in the '
                         f'ground truth of {gt.get("gt_dir", "the evaluation")}')
    panels = []
    for video in videos:
        d = det[det['video'] == video].sort_values('score', ascending=False, kind='stable')
        d = d.iloc[:top] if top else d
        g = truth[truth['video'] == video]
        amb = gt['ambiguous'][gt['ambiguous']['video'] == video]
        panels.append((video, d, g, amb, sorted(set(g['class_id']) | set(d['class_id']))))
    return panels


def no_ground_truth():
    """The ground truth of videos nobody annotated (detect.py's own videos): empty."""
    return dict(gt=pd.DataFrame({'video': pd.Series(dtype=object), 'start': pd.Series(dtype=float),
                                 'end': pd.Series(dtype=float), 'cls': pd.Series(dtype=np.int64)}),
                ambiguous=pd.DataFrame({'video': pd.Series(dtype=object), 'start': pd.Series(dtype=float),
                                        'end': pd.Series(dtype=float)}),
                class_ids=np.zeros(0, np.int64), class_names=[])


def plot_timeline(result, gt_dir, videos=None, out='fig/timeline.png', min_score=0.0, top=20, subset='test',
                  num_videos=3, duration=None, gt=None, class_list=None):
    """Draw the timeline PNG; returns `out`.

    result: a result-file path or a DataFrame(video, start, end, class_id, score) in seconds.
    gt_dir: the evaluation ground-truth folder (<Class>_<subset>.txt, Ambiguous_<subset>.txt,
    detclasslist.txt), or None for videos without annotations. videos: names to show
    (default: the `num_videos` with most detections). duration: length of the time axis
    in seconds (default: the last interval shown). gt: the ground truth as evaluate.read_ground_truth
    returns it, instead of reading gt_dir. class_list: the classes of videos without ground truth
    (a classes.ClassList; default THUMOS14's).
    """
    det = thumos14.read_results(result) if isinstance(result, (str, os.PathLike)) else result
    source = str(result) if isinstance(result, (str, os.PathLike)) else 'detections'
    annotated = gt is not None or bool(gt_dir)
    if gt is None:
        gt = evaluate.read_ground_truth(gt_dir, subset) if gt_dir else no_ground_truth()
        if class_list is not None and not gt_dir:
            gt.update(class_ids=np.asarray(class_list.ids, np.int64), class_names=list(class_list.names))
    class_ids = np.asarray(gt['class_ids']).tolist()
    names = dict(zip(class_ids, gt['class_names']))
    if set(names.items()) <= set(thumos14.CLASS_NAME_OF_ID.items()):   # THUMOS14's classes (or none)
        names.update({cid: name for cid, name in thumos14.CLASS_NAME_OF_ID.items() if cid not in names})
        class_ids = None

    def color(class_id):
        return class_color(class_id, class_ids)

    # Without ground truth a named video may simply have no detection: an empty panel.
    panels = timeline_panels(det, gt, videos, min_score, top, num_videos, source, check_names=annotated)
    heights = [1.0 + 0.55 * max(len(p[4]), 1) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, sum(heights)), squeeze=False,
                             gridspec_kw=dict(height_ratios=heights))
    for ax, (video, d, g, amb, classes) in zip(axes[:, 0], panels):
        row = {c: i for i, c in enumerate(classes)}
        end = duration or max([1.0] + d['end'].tolist() + g['end'].tolist())
        for s, e in zip(amb['start'], amb['end']):
            ax.axvspan(s, e, color='0.85', hatch='//', fill=False, linewidth=0)
        # Ground truth: outlined bars in the upper part of the class row.
        ax.barh(g['class_id'].map(row) - 0.22, g['end'] - g['start'], left=g['start'], height=0.3,
                color=[color(c) for c in g['class_id']], edgecolor='black', linewidth=1.0)
        # Detections: below, opacity by score relative to the best one shown.
        if len(d):
            best = max(float(d['score'].max()), 1e-12)
            colors = np.array([color(c) for c in d['class_id']])
            colors[:, 3] = 0.15 + 0.85 * np.clip(d['score'].to_numpy() / best, 0, 1)
            y = d['class_id'].map(row).to_numpy() + 0.2
            ax.barh(y, d['end'] - d['start'], left=d['start'], height=0.36, color=colors, linewidth=0)
            for x0, x1, yy, s in zip(d['start'], d['end'], y, d['score']):
                ax.text((x0 + x1) / 2, yy, f'{s:.2f}', ha='center', va='center', fontsize=6, clip_on=True)
        ax.set_yticks(range(len(classes)), [names.get(int(c), str(c)) for c in classes])
        ax.set_ylim(len(classes) - 0.5 if classes else 0.5, -0.5)
        ax.set_xlim(0, end * 1.02)
        ax.set_xlabel('time (s)')
        shown = f'{len(d)} best detections' if top and len(d) == top else f'{len(d)} detections'
        truth = f'{len(g)} ground-truth instances (outlined), ' if annotated else ''
        ax.set_title(f'{video}: {truth}{shown} (opacity, label = score)', fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format='png', dpi=100)
    plt.close(fig)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('result', help='THUMOS14 result file (video start end class score, seconds)')
    parser.add_argument('--gt', default=None, help='evaluation ground-truth folder (default: config eval_gt_dir)')
    parser.add_argument('--videos', nargs='+', default=None, help='videos to show')
    parser.add_argument('--out', default='fig/timeline.png', help='PNG to write')
    parser.add_argument('--min-score', type=float, default=0.0, help='hide detections below this score')
    parser.add_argument('--top', type=int, default=20, help='best K detections per video (0 = all)')
    try:
        cfg, args = C.parse_config(parser, argv)
        out = plot_timeline(args.result, args.gt or cfg.eval_gt_dir, args.videos, args.out, args.min_score, args.top)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
