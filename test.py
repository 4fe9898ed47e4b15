"""Run a trained checkpoint over every test window; write the predictions and the result files.

    python test.py --mode temporal --pretrain UCF101 --method decouple_ssad \\
        [--checkpoint PATH] [--features DIR] [--windows FILE] [--key=value ...]
    python test.py --predictions CSV --out TXT [--key=value ...]

The first form loads the checkpoint (default: the newest models/<run>/model-ep-<e>.pt),
which must have been trained on the data's classes (load_data.class_list), predicts every
window of the test list once (method.md §9) and writes results/predict_<run>.csv (one row
per anchor per window), the post-processed results/result_<run>.txt (method.md §10; THUMOS14's
class ids, or the data's with their class list beside it in result_<run>.classes.txt, and
likewise predict_<run>.classes.txt) and the same detections as the ActivityNet-style
results/result_<run>.json. --features takes a feature folder of any layout
load_data reads (0.npy ... per window, packed.npy, <video>.npy) or a packed [W, 128, D]
.npy file; --windows a window_info.log. The second form re-post-processes an existing
predictions file (of the classes listed beside it, else THUMOS14's) without a model.
"""
import argparse
import os
import time

import numpy as np

import classes
import config
import load_data
import postprocess
import predictions
import thumos14
from fileio import check_writable
from sliding_windows import read_window_info

# torch and the model modules are imported inside the functions that run a model: the
# --predictions path needs none of them, and torch alone takes over a second to import.


def newest_checkpoint(cfg):
    """models/<run>/model-ep-<e>.pt with the largest e; ValueError when there is none."""
    import checkpoints
    run_dir = config.get_models_dir(cfg)
    found = checkpoints.list_checkpoints(run_dir)
    if not found:
        raise ValueError(f'no checkpoint model-ep-<epoch>.pt in {run_dir}: train this run first '
                         f'(python train.py --mode {cfg.mode} --pretrain {cfg.pretrain} --method {cfg.method}) '
                         f'or give --checkpoint')
    return found[-1][1]


def predict_windows(model, features, starts, videos, cfg, batch_size=None):
    """The predictions table (method.md §2 columns, one row per anchor per window) of every window, once (method.md §9).

    features [W, 128, D] (numpy, memory-mapped or not, or a tensor); starts [W] window start
    frames; videos [W] names. Runs in batches on the model's device without gradients.
    xmin, xmax: window-normalised * window_size, cut to the window as the release does
    (xmin = max(xmin, 0), xmax = min(xmax, window_size)), plus the window start.
    """
    import torch

    import operations
    starts = np.asarray(starts, np.int64)
    videos = np.asarray(videos, dtype=object)
    if not (len(features) == len(starts) == len(videos)):
        raise ValueError(f'{len(features)} feature windows, {len(starts)} starts and {len(videos)} videos: '
                         f'the window list and the features do not belong together')
    device = next(model.parameters()).device
    operations.set_precision(cfg)
    bs = batch_size or cfg.test_batch_size
    was_training = model.training
    model.eval()
    parts = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        for i in range(0, len(features), bs):
            # Sent as stored (float16 / float32 / float64 as released) and made float32 on the
            # device: no conversion pass on the host. A copy, as the features may be a read-only map.
            batch = features[i:i + bs] if torch.is_tensor(features) else torch.from_numpy(
                np.array(features[i:i + bs]))
            x = batch.to(device, non_blocking=True).float()
            p = operations.predict(model(x), cfg)
            parts.append(torch.cat([p['class_prob'], p['conf'][..., None], p['xmin'][..., None],
                                    p['xmax'][..., None]], -1).float())
    model.train(was_training)
    out = torch.cat(parts).cpu().numpy() if parts else np.zeros((0, 0, cfg.num_classes + 3), np.float32)
    check_finite_predictions(out, starts, videos, features)
    w, a = out.shape[:2]
    k = cfg.num_classes
    size = np.float32(cfg.window_size)
    # float32 like the release, then the integer window start added in float64.
    xmin = np.maximum(out[..., k + 1] * size, np.float32(0)).astype(np.float64) + starts[:, None]
    xmax = np.minimum(out[..., k + 2] * size, size).astype(np.float64) + starts[:, None]
    return predictions.predictions_frame(dict(
        video_name=np.repeat(videos, a), start=np.repeat(starts, a),
        conf=out[..., k].reshape(-1).astype(np.float64), xmin=xmin.reshape(-1), xmax=xmax.reshape(-1),
        scores=out[..., :k].reshape(w * a, k).astype(np.float64)), anchors_per_window=a)


def check_finite_predictions(out, starts, videos, features):
    """ValueError naming the first window whose outputs hold NaN or inf. Post-processing would
    drop such anchors without a word (NaN fails every threshold), so a broken model or feature
    file would give a quietly empty or thinner result."""
    import torch
    bad = np.flatnonzero(~np.isfinite(out.reshape(len(out), -1)).all(1)) if out.size else []
    if len(bad):
        i = int(bad[0])
        window = features[i] if not torch.is_tensor(features) else features[i].cpu().numpy()
        cause = ('its features hold NaN or inf' if not np.isfinite(np.asarray(window, np.float64)).all()
                 else 'its features are finite, so the model is at fault')
        raise ValueError(f'window {i} ({videos[i]}, start frame {starts[i]}): the predictions are not finite '
                         f'({cause}); {len(bad)} of {len(out)} windows are affected. Check the features '
                         f'and the checkpoint; no output was written')


def load_windows_and_features(cfg, features=None, windows=None):
    """dict(features, starts, videos) of the test split, with the optional overrides of the command line."""
    if windows is not None and not os.path.isfile(windows):
        raise ValueError(f'window list {windows} not found')
    if features is not None and os.path.isfile(features):
        # A packed [W, 128, D] array given as a file.
        starts, videos = read_window_info(
            windows or os.path.join(cfg.data_dir, cfg.test_split_set, 'window_info.log'))
        try:
            packed = np.load(features, mmap_mode='r', allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f'{features}: cannot read as .npy: {err}') from None
        if packed.ndim != 3 or packed.shape[0] != len(starts) or packed.shape[1] != cfg.input_steps:
            raise ValueError(f'{features}: shape {list(packed.shape)} does not fit the window list '
                             f'({len(starts)} windows of {cfg.input_steps} steps)')
        if packed.dtype.kind != 'f':
            raise ValueError(f'{features}: features must be floating point, got {packed.dtype}')
        return dict(features=packed, starts=starts, videos=videos)
    if features is not None and not os.path.isdir(features):
        raise ValueError(f'features {features} not found (a feature folder or a packed .npy file)')
    return load_data.load_test_data(cfg, windows=windows, features=features)


def run_test(cfg, checkpoint=None, features=None, windows=None, predict_path=None, result_path=None, log=print):
    """Checkpoint -> predictions CSV -> result files. Returns (predictions DataFrame, detections DataFrame).

    Every check (checkpoint, method, classes, feature width, data, output folder) happens
    before anything is written; every output is written atomically.
    """
    import checkpoints
    import operations
    config.check_config(cfg)
    class_list = load_data.class_list(cfg)
    cfg = config.with_classes(cfg, class_list)
    predict_path = predict_path or config.get_predict_result_path(cfg)
    result_path = result_path or config.get_result_path(cfg)
    json_path = config.get_results_json_path(result_path)
    for path in (predict_path, result_path, json_path):
        check_writable(path)
    checkpoint = checkpoint or newest_checkpoint(cfg)
    if not os.path.isfile(checkpoint):
        raise ValueError(f'checkpoint {checkpoint} not found')
    device = operations.resolve_device(cfg.device)
    fps_of = thumos14.video_fps(cfg.fps_file)  # a bad fps table fails now, not after the model ran

    t0 = time.time()
    data = load_windows_and_features(cfg, features, windows)
    feats = data['features']
    model, ckpt = checkpoints.load_model(checkpoint, cfg, device, feature_dim=feats.shape[2], class_list=class_list)
    log(f'{len(data["starts"])} test windows ({feats.shape[2]}-d features) loaded in {time.time() - t0:.1f} s; '
        f'model {checkpoint} (epoch {ckpt.get("epoch", "?")}) on {device}')

    t0 = time.time()
    pred = predict_windows(model, feats, data['starts'], data['videos'], cfg)
    log(f'predicted {len(pred):,} anchors in {time.time() - t0:.1f} s')
    det = postprocess.post_process(pred, cfg, fps_of, class_list=class_list)
    write_outputs(predict_path, pred, result_path, det, class_list, json_path)
    log(f'wrote {predict_path}, {result_path} and {json_path} ({len(det):,} detections of '
        f'{classes.brief(class_list)})')
    return pred, det


def write_outputs(predict_path, pred, result_path, det, class_list=thumos14.THUMOS14_CLASSES, json_path=None):
    """Predictions CSV, then the result files derived from it (the result file, its class list
    for classes other than THUMOS14's, the results JSON), so that a reader never finds a pair
    from two different runs: the old results go first. Each file is written atomically, so a
    failure (disk full between the two) leaves the new predictions without a result or the old
    predictions without one, never a result that belongs to other predictions."""
    try:
        for path in (result_path, json_path):
            if path and os.path.lexists(path):
                os.remove(path)
    except OSError as err:
        raise ValueError(f'cannot replace {path}: {err.strerror or err}') from None
    try:
        predictions.write_predictions(predict_path, pred, class_list)
    except ValueError as err:
        raise ValueError(f'{err}; the old {result_path} was removed, as it would not match') from None
    try:
        classes.write_beside(result_path, class_list, implied=thumos14.THUMOS14_CLASSES)
        thumos14.write_results(result_path, det)
        if json_path:
            postprocess.write_results_json(json_path, det, class_list)
    except ValueError as err:
        raise ValueError(f'{err}; {predict_path} holds this run\'s predictions: rerun with '
                         f'--predictions {predict_path} to write the result') from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--mode', default=None, help='temporal | spatial | concat (both streams in one network)')
    parser.add_argument('--pretrain', default=None, help='feature set name, e.g. UCF101 | KnetV3')
    parser.add_argument('--method', default=None, help='main_stream | decouple_ssad')
    parser.add_argument('--checkpoint', default=None, help='default: newest models/<run>/model-ep-<e>.pt')
    parser.add_argument('--features', default=None, help='feature folder or packed .npy of the test windows')
    parser.add_argument('--windows', default=None, help='window_info.log of the test windows')
    parser.add_argument('--predictions', default=None, help='re-post-process this predictions CSV (no model)')
    parser.add_argument('--out', default=None, help='result file (default results/result_<run>.txt)')
    try:
        cfg, args = config.parse_config(parser, argv)
        if args.predictions:
            if args.checkpoint or args.features or args.windows:
                raise ValueError('--predictions re-post-processes a file; it takes no --checkpoint, '
                                 '--features or --windows')
            out = args.out or config.get_result_path(cfg)
            json_path = config.get_results_json_path(out)
            check_writable(out)
            check_writable(json_path)
            with postprocess.small_pages():
                det = postprocess.process_file(args.predictions, out, cfg, thumos14.video_fps(cfg.fps_file),
                                               json_path)
            print(f'wrote {out} and {json_path} ({len(det):,} detections from {args.predictions})')
        else:
            import torch
            torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
            run_test(cfg, args.checkpoint, args.features, args.windows, result_path=args.out)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None


if __name__ == '__main__':
    main()
