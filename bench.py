"""Speed of training, inference and post-processing on a THUMOS14-sized synthetic set.

    python bench.py                                   # GPU: 4741 / 5103 windows, D = 2048, as THUMOS14
    python bench.py --device cpu --windows 96 --test-windows 96 --dim 1024 --epochs 2
    python bench.py --variants fp32,bf16 --methods decouple_ssad --json out.json

Training runs the real training code (train.train) on random features that sit on
the device, batch 48, and reports the windows/s of the last epoch (the first one
pays for warm-up: cuDNN autotuning, torch.compile), the projected time of the
paper's 31 epochs, and peak GPU memory. Inference runs test.predict_windows over
the test windows; post-processing runs postprocess.post_process on its output.
Variants: fp32 (the default and the paper's precision), tf32, bf16, bf16+compile.
Checkpoints are not written (that is disk speed, not training speed).
"""
import argparse
import json
import sys
import tempfile
import time

import numpy as np
import torch

import config
import operations
import postprocess
import test
import train

VARIANTS = {'fp32': {}, 'tf32': {'tf32': True}, 'bf16': {'bf16': True},
            'bf16+compile': {'bf16': True, 'compile': True}}


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


def bench_training(cfg, data, device):
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    result = train.train(cfg, fresh=True, data=data, progress=False)
    total = time.time() - t0
    speed = result['windows_per_s']
    epoch_s = len(data['features']) / speed
    return {'windows_per_s': round(speed, 1), 'epoch_s': round(epoch_s, 2),
            'projected_31_epochs_s': round(31 * epoch_s, 1), 'measured_total_s': round(total, 1),
            'peak_gpu_mem_gib': round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
            if device.type == 'cuda' else None}


def bench_inference(cfg, dim, num_windows, device):
    model = operations.build_model(cfg, dim).to(device)
    features = torch.randn(num_windows, cfg.input_steps, dim, device=device)
    starts = np.arange(num_windows) * 256
    videos = np.array([f'video_test_{i // 20:07d}' for i in range(num_windows)])
    test.predict_windows(model, features[:cfg.batch_size], starts[:cfg.batch_size],
                         videos[:cfg.batch_size], cfg)  # warm-up
    if device.type == 'cuda':
        torch.cuda.synchronize()
    t0 = time.time()
    pred = test.predict_windows(model, features, starts, videos, cfg)
    infer_s = time.time() - t0
    t0 = time.time()
    detections = postprocess.post_process(pred, cfg, fps_of={})
    post_s = time.time() - t0
    return {'inference_s': round(infer_s, 3), 'windows': num_windows, 'rows': len(pred),
            'postprocess_s': round(post_s, 3), 'detections': len(detections)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--windows', type=int, default=4741, help='training windows (THUMOS14: 4741)')
    parser.add_argument('--test-windows', type=int, default=5103, help='test windows (THUMOS14: 5103)')
    parser.add_argument('--dim', type=int, default=2048, help='feature dimension D')
    parser.add_argument('--epochs', type=int, default=2, help='epochs per measurement (the last one is timed)')
    parser.add_argument('--methods', default='decouple_ssad,main_stream')
    parser.add_argument('--variants', default='fp32,tf32,bf16,bf16+compile')
    parser.add_argument('--json', default=None, help='also write the figures here')
    cfg0, args = config.parse_config(parser)
    device = torch.device(test.resolve_device(cfg0.device))
    print(f'device {device} ({torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"}, '
          f'{torch.get_num_threads()} threads), torch {torch.__version__}', flush=True)

    figures = {'device': str(device), 'windows': args.windows, 'dim': args.dim, 'train': {}}
    tmp = tempfile.mkdtemp(prefix='bench_')
    train.save_checkpoint = lambda *a, **k: None  # measure training, not the disk
    for method in args.methods.split(','):
        data = synthetic_set(args.windows, args.dim, cfg0, device)
        for variant in args.variants.split(','):
            cfg = config.Config(**{**cfg0.to_dict(), 'method': method, 'learning_rates': (1e-4,) * args.epochs,
                                   'device': str(device), 'models_dir': tmp, 'logs_dir': tmp,
                                   **VARIANTS[variant]})
            out = bench_training(cfg, data, device)
            figures['train'][f'{method} {variant}'] = out
            print(f'train {method:13s} {variant:13s} {out["windows_per_s"]:8.1f} windows/s  '
                  f'{out["epoch_s"]:7.2f} s/epoch  31 epochs ~ {out["projected_31_epochs_s"]:7.1f} s  '
                  f'peak {out["peak_gpu_mem_gib"]} GiB', flush=True)
        del data
        cfg = config.Config(**{**cfg0.to_dict(), 'method': method})
        out = bench_inference(cfg, args.dim, args.test_windows, device)
        figures[f'test {method}'] = out
        print(f'test  {method:13s} {out["windows"]} windows: inference {out["inference_s"]:.3f} s, '
              f'post-processing of {out["rows"]} rows {out["postprocess_s"]:.3f} s', flush=True)
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(figures, f, indent=1)


if __name__ == '__main__':
    sys.exit(main())
