"""Detect actions in one video with trained checkpoints, in one command.

    python detect.py VIDEO --checkpoint T.pt [--checkpoint-spatial S.pt] [--out DIR] \
        [--backbone resnet50|tiny] [--weights PATH] [--weights-temporal PATH] [--key=value ...]

1. extracts the video's features with data/extract_features.py (the same code and
   backbone options; the backbone must be the one the checkpoints were trained on),
   into DIR/features/detect/<mode>DataX<pretrain>/ (a rerun reuses them);
2. slides the test windows over it (SPEC 3: stride 256 frames, one end-aligned window,
   one padded window for a short video);
3. runs each checkpoint's model over the windows -> DIR/predict_<mode>.csv;
4. post-processes (SPEC 10), fusing the two streams first when --checkpoint-spatial is
   given (SPEC 11; --checkpoint is then the temporal stream);
5. writes DIR/detections.txt (THUMOS14 result format, seconds), DIR/detections.json
   (class names, seconds, scores, best first) and DIR/timeline.png. Detections are
   cut at the video's end (its last window may reach past it, padded).

The model settings come from the config saved in the checkpoint; --key=value overrides
them (e.g. --nms_threshold=0.3, --device=cpu). DIR defaults to results/detect/<video>.
"""
import argparse
import json
import os
import sys
from dataclasses import fields


import config as C
import load_data
import postprocess
from config import Config, apply_overrides, parse_config
from data import extract_features as ef
from fig.visualize import plot_timeline
from fileio import atomic_open
from operations import load_model, read_checkpoint
from test import predict_windows

SPLIT = 'detect'   # feature folder of the videos given to detect.py


def checkpoint_config(path, overrides, feature_dim, backbone):
    """The config a checkpoint was trained with, then the command line's overrides; checks the feature width."""
    try:
        ckpt = read_checkpoint(path)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    if not isinstance(ckpt, dict) or 'feature_dim' not in ckpt:
        raise SystemExit(f'error: {path} is not a checkpoint of this project (no feature_dim)')
    if int(ckpt['feature_dim']) != feature_dim:
        raise SystemExit(f'error: checkpoint {path} was trained on {ckpt["feature_dim"]}-d features, but backbone '
                         f'{backbone!r} gives {feature_dim}-d features; use the backbone (and weights) the '
                         f'training features were extracted with')
    saved = ckpt.get('config') or {}
    known = {f.name for f in fields(Config)}
    try:
        cfg = C.config_from_dict({k: v for k, v in saved.items() if k in known})
    except (ValueError, TypeError) as err:
        raise SystemExit(f'error: checkpoint {path}: bad saved config: {err}') from None
    if 'method' in ckpt:
        cfg.method = ckpt['method']
    return apply_overrides(cfg, overrides)


def load_stream(path, cfg, feature_dim, device):
    try:
        model, _ = load_model(path, cfg, device, feature_dim=feature_dim)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    return model.eval()


def detections_json(det, name, info, streams, checkpoints):
    det = det.sort_values('score', ascending=False, kind='stable')
    names = det['class_id'].map(C.CLASS_NAME_OF_ID)
    return dict(video=name, fps=info['fps'], frame_num=info['frame_num'],
                duration_s=info['frame_num'] / info['fps'], streams=streams, checkpoints=checkpoints,
                detections=[dict(label=n, class_id=int(c), start=round(float(s), 3), end=round(float(e), 3),
                                 score=round(float(p), 4))
                            for n, c, s, e, p in zip(names, det['class_id'], det['start'], det['end'],
                                                     det['score'])])


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
    cfg0, args = parse_config(parser, argv)
    overrides = parser.parse_known_args(argv)[1]
    if not os.path.isfile(args.video):
        raise SystemExit(f'error: video {args.video} not found')
    name = ef.video_name(args.video)
    out = args.out or os.path.join('results', 'detect', name)
    device = ef.resolve_device(cfg0.device)
    dim = ef.BACKBONE_DIMS[args.backbone]

    # Checkpoints first: a wrong one should fail before minutes of extraction.
    cfg = checkpoint_config(args.checkpoint, overrides, dim, args.backbone)
    paths = {cfg.mode: args.checkpoint}
    cfgs = {cfg.mode: cfg}
    if args.checkpoint_spatial:
        if cfg.mode != 'temporal':
            raise SystemExit(f'error: --checkpoint {args.checkpoint} holds a {cfg.mode}-stream model; with '
                             f'--checkpoint-spatial it must be the temporal (optical-flow) stream')
        cfgs['spatial'] = checkpoint_config(args.checkpoint_spatial, overrides, dim, args.backbone)
        if cfgs['spatial'].mode != 'spatial':
            raise SystemExit(f'error: --checkpoint-spatial {args.checkpoint_spatial} holds a '
                             f'{cfgs["spatial"].mode}-stream model, not a spatial (RGB) one')
        paths['spatial'] = args.checkpoint_spatial
    runs = {m: (load_stream(paths[m], cfgs[m], dim, device), cfgs[m], paths[m]) for m in sorted(cfgs)}

    pretrain = args.pretrain or args.backbone
    feat_root = os.path.join(out, 'features')
    info, failures = ef.extract_all([args.video], feat_root, SPLIT, pretrain, sorted(runs),
                                    **ef.backbone_kwargs(args, cfg0))
    if failures:
        raise SystemExit(f'error: cannot extract features of {args.video}: {failures[args.video]}')
    row = info[info.video == name].iloc[0]
    vinfo = dict(fps=float(row.fps), frame_num=int(row.frame_num))

    anno = load_data.pd.DataFrame({'video': [name], 'frame_num': [vinfo['frame_num']]})
    preds = {}
    for mode, (model, scfg, ckpt_path) in runs.items():
        starts, videos = load_data.make_windows(anno, False, scfg)
        feats = load_data.load_features(scfg, SPLIT, starts, videos, mode=mode,
                                        folder=ef.feature_dir(feat_root, SPLIT, mode, pretrain))
        preds[mode] = predict_windows(model, feats, starts, videos, scfg)
        postprocess.write_predictions(os.path.join(out, f'predict_{mode}.csv'), preds[mode])
        print(f'{mode}: {len(starts)} windows predicted with {ckpt_path}')

    fps_of = {name: vinfo['fps']}
    if len(preds) == 2:
        fused = postprocess.fuse_predictions(preds['temporal'], preds['spatial'], cfg)
        det = postprocess.post_process(fused, cfg, fps_of, fused=True)
    else:
        det = postprocess.post_process(preds[cfg.mode], cfg, fps_of)
    # A short video's window runs past its end (padded with the last step): keep what lies inside the video.
    duration = vinfo['frame_num'] / vinfo['fps']
    det = det[det['start'] < duration].assign(end=lambda d: d['end'].clip(upper=duration))
    det = det.sort_values(['score', 'start'], ascending=[False, True], kind='stable').reset_index(drop=True)

    postprocess.write_results(os.path.join(out, 'detections.txt'), det)
    doc = detections_json(det, name, vinfo, sorted(runs), {m: r[2] for m, r in runs.items()})
    with atomic_open(os.path.join(out, 'detections.json')) as f:
        json.dump(doc, f, indent=1)
    plot_timeline(det, None, videos=[name], out=os.path.join(out, 'timeline.png'), top=30,
                  duration=doc['duration_s'])
    best = ', '.join(f'{d["label"]} {d["start"]:.1f}-{d["end"]:.1f}s ({d["score"]:.2f})'
                     for d in doc['detections'][:3])
    print(f'{len(det)} detections in {name} ({doc["duration_s"]:.1f} s){": " + best if best else ""}')
    print(f'wrote {out}/detections.txt, detections.json, timeline.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
