"""THUMOS14 temporal action detection evaluation, in numpy.

Two metrics:
- `kit`: the official THUMOS14 kit (TH14evalDet, release 2015-09-30), number for
  number. This is how the paper was scored. Semantics (method.md §12):
  ground truth is the outer loop of a greedy match per (class, video); a match
  needs IoU strictly above the threshold; unmatched detections that overlap an
  Ambiguous interval are dropped; AP is the sum of precisions at the true
  positives over the number of instances, without interpolation.
- `anet`: the ActivityNet-style metric used by most current detection codebases:
  detections matched in score order to the best free instance with IoU >= the
  threshold, Ambiguous intervals ignored (so detections on them are false
  positives), duplicate instances removed, interpolated AP.

    python evaluate.py results/result_fuse_KnetV3_decouple_ssad.txt --metric all
    python evaluate.py R1.txt R2.txt --labels 'late fusion' 'RGB only' --metric all --summary
    python evaluate.py R.txt --gt data/thumos/annotations/thumos14.json --metric anet --protocol opentad

The metrics are the table EVALUATORS; `--metric all` (or `both`) is every one that applies: the
kit's is THUMOS14's (the command line refuses it on another dataset's classes), the
ActivityNet-style one applies to any dataset and is the default there. Ground truth: the
kit's folder (<Class>_test.txt, Ambiguous_test.txt, detclasslist.txt) or the field's annotation
JSON (its Test videos as in the file; another dataset's JSON: its labels are the classes,
method.md §15). `--protocol` picks the test videos (PROTOCOLS, or a file of names; method.md §12).
Several result files: each is scored, then one table compares them. Result file:
`video start_s end_s class_id score` per line, whitespace separated.
"""
import argparse
import json
import os
import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd

import classes
import config
import fileio
import thumos14
from thumos14 import EvalWarning, drop_unknown_classes, numeric_field, read_fields, read_results

DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
AVG_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
METRIC_TITLES = {'kit': 'official THUMOS14 kit metric (TH14evalDet)',
                 'anet': 'ActivityNet-style metric (interpolated AP, Ambiguous ignored)'}
# Test-video protocols: the test videos (those of the JSON's subset, or of the kit's files those with
# an instance) less the ones each codebase leaves out. `all` is every video of the ground truth.
PROTOCOLS = {
    'all': ('every video of the ground truth', ()),
    'actionformer': ('every test video, as ActionFormer, TriDet and TemporalMaxer evaluate', ()),
    'opentad': ('as OpenTAD evaluates', ('video_test_0000270', 'video_test_0001292')),
    'release': ('as the 2019 release evaluates', ('video_test_0000270', 'video_test_0001292', 'video_test_0001496')),
}


def read_ground_truth(gt_dir, subset='test', protocol=None):
    """Read the kit's annotation folder: detclasslist.txt, <Class>_<subset>.txt, Ambiguous_<subset>.txt.

    Returns dict(class_ids [C], class_names [C], gt DataFrame(video, start, end, cls),
    ambiguous DataFrame(video, start, end), and the protocol's fields of apply_protocol); `cls` is
    the 0-based row of detclasslist, rows are class by class in file order. A `gt_dir` ending in
    .json is the field's annotation JSON instead (read_json_ground_truth). protocol: a name of
    PROTOCOLS or a file listing the videos (default: all for a folder, actionformer for a JSON).
    """
    gt_dir = str(gt_dir)
    if gt_dir.endswith('.json'):
        return apply_protocol(read_json_ground_truth(gt_dir, subset), protocol or 'actionformer')
    list_path = os.path.join(gt_dir, 'detclasslist.txt')
    class_table = read_fields(list_path, 2, 'ground-truth class list')
    if len(class_table) == 0:
        raise ValueError(f'{list_path}: no classes')
    class_ids = numeric_field(class_table, 0, list_path, 'class id', integer=True)
    class_names = class_table[1].tolist()
    if len(set(class_ids.tolist())) != len(class_ids):
        raise ValueError(f'{list_path}: repeated class ids')

    def read(name):
        path = os.path.join(gt_dir, f'{name}_{subset}.txt')
        table = read_fields(path, 3, 'ground-truth file', numeric=(1, 2))
        return pd.DataFrame({'video': table[0].to_numpy(dtype=object), 'start': numeric_field(table, 1, path, 'start'),
                             'end': numeric_field(table, 2, path, 'end')})

    parts = []
    for index, name in enumerate(class_names):
        part = read(name)
        part['cls'] = index
        parts.append(part)
    gt = pd.concat(parts, ignore_index=True)
    ambiguous = read('Ambiguous')
    return apply_protocol(dict(class_ids=class_ids, class_names=class_names, gt=gt, ambiguous=ambiguous,
                               gt_dir=gt_dir, subset=subset, test_videos=pd.unique(gt['video'])), protocol or 'all')


def read_json_ground_truth(path, subset='test'):
    """The field's annotation JSON as ground truth: the instances of its videos of `subset` (test =
    the JSON's Test), as read_ground_truth returns them (before a protocol), instances as in the file
    (also those reaching past their video's end, as ActionFormer's and TriDet's evaluators keep them:
    column past_end). Classes: THUMOS14's in detclasslist order when every label is a THUMOS14 class,
    else the file's labels (thumos14.json_class_list; result files then carry ids 1..K). `subset`
    may also be the JSON's own subset names, comma-separated (config test_subsets).

    The field's JSONs hold no Ambiguous interval (only intervals labelled Ambiguous would be), so
    the kit metric then drops no detection: one on an interval the kit's files call Ambiguous is a
    false positive, and kit APs are at most those scored against the kit's folder."""
    names = [{v: k for k, v in thumos14.JSON_SUBSETS.items()}.get(s, s) for s in subset.split(',')]
    db = thumos14.read_annotation_json(path, class_list=None)
    videos = db['videos'].loc[db['videos']['subset'].isin(names), 'video']
    absent = [n for n in names if n not in set(db['videos']['subset'])]
    if absent:
        raise ValueError(f'{path}: field subset: no video of subset {absent[0]!r}; the file\'s subsets are '
                         f'{", ".join(map(repr, pd.unique(db["videos"]["subset"])))}')
    class_list = db['classes']
    inst = db['instances'][db['instances']['video'].isin(videos)]
    cls = inst['class_id'].map({cid: k for k, cid in enumerate(class_list.ids)}).to_numpy(np.int64)
    order = np.argsort(cls, kind='stable')   # class by class, file order within: as the kit's files
    gt = pd.DataFrame({'video': inst['video'].to_numpy(dtype=object)[order], 'start': inst['start'].to_numpy()[order],
                       'end': inst['end'].to_numpy()[order], 'cls': cls[order],
                       'past_end': inst['past_end'].to_numpy()[order]})
    amb = db['ambiguous'][db['ambiguous']['video'].isin(videos)].reset_index(drop=True)
    return dict(class_ids=np.array(class_list.ids), class_names=list(class_list.names), gt=gt,
                ambiguous=amb, gt_dir=path, subset=subset, num_videos_listed=int(len(videos)),
                test_videos=videos.to_numpy(dtype=object))


def apply_protocol(gt, protocol):
    """The ground truth of the protocol's videos: a name of PROTOCOLS, or a text file of video names
    (one a line). Adds protocol (its name), protocol_videos (the videos evaluated), left_out_videos
    and protocol_lists_videos. read_detections drops the detections on the videos a named protocol
    leaves out, or, for a file, on every video it does not list; detections on other videos the
    ground truth does not know stay false positives. Warns about instances that reach past their
    video's end.
    """
    all_videos = pd.unique(pd.concat([pd.Series(gt['test_videos'], dtype=object), gt['gt']['video'],
                                      gt['ambiguous']['video']], ignore_index=True))
    if protocol in PROTOCOLS:
        left_out = PROTOCOLS[protocol][1]
        base = all_videos if protocol == 'all' else gt['test_videos']
        keep = [v for v in base if v not in left_out]
        listed = False
    elif not os.path.isfile(str(protocol)):
        raise ValueError(f'protocol {protocol!r} is neither one of {", ".join(PROTOCOLS)} nor a file listing videos')
    else:
        keep = read_video_list(protocol)
        known = set(all_videos)
        unknown = [v for v in keep if v not in known]
        if unknown:
            warnings.warn(f'{protocol}: {len(unknown)} of its {len(keep)} videos are not in the ground truth '
                          f'{gt["gt_dir"]} ({", ".join(unknown[:3])}{" ..." if len(unknown) > 3 else ""}): '
                          f'any detection on them is a false positive', EvalWarning, stacklevel=3)
        listed_set = set(keep)
        left_out = [v for v in all_videos if v not in listed_set]   # the ground truth's, for the record
        listed = True
    keep_set = set(keep)
    out = dict(gt, gt=gt['gt'][gt['gt']['video'].isin(keep_set)].reset_index(drop=True),
               ambiguous=gt['ambiguous'][gt['ambiguous']['video'].isin(keep_set)].reset_index(drop=True),
               protocol=str(protocol), protocol_videos=np.array(keep, dtype=object),
               left_out_videos=list(left_out), protocol_lists_videos=listed)
    if 'past_end' in out['gt'] and out['gt']['past_end'].any():
        counts = out['gt'].loc[out['gt']['past_end'], 'video'].value_counts().sort_index()
        warnings.warn(f'{gt["gt_dir"]}: {int(counts.sum())} instances reach past their video\'s duration '
                      f'({", ".join(f"{v}: {n}" for v, n in counts.items())}): evaluated as they are in the file, '
                      f'as ActionFormer\'s and TriDet\'s evaluators do', EvalWarning, stacklevel=3)
    return out


def read_video_list(path):
    """A protocol's video list: one video name a line ('.mp4' removed), blank lines skipped."""
    table = read_fields(path, 1, 'protocol video list')
    names = [name for name in dict.fromkeys(table[0].str.replace('.mp4', '', regex=False)) if name]
    if not names:
        raise ValueError(f'{path}: protocol video list: no video')
    return names


def describe_protocol(gt):
    """One line: the protocol, its number of videos and of instances."""
    name = gt['protocol']
    what = PROTOCOLS[name][0] if name in PROTOCOLS else 'the videos listed in the file'
    return f'protocol {name} ({what}): {len(gt["protocol_videos"])} videos, {len(gt["gt"])} instances'


# ----------------------------------------------------------------------------
# detections

def read_detections(result, gt, source='result'):
    """A result file or DataFrame(video, start, end, class_id, score) -> the detections of the
    ground truth's classes on the protocol's videos, file order.

    A result file with a class list beside it (classes.path_beside) has its class ids translated
    to the ground truth's by name. Detections of unknown classes and on videos the protocol leaves
    out are counted (attrs num_unknown, num_left_out) and dropped; unknown videos are checked
    (check_videos)."""
    if isinstance(result, pd.DataFrame):
        missing = {'video', 'start', 'end', 'class_id', 'score'} - set(result.columns)
        if missing:
            raise ValueError(f'detections need columns video, start, end, class_id, score; missing {sorted(missing)}')
        det = result
    else:
        det = read_results(result)
        source = str(result)
        if os.path.isfile(classes.path_beside(result)):
            det = translate_class_ids(det, classes.path_beside(result), gt)
    det = drop_unknown_classes(det, gt['class_ids'], source)
    if gt.get('protocol_lists_videos'):
        left_out = ~det['video'].isin(gt['protocol_videos']).to_numpy()
    else:
        left_out = det['video'].isin(gt.get('left_out_videos', ())).to_numpy()
    if left_out.any():
        attrs = dict(det.attrs)
        det = det[~left_out].reset_index(drop=True)
        det.attrs.update(attrs)
    det.attrs['num_left_out'] = det.attrs.get('num_left_out', 0) + int(left_out.sum())
    check_videos(det, gt, source)
    return det


def translate_class_ids(det, list_path, gt):
    """Result class ids of the class list `list_path` -> the ground truth's ids of the same names.
    An id the list lacks is an error; classes the ground truth lacks are counted (num_unknown),
    reported and dropped."""
    result_classes = classes.read_class_list(list_path)
    gt_id_of_name = dict(zip(gt['class_names'], np.asarray(gt['class_ids']).tolist()))
    ids = det['class_id'].to_numpy()
    listed = np.isin(ids, result_classes.ids)
    if not listed.all():
        i = int(np.flatnonzero(~listed)[0])
        raise ValueError(f'detection {i + 1} has class id {ids[i]}, which its class list {list_path} does not have')
    name_of = result_classes.name_of_id()
    names = pd.Series(ids).map(name_of)
    known = names.isin(list(gt_id_of_name)).to_numpy()
    out = det.assign(class_id=names.map(gt_id_of_name).fillna(-1).to_numpy(np.int64))
    if not known.all():
        missing = sorted(set(names[~known]))
        warnings.warn(f'{list_path}: {int((~known).sum())} detections of classes the ground truth {gt["gt_dir"]} '
                      f'does not have ({", ".join(missing[:5])}{" ..." if len(missing) > 5 else ""}): ignored',
                      EvalWarning, stacklevel=3)
        out = out[known].reset_index(drop=True)
    out.attrs.update(det.attrs, num_unknown=det.attrs.get('num_unknown', 0) + int((~known).sum()))
    return out


def check_videos(det, gt, source):
    """Warn (EvalWarning) when detections are on videos the ground truth does not have.

    Legal (the kit scores them as false positives, or ignores them when no instance of their
    class is there), but when none of the videos is known the result is for another subset or
    another naming, and every AP is 0. Warns once per detections table and ground truth.
    Returns the number of detections on unknown videos (also det.attrs['num_unknown_videos']).
    """
    key = (gt.get('gt_dir'), gt.get('subset'), len(det))
    if det.attrs.get('videos_checked') == key:
        return det.attrs.get('num_unknown_videos', 0)
    known_videos = pd.unique(pd.concat([gt['gt']['video'], gt['ambiguous']['video']], ignore_index=True))
    det_videos = det['video'].to_numpy(dtype=object)
    unknown = ~pd.Series(det_videos).isin(known_videos).to_numpy()
    num_unknown = int(unknown.sum())
    if num_unknown:
        names = list(dict.fromkeys(det_videos[unknown].tolist()))
        shown = ', '.join(names[:3]) + (' ...' if len(names) > 3 else '')
        where = f'{gt.get("gt_dir")} ({gt.get("subset")})'
        if num_unknown == len(det_videos):
            warnings.warn(f'{source}: none of its {len(names)} videos ({shown}) is in the ground truth {where}: '
                          f'every AP is 0; is it a result for another subset, or are the video names different?',
                          EvalWarning, stacklevel=3)
        else:
            warnings.warn(f'{source}: {num_unknown} of {len(det_videos)} detections are on {len(names)} videos '
                          f'without any ground-truth instance or Ambiguous interval in {where} ({shown}): they '
                          f'can only be false positives', EvalWarning, stacklevel=3)
    det.attrs['videos_checked'] = key
    det.attrs['num_unknown_videos'] = num_unknown
    return num_unknown


# ----------------------------------------------------------------------------
# shared machinery (also fig/diagnose.py's)

def ordered_intervals(start, end):
    """(start, end) with every reversed interval flipped: [min, max]."""
    return np.minimum(start, end), np.maximum(start, end)


def key_ranges(sorted_keys, keys):
    """[lo, hi) of each key in an ascending key array."""
    return np.searchsorted(sorted_keys, keys, 'left'), np.searchsorted(sorted_keys, keys, 'right')


def expand_ranges(lo, hi):
    """For items with ranges [lo, hi): (item index, position) of every element of every range."""
    sizes = hi - lo
    item = np.repeat(np.arange(len(lo)), sizes)
    offsets = np.cumsum(sizes) - sizes
    pos = np.arange(int(sizes.sum())) - np.repeat(offsets, sizes) + np.repeat(lo, sizes)
    return item, pos


def rank_in_group(keys):
    """0-based position of each element within its run of equal keys (keys grouped)."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64)
    first = np.concatenate([[True], keys[1:] != keys[:-1]])
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    return np.arange(n) - start


def number_videos_by_name(*columns):
    """Codes 0..V-1 of the video names of every column, in ASCII (code point) order over the union
    of all columns -> (list of code arrays, one per column; the V names)."""
    every = np.concatenate([np.asarray(c, dtype=object) for c in columns])
    codes, names = pd.factorize(every, sort=True)
    bounds = np.cumsum([len(c) for c in columns])[:-1]
    return [part.astype(np.int64) for part in np.split(codes, bounds)], np.asarray(names, dtype=object)


def greedy_match(outer, inner, iou, outer_group, n_inner, thresholds, strict):
    """Sequential greedy matching, vectorised over groups and thresholds.

    Candidate pairs (outer[i], inner[i], iou[i]) are sorted by outer item, and within
    an outer item by tie-break preference. Outer ids are numbered in visiting order
    inside each group (one class in one video), `outer_group[o]` is the group of
    outer item o. Each outer item in turn takes the free inner item with the highest
    IoU (the first one on ties) and keeps it if the IoU is above the threshold (> when
    strict, else >=). Groups are independent, so step r serves the r-th outer item
    (with candidates) of every group at once: Python loops once per rank, not per
    item. Returns (outer_hit [T, n_outer], inner_used [T, n_inner]) booleans.
    """
    thr = np.asarray(thresholds, np.float64)[:, None]
    T = len(thresholds)
    free = np.ones((T, n_inner), bool)
    outer_hit = np.zeros((T, len(outer_group)), bool)
    if len(outer) == 0:
        return outer_hit, ~free
    first_entry = np.concatenate([[True], outer[1:] != outer[:-1]])
    entry_start = np.flatnonzero(first_entry)
    entry_len = np.diff(np.append(entry_start, len(outer)))
    rank = np.repeat(rank_in_group(outer_group[outer[entry_start]]), entry_len)
    # Sort the candidates by rank (stable: each outer item's candidates stay together
    # and in order), so every step is one contiguous slice.
    perm = np.argsort(rank, kind='stable')
    outer, inner, iou, rank = outer[perm], inner[perm], iou[perm], rank[perm]
    seg_start = np.flatnonzero(np.concatenate([[True], outer[1:] != outer[:-1]]))
    seg_len = np.diff(np.append(seg_start, len(outer)))
    bounds = np.searchsorted(rank, np.arange(rank[-1] + 2))
    seg_bounds = np.searchsorted(seg_start, bounds)
    for r in range(rank[-1] + 1):
        a, b = bounds[r], bounds[r + 1]
        j = inner[a:b]
        starts = seg_start[seg_bounds[r]:seg_bounds[r + 1]] - a
        masked = np.where(free[:, j], iou[a:b], -1.0)                 # [T, E_r]
        best = np.maximum.reduceat(masked, starts, axis=1)          # [T, S]
        is_best = masked == np.repeat(best, seg_len[seg_bounds[r]:seg_bounds[r + 1]], axis=1)
        first = np.minimum.reduceat(np.where(is_best, np.arange(b - a), b - a), starts, axis=1)
        hit = best > thr if strict else best >= thr
        t_idx, s_idx = np.nonzero(hit)
        free[t_idx, j[first[t_idx, s_idx]]] = False
        outer_hit[t_idx, outer[a + starts[s_idx]]] = True
    return outer_hit, ~free


def class_index(det, class_ids):
    """The 0-based index in class_ids of each detection's class id."""
    lookup = {cid: k for k, cid in enumerate(class_ids.tolist())}
    return pd.Series(det['class_id'].to_numpy()).map(lookup).to_numpy(dtype=np.int64)


def _thresholds(thresholds):
    thr = np.asarray(thresholds, np.float64).ravel()
    if len(thr) == 0 or not np.all(np.isfinite(thr)) or thr.min() < 0 or thr.max() > 1:
        raise ValueError(f'thresholds must be numbers in [0, 1], got {list(thresholds)}')
    return thr


def _avg(thr, maps):
    """Mean mAP over tIoU 0.3:0.1:0.7, or None when those thresholds were not all evaluated."""
    idx = [np.flatnonzero(np.isclose(thr, t, atol=1e-9)) for t in AVG_THRESHOLDS]
    if any(len(i) == 0 for i in idx):
        return None
    return float(np.mean([maps[i[0]] for i in idx]))


def _precision_curves(cls, tp, npos):
    """Per-class cumulative precision / recall along a ranking sorted by class."""
    n = len(cls)
    class_start = np.searchsorted(cls, cls, 'left')
    cum = np.cumsum(tp)
    tp_cum = cum - np.concatenate([[0], cum])[class_start]
    prec = tp_cum / (np.arange(n) - class_start + 1)
    with np.errstate(divide='ignore', invalid='ignore'):
        rec = tp_cum / np.asarray(npos, np.float64)[cls]
    return tp_cum, prec, rec


def _finish(metric, thr, aps, info, curves=None):
    C = aps.shape[0]
    # The kit's mean is a plain left-to-right sum.
    maps = [sum(aps[:, t].tolist()) / C for t in range(len(thr))]
    out = dict(metric=metric, thresholds=thr.tolist(),
               per_class={cid: aps[c].tolist() for c, cid in enumerate(info['class_ids'])},
               map=maps, **{'map_avg_0.3_0.7': _avg(thr, maps)})
    out.update(info)
    if curves is not None:
        out['pr'] = curves
    return out


class Instances(NamedTuple):
    """Ground-truth instances as arrays (file order), grouped by key = class * V + video."""
    start: np.ndarray
    end: np.ndarray
    cls: np.ndarray          # 0-based class index
    per_class: np.ndarray    # [C] number of instances of each class
    order: np.ndarray        # indices sorted by key, file order within a key
    key: np.ndarray          # the key of each index of `order`, ascending


class Detections(NamedTuple):
    """Detections in the kit's order (class, video in ASCII order, score descending, file order)."""
    file_order: np.ndarray   # the row of each one in the detections table
    cls: np.ndarray
    video: np.ndarray
    score: np.ndarray
    start: np.ndarray
    end: np.ndarray
    key: np.ndarray          # class * V + video, ascending


def _keyed(table, table_video, det, det_video, class_ids, num_videos):
    """Ground truth (table, with video codes table_video) and detections (det_video) as Instances
    and Detections, keys class * num_videos + video."""
    gt_start, gt_end = ordered_intervals(table['start'].to_numpy(), table['end'].to_numpy())
    gt_class = table['cls'].to_numpy(np.int64)
    gt_order = np.lexsort((np.arange(len(gt_class)), table_video, gt_class))
    instances = Instances(gt_start, gt_end, gt_class, np.bincount(gt_class, minlength=len(class_ids)), gt_order,
                          (gt_class * num_videos + table_video)[gt_order])
    det_class = class_index(det, class_ids)
    score = det['score'].to_numpy(np.float64)
    order = np.lexsort((np.arange(len(det)), -score, det_video, det_class))
    det_class, det_video, score = det_class[order], det_video[order], score[order]
    det_start, det_end = ordered_intervals(det['start'].to_numpy()[order], det['end'].to_numpy()[order])
    return instances, Detections(order, det_class, det_video, score, det_start, det_end,
                                 det_class * num_videos + det_video)


# ----------------------------------------------------------------------------
# the official kit

def evaluate_kit(result, gt_dir, thresholds=DEFAULT_THRESHOLDS, subset='test', return_pr=False, gt=None,
                 protocol=None):
    """Official THUMOS14 kit metric.

    result: path of a result file, or a DataFrame(video, start, end, class_id, score).
    Returns dict(metric='kit', thresholds, per_class {class id: [AP per threshold]},
    map [per threshold], 'map_avg_0.3_0.7', class_ids, class_names, counts...;
    with return_pr, pr[threshold index][class id] = (recall, precision) arrays).
    """
    thr = _thresholds(thresholds)
    gt = gt or read_ground_truth(gt_dir, subset, protocol)
    det = read_detections(result, gt)
    class_ids, num_classes = gt['class_ids'], len(gt['class_ids'])
    table, amb = gt['gt'], gt['ambiguous']
    (gt_video, amb_video, det_video), names = number_videos_by_name(table['video'], amb['video'], det['video'])
    num_det = len(det)
    inst, dets = _keyed(table, gt_video, det, det_video, class_ids, len(names))

    # Each ground-truth instance's candidates are the detections of its (class, video),
    # in the kit's order (its tie-break).
    item, d_idx = expand_ranges(*key_ranges(dets.key, inst.key))
    g_idx = inst.order[item]
    inter = np.minimum(inst.end[g_idx], dets.end[d_idx]) - np.maximum(inst.start[g_idx], dets.start[d_idx])
    keep = inter > 0  # IoU 0 never matches (strict >), so those pairs can go
    item, g_idx, d_idx, inter = item[keep], g_idx[keep], d_idx[keep], inter[keep]
    iou = inter / (np.maximum(inst.end[g_idx], dets.end[d_idx]) - np.minimum(inst.start[g_idx], dets.start[d_idx]))
    _, tp = greedy_match(item, d_idx, iou, inst.key, num_det, thr, strict=True)

    # A detection touching an Ambiguous interval of its video (any positive overlap) is
    # dropped unless it is a true positive.
    amb_order = np.argsort(amb_video, kind='stable')
    amb_start, amb_end = ordered_intervals(amb['start'].to_numpy()[amb_order], amb['end'].to_numpy()[amb_order])
    d_of, a_idx = expand_ranges(*key_ranges(amb_video[amb_order], dets.video))
    overlap = np.minimum(amb_end[a_idx], dets.end[d_of]) - np.maximum(amb_start[a_idx], dets.start[d_of]) > 0
    on_amb = np.bincount(d_of[overlap], minlength=num_det) > 0

    # Ranking: stable sort by score of the kept detections listed video by video,
    # i.e. score descending, then video name, then in-video order.
    rank = np.lexsort((np.arange(num_det), dets.video, -dets.score, dets.cls))
    aps = np.zeros((num_classes, len(thr)))
    curves = [] if return_pr else None
    for t in range(len(thr)):
        r = rank[tp[t, rank] | ~on_amb[rank]]
        cls, hit = dets.cls[r], tp[t, r]
        tp_cum, prec, rec = _precision_curves(cls, hit, inst.per_class)
        # bincount adds in rank order, exactly like the kit's loop.
        aps[:, t] = np.bincount(cls[hit], weights=prec[hit], minlength=num_classes)
        if return_pr:
            curves.append(_split_curves(cls, rec, prec, class_ids))
    npos = inst.per_class
    _warn_no_instances(npos, gt, 'kit')
    aps = np.where((npos == 0)[:, None], 0.0, aps / np.maximum(npos, 1)[:, None])
    info = dict(num_gt_instances=int(len(table)), num_gt_videos=int(len(np.unique(gt_video))),
                num_ambiguous=int(len(amb)), **_counts(gt, det))
    return _finish('kit', thr, aps, info, curves)


def _counts(gt, det):
    return dict(class_ids=gt['class_ids'].tolist(), class_names=list(gt['class_names']), num_detections=int(len(det)),
                num_unknown=int(det.attrs.get('num_unknown', 0)),
                num_unknown_video_detections=int(det.attrs.get('num_unknown_videos', 0)),
                protocol=gt.get('protocol'), num_left_out_detections=int(det.attrs.get('num_left_out', 0)))


def _split_curves(cls, rec, prec, class_ids):
    bounds = np.searchsorted(cls, np.arange(len(class_ids) + 1))
    return {cid: (rec[bounds[c]:bounds[c + 1]], prec[bounds[c]:bounds[c + 1]])
            for c, cid in enumerate(class_ids.tolist())}


def _warn_no_instances(npos, gt, metric):
    if (npos == 0).any():
        names = [gt['class_names'][c] for c in np.flatnonzero(npos == 0)]
        warnings.warn(f'{metric}: no ground-truth instances for {names}; their AP is 0', EvalWarning, stacklevel=3)


# ----------------------------------------------------------------------------
# ActivityNet style

def evaluate_anet(result, gt_dir, thresholds=DEFAULT_THRESHOLDS, subset='test', return_pr=False, gt=None,
                  protocol=None):
    """ActivityNet-style metric, as in ActionFormer / OpenTAD style evaluators.

    Per class, detections in score order (file order on ties) each take the
    not-yet-matched instance of their video with the highest IoU (first in file order
    on ties) if IoU >= threshold. IoU = inter / (len_a + len_b - inter). Ambiguous
    intervals are not used; repeated instances (same video, class and interval) count
    once. AP = area under the interpolated (monotone) precision-recall curve.
    Same arguments and returned dict as evaluate_kit, with metric='anet'.
    """
    thr = _thresholds(thresholds)
    gt = gt or read_ground_truth(gt_dir, subset, protocol)
    det = read_detections(result, gt)
    class_ids, num_classes = gt['class_ids'], len(gt['class_ids'])
    table = gt['gt'].drop_duplicates(['cls', 'video', 'start', 'end']).reset_index(drop=True)
    (gt_video, det_video), names = number_videos_by_name(table['video'], det['video'])
    inst, dets = _keyed(table, gt_video, det, det_video, class_ids, len(names))
    d_idx, pos = expand_ranges(*key_ranges(inst.key, dets.key))
    g_idx = inst.order[pos]
    inter = np.maximum(np.minimum(inst.end[g_idx], dets.end[d_idx]) - np.maximum(inst.start[g_idx], dets.start[d_idx]),
                       0)
    if thr.min() > 0:  # IoU 0 cannot reach a positive threshold, so those pairs can go
        keep = inter > 0
        d_idx, g_idx, inter = d_idx[keep], g_idx[keep], inter[keep]
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = np.nan_to_num(inter / ((inst.end[g_idx] - inst.start[g_idx]) + (dets.end[d_idx] - dets.start[d_idx])
                                     - inter), nan=0.0)
    hit, _ = greedy_match(d_idx, g_idx, iou, dets.key, len(inst.cls), thr, strict=False)

    rank = np.lexsort((dets.file_order, -dets.score, dets.cls))  # score descending, file order on ties
    npos = inst.per_class
    aps = np.zeros((num_classes, len(thr)))
    curves = [] if return_pr else None
    for t in range(len(thr)):
        tp = hit[t, rank]
        cls = dets.cls[rank]
        tp_cum, prec, rec = _precision_curves(cls, tp, npos)
        # Monotone envelope per class: running max from the end, kept inside each class
        # by an offset that grows along the reversed array (precision is within [0, 1]).
        rev = (prec + 2.0 * (num_classes - cls))[::-1]
        env = (np.maximum.accumulate(rev) - 2.0 * (num_classes - cls)[::-1])[::-1]
        step = (tp_cum / np.maximum(npos, 1)[cls]) - ((tp_cum - 1) / np.maximum(npos, 1)[cls])
        aps[:, t] = np.bincount(cls[tp], weights=(step * env)[tp], minlength=num_classes)
        if return_pr:
            curves.append(_split_curves(cls, rec, prec, class_ids))
    _warn_no_instances(npos, gt, 'anet')
    info = dict(num_gt_instances=int(len(table)), num_gt_videos=int(len(np.unique(gt_video))),
                num_duplicates_removed=int(len(gt['gt']) - len(table)), **_counts(gt, det))
    return _finish('anet', thr, aps, info, curves)


# The metrics by name: the command line's --metric, the plots and the diagnosis take theirs from here.
EVALUATORS = {'kit': evaluate_kit, 'anet': evaluate_anet}


def metrics_that_apply(gt):
    """The EVALUATORS the command line uses on a ground truth: every one on THUMOS14's classes,
    the ActivityNet-style metric alone on another dataset's. The kit's metric is THUMOS14's
    official number; evaluate_kit computes it on any classes (the diagnosis shows it), but a
    number called "the kit's" on another dataset would mislead."""
    if set(gt['class_names']) <= set(thumos14.THUMOS14_CLASSES.names):
        return tuple(EVALUATORS)
    return ('anet',)


def choose_metrics(requested, gt):
    """--metric (kit, anet, all / both, or None: the first that applies) -> the metrics to run;
    kit on another dataset's classes is a ValueError pointing at anet."""
    applies = metrics_that_apply(gt)
    if requested is None:
        return applies[:1]   # kit for THUMOS14, anet for another dataset
    if requested in ('all', 'both'):
        return applies
    if requested not in applies:
        names = list(gt['class_names'])
        raise ValueError(f'--metric {requested}: the kit metric is THUMOS14\'s (TH14evalDet, its 20 classes), but '
                         f'the ground truth {gt["gt_dir"]} has {len(names)} classes of another dataset '
                         f'({", ".join(names[:3])}{", ..." if len(names) > 3 else ""}): use --metric anet, the '
                         f'ActivityNet-style metric, which applies to any dataset')
    return (requested,)


def evaluate(result, gt_dir, thresholds=DEFAULT_THRESHOLDS, subset='test', metrics=('kit',), return_pr=False,
             protocol=None, gt=None):
    """Several metrics on one result, reading the files once -> {metric: result dict}. gt: the
    ground truth of gt_dir, subset and protocol when already read."""
    gt = gt or read_ground_truth(gt_dir, subset, protocol)
    det = read_detections(result, gt)
    return {m: EVALUATORS[m](det, gt_dir, thresholds, subset, return_pr=return_pr, gt=gt) for m in metrics}


# ----------------------------------------------------------------------------
# output

def format_table(res):
    """One metric's result dict -> text table: a row per class (name, id), a column per
    threshold (AP in %), then mAP per threshold and the mean over 0.3:0.1:0.7."""
    thr = res['thresholds']
    if res['metric'] == 'kit':
        counts = (f"{res['num_gt_instances']} instances in {res['num_gt_videos']} videos, "
                  f"{res['num_ambiguous']} Ambiguous intervals")
    else:
        counts = (f"{res['num_gt_instances']} instances in {res['num_gt_videos']} videos "
                  f"({res['num_duplicates_removed']} repeated instances removed, Ambiguous not used)")
    lines = [f"{METRIC_TITLES.get(res['metric'], res['metric'])}",
             f"ground truth: {counts}; {res['num_detections']} detections"
             + (f" ({res['num_unknown']} with unknown class ids ignored)" if res['num_unknown'] else ''),
             f"{'AP (%) at tIoU':<22}{'id':>4} " + ''.join(f'{t:>7.2g}' for t in thr)]
    for cid, name in zip(res['class_ids'], res['class_names']):
        lines.append(f'{name:<22}{cid:>4} ' + ''.join(f'{100 * a:7.2f}' for a in res['per_class'][cid]))
    lines.append(f"{'mAP':<27}" + ''.join(f'{100 * m:7.2f}' for m in res['map']))
    avg = res['map_avg_0.3_0.7']
    lines.append(f"{'mAP avg 0.3:0.1:0.7':<27}" + (f'{100 * avg:7.2f}' if avg is not None else '    n/a'))
    return '\n'.join(lines)


def to_json(res):
    """The JSON object of one metric: metric, thresholds, per_class, map, map_avg_0.3_0.7."""
    return {'metric': res['metric'], 'thresholds': list(res['thresholds']),
            'per_class': {str(cid): list(aps) for cid, aps in res['per_class'].items()},
            'map': list(res['map']), 'map_avg_0.3_0.7': res['map_avg_0.3_0.7']}


def write_json(results, path):
    """{metric: result} -> JSON file; one metric is written as its object, several under their names."""
    obj = to_json(next(iter(results.values()))) if len(results) == 1 else \
        {m: to_json(r) for m, r in results.items()}
    with fileio.atomic_open(path) as f:
        json.dump(obj, f, indent=1)
        f.write('\n')


def format_comparison(labels, results):
    """One row per result: mAP@0.5 and the mean over 0.3:0.1:0.7 of each metric, in %."""
    metrics = list(results[0])
    width = max(len(label) for label in labels) + 2
    head = ''.join(f'{m + " mAP@0.5":>14}{m + " avg 0.3:0.7":>18}' for m in metrics)
    lines = [f'{"":<{width}}{head}']
    for label, res in zip(labels, results):
        cells = []
        for m in metrics:
            thr, avg = res[m]['thresholds'], res[m]['map_avg_0.3_0.7']
            half = [v for t, v in zip(thr, res[m]['map']) if abs(t - 0.5) < 1e-9]
            cells.append(f'{100 * half[0]:14.2f}' if half else f'{"n/a":>14}')
            cells.append(f'{100 * avg:18.2f}' if avg is not None else f'{"n/a":>18}')
        lines.append(f'{label:<{width}}' + ''.join(cells))
    return '\n'.join(lines)


def describe_ground_truth(gt):
    """Which ground truth, and its counts (the protocol a number belongs to)."""
    kind = ('annotation JSON, no Ambiguous intervals: the kit metric drops no detection'
            if str(gt['gt_dir']).endswith('.json') else 'kit annotation folder')
    return (f'ground truth: {gt["gt_dir"]} ({gt["subset"]}; {kind}): {len(gt["gt"])} instances in '
            f'{gt["gt"]["video"].nunique()} videos, {len(gt["ambiguous"])} Ambiguous intervals')


def main(argv=None):
    parser = argparse.ArgumentParser(description='THUMOS14 detection evaluation (official kit and ActivityNet style)')
    parser.add_argument('result', nargs='+', help='result file(s): video start_s end_s class_id score per line')
    parser.add_argument('--labels', nargs='+', default=None, help='names of the result files in the comparison table')
    parser.add_argument('--gt', default=None, help='annotation folder or JSON (default: config eval_gt_dir, or '
                                                   'annotation_json with data_source=json)')
    parser.add_argument('--subset', default=None, help='test (default), or with data_source=json the JSON\'s '
                                                       'subsets (default: test_subsets)')
    parser.add_argument('--thresholds', type=float, nargs='+', default=list(DEFAULT_THRESHOLDS))
    parser.add_argument('--metric', choices=[*EVALUATORS, 'all', 'both'], default=None,
                        help='all (or both): every metric that applies (default: kit for THUMOS14, anet for '
                             'another dataset)')
    parser.add_argument('--protocol', default=None,
                        help=f'test videos: {", ".join(PROTOCOLS)}, or a file of video names, one a line '
                             f'(default: all for the kit\'s folder, actionformer for a JSON)')
    parser.add_argument('--json', default=None, help='write APs and mAPs here')
    parser.add_argument('--summary', action='store_true', help='print only the mAP rows, not the per-class table')
    parser.add_argument('--compare', action='store_true', help='several results: print only the comparison table')
    warnings.formatwarning = thumos14.format_warning
    try:
        cfg, args = config.parse_config(parser, argv)
        gt_dir = args.gt or config.get_eval_gt_path(cfg)
        args.subset = args.subset or (config.get_eval_subset(cfg) if str(gt_dir).endswith('.json') else 'test')
        metrics = tuple(EVALUATORS) if args.metric in ('all', 'both') else (args.metric,)
        labels = args.labels or args.result
        if len(labels) != len(args.result):
            raise ValueError(f'{len(args.result)} result files but {len(labels)} --labels')
        if args.json:
            if len(args.result) > 1:
                raise ValueError('--json takes one result file')
            fileio.check_writable(args.json)
        gt = read_ground_truth(gt_dir, args.subset, args.protocol)
        metrics = choose_metrics(args.metric, gt)
        every = [evaluate(r, gt_dir, args.thresholds, args.subset, metrics, gt=gt) for r in args.result]
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    for result, results in zip(args.result, [] if args.compare and len(every) > 1 else every):
        print(f'result: {result}  ground truth: {gt_dir} ({args.subset})')
        left_out = next(iter(results.values()))['num_left_out_detections']
        dropped = f'; {left_out} detections on the videos it leaves out dropped' if left_out else ''
        print(describe_protocol(gt) + dropped)
        for res in results.values():
            print()
            table = format_table(res)
            print('\n'.join(table.splitlines()[:3] + table.splitlines()[-2:]) if args.summary else table)
        print()
    if len(every) > 1:
        print(describe_ground_truth(gt))
        print(describe_protocol(gt))
        print(format_comparison(labels, every))
    if args.json:
        write_json(every[0], args.json)
        print(f'wrote {args.json}')
    return every[0] if len(every) == 1 else every


if __name__ == '__main__':
    main()
