"""Models and checkpoints: build a network, write, list, read, check and load checkpoints,
and the TensorFlow variable layout of the authors' release.

A checkpoint (models/<run>/model-ep-<e>.pt) is a dict read with weights_only=True:
model (state dict), method, feature_dim, config (Config.to_dict()), epoch, classes (the
class names and ids of its outputs, classes.as_dict; absent: THUMOS14's) and, when
train.py wrote it, optimizer, losses and rng (docs/method.md §2). Every file is written
to a temporary name and renamed, so a reader never sees half of one.

This module sits above the two networks; operations.py, below them, knows neither.
"""
import glob
import os
import re

import torch

import classes
import config
import fileio
import operations
import thumos14
from decouple_ssad import DecoupleSSAD
from main_stream import MainStream

NETWORKS = {'main_stream': MainStream, 'decouple_ssad': DecoupleSSAD}
assert tuple(NETWORKS) == config.METHODS, 'config.METHODS names the networks of NETWORKS, in its order'
# Settings that decide a model's parameter shapes or the meaning of its outputs: a
# checkpoint only fits a config that agrees on all of them.
ANCHOR_FIELDS = ('layers_name', 'num_anchors', 'scale', 'aspect_ratios', 'num_classes', 'input_steps',
                 'base_width', 'anchor_width')
CHECKPOINT_NAME = re.compile(r'model-ep-(\d+)\.pt')


def build_model(cfg, feature_dim):
    """The network of cfg.method for features of width feature_dim, initialised as the release."""
    operations.check_anchor_config(cfg)
    if int(feature_dim) < 1:
        raise ValueError(f'feature_dim must be a positive integer, got {feature_dim}')
    if cfg.method not in NETWORKS:
        raise ValueError(f'method must be one of {sorted(NETWORKS)}, got {cfg.method!r}')
    model = NETWORKS[cfg.method](cfg, int(feature_dim))
    for module in model.modules():
        if hasattr(module, 'channels_last'):
            module.channels_last = cfg.channels_last
    return model


# --- files ---

def checkpoint_path(run_dir, epoch):
    return os.path.join(run_dir, f'model-ep-{epoch}.pt')


def list_checkpoints(run_dir):
    """-> [(epoch, path)] of models/<run>/model-ep-<e>.pt, oldest first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(run_dir), 'model-ep-*.pt')):
        m = CHECKPOINT_NAME.fullmatch(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def read_checkpoint(path, what='checkpoint'):
    """torch.load(path, weights_only=True) on the CPU; ValueError naming the file when it is
    missing or unreadable. Every checkpoint and weights file is read through here."""
    path = str(path)
    if not os.path.isfile(path):
        raise ValueError(f'{what} {path} not found')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f'{what} {path} cannot be read: {err}') from None


def write_checkpoint(path, state, keep=0):
    """Write atomically, then delete all but the newest `keep` checkpoints of the folder (0 keeps all).

    A failed write (disk full, folder not writable) leaves the older checkpoints as they were
    and raises ValueError naming the path and the cause."""
    try:
        with fileio.atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError as err:
        raise ValueError(f'cannot write checkpoint {path}: {err.strerror or err}') from None
    except RuntimeError as err:   # torch.save reports a failed write of its zip stream this way
        raise ValueError(f'cannot write checkpoint {path}: {str(err).strip()[:200]}') from None
    if keep > 0:
        for _, old in list_checkpoints(os.path.dirname(path))[:-keep]:
            try:
                os.remove(old)
            except OSError as err:
                raise ValueError(f'wrote {path}, but cannot remove the old checkpoint {old}: '
                                 f'{fileio.describe(err)}') from None


# --- compatibility ---

def saved_settings(ckpt):
    """The config a checkpoint was written with, as a dict of Config values (lists as tuples)."""
    return config.as_settings((ckpt.get('config') if isinstance(ckpt, dict) else None) or {})


def checkpoint_classes(ckpt, path):
    """The classes of a checkpoint's outputs (classes.ClassList); one without them is THUMOS14's
    (written before checkpoints recorded their classes, or converted from the release)."""
    if not isinstance(ckpt, dict) or 'classes' not in ckpt:
        return thumos14.THUMOS14_CLASSES
    return classes.from_dict(ckpt['classes'], f'checkpoint {path}')


def check_checkpoint(ckpt, path, cfg, feature_dim=None, features='the data', class_list=None):
    """The one test of whether checkpoint `ckpt` (read from `path`) fits cfg: ValueError if not.

    It must be this project's dict, hold a cfg.method model, (class_list given) have been
    trained on those classes, agree on every ANCHOR_FIELDS setting it records and (feature_dim
    given) expect features of that width; `features` names where those come from in the message.
    """
    missing = [key for key in ('model', 'method', 'feature_dim') if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise ValueError(f'checkpoint {path} lacks {missing}: not a checkpoint of this project')
    if ckpt['method'] != cfg.method:
        raise ValueError(f'checkpoint {path} holds a {ckpt["method"]} model, but method is {cfg.method}')
    if class_list is not None:
        classes.check_same(checkpoint_classes(ckpt, path), class_list, f'checkpoint {path}', features)
    if feature_dim is not None and int(feature_dim) != int(ckpt['feature_dim']):
        raise ValueError(f'checkpoint {path} expects features of dimension {ckpt["feature_dim"]}, '
                         f'but {features} has dimension {feature_dim}')
    saved = saved_settings(ckpt)
    differ = [f'{key} (checkpoint {saved[key]}, config {getattr(cfg, key)})'
              for key in ANCHOR_FIELDS if key in saved and saved[key] != getattr(cfg, key)]
    if differ:
        raise ValueError(f'checkpoint {path} was trained with other anchor settings: ' + '; '.join(differ))


def load_state(model, state, path):
    """model.load_state_dict(state) after checking every name and shape (ValueError naming the first bad one)."""
    expected = model.state_dict()
    bad = sorted(set(expected) ^ set(state))
    if bad:
        raise ValueError(f'checkpoint {path}: parameters do not fit a {type(model).__name__} model: {bad[:5]}')
    for key, value in state.items():
        if not torch.is_tensor(value):
            raise ValueError(f'checkpoint {path}: {key} is a {type(value).__name__}, not a tensor; '
                             f'the file is damaged or not a checkpoint of this project')
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f'checkpoint {path}: {key} has shape {tuple(value.shape)}, '
                             f'expected {tuple(expected[key].shape)} (feature_dim {model.feature_dim})')
        # load_state_dict would quietly turn a bool or integer tensor into 0 / 1 weights
        if value.is_floating_point() != expected[key].is_floating_point() or value.is_complex():
            raise ValueError(f'checkpoint {path}: {key} has dtype {value.dtype}, expected {expected[key].dtype}; '
                             f'the file is damaged or was not written by this project')
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise ValueError(f'checkpoint {path}: {key} holds {bad} non-finite value(s) (NaN or inf) of '
                             f'{value.numel()}; its predictions would be NaN: use an earlier checkpoint or retrain')
    model.load_state_dict(state)


def load_model(path, cfg, device='cpu', feature_dim=None, class_list=None):
    """Load a checkpoint written by train.py or convert_tf_checkpoint.py -> (model, ckpt).

    Raises ValueError when the file is missing or unreadable, was trained for another
    method, anchor layout or (class_list given) other classes, or (feature_dim given)
    expects features of another width.
    """
    path = str(path)
    ckpt = read_checkpoint(path)
    check_checkpoint(ckpt, path, cfg, feature_dim, class_list=class_list)
    model = build_model(cfg, ckpt['feature_dim'])
    load_state(model, ckpt['model'], path)
    return model.to(device), ckpt


# --- TensorFlow checkpoint layout ---
#
# Parameter names are TensorFlow's variable names with '/' -> '.' and
# kernel -> weight, so the mapping is one-to-one; only layouts change:
# conv1d kernel [k, in, out] -> Conv1d weight [out, in, k];
# conv2d_transpose kernel [1, k, out, in] -> ConvTranspose1d weight [in, out, k].

def tf_key(torch_key):
    scope_name, leaf = torch_key.rsplit('.', 1)
    return scope_name.replace('.', '/') + '/' + {'weight': 'kernel', 'bias': 'bias'}[leaf]


def tf_shape(torch_key, shape):
    """TensorFlow shape of a parameter of the given PyTorch shape."""
    shape = tuple(shape)
    if len(shape) == 1:
        return shape
    if 'conv2d_transpose' in torch_key:
        return (1, shape[2], shape[1], shape[0])
    return (shape[2], shape[1], shape[0])


def tf_to_torch(key, array):
    """PyTorch tensor of one TensorFlow variable (by checkpoint key)."""
    t = torch.as_tensor(array, dtype=torch.float32)
    if t.ndim == 1:
        return t.clone()
    if 'conv2d_transpose' in key:
        return t[0].permute(2, 1, 0).contiguous()
    return t.permute(2, 1, 0).contiguous()


def torch_to_tf(key, tensor):
    """TensorFlow-layout numpy array of one PyTorch parameter (by PyTorch key)."""
    t = tensor.detach().cpu().float()
    if t.ndim == 1:
        return t.numpy().copy()
    if 'conv2d_transpose' in key:
        return t.permute(2, 1, 0)[None].contiguous().numpy()
    return t.permute(2, 1, 0).contiguous().numpy()


def tf_variables(model):
    """[(checkpoint key, TF shape, torch key)] of a model, in the release's graph order."""
    return [(tf_key(k), tf_shape(k, v.shape), k) for k, v in model.state_dict().items()]


def state_dict_from_tf(model, arrays, source='checkpoint'):
    """A state dict for `model` from {checkpoint key: array}; ValueError naming a missing key or bad shape."""
    state = {}
    for key, shape, torch_key in tf_variables(model):
        if key not in arrays:
            raise ValueError(f'{source}: missing variable {key} (expected shape {list(shape)})')
        got = tuple(arrays[key].shape)
        if got != shape:
            raise ValueError(f'{source}: variable {key} has shape {list(got)}, expected {list(shape)}')
        state[torch_key] = tf_to_torch(key, arrays[key])
    return state
