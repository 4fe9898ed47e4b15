"""The method against outputs of the authors' released code (../shared/thumos14/reference)."""
import hashlib
import json

import numpy as np
import pytest
import torch

import operations as ops
from config import Config
import checkpoints

torch.set_num_threads(2)
LAYERS = ('AL1', 'AL2', 'AL3')


def gt_tensors(y_label, y_bbox, index):
    """Dense per-window ground truth (label, box, valid) from the release's flat arrays."""
    counts = np.diff(index)
    b, m = len(counts), max(int(counts.max()), 1)
    label = torch.zeros(b, m, dtype=torch.long)
    box = torch.zeros(b, m, 2)
    valid = torch.zeros(b, m, dtype=torch.bool)
    for i in range(b):
        rows = slice(index[i], index[i + 1])
        label[i, :counts[i]] = torch.from_numpy(y_label[rows].argmax(1))
        box[i, :counts[i]] = torch.from_numpy(y_bbox[rows, :2])
        valid[i, :counts[i]] = True
    return label, box, valid


def test_matching(shared):
    d = np.load(shared / 'reference' / 'match_multi.npz')
    cat = lambda name: np.concatenate([d[f'{layer}/{name}'] for layer in LAYERS], 1)  # noqa: E731
    label, box, valid = gt_tensors(d['Y_label'], d['Y_bbox'], d['Index'])
    raw = torch.tensor(cat('anchors'), requires_grad=True)
    cfg = Config()
    x, w = ops.decode(raw, cfg)
    np.testing.assert_allclose(x.detach().numpy(), cat('anchors_rx'), atol=1e-6)
    np.testing.assert_allclose(w.detach().numpy(), cat('anchors_rw'), atol=1e-6)
    xmin, xmax = ops.decode_minmax(raw, cfg)
    m = ops.match(xmin, xmax, label, box, valid)
    ref_labels = cat('match_labels')
    assert (ref_labels.sum(-1) == 1).all()
    np.testing.assert_array_equal(m['label'].numpy(), ref_labels.argmax(-1))
    np.testing.assert_array_equal(m['score'].detach().numpy() > 0.5, cat('match_scores') > 0.5)
    np.testing.assert_allclose(m['score'].detach().numpy(), cat('match_scores'), atol=1e-6)
    np.testing.assert_allclose(m['centre'].numpy(), cat('match_x'), atol=1e-6)
    np.testing.assert_allclose(m['width'].numpy(), cat('match_w'), atol=1e-6)
    assert 0 < (m['label'] > 0).sum() < m['label'].numel()
    m['score'].sum().backward()
    ref_grad = cat('grad_sum_match_scores_wrt_anchors')
    assert np.abs(ref_grad[..., -2:]).max() > 0.01
    np.testing.assert_allclose(raw.grad.numpy(), ref_grad, atol=1e-6)


@pytest.mark.parametrize('name', ['loss_multi', 'loss_nopos'])
def test_loss(shared, name):
    d = np.load(shared / 'reference' / f'{name}.npz')
    t = lambda key: torch.from_numpy(d[key])  # noqa: E731
    centre, width = t('match_x'), t('match_w')
    m = dict(score=t('match_scores'), label=t('match_labels').argmax(-1).long(),
             xmin=centre - width / 2, xmax=centre + width / 2)
    for ratio, tag in zip(d['negative_ratios'], ('neg0', 'neg1e9')):
        got = ops.head_loss(t('anchors_class'), m['label'], t('anchors_conf'), t('anchors_xmin'),
                            t('anchors_xmax'), m, float(ratio), torch.Generator().manual_seed(0))
        for value, term in zip(got, ('class', 'loc', 'conf')):
            assert torch.isfinite(value)
            np.testing.assert_allclose(float(value), float(d[f'{term}_loss_{tag}']), rtol=1e-5, atol=1e-7,
                                       err_msg=f'{name} {term} {tag}')


def regenerate_weights(d):
    """The reference's TF-layout weights, checked against their SHA-256."""
    shapes = json.loads(str(d['weight_shapes_json']))
    arrays = {}
    for i, name in enumerate(d['weight_names']):
        rs = np.random.RandomState(int(d['weight_seed_base']) + i)
        s = float(d['weight_scales'][i])
        w = (rs.uniform(-s, s, size=shapes[i]) if d['weight_dists'][i] == 'uniform'
             else rs.normal(0.0, s, size=shapes[i])).astype(np.float32)
        assert hashlib.sha256(w.tobytes()).hexdigest() == str(d['weight_sha256'][i]), name
        arrays[str(name)] = w
    return arrays


DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('channels_last', [False, True])
def test_forward_main_stream(shared, device, channels_last):
    d = np.load(shared / 'reference' / 'forward_main_stream.npz')
    cfg = Config(method='main_stream', channels_last=channels_last)
    ops.set_precision(cfg)  # float32 on a GPU too (no TF32)
    model = checkpoints.build_model(cfg, 1024)
    model.load_state_dict(checkpoints.state_dict_from_tf(model, regenerate_weights(d)))
    x = torch.from_numpy(d['X'])
    # float64 shows the computation is the release's (its own float32 rounding is ~1e-5);
    # float32, the training precision, then agrees to float32 accumulation error
    for dtype, atol in ((torch.float64, 1e-5), (torch.float32, 1e-4)):
        net = model.to(device, dtype)
        with torch.no_grad():
            xs = x.to(device, dtype)
            base = net.base(xs)
            mals = net.main_anchor_layers(xs)
            out = net(xs)
        close = lambda got, key: np.testing.assert_allclose(  # noqa: E731
            got.float().cpu().numpy(), d[key], atol=atol, rtol=0, err_msg=f'{key} {dtype}')
        close(base.transpose(1, 2), 'inter/base_out')
        for i, mal in enumerate(mals):
            close(mal.transpose(1, 2), f'inter/MAL{i + 1}')
        for i, raw in enumerate(torch.split(out['main'], [80, 40, 20], 1)):
            close(raw, f'inter/raw/mainStream_AL{i + 1}')
        pred = ops.predict(out, cfg)
        for key in ('class_prob', 'conf', 'xmin', 'xmax'):
            close(pred[key], f'out/{key}')
