"""Convert the authors' TensorFlow checkpoints into this project's checkpoint format.

    python convert_tf_checkpoint.py models/temporal_UCF101_decouple_ssad/model-ep-30 out.pt \
        --method decouple_ssad --mode temporal --pretrain UCF101
    python convert_tf_checkpoint.py weights.npz out.pt --method main_stream

SRC is a TensorFlow checkpoint prefix (reading it needs the optional `tensorflow`
package) or an .npz file mapping checkpoint keys to arrays in TensorFlow layout.
Every variable the model needs must be there with its exact shape; the feature
dimension is read from the first kernel. OUT is what train.py writes and test.py
loads.
"""
import argparse
import os
import re

import numpy as np
import torch

import checkpoints
import config
import fileio

FIRST_KERNEL = 'base_feature_network/conv1d/kernel'
# variables a training checkpoint may hold besides the weights
BOOKKEEPING = re.compile(r'(^|/)(global_step|beta[12]_power(_\d+)?|Adam(_\d+)?)$')


class NpzSource:
    def __init__(self, path):
        try:
            self.data = np.load(path, allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - report any unreadable file the same way
            raise ValueError(f'{path}: cannot read as .npz: {err}') from None
        self.path = path

    def keys(self):
        return list(self.data.files)

    def shape(self, key):
        return tuple(self.get(key).shape)

    def get(self, key):
        try:
            return self.data[key]
        except Exception as err:  # noqa: BLE001 - e.g. an object array, which needs pickle
            raise ValueError(f'{self.path}: variable {key} cannot be read: {err}') from None


class TFSource:
    def __init__(self, prefix):
        if not os.path.exists(prefix + '.index'):
            raise ValueError(f'{prefix}: no TensorFlow checkpoint there ({prefix}.index not found); '
                             f'SRC is a checkpoint prefix such as .../model-ep-30, or an .npz file')
        try:
            import tensorflow as tf  # optional dependency, needed only here
        except ImportError:
            raise ValueError('reading a TensorFlow checkpoint needs the tensorflow package '
                             '(pip install tensorflow-cpu), or give an .npz of its variables') from None
        self.reader = tf.train.load_checkpoint(prefix)
        self.shapes = self.reader.get_variable_to_shape_map()
        self.path = prefix

    def keys(self):
        return list(self.shapes)

    def shape(self, key):
        return tuple(self.shapes[key])

    def get(self, key):
        return self.reader.get_tensor(key)


def open_source(src):
    src = str(src)
    if src.endswith('.npz'):
        if not os.path.isfile(src):
            raise ValueError(f'{src}: file not found')
        return NpzSource(src)
    return TFSource(src)


def checked_weights(value, key, path):
    """float32 copy of one variable; ValueError naming it when it is not floating point (bool,
    integer, string, object: a cast would turn it into quiet garbage) or holds NaN / inf."""
    array = np.asarray(value)
    if array.dtype.kind != 'f':
        raise ValueError(f'{path}: variable {key} has dtype {array.dtype}, expected floating point weights '
                         f'(float16 / float32 / float64): not a checkpoint of the released models?')
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f'{path}: variable {key} holds {bad} non-finite value(s) (NaN or inf) of {array.size}; '
                         f'the model would predict NaN: use an intact checkpoint')
    return array.astype(np.float32)


def convert(source, cfg):
    """Checkpoint dict (docs/method.md §2) for cfg.method from a checkpoint source; ValueError if it does not fit."""
    keys = set(source.keys())
    if FIRST_KERNEL not in keys:
        raise ValueError(f'{source.path}: missing variable {FIRST_KERNEL}, so the feature dimension '
                         f'cannot be read (not a checkpoint of the released models?)')
    first = source.shape(FIRST_KERNEL)
    if len(first) != 3:
        raise ValueError(f'{source.path}: variable {FIRST_KERNEL} has shape {list(first)}, expected [9, D, 512]')
    feature_dim = int(first[1])
    with torch.device('meta'):  # names and shapes only
        model = checkpoints.build_model(cfg, feature_dim)
    wanted = {key for key, _, _ in checkpoints.tf_variables(model)}
    extra = sorted(k for k in keys - wanted if not BOOKKEEPING.search(k))
    if extra:
        raise ValueError(f'{source.path}: variables that a {cfg.method} model does not have, e.g. '
                         f'{extra[:3]} ({len(extra)} in all): wrong --method?')
    # shapes first, so that a bad file fails before any large array is read
    arrays = {}
    for key, shape, _ in checkpoints.tf_variables(model):
        if key not in keys:
            raise ValueError(f'{source.path}: missing variable {key} (expected shape {list(shape)})')
        if source.shape(key) != shape:
            raise ValueError(f'{source.path}: variable {key} has shape {list(source.shape(key))}, '
                             f'expected {list(shape)} (feature dimension {feature_dim})')
    for key, _, _ in checkpoints.tf_variables(model):
        arrays[key] = checked_weights(source.get(key), key, source.path)
    state = checkpoints.state_dict_from_tf(model, arrays, source.path)
    epoch = re.search(r'-ep-(\d+)', os.path.basename(source.path))
    return {'model': state, 'method': cfg.method, 'feature_dim': feature_dim,
            'config': cfg.to_dict(), 'epoch': int(epoch.group(1)) if epoch else -1}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='TensorFlow checkpoint prefix, or .npz of checkpoint key -> array')
    parser.add_argument('out', help='output .pt checkpoint')
    parser.add_argument('--method', choices=config.METHODS, required=True)
    parser.add_argument('--mode', choices=config.MODES, default=None)
    parser.add_argument('--pretrain', default=None)
    try:
        cfg, args = config.parse_config(parser, argv)
        fileio.check_writable(args.out)
        ckpt = convert(open_source(args.src), cfg)
        checkpoints.write_checkpoint(args.out, ckpt)
    except ValueError as err:
        raise SystemExit(f'error: {err}') from None
    n = sum(v.numel() for v in ckpt['model'].values())
    print(f'{args.out}: {cfg.method}, feature dimension {ckpt["feature_dim"]}, {n:,} parameters')


if __name__ == '__main__':
    main()
