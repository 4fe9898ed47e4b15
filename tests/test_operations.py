"""Padding, default boxes, matching and loss of operations.py."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoints
from config import Config
import operations as ops

torch.set_num_threads(2)


# --- TensorFlow "same" padding ----------------------------------------------

def test_same_padding_amounts():
    assert ops.same_padding(16, 3, 2) == (0, 1)      # anchor layers: all extra on the right
    assert ops.same_padding(128, 9, 1) == (4, 4)
    assert ops.same_padding(128, 4, 2) == (1, 1)     # max pool
    assert ops.same_padding(7, 3, 2) == (1, 1)       # odd length: out 4, total 2


def impulse_response(length, position, kernel):
    conv = ops.Conv1dSame(1, 1, len(kernel), stride=2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(kernel, dtype=torch.float32).view(1, 1, -1))
    x = torch.zeros(1, 1, length)
    x[0, 0, position] = 1
    return conv(x)[0, 0].detach()


def test_strided_conv_impulse_lands_where_tensorflow_puts_it():
    w = [1.0, 10.0, 100.0]
    # TF: out[j] = sum_t w[t] x[2j + t] (no left padding); PyTorch padding=1 would use x[2j + t - 1]
    expect = {0: {0: 1.0}, 1: {0: 10.0}, 2: {0: 100.0, 1: 1.0}, 15: {7: 10.0}, 14: {6: 100.0, 7: 1.0}}
    for position, hits in expect.items():
        y = impulse_response(16, position, w)
        assert y.shape == (8,)
        want = torch.zeros(8)
        for j, v in hits.items():
            want[j] = v
        assert torch.equal(y, want), (position, y)


def test_max_pool_pads_with_minus_infinity():
    x = -torch.ones(1, 1, 128)
    x[0, 0, 0] = 5
    y = ops.max_pool_same(x, 4, 2)
    assert y.shape == (1, 1, 64)
    assert y[0, 0, 0] == 5 and (y[0, 0, 1:] == -1).all()   # window 0 = [pad, x0, x1, x2]
    x = -torch.ones(1, 1, 128)
    x[0, 0, 127] = 5                                          # last window = [x125, x126, x127, pad]
    y = ops.max_pool_same(x, 4, 2)
    assert y[0, 0, 63] == 5 and (y[0, 0, :63] == -1).all()


# --- default boxes and decoding ---------------------------------------------

def test_default_boxes():
    cfg = Config()
    x0, w0 = ops.default_boxes(cfg)
    assert x0.shape == w0.shape == (140,)
    # AL1 position 1 box 2 (ratio 1) is anchor 1 * 5 + 2
    assert math.isclose(float(x0[7]), 1.5 / 16, rel_tol=1e-6)
    assert math.isclose(float(w0[7]), 1 / 16, rel_tol=1e-6)
    assert math.isclose(float(w0[0]), 0.5 / 16, rel_tol=1e-6)
    # AL2 starts at 80, AL3 at 120
    assert math.isclose(float(x0[80]), 0.5 / 8, rel_tol=1e-6) and math.isclose(float(w0[84]), 2 / 8, rel_tol=1e-6)
    assert math.isclose(float(x0[139]), 3.5 / 4, rel_tol=1e-6) and math.isclose(float(w0[139]), 0.5, rel_tol=1e-6)


def test_decode():
    cfg = Config()
    x0, w0 = ops.default_boxes(cfg)
    raw = torch.zeros(1, 140, 24)
    raw[0, :, -2] = 2.0
    raw[0, :, -1] = -3.0
    x, w = ops.decode(raw, cfg)
    torch.testing.assert_close(x[0], x0 + 0.2 * w0)
    torch.testing.assert_close(w[0], w0 * math.exp(-0.3))


def test_inconsistent_anchor_settings():
    for bad in (dict(num_anchors=(16, 8, 2)), dict(layers_name=('AL1', 'AL2')), dict(aspect_ratios=())):
        cfg = Config(**bad)
        with pytest.raises(ValueError, match='num_anchors|layers_name|aspect_ratios'):
            ops.default_boxes(cfg)
        with pytest.raises(ValueError):
            checkpoints.build_model(cfg, 8)


# --- matching ---------------------------------------------------------------

def sequential_match(xmin, xmax, label, box, valid):
    """The release's loop: boxes in order, strict '>', then threshold 0.5."""
    b, a = xmin.shape
    score = np.zeros((b, a), np.float32)
    out_label = np.zeros((b, a), np.int64)
    out_box = np.zeros((b, a, 2), np.float32)
    for i in range(b):
        for j in range(a):
            best, arg = np.float32(0), -1
            for k in range(box.shape[1]):
                if not valid[i, k]:
                    continue
                inter = max(min(xmax[i, j], box[i, k, 1]) - max(xmin[i, j], box[i, k, 0]), np.float32(0))
                iou = inter / ((xmax[i, j] - xmin[i, j]) + (box[i, k, 1] - box[i, k, 0]) - inter)
                if iou > best:
                    best, arg = iou, k
            score[i, j] = best
            if best > 0.5:
                out_label[i, j] = label[i, arg]
                out_box[i, j] = box[i, arg]
    return score, out_label, out_box


def random_case(seed, b=6, a=40, m=5):
    """Boxes on a 1/32 grid (so IoUs tie and hit 0.5 exactly), duplicates, windows without boxes."""
    rng = np.random.RandomState(seed)
    grid = lambda *shape: rng.randint(0, 33, size=shape).astype(np.float32) / 32  # noqa: E731
    s, e = grid(b, a), grid(b, a)
    xmin, xmax = np.minimum(s, e), np.maximum(s, e) + np.float32(1 / 32)
    gs, ge = grid(b, m), grid(b, m)
    box = np.stack([np.minimum(gs, ge), np.maximum(gs, ge) + np.float32(1 / 32)], -1)
    box[:, 2] = box[:, 0]                    # the same box twice, other label: first must win
    xmin[:, :5], xmax[:, :5] = box[:, :1, 0], box[:, :1, 1]
    label = rng.randint(1, 21, size=(b, m)).astype(np.int64)
    label[:, 2] = label[:, 0] % 20 + 1
    valid = rng.rand(b, m) > 0.2
    valid[:, 0] = valid[:, 2] = True
    valid[0] = False                         # a window with no box
    return xmin, xmax, label, box, valid


def test_iou_exactly_half_is_background():
    m = ops.match(torch.tensor([[0.25, 0.25]]), torch.tensor([[0.75, 0.5]]), torch.tensor([[4]]),
                  torch.tensor([[[0.25, 0.5]]]), torch.tensor([[True]]))
    assert m['score'].tolist() == [[0.5, 1.0]]
    assert m['label'].tolist() == [[0, 4]]


@pytest.mark.parametrize('seed', range(4))
def test_batched_matching_equals_sequential(seed):
    xmin, xmax, label, box, valid = random_case(seed)
    t = torch.from_numpy
    m = ops.match(t(xmin), t(xmax), t(label), t(box), t(valid))
    score, want_label, want_box = sequential_match(xmin, xmax, label, box, valid)
    np.testing.assert_array_equal(m['score'].numpy(), score)
    np.testing.assert_array_equal(m['label'].numpy(), want_label)
    np.testing.assert_allclose(m['xmin'].numpy(), want_box[..., 0], atol=1e-7)
    np.testing.assert_allclose(m['xmax'].numpy(), want_box[..., 1], atol=1e-7)
    assert (m['score'][0] == 0).all() and (m['label'][0] == 0).all()
    # the cases do contain ties and IoUs of exactly 0.5
    assert (score == 0.5).any()
    assert (want_label[1:, :5] == label[1:, :1]).all()


def test_matching_without_any_box_slot():
    xmin, xmax = torch.rand(2, 7) * 0.5, torch.rand(2, 7) * 0.5 + 0.5
    m = ops.match(xmin, xmax, torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, 2),
                  torch.zeros(2, 0, dtype=torch.bool))
    assert (m['score'] == 0).all() and (m['label'] == 0).all()


def gt_case():
    label = torch.tensor([[3, 7], [5, 0]])
    box = torch.tensor([[[0.1, 0.3], [0.45, 0.62]], [[0.2, 0.6], [0, 0]]])
    valid = torch.tensor([[True, True], [True, False]])
    return label, box, valid


def test_gradient_through_match_score_and_detach_switch():
    cfg = Config()
    label, box, valid = gt_case()
    raw = (torch.randn(2, 140, 24) * 0.5).requires_grad_()
    xmin, xmax = ops.decode_minmax(raw, cfg)
    ops.match(xmin, xmax, label, box, valid)['score'].sum().backward()
    assert raw.grad[..., -2:].abs().sum() > 0
    assert (raw.grad[..., :-2] == 0).all()
    xmin, xmax = ops.decode_minmax(raw, cfg)
    assert not ops.match(xmin, xmax, label, box, valid, detach_score=True)['score'].requires_grad


@pytest.mark.parametrize('positives', [True, False])
def test_conf_loss_reaches_offsets_unless_detached(positives, make_config):
    label, box, valid = gt_case()
    if not positives:
        box = box * 0.01                                # tiny boxes: nothing matches above 0.5
    raw = (torch.randn(2, 140, 24) * 0.5).requires_grad_()
    grads = {}
    for detach in (False, True):
        cfg = make_config(method='main_stream', p_class=0.0, p_loc=0.0, detach_match_score=detach)
        loss, terms = ops.compute_loss({'main': raw}, label, box, valid, cfg, torch.Generator().manual_seed(1))
        assert torch.isfinite(loss)
        raw.grad = None
        loss.backward()
        grads[detach] = raw.grad[..., -2:].abs().sum()
    assert grads[False] > 0 and grads[True] == 0


# --- loss ---------------------------------------------------------------------

def ce(logits, k):
    return math.log(sum(math.exp(v) for v in logits)) - logits[k]


def sl1(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def small_loss_case():
    """Anchor 0 positive, 1 hard negative, 2 scored exactly 0.5 (neither), 3 and 4 easy candidates."""
    score = torch.tensor([[0.8, 0.3, 0.5, 0.1, 0.0]])
    conf = torch.tensor([[0.2, 0.9, 0.7, 0.1, -2.5]])
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0], [0.3, 0.1, 0.2], [1.0, 0.0, 0.0]]])
    labels = torch.tensor([[2, 0, 0, 0, 0]])
    xmin = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]])
    xmax = torch.tensor([[0.4, 0.5, 0.6, 0.7, 0.8]])
    m = dict(score=score, label=labels, xmin=torch.tensor([[0.15, 0, 0, 0, 0]]),
             xmax=torch.tensor([[2.0, 0, 0, 0, 0]]))
    return logits, labels, conf, xmin, xmax, m


def test_loss_without_easy_negatives():
    logits, labels, conf, xmin, xmax, m = small_loss_case()
    cls, loc, cf = ops.head_loss(logits, labels, conf, xmin, xmax, m, 0.0)
    lg = logits[0].tolist()
    assert math.isclose(float(cls), (ce(lg[0], 2) + ce(lg[1], 0)) / 2, rel_tol=1e-6)
    assert math.isclose(float(loc), sl1(0.1 - 0.15) + sl1(0.4 - 2.0), rel_tol=1e-6)
    assert math.isclose(float(cf), (sl1(0.8 - 0.2) + sl1(0.3 - 0.9)) / 2, rel_tol=1e-6)


def test_loss_with_every_easy_negative():
    logits, labels, conf, xmin, xmax, m = small_loss_case()
    cls, loc, cf = ops.head_loss(logits, labels, conf, xmin, xmax, m, 1e9)
    lg = logits[0].tolist()
    # every anchor but the one scored exactly 0.5 (neither positive nor hard, drawn as easy)
    assert math.isclose(float(cls), sum(ce(lg[i], k) for i, k in ((0, 2), (1, 0), (2, 0), (3, 0), (4, 0))) / 5,
                        rel_tol=1e-6)
    assert math.isclose(float(loc), sl1(0.1 - 0.15) + sl1(0.4 - 2.0), rel_tol=1e-6)
    want = (sl1(0.6) + sl1(-0.6) + sl1(0.5 - 0.7) + sl1(0.0) + sl1(2.5)) / 5
    assert math.isclose(float(cf), want, rel_tol=1e-6)


def test_easy_negative_draw_follows_generator():
    torch.manual_seed(0)
    score = torch.rand(4, 140) * 0.45
    score[:, :10] = 0.9
    conf = torch.rand(4, 140) * 0.4
    draws = [ops.sample_weights(score, conf, 1.0, torch.Generator().manual_seed(s))[1] for s in (3, 3, 4)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    # ratio 1, no hard negative: about as many easy negatives as positives (40 of 520)
    easy = int(draws[0].sum()) - 40
    assert 15 < easy < 70


def test_zero_positives_no_nan():
    logits = torch.randn(2, 140, 21, requires_grad=True)
    conf = torch.rand(2, 140, requires_grad=True)
    score = torch.rand(2, 140) * 0.4
    m = dict(score=score, label=torch.zeros(2, 140, dtype=torch.long), xmin=torch.zeros(2, 140),
             xmax=torch.zeros(2, 140))
    xmin = torch.rand(2, 140, requires_grad=True)
    for ratio in (0.0, 1.0, 1e9):
        cls, loc, cf = ops.head_loss(logits, m['label'], conf, xmin, xmin + 0.1, m, ratio)
        assert float(loc.detach()) == 0 and torch.isfinite(cls) and torch.isfinite(cf)
        hard = ((score < 0.5) & (conf > 0.5)).float()
        want = (0.5 * (score - conf) ** 2 * hard).sum() / hard.sum()   # easy negatives: none drawn
        assert math.isclose(float(cf.detach()), float(want.detach()), rel_tol=1e-5)
        (cls + loc + cf).backward()
        assert all(torch.isfinite(t.grad).all() for t in (logits, conf, xmin))
    # nothing at all to weigh: every term 0, not NaN
    conf0 = torch.zeros(2, 140)
    for value in ops.head_loss(logits, m['label'], conf0, xmin, xmin + 0.1, m, 1.0):
        assert float(value.detach()) == 0


def test_compute_loss_without_ground_truth(make_config):
    for method, keys in (('main_stream', ['main']), ('decouple_ssad', ['main', 'localization', 'classification'])):
        cfg = make_config(method=method)
        outputs = {k: torch.randn(3, 140, 4 if k == 'localization' else 24, requires_grad=True) for k in keys}
        loss, terms = ops.compute_loss(outputs, torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 2, 2),
                                       torch.zeros(3, 2, dtype=torch.bool), cfg)
        assert torch.isfinite(loss) and set(terms) == {'class', 'loc', 'conf'} and float(terms['loc']) == 0
        loss.backward()
        assert all(torch.isfinite(o.grad).all() for o in outputs.values())


def test_decouple_loss_combination(make_config):
    """Decouple-SSAD terms: main and branch per method.md §7, built here from head_loss and match."""
    torch.manual_seed(2)
    cfg = make_config(method='decouple_ssad', negative_ratio=1e9)  # deterministic draw
    label, box, valid = gt_case()
    main, loc_out, cls_out = torch.randn(2, 140, 24), torch.randn(2, 140, 4), torch.randn(2, 140, 24)
    loc_out[..., 2:] = main[..., 22:] + 0.3          # localization and classification boxes differ
    cls_out[..., 22:] = main[..., 22:] - 0.3
    loss, terms = ops.compute_loss(dict(main=main, localization=loc_out, classification=cls_out),
                                   label, box, valid, cfg)

    def matched(raw):
        xmin, xmax = ops.decode_minmax(raw, cfg)
        return xmin, xmax, ops.match(xmin, xmax, label, box, valid)

    mx0, mx1, mm = matched(main)
    lx0, lx1, lm = matched(loc_out)
    _, _, cm = matched(cls_out)
    assert not torch.equal(lm['label'], cm['label'])
    mc, ml, _ = ops.head_loss(main[..., :21], mm['label'], main[..., 21], mx0, mx1, mm, 1e9)
    bc, bl, bf = ops.head_loss(cls_out[..., :21], cm['label'], loc_out[..., 1], lx0, lx1, lm, 1e9)
    torch.testing.assert_close(terms['class'], (mc + 2 * bc) / 3)
    torch.testing.assert_close(terms['loc'], (ml + 2 * bl) / 3)
    torch.testing.assert_close(terms['conf'], bf)
    torch.testing.assert_close(loss, terms['class'] + 10 * terms['loc'] + 10 * terms['conf'])


def test_default_boxes_made_in_inference_mode_still_train(make_config):
    # test.py predicts under inference_mode; a later training step in the same process
    # must still be able to back-propagate through the cached default boxes.
    cfg = make_config(num_anchors=(16, 8, 4), scale=(1 / 16, 1 / 8, 1 / 4), aspect_ratios=(0.5, 0.9, 1.7))
    with torch.inference_mode():
        ops.default_boxes(cfg, 'cpu')
    raw = torch.zeros(2, (16 + 8 + 4) * 3, 24, requires_grad=True)
    centre, width = ops.decode(raw, cfg)
    (centre.sum() + width.sum()).backward()
    assert raw.grad[..., -2:].abs().sum() > 0


@pytest.mark.parametrize('stride, length', [(1, 16), (2, 16), (2, 5), (1, 4)])
def test_cpu_matmul_convolution_equals_conv1d(stride, length):
    torch.manual_seed(0)
    conv = ops.Conv1dSame(12, 7, 3, stride=stride)
    x = torch.randn(3, 12, length, requires_grad=True)
    left, right = ops.same_padding(length, 3, stride)
    expected = F.conv1d(F.pad(x, (left, right)), conv.weight, conv.bias, stride)
    got = conv(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(got.square().sum(), (x, conv.weight, conv.bias))
    wanted = torch.autograd.grad(expected.square().sum(), (x, conv.weight, conv.bias))
    for a, b in zip(grads, wanted):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('length', [1, 4, 8])
def test_cpu_upsampling_equals_conv_transpose(length):
    torch.manual_seed(1)
    up = ops.ConvTranspose1dUp(6, 5)
    reference = torch.nn.ConvTranspose1d(6, 5, 4, stride=2, padding=1)
    reference.load_state_dict(up.state_dict())
    x = torch.randn(3, 6, length, requires_grad=True)
    got, expected = up(x), reference(x)
    assert got.shape == (3, 5, 2 * length)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(got.square().sum(), (x, up.weight, up.bias))
    wanted = torch.autograd.grad(expected.square().sum(), (x, reference.weight, reference.bias))
    for a, b in zip(grads, wanted):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('method', ['main_stream', 'decouple_ssad'])
def test_loss_noise_drawn_beforehand_gives_the_same_loss(method, make_config):
    """A training step draws the easy-negative noise before the step (CUDA graphs need that);
    the loss is the one compute_loss gets by drawing from the same generator itself."""
    cfg = make_config(method=method, negative_ratio=3.0)
    label, box, valid = gt_case()
    torch.manual_seed(0)
    names = ['main'] if method == 'main_stream' else ['main', 'localization', 'classification']
    outputs = {name: torch.randn(2, 140, 24 if name != 'localization' else 4) for name in names}
    for value in outputs.values():
        value[..., -2:] = 0  # the default boxes: some match the ground truth
        value[..., -3] = -1  # no hard negatives: easy ones are drawn
    drawn, _ = ops.compute_loss(outputs, label, box, valid, cfg, torch.Generator().manual_seed(5))
    noise = ops.loss_noise(cfg, 2, torch.Generator().manual_seed(5))
    assert noise.shape == (len(names) - (method == 'decouple_ssad'), 2, 140)
    given, _ = ops.compute_loss(outputs, label, box, valid, cfg, noise=noise)
    assert torch.equal(drawn, given)
    other, _ = ops.compute_loss(outputs, label, box, valid, cfg, noise=torch.rand(noise.shape))
    assert not torch.equal(drawn, other)
