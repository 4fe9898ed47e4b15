"""The two networks: shapes, parameter counts, initialisation, combination, zero gradients."""
import json

import pytest
import torch

import checkpoints
from config import Config
from conftest import NARROW
import operations as ops

torch.set_num_threads(2)
SMALL_D = 16   # feature dimension of the small models (anchor layers are 1024 wide whatever D)


@pytest.fixture(scope='module')
def decouple(make_config):
    torch.manual_seed(0)
    return checkpoints.build_model(make_config(method='decouple_ssad'), SMALL_D)


@pytest.fixture(scope='module')
def main_stream(make_config):
    return checkpoints.build_model(make_config(method='main_stream'), SMALL_D)


@pytest.mark.parametrize('method', ['main_stream', 'decouple_ssad'])
@pytest.mark.parametrize('dim', [1024, 2048])
def test_parameters_match_the_release(shared, method, dim):
    with torch.device('meta'):
        model = checkpoints.build_model(Config(method=method), dim)
    release = json.loads((shared / 'tf_variables' / f'{method}_{dim}.json').read_text())
    assert sum(p.numel() for p in model.parameters()) == release['total_params']
    ours = [(key, list(shape)) for key, shape, _ in checkpoints.tf_variables(model)]
    assert ours == [(v['checkpoint_key'], v['shape']) for v in release['variables']]


def test_parameter_counts_of_the_paper():
    for method, count in (('main_stream', 16_052_584), ('decouple_ssad', 90_766_092)):
        with torch.device('meta'):
            model = checkpoints.build_model(Config(method=method), 1024)
        assert sum(p.numel() for p in model.parameters()) == count


def test_output_shapes(main_stream, decouple, make_config):
    x = torch.randn(2, 128, SMALL_D)
    with torch.no_grad():
        assert {k: tuple(v.shape) for k, v in main_stream(x).items()} == {'main': (2, 140, 24)}
        out = decouple(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        'main': (2, 140, 24), 'loc_branch': (2, 140, 4), 'cls_branch': (2, 140, 24),
        'localization': (2, 140, 4), 'classification': (2, 140, 24)}
    pred = ops.predict(out, make_config(method='decouple_ssad'))
    assert {k: tuple(v.shape) for k, v in pred.items()} == {
        'class_prob': (2, 140, 21), 'conf': (2, 140), 'xmin': (2, 140), 'xmax': (2, 140)}
    torch.testing.assert_close(pred['class_prob'].sum(-1), torch.ones(2, 140))
    with pytest.raises(ValueError, match='features'):
        main_stream(torch.randn(2, 128, SMALL_D + 1))


def test_anchor_order_follows_positions(main_stream):
    """Anchor position * 5 + box of AL1 comes from time step `position` of MAL1 only."""
    x = torch.randn(1, 128, SMALL_D, requires_grad=True)
    mals = main_stream.main_anchor_layers(x)
    mals[0].retain_grad()
    out = main_stream.run_heads(main_stream.heads('mulClsReg', 'mainStream'), mals)
    out[0, 3 * 5 + 4, 10].backward()
    touched = (mals[0].grad[0].abs().sum(0) > 0).nonzero().flatten().tolist()
    assert touched and set(touched) <= {2, 3, 4} and 3 in touched


def test_combination(decouple):
    with torch.no_grad():
        out = decouple(torch.randn(2, 128, SMALL_D))
    torch.testing.assert_close(out['classification'], (out['main'] + out['cls_branch']) / 2)
    torch.testing.assert_close(out['localization'][..., :2], out['loc_branch'][..., :2])
    torch.testing.assert_close(out['localization'][..., 2:], (out['main'][..., 22:] + out['loc_branch'][..., 2:]) / 2)


def kernels(model):
    return {name: m.weight.detach() for name, m in model.named_modules()
            if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))}


def test_identical_kernel_initialisation(decouple):
    k = kernels(decouple)
    big = [w for w in k.values() if tuple(w.shape) == (1024, 1024, 3)]
    heads = [w for n, w in k.items() if n.startswith('mulClsReg')]
    binary = [w for n, w in k.items() if n.startswith('biClsReg')]
    up = [w for n, w in k.items() if 'conv2d_transpose' in n]
    assert (len(big), len(heads), len(binary), len(up)) == (20, 6, 3, 4)
    for group in (big, heads, binary):
        assert all(torch.equal(group[0], w) for w in group[1:])
    assert all(not torch.equal(up[i], up[j]) for i in range(4) for j in range(i + 1, 4))
    for w in (big[0], up[0], heads[0]):
        fan = w.shape[0] * w.shape[2] + w.shape[1] * w.shape[2]
        bound = (6 / fan) ** 0.5
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
        assert abs(float(w.mean())) < 0.01 * bound
    assert all((p == 0).all() for n, p in decouple.named_parameters() if n.endswith('bias'))


def test_independent_kernel_initialisation(make_config):
    model = checkpoints.build_model(make_config(method='main_stream', identical_kernel_init=False), SMALL_D)
    k = kernels(model)
    assert not torch.equal(k['main_anchor_layer.conv1d_1'], k['main_anchor_layer.conv1d_2'])
    assert not torch.equal(k['mulClsReg_predict_layerAL1mainStream.conv1d'],
                           k['mulClsReg_predict_layerAL2mainStream.conv1d'])
    again = kernels(checkpoints.build_model(make_config(method='main_stream', identical_kernel_init=False), SMALL_D))
    assert all(torch.equal(k[n], again[n]) for n in k)           # seeded
    same = kernels(checkpoints.build_model(make_config(method='main_stream'), SMALL_D))
    assert torch.equal(same['main_anchor_layer.conv1d_1'], same['main_anchor_layer.conv1d_2'])


def ground_truth(cfg):
    """Boxes equal to some default boxes, so that every matching has positives at initialisation."""
    x0, w0 = ops.default_boxes(cfg)
    idx = torch.tensor([[7, 33, 90, 131], [12, 60, 101, 0]])
    box = torch.stack([x0[idx] - w0[idx] / 2, x0[idx] + w0[idx] / 2], -1)
    label = torch.tensor([[3, 7, 12, 20], [1, 5, 9, 0]])
    return label, box, label > 0


def head_grads(model, name, per_box):
    """Gradient magnitude per channel of a head's kernel, [channels per box]."""
    g = getattr(model, name).conv1d.weight.grad
    return g.abs().view(5, per_box, -1).sum((0, 2))


def test_zero_gradients_where_the_release_has_none(decouple, make_config):
    cfg = make_config(method='decouple_ssad')
    decouple.zero_grad()
    out = decouple(torch.randn(2, 128, SMALL_D))
    label, box, valid = ground_truth(cfg)
    for key in ('main', 'localization', 'classification'):
        xmin, xmax = ops.decode_minmax(out[key], cfg)
        assert (ops.match(xmin, xmax, label, box, valid)['label'] > 0).any(), key
    loss, _ = ops.compute_loss(out, label, box, valid, cfg, torch.Generator().manual_seed(0))
    loss.backward()
    for layer in cfg.layers_name:
        main = head_grads(decouple, f'mulClsReg_predict_layer{layer}mainStream', 24)
        binary = head_grads(decouple, f'biClsReg_predict_layer{layer}ProposalBranch', 4)
        cls = head_grads(decouple, f'mulClsReg_predict_layer{layer}ClassificationBranch', 24)
        assert main[21] == 0, 'main-stream conf'
        assert (main[:21] > 0).all() and (main[22:] > 0).all()
        assert binary[0] == 0, 'binary action logit'
        assert (binary[1:] > 0).all()
        assert (cls[21:] == 0).all(), 'classification branch conf, dx, dw'
        assert (cls[:21] > 0).all()
    decouple.zero_grad()


def test_main_stream_gradients(main_stream, make_config):
    cfg = make_config(method='main_stream')
    main_stream.zero_grad()
    label, box, valid = ground_truth(cfg)
    loss, terms = ops.compute_loss(main_stream(torch.randn(2, 128, SMALL_D)), label, box, valid, cfg)
    loss.backward()
    assert float(terms['loc']) > 0
    for layer in cfg.layers_name:
        assert (head_grads(main_stream, f'mulClsReg_predict_layer{layer}mainStream', 24) > 0).all()
    main_stream.zero_grad()


def test_narrow_networks_for_quick_runs(tmp_path, make_config):
    # base_width / anchor_width shrink the network (the demo uses this); the output layout
    # stays that of the paper, and a checkpoint of one width is refused by a config of another.
    cfg = make_config(method='decouple_ssad', base_width=32, anchor_width=48)
    model = checkpoints.build_model(cfg, SMALL_D)
    out = model(torch.randn(2, 128, SMALL_D))
    assert out['classification'].shape == (2, 140, 24) and out['localization'].shape == (2, 140, 4)
    assert model.main_anchor_layer.conv1d.weight.shape == (48, 32, 3)
    path = tmp_path / 'narrow.pt'
    torch.save({'model': model.state_dict(), 'method': cfg.method, 'feature_dim': SMALL_D,
                'config': cfg.to_dict(), 'epoch': 0}, path)
    checkpoints.load_model(path, cfg)
    with pytest.raises(ValueError, match='anchor_width'):
        checkpoints.load_model(path, make_config(method='decouple_ssad', base_width=32))


@pytest.mark.parametrize('method', ['main_stream', 'decouple_ssad'])
@pytest.mark.parametrize('switches', [dict(channels_last=True), dict(group_branches=True),
                                      dict(channels_last=True, group_branches=True)])
def test_speed_switches_compute_the_same_numbers(method, switches, make_config):
    """channels_last and group_branches change the kernels, not the function: outputs and
    gradients equal the default network's (float64, so that only rounding can differ)."""
    x = torch.randn(3, 128, SMALL_D, dtype=torch.float64)
    results = []
    for values in ({}, switches):
        model = checkpoints.build_model(make_config(NARROW, method=method, **values), SMALL_D).double()
        outputs = model(x)
        sum((v * torch.linspace(-1, 1, v.shape[-1], dtype=v.dtype)).sum() for v in outputs.values()).backward()
        results.append((outputs, {name: p.grad for name, p in model.named_parameters()}))
    (out0, grad0), (out1, grad1) = results
    for key in out0:
        torch.testing.assert_close(out1[key], out0[key], rtol=1e-10, atol=1e-12)
    for key in grad0:
        torch.testing.assert_close(grad1[key], grad0[key], rtol=1e-10, atol=1e-12)


def test_channels_last_layout_flows_through_the_network(make_config):
    """With channels_last every anchor layer comes out channels-last (channels innermost):
    no layer pays for a layout change."""
    model = checkpoints.build_model(make_config(NARROW, method='main_stream', channels_last=True), SMALL_D)
    for layer in model.main_anchor_layers(torch.randn(2, 128, SMALL_D)):
        assert layer.stride(1) == 1 and layer.stride(2) == layer.shape[1]
