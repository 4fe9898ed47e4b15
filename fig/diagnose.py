"""Why a detector misses: DETAD-style error diagnosis of THUMOS14 result files, one HTML report per file.

    python fig/diagnose.py results/result_fuse_KnetV3_decouple_ssad.txt [more.txt ...] \
        --gt data/thumos14/eval_annotation [--tiou 0.5] [--out FOLDER] [--video_info CSV]

writes FOLDER/<result stem>_diagnosis.html (default FOLDER: the result file's folder), one
self-contained page (pictures inlined) with the AP table of both metrics, the false-positive
breakdown over the top-1G .. top-10G detections of each class, the mAP gained by removing each
error type, the sensitivity of normalised AP and of the false-negative rate to instance length,
coverage and instances per video, and timelines of the videos with the most errors.

Definitions (Alwassel, Caba Heilbron, Escorcia and Ghanem, "Diagnosing Error in Temporal Action
Detectors", ECCV 2018): each class's detections, in score order, are labelled
  true positive      tIoU >= a with a not-yet-matched instance of its class (the best free one)
  double detection   tIoU >= a with an instance of its class, all of them already matched
  wrong label        tIoU >= a with an instance of another class
  localization error 0.1 <= tIoU < a with an instance of its class
  confusion          0.1 <= tIoU < a with an instance of another class
  background         tIoU < 0.1 with every instance
taking the first that applies in this order. Normalised precision P_N = R*N / (R*N + FP), N = the
average number of instances per class; normalised AP is the interpolated AP of P_N.
Choices the paper leaves open are listed in REPORT_CHOICES (and in each report).
"""
import os
import sys

if __package__ in (None, ''):  # run as a script: the repository's modules live one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import base64  # noqa: E402
import html  # noqa: E402
import io  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import config  # noqa: E402
import evaluate  # noqa: E402
import fileio  # noqa: E402
import thumos14  # noqa: E402
from fig import visualize  # noqa: E402

TYPES = ('true positive', 'double detection', 'wrong label', 'localization error', 'confusion', 'background')
TP, DOUBLE, WRONG, LOC, CONF, BG = range(len(TYPES))
ERRORS = TYPES[1:]
TYPE_COLORS = ('#2ca02c', '#9467bd', '#ff7f0e', '#1f77b4', '#8c564b', '#d62728')
MIN_TIOU = 0.1       # below this overlap a detection is background
TOP_K = 10           # the false-positive analysis looks at the top-1G .. top-10G detections of each class
# DETAD's bins, (lo, hi] each: instance length in seconds, coverage = length / video length,
# instances of the same class in the same video (DETAD has four bins for this one).
BINS = {
    'length': ('instance length (s)', [0, 3, 6, 12, 18, np.inf], ['XS (0,3]', 'S (3,6]', 'M (6,12]', 'L (12,18]',
                                                                   'XL >18']),
    'coverage': ('coverage (length / video length)', [0, .02, .04, .06, .08, np.inf],
                 ['XS (0,.02]', 'S (.02,.04]', 'M (.04,.06]', 'L (.06,.08]', 'XL >.08']),
    'instances': ('instances of the class in the video', [0, 1, 4, 8, np.inf], ['XS 1', 'S 2-4', 'M 5-8', 'L 9+']),
}
AMBIGUOUS_POLICIES = ('kit', 'ignore')
REPORT_CHOICES = [
    'Matching is DETAD\'s (ActivityNet\'s): per class, detections in score order (file order on ties) each take '
    'the free instance of their video with the highest tIoU (the first in file order on ties) if tIoU >= a; '
    'tIoU = intersection / union. The official kit instead matches instances to detections and needs tIoU > a.',
    'When several error types apply, the first in the order true positive, double detection, wrong label, '
    'localization error, confusion, background is taken (stronger overlap first; at equal overlap its own '
    'class first).',
    'Repeated instances (same class, video, start and end) count once, as in the ActivityNet-style metric.',
    'Ambiguous intervals, policy "kit" (the default): as in the official kit, a detection that is not a true '
    'positive and overlaps an Ambiguous interval of its video is dropped (neither true nor false positive) '
    'before anything is counted, because annotators could not say whether an action is there; policy "ignore": '
    'they are not used (DETAD has none), so such detections are errors, mostly background, and the baseline '
    'mAP equals the ActivityNet-style column.',
    'The mAP gain of an error type: the mAP (interpolated AP, matching as above, Ambiguous policy applied) with '
    'every detection of that type removed, minus the mAP of all detections. Removing false positives never '
    'changes which instance a true positive takes.',
    'Sensitivity: for the instances of one bin, true positives matched to instances of other bins are ignored; '
    'every false positive is kept. N is fixed: all instances over the classes that have any. The normalised '
    'mAP of a bin is the mean over the classes with instances in that bin.',
    'A false negative is an instance that no detection among its class\'s top-10G matches as a true positive.',
]


# ----------------------------------------------------------------------------
# video lengths

def read_video_info(path, fps_table):
    """Video lengths in seconds from a CSV with columns `video` and `frame_num` (video_info.csv,
    or an annotation CSV), with an `fps` column or else `fps_table` (thumos14.video_fps) -> {video: s}."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise ValueError(f'{path}: video info file not found') from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f'{path}: cannot read as CSV: {err}') from None
    missing = [c for c in ('video', 'frame_num') if c not in df.columns]
    if missing:
        raise ValueError(f'{path}: no column {missing[0]!r} (columns: {",".join(df.columns)}); expected '
                         f'video_info.csv (video,fps,frame_num,...) or an annotation CSV (video,...,frame_num)')
    frames = pd.to_numeric(df['frame_num'], errors='coerce').to_numpy(np.float64)
    video = df['video'].str.strip().str.replace('.mp4', '', regex=False)
    fps = (pd.to_numeric(df['fps'], errors='coerce').to_numpy(np.float64) if 'fps' in df.columns
           else video.map(fps_table).to_numpy(np.float64))
    for name, values in (('frame_num', frames), ('fps', fps)):
        bad = np.flatnonzero(~(values > 0) | ~np.isfinite(values))
        if len(bad):
            raise ValueError(f'{path}:{bad[0] + 2}: field {name} of video {video.iloc[bad[0]]} is not a number > 0')
    seconds = pd.Series(frames / fps, index=video.to_numpy())
    clash = seconds.groupby(level=0).nunique() > 1
    if clash.any():
        raise ValueError(f'{path}: video {clash.index[clash][0]} has two different lengths (frame_num / fps)')
    return seconds.groupby(level=0).first().to_dict()


def video_lengths(videos, ends, info):
    """Length (s) of each video in `videos`: `info` (a {video: seconds} table) where it has the video,
    else the last end in `ends` (DataFrame video, end: instances, Ambiguous intervals and detections).
    Returns (array of lengths, number taken from `info`)."""
    last = ends.groupby('video')['end'].max()
    from_info = pd.Series(list(videos)).map(info or {})
    fallback = pd.Series(list(videos)).map(last)
    out = from_info.fillna(fallback).fillna(0.0).to_numpy(np.float64)
    return out, int(from_info.notna().sum())


# ----------------------------------------------------------------------------
# labelling

def match_in_score_order(d, g, iou, det_rank, num_gt, tiou):
    """Greedy matching of each (class, video)'s detections in score order.

    Pairs (d[i], g[i], iou[i]) of a detection and an instance of its class and video, sorted by d and,
    within a detection, by the instances' file order; det_rank[d] = position of detection d in its
    (class, video) in score order. Each detection in turn takes the free instance with the highest
    tIoU (the first on ties) if that tIoU >= tiou. Step r serves the r-th detection of every (class,
    video) at once (their instances are disjoint). Returns matched[d] (instance index, or -1).
    """
    matched = np.full(len(det_rank), -1, np.int64)
    free = np.ones(num_gt, bool)
    if len(d) == 0:
        return matched
    perm = np.argsort(det_rank[d], kind='stable')
    d, g, iou, rank = d[perm], g[perm], iou[perm], det_rank[d][perm]
    bounds = np.searchsorted(rank, np.arange(rank[-1] + 2))
    for r in np.unique(rank):
        a, b = bounds[r], bounds[r + 1]
        dd, gg = d[a:b], g[a:b]
        starts = np.flatnonzero(np.concatenate([[True], dd[1:] != dd[:-1]]))
        masked = np.where(free[gg], iou[a:b], -1.0)
        best = np.maximum.reduceat(masked, starts)
        is_best = masked == np.repeat(best, np.diff(np.append(starts, b - a)))
        first = np.minimum.reduceat(np.where(is_best, np.arange(b - a), b - a), starts)
        ok = best >= tiou
        free[gg[first[ok]]] = False
        matched[dd[starts[ok]]] = gg[first[ok]]
    return matched


def _overlaps(ds, de, gs, ge, d, g):
    """Intersection and tIoU (inter / union, as the ActivityNet-style metric) of pairs (d, g)."""
    inter = np.maximum(np.minimum(ge[g], de[d]) - np.maximum(gs[g], ds[d]), 0)
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = np.nan_to_num(inter / ((ge[g] - gs[g]) + (de[d] - ds[d]) - inter), nan=0.0)
    return inter, iou


def _intervals(table):
    """(start, end) of a table's intervals as float64, reversed ones flipped (as evaluate.py does)."""
    return evaluate.ordered_intervals(table['start'].to_numpy(np.float64), table['end'].to_numpy(np.float64))


def _arrays(det, gt):
    """Instances (repeats removed) and detections as arrays; detections in matching order
    (class, video, score descending, file order)."""
    table = gt['gt'].drop_duplicates(['cls', 'video', 'start', 'end']).reset_index(drop=True)
    amb = gt['ambiguous']
    det_class = evaluate.class_index(det, np.asarray(gt['class_ids']))
    (gt_video, amb_video, det_video), videos = evaluate.number_videos_by_name(table['video'], amb['video'],
                                                                              det['video'])
    score = det['score'].to_numpy(np.float64)
    order = np.lexsort((np.arange(len(det)), -score, det_video, det_class))
    det_start, det_end = _intervals(det)
    gt_start, gt_end = _intervals(table)
    amb_start, amb_end = _intervals(amb)
    return dict(videos=videos, V=len(videos),
                gt=dict(video=gt_video, cls=table['cls'].to_numpy(np.int64), start=gt_start, end=gt_end),
                amb=dict(video=amb_video, start=amb_start, end=amb_end),
                det=dict(index=order, cls=det_class[order], video=det_video[order], score=score[order],
                         start=det_start[order], end=det_end[order]))


def label_detections(det, gt, tiou=0.5, ambiguous='kit'):
    """Label every detection with its DETAD type (TYPES) at tIoU `tiou`.

    det: DataFrame(video, start, end, class_id, score) of known classes; gt: evaluate.read_ground_truth.
    Returns the dict of _arrays with, per detection (matching order): label, matched (instance or -1),
    dropped (on an Ambiguous interval, policy 'kit'), max_same / max_other (best tIoU with an instance
    of its own / another class); per instance: npos by class.
    """
    if not 0 < tiou <= 1:
        raise ValueError(f'tiou must be in (0, 1], got {tiou}')
    if ambiguous not in AMBIGUOUS_POLICIES:
        raise ValueError(f'ambiguous must be one of {AMBIGUOUS_POLICIES}, got {ambiguous!r}')
    labelled = _arrays(det, gt)
    dets, inst, amb = labelled['det'], labelled['gt'], labelled['amb']
    num_det, num_classes = len(dets['cls']), len(gt['class_ids'])
    gperm = np.argsort(inst['video'], kind='stable')       # by video, file order inside
    d, pos = evaluate.expand_ranges(*evaluate.key_ranges(inst['video'][gperm], dets['video']))
    g = gperm[pos]
    inter, iou = _overlaps(dets['start'], dets['end'], inst['start'], inst['end'], d, g)
    keep = inter > 0                                    # tIoU 0 matters for nothing (every bound is > 0)
    d, g, iou = d[keep], g[keep], iou[keep]
    same = inst['cls'][g] == dets['cls'][d]
    det_rank = evaluate.rank_in_group(dets['cls'] * labelled['V'] + dets['video'])
    matched = match_in_score_order(d[same], g[same], iou[same], det_rank, len(inst['cls']), tiou)
    max_same, max_other = np.zeros(num_det), np.zeros(num_det)
    np.maximum.at(max_same, d[same], iou[same])
    np.maximum.at(max_other, d[~same], iou[~same])
    label = np.select([matched >= 0, max_same >= tiou, max_other >= tiou, max_same >= MIN_TIOU,
                       max_other >= MIN_TIOU], [TP, DOUBLE, WRONG, LOC, CONF], BG)
    aperm = np.argsort(amb['video'], kind='stable')
    da, apos = evaluate.expand_ranges(*evaluate.key_ranges(amb['video'][aperm], dets['video']))
    a_inter, _ = _overlaps(dets['start'], dets['end'], amb['start'][aperm], amb['end'][aperm], da, apos)
    on_amb = np.bincount(da[a_inter > 0], minlength=num_det) > 0
    dropped = on_amb & (label != TP) if ambiguous == 'kit' else np.zeros(num_det, bool)
    dets.update(label=label, matched=matched, dropped=dropped, max_same=max_same, max_other=max_other)
    labelled.update(tiou=tiou, ambiguous=ambiguous, npos=np.bincount(inst['cls'], minlength=num_classes),
                    C=num_classes)
    return labelled


def ranking(labelled):
    """The kept detections (not dropped) by class, score descending, file order: index array into
    labelled['det'], and each one's 0-based rank within its class."""
    dets = labelled['det']
    kept = np.flatnonzero(~dets['dropped'])
    r = kept[np.lexsort((dets['index'][kept], -dets['score'][kept], dets['cls'][kept]))]
    return r, evaluate.rank_in_group(dets['cls'][r])


# ----------------------------------------------------------------------------
# numbers

def class_ap(cls, tp, npos, norm=None):
    """Interpolated AP per class of a ranking grouped by class (score descending within a class).

    cls, tp: class and true-positive flag of each ranked detection; npos [C]: instances per class.
    norm: None for plain precision TP / (TP + FP); else N of DETAD's normalised precision
    P_N = R*N / (R*N + FP). AP = sum over true positives of the monotone envelope of the precision,
    over npos. Classes without instances get NaN.
    """
    npos = np.asarray(npos)
    cls, tp = np.asarray(cls, np.int64), np.asarray(tp, bool)
    bounds = np.searchsorted(cls, np.arange(len(npos) + 1))
    ap = np.where(npos > 0, 0.0, np.nan)
    for c in np.flatnonzero(npos > 0):
        t = tp[bounds[c]:bounds[c + 1]]
        if not t.any():
            continue
        tps = np.cumsum(t)
        fps = np.arange(1, len(t) + 1) - tps
        if norm is None:
            prec = tps / (tps + fps)
        else:
            rn = tps / npos[c] * norm
            prec = rn / (rn + fps)
        env = np.maximum.accumulate(prec[::-1])[::-1]
        ap[c] = env[t].sum() / npos[c]
    return ap


def fp_breakdown(labelled):
    """counts [TOP_K, len(TYPES)]: detections of each type among the top-kG of every class, pooled
    over classes (row j: k = j + 1); per_class [C, len(TYPES)] at k = TOP_K."""
    r, rank = ranking(labelled)
    cls, label = labelled['det']['cls'][r], labelled['det']['label'][r]
    class_size = labelled['npos'][cls]   # DETAD's G of each detection's class
    counts = np.stack([np.bincount(label[rank < j * class_size], minlength=len(TYPES)) for j in range(1, TOP_K + 1)])
    top = rank < TOP_K * class_size
    per_class = np.bincount(cls[top] * len(TYPES) + label[top], minlength=labelled['C'] * len(TYPES))
    return counts, per_class.reshape(labelled['C'], len(TYPES))


def removal_gains(labelled):
    """mAP of all kept detections, and {error type: mAP gain if every detection of that type were removed}.
    mAP is the plain mean over classes (no instances: AP 0), as the metrics of evaluate.py."""
    r, _ = ranking(labelled)
    cls, label = labelled['det']['cls'][r], labelled['det']['label'][r]

    def mean_ap(keep):
        return float(np.nan_to_num(class_ap(cls[keep], label[keep] == TP, labelled['npos'])).mean())

    base = mean_ap(np.ones(len(r), bool))
    return base, {TYPES[e]: mean_ap(label != e) - base for e in range(1, len(TYPES))}


def instance_characteristics(labelled, lengths):
    """Per instance: {'length': s, 'coverage': length / video length, 'instances': instances of its
    class in its video}; lengths [V]: length (s) of every video code."""
    inst = labelled['gt']
    length = inst['end'] - inst['start']
    with np.errstate(divide='ignore', invalid='ignore'):
        coverage = np.where(lengths[inst['video']] > 0, length / lengths[inst['video']], np.inf)
    key = inst['cls'] * labelled['V'] + inst['video']
    _, inverse, count = np.unique(key, return_inverse=True, return_counts=True)
    return {'length': length, 'coverage': coverage, 'instances': count[inverse].astype(np.float64)}


def bin_of(values, name):
    """Index of the (lo, hi] bin of BINS[name] holding each value (values <= 0 go to the first)."""
    edges = BINS[name][1]
    return np.clip(np.searchsorted(edges, values, 'left') - 1, 0, len(edges) - 2)


def sensitivity(labelled, lengths):
    """Per characteristic of BINS: dict(bins, instances [B], norm_map [B] (NaN: no instance), fn_rate [B]),
    and the normalised mAP and false-negative rate over all instances."""
    r, rank = ranking(labelled)
    dets, npos = labelled['det'], labelled['npos']
    cls, m = dets['cls'][r], dets['matched'][r]
    tp = m >= 0
    norm = npos.sum() / max(int((npos > 0).sum()), 1)
    detected = np.zeros(len(labelled['gt']['cls']), bool)
    detected[m[tp & (rank < TOP_K * npos[cls])]] = True
    out = {'all': dict(norm_map=float(np.nanmean(class_ap(cls, tp, npos, norm))) if npos.any() else np.nan,
                       fn_rate=float(np.mean(~detected)) if len(detected) else np.nan, norm=norm)}
    for name, values in instance_characteristics(labelled, lengths).items():
        b = bin_of(values, name)
        B = len(BINS[name][2])
        res = dict(instances=np.bincount(b, minlength=B), norm_map=np.full(B, np.nan), fn_rate=np.full(B, np.nan))
        for k in range(B):
            npos_k = np.bincount(labelled['gt']['cls'][b == k], minlength=len(npos))
            if not npos_k.any():
                continue
            keep = ~tp | (b[np.maximum(m, 0)] == k)
            res['norm_map'][k] = np.nanmean(class_ap(cls[keep], tp[keep], npos_k, norm))
            res['fn_rate'][k] = np.mean(~detected[b == k])
        out[name] = res
    return out


def worst_videos(labelled, num=3):
    """The `num` videos with the most errors (error-typed detections among the top-10G of their class,
    plus false negatives) -> DataFrame(video, one column per error type, missed, errors)."""
    r, rank = ranking(labelled)
    dets, npos = labelled['det'], labelled['npos']
    top = r[rank < TOP_K * npos[dets['cls'][r]]]
    per = np.zeros((labelled['V'], len(TYPES)), np.int64)
    np.add.at(per, (dets['video'][top], dets['label'][top]), 1)
    detected = np.zeros(len(labelled['gt']['cls']), bool)
    detected[dets['matched'][top][dets['matched'][top] >= 0]] = True
    missed = np.bincount(labelled['gt']['video'][~detected], minlength=labelled['V'])
    df = pd.DataFrame(per[:, 1:], columns=list(ERRORS))
    df.insert(0, 'video', labelled['videos'])
    df['missed'] = missed
    df['errors'] = per[:, 1:].sum(1) + missed
    df = df[df['errors'] > 0].sort_values(['errors', 'video'], ascending=[False, True], kind='stable')
    return df.head(num).reset_index(drop=True)


def diagnose(det, gt, tiou=0.5, ambiguous='kit', info=None):
    """Everything a report shows, as numbers. det: detections of known classes; gt: read_ground_truth;
    info: {video: length in s} or None."""
    labelled = label_detections(det, gt, tiou, ambiguous)
    ends = pd.concat([pd.DataFrame({'video': labelled['videos'][part['video']], 'end': part['end']})
                      for part in (labelled['gt'], labelled['amb'], labelled['det'])], ignore_index=True)
    lengths, num_info = video_lengths(labelled['videos'], ends, info)
    counts, per_class = fp_breakdown(labelled)
    base, gains = removal_gains(labelled)
    gt_videos = np.unique(labelled['gt']['video'])
    num_info_gt = int(pd.Series(labelled['videos'][gt_videos]).isin(list((info or {}).keys())).sum())
    return dict(labels=labelled, counts=counts, per_class=per_class, base_map=base, gains=gains,
                sensitivity=sensitivity(labelled, lengths), worst=worst_videos(labelled), lengths=lengths,
                num_length_from_info=num_info_gt, num_gt_videos=len(gt_videos),
                num_dropped=int(labelled['det']['dropped'].sum()))


# ----------------------------------------------------------------------------
# pictures

def png_base64(fig, dpi=100):
    """A matplotlib figure as base64 PNG text (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=dpi)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode('ascii')


def plot_fp_breakdown(counts, gains, title=''):
    """DETAD's false-positive figure: the composition of the top-1G .. top-10G detections (stacked, %),
    and the mAP gain (points) from removing each error type."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw=dict(width_ratios=[1.6, 1]))
    total = np.maximum(counts.sum(1, keepdims=True), 1)
    share = 100.0 * counts / total
    x = np.arange(1, TOP_K + 1)
    bottom = np.zeros(TOP_K)
    for t in range(len(TYPES)):
        ax.bar(x, share[:, t], bottom=bottom, color=TYPE_COLORS[t], width=0.8, label=TYPES[t])
        bottom += share[:, t]
    ax.set_xticks(x, [f'{k}G' for k in x])
    ax.set_xlabel('top-kG detections of each class (G = its instances)')
    ax.set_ylabel('share of detections (%)')
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f'{title} false-positive breakdown'.strip(), fontsize=10)
    values = [100 * gains[e] for e in ERRORS]
    y = np.arange(len(ERRORS))
    bx.barh(y, values, color=TYPE_COLORS[1:])
    for yy, v in zip(y, values):
        bx.text(v, yy, f' {v:.2f}', va='center', fontsize=8)
    bx.set_yticks(y, list(ERRORS))
    bx.invert_yaxis()
    bx.set_xlim(0, max(values + [0.1]) * 1.3)
    bx.set_xlabel('mAP gain (points) if removed')
    bx.set_title('removing each error type', fontsize=10)
    fig.tight_layout()
    return png_base64(fig)


def plot_sensitivity(sens, title=''):
    """Normalised mAP (top row) and false-negative rate (bottom row) per bin of each characteristic;
    dashed: over all instances; above each bar: the instances in the bin."""
    fig, axes = plt.subplots(2, len(BINS), figsize=(4.2 * len(BINS), 6.4), squeeze=False)
    for j, (name, (what, _, labels)) in enumerate(BINS.items()):
        res = sens[name]
        for i, (key, ylabel) in enumerate((('norm_map', 'normalised mAP (%)'), ('fn_rate', 'false negatives (%)'))):
            ax = axes[i, j]
            values = 100 * np.nan_to_num(res[key])
            ax.bar(range(len(labels)), values, color='#4c72b0' if i == 0 else '#d62728')
            ax.axhline(100 * sens['all'][key], ls='--', color='k', lw=1)
            for k, (v, n) in enumerate(zip(values, res['instances'])):
                ax.text(k, v, 'n/a' if n == 0 else f'{v:.0f}\n({n})', ha='center', va='bottom', fontsize=7)
            ax.set_xticks(range(len(labels)), labels, fontsize=7)
            ax.set_ylim(0, 118)
            ax.set_ylabel(ylabel, fontsize=8)
            if i == 0:
                ax.set_title(what, fontsize=9)
    fig.suptitle(f'{title} sensitivity (bar label: value and number of instances; dashed: all)'.strip(),
                 fontsize=10)
    fig.tight_layout()
    return png_base64(fig)


def timeline_base64(det, gt, videos):
    """fig/visualize.plot_timeline of `videos` (gt: evaluate.read_ground_truth's), as base64 PNG text
    (drawn in a temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = visualize.plot_timeline(det, None, videos, os.path.join(tmp, 'timeline.png'), top=15, gt=gt)
        with open(out, 'rb') as f:
            return base64.b64encode(f.read()).decode('ascii')


# ----------------------------------------------------------------------------
# the report

def _table(header, rows, cls=''):
    head = ''.join(f'<th>{html.escape(str(h))}</th>' for h in header)
    body = ''.join('<tr>' + ''.join(f'<td>{c}</td>' for c in row) + '</tr>' for row in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _pct(x):
    return 'n/a' if x is None or not np.isfinite(x) else f'{100 * x:.2f}'


def _swatch(class_id, class_ids):
    rgb = visualize.class_color(class_id, class_ids)[:3]
    color = '#' + ''.join(f'{int(round(255 * v)):02x}' for v in rgb)
    return f'<span class="sw" style="background:{color}"></span>'


def _ap_section(evals, diag, gt, tiou):
    """The mAP of every metric at every threshold, and per class at `tiou` with the normalised AP."""
    first = next(iter(evals.values()))
    t = int(np.flatnonzero(np.isclose(first['thresholds'], tiou, atol=1e-9))[0])
    labelled = diag['labels']
    r, _ = ranking(labelled)
    cls, label = labelled['det']['cls'][r], labelled['det']['label'][r]
    ap_n = class_ap(cls, label == TP, labelled['npos'], diag['sensitivity']['all']['norm'])
    rows = [[_swatch(cid, gt['class_ids']) + html.escape(name), cid, int(labelled['npos'][c]),
             *[_pct(res['per_class'][cid][t]) for res in evals.values()], _pct(ap_n[c])]
            for c, (cid, name) in enumerate(zip(gt['class_ids'].tolist(), gt['class_names']))]
    rows.append(['<b>mAP</b>', '', int(labelled['npos'].sum()), *[_pct(res['map'][t]) for res in evals.values()],
                 _pct(diag['sensitivity']['all']['norm_map'])])
    per_class = _table(['class', 'id', 'instances G', *[f'{m} AP@{tiou:g}' for m in evals],
                        f'normalised AP@{tiou:g} (N = {diag["sensitivity"]["all"]["norm"]:.1f})'], rows)
    thr_rows = [[html.escape(evaluate.METRIC_TITLES.get(m, m)), *[_pct(v) for v in res['map']],
                 _pct(res['map_avg_0.3_0.7'])] for m, res in evals.items()]
    by_thr = _table(['mAP (%) at tIoU', *[f'{x:g}' for x in first['thresholds']], 'avg 0.3:0.7'], thr_rows)
    return (f'<h2 id="ap">Average precision</h2>{by_thr}<p>Per class at tIoU {tiou:g} (%), one column per metric '
            f'of the first table. The normalised AP uses the DETAD labelling of this report (Ambiguous policy '
            f'"{labelled["ambiguous"]}").</p>{per_class}')


def _fp_section(diag, gt, picture):
    counts, per_class, gains = diag['counts'], diag['per_class'], diag['gains']
    rows = [[f'{j + 1}G', int(counts[j].sum()), *[f'{int(v)} ({100 * v / max(counts[j].sum(), 1):.1f}%)'
                                                  for v in counts[j]]] for j in range(TOP_K)]
    pooled = _table(['top', 'detections', *TYPES], rows)
    crow = [[_swatch(cid, gt['class_ids']) + html.escape(name), int(diag['labels']['npos'][c]),
             *[int(v) for v in per_class[c]]]
            for c, (cid, name) in enumerate(zip(gt['class_ids'].tolist(), gt['class_names']))]
    classes = _table(['class', 'G', *TYPES], crow)
    grow = [[html.escape(e), f'{100 * (diag["base_map"] + gains[e]):.2f}', f'{100 * gains[e]:+.2f}'] for e in ERRORS]
    gain = _table(['error type removed', 'mAP (%)', 'gain (points)'], grow)
    return (f'<h2 id="false-positives">False-positive analysis</h2>'
            f'<img alt="false-positive breakdown" src="data:image/png;base64,{picture}">'
            f'<p>Detections of each type among the top-kG of every class, pooled over classes:</p>{pooled}'
            f'<p>mAP of all detections: {100 * diag["base_map"]:.2f} (interpolated AP, DETAD matching). '
            f'With every detection of one type removed:</p>{gain}'
            f'<p>Per class, top-{TOP_K}G:</p>{classes}')


def _sensitivity_section(diag, picture):
    sens = diag['sensitivity']
    parts = [f'<h2 id="sensitivity">Sensitivity to instance characteristics</h2>'
             f'<img alt="sensitivity" src="data:image/png;base64,{picture}">'
             f'<p>All instances: normalised mAP {_pct(sens["all"]["norm_map"])}, false negatives '
             f'{_pct(sens["all"]["fn_rate"])}%.</p>']
    parts.append('<div class="row">')
    for name, (what, _, labels) in BINS.items():
        res = sens[name]
        rows = [[html.escape(lab), int(n), _pct(v), _pct(f)]
                for lab, n, v, f in zip(labels, res['instances'], res['norm_map'], res['fn_rate'])]
        parts.append(f'<div><h3>{html.escape(what)}</h3>' +
                     _table(['bin', 'instances', 'normalised mAP (%)', 'false negatives (%)'], rows) + '</div>')
    return ''.join(parts) + '</div>'


def _timeline_section(diag, picture):
    worst = diag['worst']
    rows = [[html.escape(v), *[int(x) for x in row]] for v, *row in worst.itertuples(index=False)]
    img = (f'<img alt="timelines" src="data:image/png;base64,{picture}">' if picture else
           '<p>No video has an error.</p>')
    return (f'<h2 id="timelines">Videos with the most errors</h2><p>Errors: detections of an error type among '
            f'the top-{TOP_K}G of their class, plus missed instances. The timelines show the best 15 of those '
            f'detections per video.</p>' + _table(['video', *ERRORS, 'missed', 'errors'], rows) + img)


STYLE = ('body{font-family:sans-serif;max-width:1300px;margin:1em auto;color:#222}'
         'table{border-collapse:collapse;margin:.5em 0;font-size:13px}'
         'td,th{border:1px solid #bbb;padding:2px 7px;text-align:right}td:first-child{text-align:left}'
         'th{background:#eee}img{max-width:100%;display:block;margin:.5em 0}'
         '.sw{display:inline-block;width:.8em;height:.8em;margin-right:.4em;vertical-align:middle}'
         'li{margin:.2em 0}.row{display:flex;gap:1.2em;flex-wrap:wrap}')


def render_report(name, evals, diag, gt, tiou, pictures, length_note):
    """The report's HTML text. pictures: base64 PNGs {'fp', 'sensitivity', 'timeline' (or None)}."""
    labelled = diag['labels']
    defs = ''.join(f'<li><b>{t}</b>: {html.escape(d)}</li>' for t, d in zip(TYPES, DEFINITIONS))
    choices = ''.join(f'<li>{html.escape(c)}</li>' for c in REPORT_CHOICES)
    setup = [f'result file: <code>{html.escape(name)}</code>; ground truth: <code>{html.escape(gt["gt_dir"])}'
             f'</code> ({html.escape(gt["subset"])}); {html.escape(evaluate.describe_protocol(gt))}',
             f'{len(labelled["det"]["cls"])} detections, {int(labelled["npos"].sum())} instances (repeats removed) in '
             f'{diag["num_gt_videos"]} videos, {len(labelled["amb"]["video"])} Ambiguous intervals; tIoU a = {tiou:g}',
             f'Ambiguous policy "{labelled["ambiguous"]}": {diag["num_dropped"]} detections dropped',
             html.escape(length_note)]
    return ('<!DOCTYPE html><html><head><meta charset="utf-8">'
            f'<title>Error diagnosis: {html.escape(os.path.basename(name))}</title><style>{STYLE}</style></head><body>'
            f'<h1>Error diagnosis: {html.escape(os.path.basename(name))}</h1>'
            '<p>After Alwassel, Caba Heilbron, Escorcia and Ghanem, "Diagnosing Error in Temporal Action '
            'Detectors", ECCV 2018 (DETAD). Sections: <a href="#setup">setup</a>, <a href="#ap">AP</a>, '
            '<a href="#false-positives">false positives</a>, <a href="#sensitivity">sensitivity</a>, '
            '<a href="#timelines">timelines</a>, <a href="#definitions">definitions</a>.</p>'
            '<h2 id="setup">Setup</h2><ul>' + ''.join(f'<li>{s}</li>' for s in setup) + '</ul>'
            + _ap_section(evals, diag, gt, tiou) + _fp_section(diag, gt, pictures['fp'])
            + _sensitivity_section(diag, pictures['sensitivity']) + _timeline_section(diag, pictures['timeline'])
            + f'<h2 id="definitions">Definitions</h2><p>Each class\'s detections in score order, at tIoU a = '
            f'{tiou:g}; the first type that applies:</p><ul>{defs}</ul><p>Normalised precision '
            f'P_N = R&middot;N / (R&middot;N + FP) with N = {diag["sensitivity"]["all"]["norm"]:.2f}, the average '
            f'number of instances per class, so that classes with different counts compare; the normalised AP is '
            f'the interpolated AP of P_N. Choices the paper leaves open:</p><ul>{choices}</ul></body></html>\n')


DEFINITIONS = ('tIoU >= a with a not-yet-matched instance of its class',
               'tIoU >= a with an instance of its class that a higher-scored detection already matched',
               'tIoU >= a with an instance of another class',
               '0.1 <= tIoU < a with an instance of its class',
               '0.1 <= tIoU < a with an instance of another class',
               'tIoU < 0.1 with every instance')


def length_note(diag, info_path):
    n, total = diag['num_length_from_info'], diag['num_gt_videos']
    source = f'frame_num / fps from {info_path}' if info_path else 'no video info file given'
    return (f'Video lengths (for coverage): {source} for {n} of the {total} annotated videos; for the others the '
            f'last end of any instance, Ambiguous interval or detection in the video (a lower bound, so their '
            f'coverage is an upper bound).')


def write_report(result, gt_dir, out_html, tiou=0.5, subset='test', ambiguous='kit', info_path=None,
                 fps_table=None, protocol=None):
    """Diagnose one result file and write its HTML report (every metric of evaluate.EVALUATORS);
    returns the diagnosis dict. protocol: the test videos (evaluate.read_ground_truth)."""
    gt = evaluate.read_ground_truth(gt_dir, subset, protocol)
    det = evaluate.read_detections(result, gt)
    info = read_video_info(info_path, fps_table or thumos14.video_fps()) if info_path else None
    thresholds = sorted(set(evaluate.DEFAULT_THRESHOLDS) | {float(tiou)})
    evals = evaluate.evaluate(det, gt_dir, thresholds, subset, metrics=tuple(evaluate.EVALUATORS), gt=gt)
    diag = diagnose(det, gt, tiou, ambiguous, info)
    title = os.path.splitext(os.path.basename(str(result)))[0]
    worst = diag['worst']['video'].tolist()
    if worst:
        r, rank = ranking(diag['labels'])
        dets = diag['labels']['det']
        top = dets['index'][r[rank < TOP_K * diag['labels']['npos'][dets['cls'][r]]]]
        timeline = timeline_base64(det.iloc[np.sort(top)].reset_index(drop=True), gt, worst)
    else:
        timeline = None
    pictures = dict(fp=plot_fp_breakdown(diag['counts'], diag['gains'], title),
                    sensitivity=plot_sensitivity(diag['sensitivity'], title), timeline=timeline)
    page = render_report(str(result), evals, diag, gt, tiou, pictures, length_note(diag, info_path))
    with fileio.atomic_open(out_html, 'w', encoding='utf-8') as f:
        f.write(page)
    diag['evals'] = evals
    return diag


def report_path(result, out_dir=None):
    """<out_dir or the result's folder>/<result stem>_diagnosis.html."""
    stem = os.path.splitext(os.path.basename(str(result)))[0]
    return os.path.join(out_dir if out_dir else os.path.dirname(str(result)) or '.', f'{stem}_diagnosis.html')


def summary_line(result, diag):
    c = diag['counts'][-1]
    shares = ', '.join(f'{t} {100 * v / max(c.sum(), 1):.0f}%' for t, v in zip(TYPES, c))
    return f'{result}: mAP {100 * diag["base_map"]:.2f}; top-{TOP_K}G: {shares}'


def main(argv=None):
    parser = argparse.ArgumentParser(description='DETAD-style error diagnosis of THUMOS14 result files',
                                     allow_abbrev=False)
    parser.add_argument('results', nargs='+', help='result files (video start_s end_s class_id score)')
    parser.add_argument('--gt', default=None, help='annotation folder or JSON (default: config eval_gt_dir, or annotation_json)')
    parser.add_argument('--subset', default=None, help='test (default), or with data_source=json the JSON\'s '
                                                       'subsets (default: test_subsets)')
    parser.add_argument('--tiou', type=float, default=0.5, help='tIoU a of the error types (default 0.5)')
    parser.add_argument('--out', default=None, help="folder of the reports (default: each result's folder)")
    parser.add_argument('--video_info', default=None,
                        help='CSV with video,frame_num (video_info.csv or an annotation CSV; fps from its fps '
                             'column, else --fps_file=) for the video lengths (default: the config\'s '
                             '<data_dir>/<subset>/thumos14_<subset>_annotation.csv when it exists)')
    parser.add_argument('--protocol', default=None,
                        help=f'test videos: {", ".join(evaluate.PROTOCOLS)}, or a file of video names (default: all '
                             f'for the kit\'s folder, actionformer for a JSON)')
    parser.add_argument('--ambiguous', choices=AMBIGUOUS_POLICIES, default='kit',
                        help='kit: drop non-true-positive detections on Ambiguous intervals (default); '
                             'ignore: do not use Ambiguous intervals')
    warnings.formatwarning = thumos14.format_warning
    try:
        cfg, args = config.parse_config(parser, argv)
        gt_dir = args.gt or config.get_eval_gt_path(cfg)
        args.subset = args.subset or (config.get_eval_subset(cfg) if str(gt_dir).endswith('.json') else 'test')
        info_path = args.video_info
        if info_path is None and os.path.isfile(config.get_anno_path(cfg, args.subset)):
            info_path = config.get_anno_path(cfg, args.subset)
        outs = [report_path(r, args.out) for r in args.results]
        if len(set(map(os.path.abspath, outs))) < len(outs):
            raise ValueError(f'two results would write the same report ({outs}); give them different names')
        for out in outs:
            fileio.check_writable(out)
        fps = thumos14.video_fps(cfg.fps_file)
        for result, out in zip(args.results, outs):
            diag = write_report(result, gt_dir, out, args.tiou, args.subset, args.ambiguous, info_path, fps,
                                args.protocol)
            print(summary_line(result, diag))
            print(f'wrote {out}')
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None


if __name__ == '__main__':
    main()
