"""The method's operations: TF-"same" layers, default boxes, matching, loss, prediction.

Everything here is batched over windows and anchors (no host synchronisation in
the training step), so that one training step is a handful of tensor ops.

Raw head outputs (see main_stream.py / decouple_ssad.py) are [B, A, C] with
A = 140 anchors (AL1, AL2, AL3 concatenated; anchor index = position * 5 + box)
and channels [class logits..., conf, dx, dw]; the last three are always
conf, dx, dw, so a binary head ([action logit, conf, dx, dw]) reads the same way.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------
# TensorFlow "same" padding

def same_padding(length, kernel_size, stride):
    """(left, right) padding TensorFlow's "same" gives: out = ceil(in / stride), extra goes right."""
    out = -(-length // stride)
    total = max((out - 1) * stride + kernel_size - length, 0)
    return total // 2, total - total // 2


def as_nhwc(x):
    """[B, C, L] -> [B, C, 1, L] in channels-last memory (a view when x is already laid out so)."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def conv1d_same(x, weight, bias, stride=1, groups=1, channels_last=False):
    """conv1d on [B, C, L] with TensorFlow "same" padding (asymmetric for strided layers).

    channels_last: run it as a 2-d convolution on channels-last memory, the layout
    tensor-core kernels read directly; the output keeps that layout, so the next layer
    gets it without a copy.
    """
    k = weight.shape[-1]
    left, right = same_padding(x.shape[-1], k, stride)
    if channels_last:
        x = as_nhwc(x)
        if left != right:
            x, left = F.pad(x, (left, right)), 0
        return F.conv2d(x, weight.unsqueeze(2), bias, (1, stride), (0, left), 1, groups).squeeze(2)
    if x.device.type == 'cpu' and k == 3 and groups == 1:
        return matmul_conv1d(F.pad(x, (left, right)), weight, bias, stride)
    if left != right:
        x, left = F.pad(x, (left, right)), 0
    return F.conv1d(x, weight, bias, stride, left, 1, groups)


def matmul_conv1d(x, weight, bias, stride):
    """An unpadded convolution as one matrix product over unfolded windows.

    On a CPU the many k = 3 layers at lengths 16, 8 and 4 run about 1.7x faster this
    way than through conv1d (a Decouple-SSAD training step 1.4x faster).
    """
    out_channels, c, k = weight.shape
    cols = x.unfold(2, k, stride)                                       # [B, C, L, k]
    b, _, length, _ = cols.shape
    y = cols.permute(0, 2, 1, 3).reshape(b * length, c * k) @ weight.reshape(out_channels, c * k).t()
    if bias is not None:
        y = y + bias
    return y.reshape(b, length, -1).transpose(1, 2)


def conv_transpose_up(x, weight, bias, groups=1, channels_last=False):
    """Transposed convolution (kernel 4, stride 2, padding 1) on [B, C, L]: length 2L, as
    TensorFlow's "same". weight [C, out / groups, 4]."""
    if channels_last:
        return F.conv_transpose2d(as_nhwc(x), weight.unsqueeze(2), bias, (1, 2), (0, 1), 0, groups).squeeze(2)
    if x.device.type != 'cpu' or groups != 1:
        return F.conv_transpose1d(x, weight, bias, 2, 1, 0, groups)
    # On a CPU, one matrix product and two shifted sums run several times faster than
    # the transposed convolution. Input step i reaches outputs 2i + k - 1 (k = 0..3):
    # even output 2j gets taps k = 1 of step j and k = 3 of step j - 1, odd output
    # 2j + 1 gets k = 2 of step j and k = 0 of step j + 1.
    b, c, length = x.shape
    z = (x.transpose(1, 2).reshape(b * length, c) @ weight.reshape(c, -1)).reshape(b, length, -1, 4)
    z = F.pad(z, (0, 0, 0, 0, 1, 1))                                   # a zero step at each end
    even = z[:, 1:-1, :, 1] + z[:, :-2, :, 3]
    odd = z[:, 1:-1, :, 2] + z[:, 2:, :, 0]
    y = torch.stack([even, odd], 2).reshape(b, 2 * length, -1)       # [B, 2L, out]
    if bias is not None:
        y = y + bias
    return y.transpose(1, 2)


class Conv1dSame(nn.Conv1d):
    """Conv1d with TensorFlow "same" padding; channels_last is set by checkpoints.build_model."""
    channels_last = False

    def forward(self, x):
        return conv1d_same(x, self.weight, self.bias, self.stride[0], 1, self.channels_last)


class ConvTranspose1dUp(nn.ConvTranspose1d):
    """ConvTranspose1d(kernel 4, stride 2, padding 1): doubles the length, as TensorFlow's "same"."""
    channels_last = False

    def __init__(self, in_channels, out_channels):
        super().__init__(in_channels, out_channels, 4, stride=2, padding=1)

    def forward(self, x):
        return conv_transpose_up(x, self.weight, self.bias, 1, self.channels_last)


def max_pool_same(x, kernel_size, stride):
    """Max pooling on [B, C, L] with TensorFlow "same" padding; padded cells never win (-inf)."""
    left, right = same_padding(x.shape[-1], kernel_size, stride)
    if left != right:
        x, left = F.pad(x, (left, right), value=-math.inf), 0
    # 2-d pooling keeps a channels-last input channels-last; its own padding is -inf
    return F.max_pool2d(x.unsqueeze(2), (1, kernel_size), (1, stride), (0, left)).squeeze(2)


def scope(**modules):
    """A named group of layers, so that parameter names follow TensorFlow's variable scopes."""
    return nn.ModuleDict(modules)


def init_weights(model, seed, identical_kernel_init=True):
    """Glorot-uniform kernels, zero biases.

    identical_kernel_init reproduces the release, whose conv kernels all come from
    initialisers with one fixed seed: kernels of the same shape start identical
    (one seeded draw per shape). Transposed-conv kernels are drawn independently
    either way, as in the release.
    """
    running = torch.Generator().manual_seed(seed)
    drawn = {}
    for module in model.modules():
        if not isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            continue
        w = module.weight
        if w.is_meta:  # shape-only model (parameter counts): nothing to draw
            continue
        # fan_in + fan_out = (in + out) * k, for Conv1d [out, in, k] and ConvTranspose1d [in, out, k]
        bound = math.sqrt(6.0 / ((w.shape[0] + w.shape[1]) * w.shape[2]))
        shape = tuple(w.shape)
        if identical_kernel_init and isinstance(module, nn.Conv1d):
            if shape not in drawn:
                gen = torch.Generator().manual_seed(seed)
                drawn[shape] = torch.rand(shape, generator=gen) * (2 * bound) - bound
            value = drawn[shape]
        else:
            value = torch.rand(shape, generator=running) * (2 * bound) - bound
        with torch.no_grad():
            w.copy_(value)
            module.bias.zero_()


# ----------------------------------------------------------------------------
# Default boxes and decoding

def check_anchor_config(cfg):
    """Anchor settings the network can produce; ValueError naming the fields otherwise."""
    n = len(cfg.layers_name)
    if n != 3 or len(cfg.num_anchors) != 3 or len(cfg.scale) != 3:
        raise ValueError(f'the network has 3 anchor layers; layers_name {tuple(cfg.layers_name)}, '
                         f'num_anchors {tuple(cfg.num_anchors)} and scale {tuple(cfg.scale)} '
                         f'need 3 entries each')
    expected = (cfg.input_steps // 8, cfg.input_steps // 16, cfg.input_steps // 32)
    if tuple(cfg.num_anchors) != expected:
        raise ValueError(f'num_anchors {tuple(cfg.num_anchors)} does not fit the network: with '
                         f'input_steps={cfg.input_steps} the anchor layers have {expected} positions')
    if len(cfg.aspect_ratios) < 1:
        raise ValueError('aspect_ratios is empty')
    if cfg.num_classes < 2:
        raise ValueError(f'num_classes must be >= 2 (background + classes), got {cfg.num_classes}')


_BOXES = {}


def default_boxes(cfg, device=None):
    """Centre and width [A] of every default box, layers concatenated, index = position * R + box.

    Cached per device, so a training step copies nothing to the accelerator.
    """
    check_anchor_config(cfg)
    key = (tuple(cfg.num_anchors), tuple(cfg.scale), tuple(cfg.aspect_ratios), str(device))
    if key not in _BOXES:
        # Built outside inference mode: the cache is shared with training, and autograd
        # refuses tensors that were created under torch.inference_mode().
        with torch.inference_mode(False):
            _BOXES[key] = _default_boxes(cfg, device)
    return _BOXES[key]


def _default_boxes(cfg, device):
    ratios = torch.tensor(cfg.aspect_ratios, dtype=torch.float64)
    centres, widths = [], []
    for positions, scale in zip(cfg.num_anchors, cfg.scale):
        c = (torch.arange(positions, dtype=torch.float64) + 0.5) / positions
        centres.append(c[:, None].expand(positions, len(ratios)).reshape(-1))
        widths.append((scale * ratios)[None, :].expand(positions, len(ratios)).reshape(-1))
    return (torch.cat(centres).to(device, torch.float32), torch.cat(widths).to(device, torch.float32))


def decode(raw, cfg):
    """(centre, width) [B, A] of the predicted boxes from a raw head output [B, A, C]."""
    x0, w0 = default_boxes(cfg, raw.device)
    dx, dw = raw[..., -2], raw[..., -1]
    return dx * w0 * 0.1 + x0, torch.exp(0.1 * dw) * w0


def decode_minmax(raw, cfg):
    x, w = decode(raw, cfg)
    return x - w / 2, x + w / 2


# ----------------------------------------------------------------------------
# Matching (against the decoded predicted boxes)

def match(xmin, xmax, gt_label, gt_box, gt_valid, detach_score=False):
    """Assign each predicted box [B, A] to ground truth [B, M].

    match_score = max IoU over the window's boxes (0 with none). Above 0.5 the anchor
    takes the label and box of the first box reaching that maximum, else background
    and box (0, 0). Labels and boxes are constants; the score keeps its gradient into
    the predicted boxes unless detach_score.
    Returns dict(score [B,A], label int64 [B,A], xmin, xmax [B,A], centre, width [B,A]).
    """
    gmin, gmax = gt_box[..., 0][:, None, :], gt_box[..., 1][:, None, :]   # [B, 1, M]
    pmin, pmax = xmin[:, :, None], xmax[:, :, None]                       # [B, A, 1]
    inter = torch.clamp(torch.minimum(pmax, gmax) - torch.maximum(pmin, gmin), min=0)
    union = (pmax - pmin) + (gmax - gmin) - inter
    iou = inter / union                                                   # [B, A, M]
    iou = torch.where(gt_valid[:, None, :], iou, torch.full_like(iou, -1.0))
    if iou.shape[-1] == 0:
        best = torch.zeros_like(xmin)
        idx = torch.zeros(xmin.shape, dtype=torch.long, device=xmin.device)
        gt_label = torch.zeros(xmin.shape[0], 1, dtype=torch.long, device=xmin.device)
        gt_box = torch.zeros(xmin.shape[0], 1, 2, dtype=xmin.dtype, device=xmin.device)
    else:
        top = iou.detach().amax(-1, keepdim=True)
        # first box (in list order) reaching the maximum: the release's strict '>' loop
        order = torch.arange(iou.shape[-1], 0, -1, device=iou.device)
        idx = ((iou.detach() == top) * order).argmax(-1)                  # [B, A]
        best = iou.gather(-1, idx[..., None])[..., 0]
        # no box (or only padding): score 0, no gradient
        best = torch.where(best > 0, best, torch.zeros_like(best))
    if detach_score:
        best = best.detach()
    positive = best.detach() > 0.5
    label = torch.where(positive, gt_label.gather(1, idx), torch.zeros_like(idx))
    box = gt_box.detach().gather(1, idx[..., None].expand(*idx.shape, 2))
    zero = torch.zeros_like(box[..., 0])
    mmin = torch.where(positive, box[..., 0], zero)
    mmax = torch.where(positive, box[..., 1], zero)
    # the release stores (centre, width) and the loss turns them back into (xmin, xmax)
    centre, width = (mmin + mmax) / 2, mmax - mmin
    return dict(score=best, label=label, centre=centre, width=width,
                xmin=centre - width / 2, xmax=centre + width / 2)


# ----------------------------------------------------------------------------
# Loss

def smooth_l1(x):
    ax = x.abs()
    return torch.where(ax < 1, 0.5 * x * x, ax - 0.5)


def weighted_mean(term, weight):
    """sum(term * weight) / count(weight != 0), and 0 when no weight is non-zero."""
    count = (weight != 0).sum().to(term.dtype)
    return (term * weight).sum() / count.clamp(min=1)


def sample_weights(score, conf, negative_ratio, generator=None, noise=None):
    """Loss weights (P, W) of method.md §7: positives, and positives + hard + drawn easy negatives.

    noise: uniform [0, 1) draws shaped like score for the easy negatives; drawn from
    generator when None.
    """
    positive = score > 0.5
    hard = (score < 0.5) & (conf > 0.5)
    num_all = float(score.numel())
    num_pos = positive.sum().to(score.dtype)
    num_hard = hard.sum().to(score.dtype)
    ratio = (negative_ratio - num_hard / num_pos.clamp(min=1)) * num_pos \
        / (num_all - num_pos - num_hard).clamp(min=1)
    # no positive in the batch: no easy negative (the release's NaN ratio draws none)
    ratio = torch.where(num_pos > 0, ratio.clamp(max=1), torch.zeros_like(ratio))
    if noise is None:
        noise = torch.rand(score.shape, generator=generator, device=score.device, dtype=score.dtype)
    easy = ~positive & ~hard & (noise > 1 - ratio)
    p = positive.to(score.dtype)
    return p, p + hard.to(score.dtype) + easy.to(score.dtype)


def head_loss(logits, labels, conf, xmin, xmax, m, negative_ratio, generator=None, noise=None):
    """(class, loc, conf) losses of one head.

    conf, xmin, xmax [B, A] and the matching m (from `match` on those boxes) give the
    weights and the conf / location terms; logits [B, A, K] and labels [B, A] give the
    class term (Decouple-SSAD takes them from another output and its own matching).
    """
    p, w = sample_weights(m['score'].detach(), conf.detach(), negative_ratio, generator, noise)
    class_term = torch.logsumexp(logits, -1) - logits.gather(-1, labels[..., None])[..., 0]
    loc_term = smooth_l1(xmin - m['xmin']) + smooth_l1(xmax - m['xmax'])
    conf_term = smooth_l1(m['score'] - conf)
    return weighted_mean(class_term, w), weighted_mean(loc_term, p), weighted_mean(conf_term, w)


def _head(raw, cfg, gt_label, gt_box, gt_valid):
    xmin, xmax = decode_minmax(raw, cfg)
    m = match(xmin, xmax, gt_label, gt_box, gt_valid, cfg.detach_match_score)
    return xmin, xmax, m


def loss_noise(cfg, batch_size, generator=None, device=None):
    """The loss's easy-negative draws for a batch: uniform [heads, B, A], one row per
    loss head (1 for the main stream, 2 for Decouple-SSAD).

    Drawn before the step, so that a captured CUDA graph replays with fresh numbers.
    """
    heads = 1 if cfg.method == 'main_stream' else 2
    return torch.rand(heads, batch_size, sum(cfg.num_anchors) * len(cfg.aspect_ratios),
                      generator=generator, device=device)


def compute_loss(outputs, gt_label, gt_box, gt_valid, cfg, generator=None, noise=None):
    """Training loss of either method (method.md §6-7).

    outputs: the model's forward dict; gt_label int64 [B, M] (model class index,
    0 = padding), gt_box [B, M, 2] (xmin, xmax normalised), gt_valid bool [B, M].
    generator: torch.Generator on the outputs' device for the easy-negative draw
    (None = the global RNG); or noise: those draws made beforehand (see loss_noise).
    Returns (loss, dict(class=, loc=, conf=) of detached 0-dim tensors).
    """
    k = cfg.num_classes
    # the loss is always computed in float32 (outputs may come from bf16 autocast)
    outputs = {key: value.float() for key, value in outputs.items()}
    main = outputs['main']
    if noise is None:
        noise = loss_noise(cfg, main.shape[0], generator, main.device)
    if cfg.method == 'main_stream':
        xmin, xmax, m = _head(main, cfg, gt_label, gt_box, gt_valid)
        cls, loc, conf = head_loss(main[..., :k], m['label'], main[..., k], xmin, xmax, m,
                                   cfg.negative_ratio, noise=noise[0])
    else:
        loc_out, cls_out = outputs['localization'], outputs['classification']
        # The three matchings (main stream, localization, classification output) as one
        # batched call: the same numbers as three calls, with a third of the kernels.
        offsets = torch.cat([main[..., -2:], loc_out[..., -2:], cls_out[..., -2:]])
        xmin3, xmax3, m3 = _head(offsets, cfg, gt_label.repeat(3, 1), gt_box.repeat(3, 1, 1),
                                 gt_valid.repeat(3, 1))
        (xmin, lxmin, _), (xmax, lxmax, _) = xmin3.chunk(3), xmax3.chunk(3)
        m, lm, cm = ({key: value.chunk(3)[i] for key, value in m3.items()} for i in range(3))
        main_class, main_loc, _ = head_loss(main[..., :k], m['label'], main[..., k], xmin, xmax, m,
                                            cfg.negative_ratio, noise=noise[0])
        branch_class, branch_loc, branch_conf = head_loss(
            cls_out[..., :k], cm['label'], loc_out[..., 1], lxmin, lxmax, lm, cfg.negative_ratio, noise=noise[1])
        cls = (main_class + 2 * branch_class) / 3
        loc = (main_loc + 2 * branch_loc) / 3
        conf = branch_conf
    loss = cfg.p_class * cls + cfg.p_loc * loc + cfg.p_conf * conf
    return loss, {'class': cls.detach(), 'loc': loc.detach(), 'conf': conf.detach()}


# ----------------------------------------------------------------------------
# Inference

def predict(outputs, cfg):
    """Per-anchor class probabilities, conf and window-normalised box (method.md §9, before * 512 and clip)."""
    k = cfg.num_classes
    outputs = {key: value.float() for key, value in outputs.items()}
    cls_out = outputs['classification'] if cfg.method == 'decouple_ssad' else outputs['main']
    loc_out = outputs['localization'] if cfg.method == 'decouple_ssad' else outputs['main']
    xmin, xmax = decode_minmax(loc_out, cfg)
    return dict(class_prob=torch.softmax(cls_out[..., :k], -1), conf=loc_out[..., -3], xmin=xmin, xmax=xmax)


# ----------------------------------------------------------------------------
# Devices and precision

def resolve_device(name):
    """torch.device of a config `device` value: auto (CUDA when there is one), cpu, cuda, cuda:N."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f'device: {name!r} is not a device; use auto, cpu, cuda or cuda:N') from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'device: {name} asked for, but CUDA is not available; use --device=cpu')
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f'device: {name} asked for, but there are {torch.cuda.device_count()} GPU(s)')
    elif device.type != 'cpu':
        raise ValueError(f'device: {name!r} is not supported; use auto, cpu, cuda or cuda:N')
    return device


def set_precision(cfg):
    """float32 arithmetic unless cfg.tf32. PyTorch lets cuDNN convolutions use TF32 by
    default, which changes results in the 3rd-4th digit; fp32 is what the paper used."""
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32
    torch.set_float32_matmul_precision('high' if cfg.tf32 else 'highest')
    # Autotuning picks each convolution's fastest kernel once per shape, at a start-up cost.
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
