"""Sliding windows of a split (method.md §3): window_info.log, and for training windows gt.npz.

    python data/gen_data_info.py --anno data/thumos14/val/thumos14_val_annotation.csv --split val --out data/thumos14/val
    python data/gen_data_info.py --anno data/thumos14/test/thumos14_test_annotation.csv --split test --out data/thumos14/test

Windows are listed video by video in name order. To train on the released per-window features,
whose order is that of the released window_info.log, compute the boxes for that list instead:

    python data/gen_data_info.py --anno .../thumos14_val_annotation.csv --split val --out DIR --windows released/window_info.log
"""
import argparse
import os
import sys

if __package__ in (None, ''):  # run as a script: the repository's modules live one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import release_dataset  # noqa: E402
from config import parse_config  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--anno', required=True, help='thumos14_<split>_annotation.csv')
    parser.add_argument('--split', required=True, choices=['val', 'test'], help='val = training windows (stride 128, '
                        'only windows keeping an instance, with gt.npz); test = test windows (stride 256)')
    parser.add_argument('--out', required=True, help='folder for window_info.log (and gt.npz)')
    parser.add_argument('--windows', default=None, help='use this window list (e.g. the released one) instead of generating')
    try:
        cfg, args = parse_config(parser)
        n = release_dataset.write_split_info(args.anno, args.split, args.out, cfg, args.windows)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    print(f'{n} {args.split} windows -> {args.out}')


if __name__ == '__main__':
    main()
