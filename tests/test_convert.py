"""TensorFlow-layout conversion (convert_tf_checkpoint.py) and checkpoint loading."""
import numpy as np
import pytest
import torch

import checkpoints
import convert_tf_checkpoint as convert
import operations as ops

torch.set_num_threads(2)
SMALL_D = 16


def tf_layout_arrays(cfg, dim, seed=0):
    with torch.device('meta'):
        model = checkpoints.build_model(cfg, dim)
    rng = np.random.RandomState(seed)
    return {key: rng.standard_normal(shape).astype(np.float32) * 0.05 for key, shape, _ in checkpoints.tf_variables(model)}


@pytest.fixture(scope='module')
def converted(tmp_path_factory, make_config):
    folder = tmp_path_factory.mktemp('convert')
    arrays = tf_layout_arrays(make_config(method='main_stream'), SMALL_D)
    src = folder / 'model-ep-30.npz'
    np.savez(src, global_step=np.array(1234), **arrays)
    out = folder / 'out.pt'
    convert.main([str(src), str(out), '--method', 'main_stream', '--mode', 'spatial'])
    return arrays, src, out


def test_round_trip(converted, make_config):
    arrays, _, out = converted
    model, ckpt = checkpoints.load_model(out, make_config(method='main_stream', mode='spatial'), 'cpu',
                                         feature_dim=SMALL_D)
    assert ckpt['method'] == 'main_stream' and ckpt['feature_dim'] == SMALL_D and ckpt['epoch'] == 30
    assert ckpt['config']['mode'] == 'spatial'
    state = model.state_dict()
    assert len(state) == len(arrays)
    for key, value in state.items():
        back = checkpoints.torch_to_tf(key, value)
        np.testing.assert_array_equal(back, arrays[checkpoints.tf_key(key)], err_msg=key)
    assert state['base_feature_network.conv1d.weight'].shape == (512, SMALL_D, 9)


def test_conv_layout_computes_tensorflow_conv1d():
    """out[t, o] = sum_k,i x[t + k - 1, i] * kernel[k, i, o] with a TF [k, in, out] kernel (k3, same)."""
    rng = np.random.RandomState(1)
    kernel, bias, x = rng.randn(3, 5, 4).astype(np.float32), rng.randn(4).astype(np.float32), rng.randn(9, 5)
    conv = ops.Conv1dSame(5, 4, 3)
    conv.weight.data = checkpoints.tf_to_torch('s/conv1d/kernel', kernel)
    conv.bias.data = checkpoints.tf_to_torch('s/conv1d/bias', bias)
    xp = np.pad(x, ((1, 1), (0, 0)))
    want = np.stack([np.einsum('ki,kio->o', xp[t:t + 3], kernel) for t in range(9)]) + bias
    got = conv(torch.tensor(x, dtype=torch.float32).T[None])[0].T.detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_transposed_conv_layout_computes_tensorflow_conv2d_transpose():
    """TF conv2d_transpose (k4, s2, same) scatters x[t] through kernel[0, k] to output 2t + k - 1."""
    rng = np.random.RandomState(2)
    kernel = rng.randn(1, 4, 3, 6).astype(np.float32)          # [1, k, out, in]
    x = rng.randn(5, 6).astype(np.float32)
    want = np.zeros((12, 3))
    for t in range(5):
        for k in range(4):
            if 0 <= 2 * t + k - 1 < 10:
                want[2 * t + k - 1] += kernel[0, k] @ x[t]
    up = torch.nn.ConvTranspose1d(6, 3, 4, stride=2, padding=1, bias=False)
    up.weight.data = checkpoints.tf_to_torch('s/conv2d_transpose/kernel', kernel)
    got = up(torch.tensor(x).T[None])[0].T.detach().numpy()
    np.testing.assert_allclose(got, want[:10], atol=1e-5)


def write_npz(path, arrays):
    np.savez(path, **arrays)
    return str(path)


def test_bad_npz_errors_name_the_variable(converted, tmp_path):
    arrays, _, _ = converted
    bad = dict(arrays)
    del bad['main_anchor_layer/conv1d_1/bias']
    with pytest.raises(SystemExit, match='missing variable main_anchor_layer/conv1d_1/bias'):
        convert.main([write_npz(tmp_path / 'a.npz', bad), str(tmp_path / 'a.pt'), '--method', 'main_stream'])
    bad = dict(arrays)
    bad['mulClsReg_predict_layerAL2mainStream/conv1d/kernel'] = np.zeros((3, 1024, 100), np.float32)
    with pytest.raises(SystemExit,
                       match=r'mulClsReg_predict_layerAL2mainStream/conv1d/kernel has shape \[3, 1024, 100\]'):
        convert.main([write_npz(tmp_path / 'b.npz', bad), str(tmp_path / 'b.pt'), '--method', 'main_stream'])
    # a main-stream checkpoint is not a Decouple-SSAD one, and the reverse
    with pytest.raises(SystemExit, match='missing variable branch_anchor_layerProposalBranch/conv1d/kernel'):
        convert.main([write_npz(tmp_path / 'c.npz', arrays), str(tmp_path / 'c.pt'), '--method', 'decouple_ssad'])
    extra = dict(arrays, **{'branch_anchor_layerProposalBranch/conv1d/kernel': np.zeros(3, np.float32)})
    with pytest.raises(SystemExit, match='wrong --method'):
        convert.main([write_npz(tmp_path / 'd.npz', extra), str(tmp_path / 'd.pt'), '--method', 'main_stream'])
    with pytest.raises(SystemExit, match='not_there.index not found'):
        convert.main([str(tmp_path / 'not_there'), str(tmp_path / 'e.pt'), '--method', 'main_stream'])
    with pytest.raises(SystemExit, match='num_anchors'):
        convert.main([write_npz(tmp_path / 'f.npz', arrays), str(tmp_path / 'f.pt'), '--method', 'main_stream',
                      '--num_anchors=16,8,2'])
    assert not list(tmp_path.glob('*.pt'))


def test_load_model_errors(converted, tmp_path, make_config):
    _, _, out = converted
    cfg = make_config(method='main_stream')
    with pytest.raises(ValueError, match='not found'):
        checkpoints.load_model(tmp_path / 'missing.pt', cfg)
    with pytest.raises(ValueError, match='holds a main_stream model, but method is decouple_ssad'):
        checkpoints.load_model(out, make_config(method='decouple_ssad'))
    with pytest.raises(ValueError, match=f'expects features of dimension {SMALL_D}.*dimension 1024'):
        checkpoints.load_model(out, cfg, feature_dim=1024)
    with pytest.raises(ValueError, match='anchor settings: scale'):
        checkpoints.load_model(out, make_config(method='main_stream', scale=(1 / 8, 1 / 8, 1 / 4)))
    ckpt = torch.load(out, weights_only=True)
    ckpt['model']['base_feature_network.conv1d.weight'] = torch.zeros(512, SMALL_D + 1, 9)
    torch.save(ckpt, tmp_path / 'bad.pt')
    with pytest.raises(ValueError, match=r'base_feature_network.conv1d.weight has shape \(512, 17, 9\)'):
        checkpoints.load_model(tmp_path / 'bad.pt', cfg)
