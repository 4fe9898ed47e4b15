"""Detect actions in one video with trained checkpoints, in one command.

    python detect.py VIDEO --checkpoint T.pt [--checkpoint-spatial S.pt] [--out DIR] \
        [--backbone i3d|s3d|...|resnet50|tiny] [--weights PATH] [--weights-temporal PATH] [--key=value ...]

1. extracts the video's features with data/extract_features.py (the same code and
   backbone options; the backbone must be the one the checkpoints were trained on),
   into DIR/features/detect/<mode>DataX<pretrain>/ (a rerun reuses them);
2. slides the test windows over it (method.md §3: stride 256 frames, one end-aligned window,
   one padded window for a short video);
3. runs each checkpoint's model over the windows -> DIR/predict_<mode>.csv;
4. post-processes (method.md §10), fusing the two streams first when --checkpoint-spatial is
   given (method.md §11; --checkpoint is then the temporal stream);
5. writes DIR/detections.txt (THUMOS14 result format, seconds; for classes other than
   THUMOS14's their ids, and their class list in DIR/detections.classes.txt), DIR/detections.json
   (class names, seconds, scores, best first) and DIR/timeline.png. Detections are
   cut at the video's end (its last window may reach past it, padded).

The model settings and classes come from the checkpoint (its saved config and class list;
one without a class list is THUMOS14's); two checkpoints must have the same classes.
--key=value overrides the settings (e.g. --nms_threshold=0.3, --device=cpu). DIR defaults to
results/detect/<video>.
"""
import argparse
import json
import os
import sys
from dataclasses import fields


import checkpoints
import classes
import config
import fuse
import load_data
import operations
import postprocess
import predictions
import thumos14
from data import extract_features as ef
from fig.visualize import plot_timeline
from fileio import atomic_open
from test import predict_windows

SPLIT = 'detect'   # feature folder of the videos given to detect.py


def checkpoint_config(path, overrides, feature_dim, backbone):
    """(The config a checkpoint was trained with, then the command line's overrides; its classes);
    checks that the checkpoint fits them and the backbone's feature width (ValueError otherwise)."""
    ckpt = checkpoints.read_checkpoint(path)
    class_list = checkpoints.checkpoint_classes(ckpt, path)
    saved = checkpoints.saved_settings(ckpt)
    known = {f.name for f in fields(config.Config)}
    try:
        cfg = config.config_from_dict({k: v for k, v in saved.items() if k in known})
    except (ValueError, TypeError) as err:
        raise ValueError(f'checkpoint {path}: bad saved config: {err}') from None
    if isinstance(ckpt, dict) and 'method' in ckpt:
        cfg.method = ckpt['method']
    cfg = config.with_classes(config.apply_overrides(cfg, overrides), class_list)
    try:
        checkpoints.check_checkpoint(ckpt, path, cfg, feature_dim, features=f'backbone {backbone!r}')
    except ValueError as err:
        raise ValueError(f'{err}; use the backbone (and weights) the training features were extracted with') \
            from None
    return cfg, class_list


def load_stream(path, cfg, feature_dim, device):
    model, _ = checkpoints.load_model(path, cfg, device, feature_dim=feature_dim)
    return model.eval()


def detections_json(det, name, info, streams, checkpoints, class_list):
    det = det.sort_values('score', ascending=False, kind='stable')
    names = det['class_id'].map(class_list.name_of_id())
    return dict(video=name, fps=info['fps'], frame_num=info['frame_num'],
                duration_s=info['frame_num'] / info['fps'], streams=streams, checkpoints=checkpoints,
                detections=[dict(label=n, class_id=int(c), start=round(float(s), 3), end=round(float(e), 3),
                                 score=round(float(p), 4))
                            for n, c, s, e, p in zip(names, det['class_id'], det['start'], det['end'],
                                                     det['score'])])


def load_runs(args, overrides, dim, device):
    """({mode: (model, cfg, checkpoint path)} of the one or two streams asked for, the config of
    the first, their classes); two checkpoints of different classes are refused."""
    cfg, class_list = checkpoint_config(args.checkpoint, overrides, dim, args.backbone)
    paths, cfgs = {cfg.mode: args.checkpoint}, {cfg.mode: cfg}
    if args.checkpoint_spatial:
        if cfg.mode != 'temporal':
            raise ValueError(f'--checkpoint {args.checkpoint} holds a {cfg.mode}-stream model; with '
                             f'--checkpoint-spatial it must be the temporal (optical-flow) stream')
        cfgs['spatial'], spatial_classes = checkpoint_config(args.checkpoint_spatial, overrides, dim, args.backbone)
        classes.check_same(class_list, spatial_classes, f'--checkpoint {args.checkpoint}',
                           f'--checkpoint-spatial {args.checkpoint_spatial}')
        if cfgs['spatial'].mode != 'spatial':
            raise ValueError(f'--checkpoint-spatial {args.checkpoint_spatial} holds a '
                             f'{cfgs["spatial"].mode}-stream model, not a spatial (RGB) one')
        paths['spatial'] = args.checkpoint_spatial
    runs = {m: (load_stream(paths[m], cfgs[m], dim, device), cfgs[m], paths[m]) for m in sorted(cfgs)}
    return runs, cfg, class_list


def detect(runs, cfg, name, vinfo, feat_root, pretrain, out, class_list=thumos14.THUMOS14_CLASSES):
    """Windows, predictions of each stream (written as DIR/predict_<mode>.csv), fusion and
    post-processing -> detections inside the video, best first."""
    preds = {}
    for mode, (model, scfg, ckpt_path) in runs.items():
        data = load_data.load_video_data(scfg, name, vinfo['frame_num'],
                                         thumos14.feature_folder(feat_root, SPLIT, mode, pretrain))
        starts, videos = data['starts'], data['videos']
        preds[mode] = predict_windows(model, data['features'], starts, videos, scfg)
        predictions.write_predictions(os.path.join(out, f'predict_{mode}.csv'), preds[mode], class_list)
        print(f'{mode}: {len(starts)} windows predicted with {ckpt_path}')
    fps_of = {name: vinfo['fps']}
    if len(preds) == 2:
        fused = fuse.fuse_predictions(preds['temporal'], preds['spatial'], cfg)
        det = postprocess.post_process(fused, cfg, fps_of, fused=True, class_list=class_list)
    else:
        det = postprocess.post_process(preds[cfg.mode], cfg, fps_of, class_list=class_list)
    # A short video's window runs past its end (padded with the last step): keep what lies inside the video.
    duration = vinfo['frame_num'] / vinfo['fps']
    det = det[det['start'] < duration].assign(end=lambda d: d['end'].clip(upper=duration))
    return det.sort_values(['score', 'start'], ascending=[False, True], kind='stable').reset_index(drop=True)


def write_outputs(det, name, vinfo, runs, out, class_list=thumos14.THUMOS14_CLASSES):
    classes.write_beside(os.path.join(out, 'detections.txt'), class_list, implied=thumos14.THUMOS14_CLASSES)
    thumos14.write_results(os.path.join(out, 'detections.txt'), det)
    doc = detections_json(det, name, vinfo, sorted(runs), {m: r[2] for m, r in runs.items()}, class_list)
    with atomic_open(os.path.join(out, 'detections.json')) as f:
        json.dump(doc, f, indent=1)
    plot_timeline(det, None, videos=[name], out=os.path.join(out, 'timeline.png'), top=30,
                  duration=doc['duration_s'], class_list=class_list)
    return doc


def run(args, overrides, cfg0):
    if not os.path.isfile(args.video):
        raise ValueError(f'video {args.video} not found')
    name = ef.video_name(args.video)
    out = args.out or os.path.join('results', 'detect', name)
    device = operations.resolve_device(cfg0.device)
    dim = ef.BACKBONE_DIMS[args.backbone]
    # Checkpoints first: a wrong one should fail before minutes of extraction.
    runs, cfg, class_list = load_runs(args, overrides, dim, device)
    pretrain = args.pretrain or args.backbone
    feat_root = os.path.join(out, 'features')
    info, failures = ef.extract_all([args.video], feat_root, SPLIT, pretrain, sorted(runs),
                                    **ef.backbone_kwargs(args, cfg0))
    if failures:
        raise ValueError(f'cannot extract features of {args.video}: {failures[args.video]}')
    row = info[info.video == name].iloc[0]
    vinfo = dict(fps=float(row.fps), frame_num=int(row.frame_num))
    det = detect(runs, cfg, name, vinfo, feat_root, pretrain, out, class_list)
    doc = write_outputs(det, name, vinfo, runs, out, class_list)
    best = ', '.join(f'{d["label"]} {d["start"]:.1f}-{d["end"]:.1f}s ({d["score"]:.2f})'
                     for d in doc['detections'][:3])
    print(f'{len(det)} detections in {name} ({doc["duration_s"]:.1f} s){": " + best if best else ""}')
    print(f'wrote {out}/detections.txt, detections.json, timeline.png')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('video', help='the video file')
    parser.add_argument('--checkpoint', required=True,
                        help='model checkpoint (the temporal stream when --checkpoint-spatial is given)')
    parser.add_argument('--checkpoint-spatial', default=None, help='spatial-stream checkpoint: fuse both streams')
    parser.add_argument('--out', default=None, help='output folder (default results/detect/<video>)')
    parser.add_argument('--pretrain', default=None,
                        help='feature folder name <mode>DataX<pretrain> (default: backbone)')
    ef.add_backbone_args(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cfg0, args = config.parse_config(parser, argv)
        run(args, parser.parse_known_args(argv)[1], cfg0)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    return 0


if __name__ == '__main__':
    sys.exit(main())
