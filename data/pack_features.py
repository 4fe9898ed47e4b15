"""Pack a per-window feature folder (0.npy ... N-1.npy, [128, D] each) into one array file.

    python data/pack_features.py data/THUMOS14/feature/val/temporalDataXUCF101 [--dtype float16]

writes `<folder>/packed.npy`, a [N, 128, D] float32 (or float16) .npy that np.load can memory-map.
load_data (feature_files.feature_layout) uses packed.npy whenever it is in the folder (before any <i>.npy), so an
epoch's features load in one sequential read; delete it to go back to the per-window files.
Row i is window i, the window on line i + 1 of the split's window_info.log. The file appears only
when complete. With --out the array goes elsewhere (then copy it into the folder as packed.npy).
"""
import argparse
import os
import sys

if __package__ in (None, ''):  # run as a script: the repository's modules live one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from config import parse_config  # noqa: E402
from fileio import atomic_path  # noqa: E402
from feature_files import PACKED_NAME, check_feature_array, load_npy  # noqa: E402


def count_windows(folder):
    names = {n for n in os.listdir(folder) if n.endswith('.npy')}
    n = 0
    while f'{n}.npy' in names:
        n += 1
    extra = sorted(m for m in names if m[:-4].isdigit() and int(m[:-4]) >= n)
    if extra:
        raise ValueError(f'{os.path.join(folder, extra[0])}: window files are not numbered 0..N-1 ({n}.npy is missing)')
    if n == 0:
        raise ValueError(f'{folder}: no per-window feature files (0.npy ...)')
    return n


def pack(folder, out=None, dtype='float32', steps=128):
    """Write the packed array; returns its path and shape."""
    out = out or os.path.join(folder, PACKED_NAME)
    n = count_windows(folder)
    first = load_npy(os.path.join(folder, '0.npy'))
    check_feature_array(first, os.path.join(folder, '0.npy'), (steps, None))
    shape = (n, steps, first.shape[1])
    with atomic_path(out) as tmp:
        packed = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.dtype(dtype), shape=shape)
        for i in range(n):
            path = os.path.join(folder, f'{i}.npy')
            a = load_npy(path)
            check_feature_array(a, path, shape[1:])
            if not np.isfinite(a).all():
                raise ValueError(f'{path}: NaN or inf')
            packed[i] = a
        packed.flush()
        del packed
    return out, shape


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('folder', help='per-window feature folder <feature_path>/<split>/<mode>DataX<pretrain>')
    parser.add_argument('--dtype', default='float32', choices=['float32', 'float16'])
    parser.add_argument('--out', default=None, help=f'output file (default <folder>/{PACKED_NAME})')
    try:
        cfg, args = parse_config(parser)
        out, shape = pack(args.folder, args.out, args.dtype, cfg.input_steps)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    print(f'{out}: {shape[0]} windows x {shape[1]} steps x {shape[2]} dims, {args.dtype}')


if __name__ == '__main__':
    main()
