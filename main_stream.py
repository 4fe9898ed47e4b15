"""Main-stream SSAD: base layers, main anchor layers and a multi-class head per anchor layer.

Input [B, 128, D] features; output {'main': [B, 140, 21 + 3]} raw head output per
anchor (class logits, conf, dx, dw), anchors of AL1, AL2, AL3 concatenated with
index = position * 5 + box. Parameter names follow the TensorFlow checkpoint
(see checkpoints.tf_key).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from operations import Conv1dSame, check_anchor_config, init_weights, max_pool_same, scope


def predict_layer(width, channels_per_box, num_boxes):
    """A prediction head: conv k3 stride 1, no activation, channels_per_box per default box."""
    return scope(conv1d=Conv1dSame(width, num_boxes * channels_per_box, 3))


class MainStream(nn.Module):
    channels_last = False  # set by build_model from the config, as on every convolution

    def __init__(self, cfg, feature_dim, init=True):
        super().__init__()
        check_anchor_config(cfg)
        self.feature_dim = feature_dim
        self.input_steps = cfg.input_steps
        self.num_classes = cfg.num_classes
        self.num_boxes = len(cfg.aspect_ratios)
        self.layers_name = tuple(cfg.layers_name)
        base, width = cfg.base_width, cfg.anchor_width   # 512 and 1024 as released
        self.width = width
        self.base_feature_network = scope(
            conv1d=Conv1dSame(feature_dim, base, 9),
            conv1d_1=Conv1dSame(base, base, 9))
        self.main_anchor_layer = scope(
            conv1d=Conv1dSame(base, width, 3, stride=2),
            conv1d_1=Conv1dSame(width, width, 3, stride=2),
            conv1d_2=Conv1dSame(width, width, 3, stride=2))
        self.add_heads()
        if init:
            init_weights(self, cfg.seed, cfg.identical_kernel_init)

    def add_heads(self):
        for name in self.layers_name:
            self.add_module(f'mulClsReg_predict_layer{name}mainStream',
                            predict_layer(self.width, self.num_classes + 3, self.num_boxes))

    def heads(self, kind, stream):
        return [getattr(self, f'{kind}_predict_layer{name}{stream}') for name in self.layers_name]

    def base(self, x):
        """[B, steps, D] features -> [B, base_width, steps / 4] (channels first from here on)."""
        if x.ndim != 3 or x.shape[1] != self.input_steps or x.shape[2] != self.feature_dim:
            raise ValueError(f'expected features [B, {self.input_steps}, {self.feature_dim}], '
                             f'got {list(x.shape)}')
        b = self.base_feature_network
        x = max_pool_same(F.relu(b.conv1d(x.transpose(1, 2))), 4, 2)
        return max_pool_same(F.relu(b.conv1d_1(x)), 4, 2)

    def main_anchor_layers(self, x):
        """[MAL1, MAL2, MAL3], [B, anchor_width, L] with L = 16, 8, 4."""
        layers = []
        x = self.base(x)
        for conv in self.main_anchor_layer.values():
            x = F.relu(conv(x))
            layers.append(x)
        return layers

    def run_heads(self, heads, layers):
        """Raw outputs [B, A, C] of one head per anchor layer, layers concatenated."""
        outs = []
        for head, x in zip(heads, layers):
            y = head.conv1d(x).transpose(1, 2)                       # [B, L, boxes * C]
            outs.append(y.reshape(y.shape[0], y.shape[1] * self.num_boxes, -1))
        return torch.cat(outs, 1)

    def forward(self, x):
        return {'main': self.run_heads(self.heads('mulClsReg', 'mainStream'), self.main_anchor_layers(x))}
