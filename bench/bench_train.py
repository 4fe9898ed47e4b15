"""Speed of training, inference and post-processing on a THUMOS14-sized synthetic set.

    python bench/bench_train.py                           # GPU: 4741 / 5103 windows, D = 2048, as THUMOS14
    python bench/bench_train.py --device cpu --windows 96 --test-windows 96 --dim 1024 --epochs 2
    python bench/bench_train.py --variants fp32,bf16+cl+group --methods decouple_ssad --json out.json

Training runs the real training code (train.train) on random features that sit on
the device, batch 48, and reports the windows/s of the last epoch (the first one
pays for warm-up: cuDNN autotuning, graph capture, torch.compile), the projected
time of the paper's 31 epochs, the arithmetic rate (from the network's FLOP count)
and peak GPU memory. Inference runs test.predict_windows over the test windows:
the network alone, then with the predictions table; post-processing runs
postprocess.post_process on its output. Checkpoints are not written (that is disk
speed, not training speed).

A variant is switches joined by '+': fp32 (the defaults: float32, CUDA graph),
eager (no CUDA graph), tf32, bf16, cl (channels_last), group (group_branches),
heur (cuDNN's heuristics instead of autotuning), compile. A measurement that fails
is reported and the others go on.
"""
import os
import sys

if __package__ in (None, ''):  # run as a script: the repository's modules live one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import checkpoints  # noqa: E402
import config  # noqa: E402
import operations  # noqa: E402
import postprocess  # noqa: E402
import test  # noqa: E402
import thumos14  # noqa: E402
import train  # noqa: E402

SWITCHES = {'fp32': {}, 'eager': {'cuda_graph': False}, 'tf32': {'tf32': True}, 'bf16': {'bf16': True},
            'cl': {'channels_last': True}, 'group': {'group_branches': True}, 'compile': {'compile': True},
            'heur': {'cudnn_benchmark': False}}


def variant_switches(variant):
    """'bf16+cl' -> {'bf16': True, 'channels_last': True}; ValueError naming an unknown switch."""
    values = {}
    for token in variant.split('+'):
        if token not in SWITCHES:
            raise ValueError(f'unknown switch {token!r} in variant {variant!r}; known: {", ".join(SWITCHES)}')
        values.update(SWITCHES[token])
    return values


def flops_per_window(cfg, dim):
    """FLOPs of one window's forward and backward pass through the network (counted on shapes only)."""
    with torch.device('meta'):
        model = checkpoints.build_model(cfg, dim)
        x = torch.randn(cfg.batch_size, cfg.input_steps, dim)
    with FlopCounterMode(display=False) as counter:
        sum(v.sum() for v in model(x).values()).backward()
    return counter.get_total_flops() / cfg.batch_size


def synthetic_set(num_windows, dim, cfg, device, seed=0):
    """Random features on the device and 1-3 random ground-truth boxes per window."""
    features = torch.randn(num_windows, cfg.input_steps, dim, device=device,
                           generator=torch.Generator(device).manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    m = 3
    start = torch.rand(num_windows, m, generator=g) * 0.8
    length = 0.02 + torch.rand(num_windows, m, generator=g) * 0.3
    gt_box = torch.stack([start, (start + length).clamp(max=1.0)], -1)
    gt_valid = torch.arange(m)[None, :] < torch.randint(1, m + 1, (num_windows, 1), generator=g)
    gt_label = torch.randint(1, cfg.num_classes, (num_windows, m), generator=g) * gt_valid
    return {'features': features, 'gt_label': gt_label.to(device), 'gt_box': gt_box.to(device),
            'gt_valid': gt_valid.to(device)}


def bench_training(cfg, data, device, flops):
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    result = train.train(cfg, fresh=True, data=data, progress=False)
    total = time.time() - t0
    speed = result['windows_per_s']
    epoch_s = len(data['features']) / speed
    return {'windows_per_s': round(speed, 3), 'epoch_s': round(epoch_s, 2),
            'first_epoch_s': round(result['epoch_seconds'][0], 2),
            'projected_31_epochs_s': round(31 * epoch_s, 1), 'measured_total_s': round(total, 1),
            'tflop_per_s': round(speed * flops / 1e12, 2),
            'peak_gpu_mem_gib': round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
            if device.type == 'cuda' else None}


def synced_time(fn, device):
    if device.type == 'cuda':
        torch.cuda.synchronize()
    t0 = time.time()
    out = fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return out, time.time() - t0


def bench_inference(cfg, dim, num_windows, device):
    model = checkpoints.build_model(cfg, dim).to(device)
    features = torch.randn(num_windows, cfg.input_steps, dim, device=device)
    starts = np.arange(num_windows) * 256
    videos = np.array([f'video_test_{i // 20:07d}' for i in range(num_windows)])

    def network():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            for i in range(0, num_windows, cfg.test_batch_size):
                operations.predict(model(features[i:i + cfg.test_batch_size]), cfg)

    operations.set_precision(cfg)
    model.eval()
    synced_time(network, device)  # warm-up: cuDNN autotuning
    _, network_s = synced_time(network, device)
    pred, infer_s = synced_time(lambda: test.predict_windows(model, features, starts, videos, cfg), device)
    t0 = time.time()
    detections = postprocess.post_process(pred, cfg, thumos14.FpsTable())
    post_s = time.time() - t0
    return {'network_s': round(network_s, 3), 'inference_s': round(infer_s, 3), 'windows': num_windows,
            'rows': len(pred), 'postprocess_s': round(post_s, 3), 'detections': len(detections)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--windows', type=int, default=4741, help='training windows (THUMOS14: 4741)')
    parser.add_argument('--test-windows', type=int, default=5103, help='test windows (THUMOS14: 5103)')
    parser.add_argument('--dim', type=int, default=2048, help='feature dimension D')
    parser.add_argument('--epochs', type=int, default=2, help='epochs per measurement (the last one is timed)')
    parser.add_argument('--methods', default='decouple_ssad,main_stream')
    parser.add_argument('--variants', default='eager,fp32,tf32,bf16,bf16+cl,bf16+cl+heur',
                        help='training variants, switches joined by +')
    parser.add_argument('--test-variants', default='fp32,bf16+cl', help='inference variants')
    parser.add_argument('--budget', type=float, default=0, help='seconds; start no measurement after (0: none)')
    parser.add_argument('--json', default=None, help='also write the figures here')
    parser.add_argument('--compare', action='store_true',
                        help='end with a table of each variant against the first (e.g. --variants fp32,bf16)')
    try:
        cfg0, args = config.parse_config(parser)
        train_variants, test_variants = args.variants.split(','), args.test_variants.split(',')
        for variant in train_variants + test_variants:
            variant_switches(variant)
        device = operations.resolve_device(cfg0.device)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    print(f'device {device} ({torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"}, '
          f'{torch.get_num_threads()} threads), torch {torch.__version__}', flush=True)

    figures = {'device': str(device), 'windows': args.windows, 'dim': args.dim, 'train': {}, 'test': {}}
    tmp = tempfile.mkdtemp(prefix='bench_')
    start = time.time()

    def measure(kind, method, variant, fn):
        if args.budget and time.time() - start > args.budget:
            print(f'{kind:5s} {method:13s} {variant:15s} skipped: past --budget', flush=True)
            return None
        try:
            out = fn()
        except Exception as err:  # noqa: BLE001 - report and go on with the other measurements
            traceback.print_exc()
            print(f'{kind:5s} {method:13s} {variant:15s} FAILED: {type(err).__name__}: {err}', flush=True)
            return None
        figures[kind][f'{method} {variant}'] = out
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(figures, f, indent=1)
        return out

    for method in args.methods.split(','):
        cfg_m = config.Config(**{**cfg0.to_dict(), 'method': method})
        flops = flops_per_window(cfg_m, args.dim)
        print(f'{method}: {flops / 1e9:.2f} GFLOP per window (forward + backward), '
              f'{flops * args.windows * 31 / 1e15:.2f} PFLOP for 31 epochs', flush=True)
        data = synthetic_set(args.windows, args.dim, cfg0, device)
        for variant in train_variants:
            cfg = config.Config(**{**cfg_m.to_dict(), 'learning_rates': (1e-4,) * args.epochs,
                                   'device': str(device), 'models_dir': tmp, 'logs_dir': tmp,
                                   'save_checkpoints': False,   # measure training, not the disk
                                   **variant_switches(variant)})
            out = measure('train', method, variant, lambda: bench_training(cfg, data, device, flops))
            if out:
                print(f'train {method:13s} {variant:15s} {out["windows_per_s"]:8.1f} windows/s '
                      f'{out["epoch_s"]:7.2f} s/epoch  31 epochs ~ {out["projected_31_epochs_s"]:7.1f} s  '
                      f'{out["tflop_per_s"]:7.2f} TFLOP/s  first epoch {out["first_epoch_s"]:6.2f} s  '
                      f'peak {out["peak_gpu_mem_gib"] or "-"} GiB', flush=True)
        del data
        for variant in test_variants:
            cfg = config.Config(**{**cfg_m.to_dict(), **variant_switches(variant)})
            out = measure('test', method, variant, lambda: bench_inference(cfg, args.dim, args.test_windows, device))
            if out:
                print(f'test  {method:13s} {variant:15s} {out["windows"]} windows: network {out["network_s"]:.3f} s, '
                      f'with the predictions table {out["inference_s"]:.3f} s; post-processing of '
                      f'{out["rows"]} rows {out["postprocess_s"]:.3f} s', flush=True)
    if args.compare:
        print_comparison(figures, args.methods.split(','), train_variants, test_variants, cfg0.batch_size)


def print_comparison(figures, methods, train_variants, test_variants, batch_size):
    """Each variant's speed against the first variant of its method, measured in this same run."""
    print(f'\ncomparison (against {train_variants[0]} for training, {test_variants[0]} for inference):')
    for method in methods:
        base = figures['train'].get(f'{method} {train_variants[0]}')
        for variant in train_variants:
            out = figures['train'].get(f'{method} {variant}')
            if out and base:
                print(f'  train {method:13s} {variant:15s} {out["windows_per_s"]:8.1f} windows/s  '
                      f'{batch_size / out["windows_per_s"]:7.3f} s per batch of {batch_size}  '
                      f'x{out["windows_per_s"] / base["windows_per_s"]:.2f}')
        base = figures['test'].get(f'{method} {test_variants[0]}')
        for variant in test_variants:
            out = figures['test'].get(f'{method} {variant}')
            if out and base:
                print(f'  test  {method:13s} {variant:15s} network {out["network_s"]:7.3f} s  '
                      f'x{base["network_s"] / out["network_s"]:.2f}')


if __name__ == '__main__':
    sys.exit(main())
