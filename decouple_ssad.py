"""Decouple-SSAD: the main stream plus a localization and a classification branch.

The base and main anchor layers and the main-stream heads are MainStream's own.
Each branch turns MAL1..3 into BAL1..3 (top-down, with transposed-conv up-sampling);
the localization branch has binary heads ([action logit, conf, dx, dw] per box),
the classification branch multi-class heads. Per anchor layer, before decoding:

    classification = (main + classification branch) / 2            (all channels)
    localization   = [branch action logit, branch conf, (main dx, dw + branch dx, dw) / 2]

forward returns dict of [B, A, C] raw outputs: 'main', 'loc_branch', 'cls_branch',
'localization', 'classification'. The binary action logit and the classification
branch's conf are computed but no loss uses them; they are kept so the released
checkpoints load.
"""
import torch
import torch.nn.functional as F

from main_stream import MainStream, predict_layer
from operations import Conv1dSame, ConvTranspose1dUp, conv1d_same, conv_transpose_up, init_weights, scope

BRANCHES = ('ProposalBranch', 'ClassificationBranch')


def branch_anchor_layer(width):
    """Layers of one branch, named in the release's construction order."""
    conv = {f'conv1d{"" if i == 0 else f"_{i}"}': Conv1dSame(width, width, 3) for i in range(9)}
    up = {name: ConvTranspose1dUp(width, width)
          for name in ('conv2d_transpose', 'conv2d_transpose_1')}
    order = ['conv1d', 'conv1d_1', 'conv1d_2', 'conv2d_transpose', 'conv1d_3', 'conv1d_4', 'conv1d_5',
             'conv2d_transpose_1', 'conv1d_6', 'conv1d_7', 'conv1d_8']
    layers = {**conv, **up}
    return scope(**{name: layers[name] for name in order})


def branch_forward(conv, up, mal1, mal2, mal3):
    """[BAL1, BAL2, BAL3] of a branch from the main anchor layers.

    conv(x, name, first) and up(x, name) run the branch's layer `name`; first marks the
    layers that read a main anchor layer (the input both branches share).
    """
    def inside(x, a, b):
        return conv(F.relu(conv(x, a, True)), b, False)

    def out(x, c):
        return F.relu(conv(F.relu(x), c, False))

    bal3 = out(inside(mal3, 'conv1d', 'conv1d_1'), 'conv1d_2')
    bal2 = out((2 * inside(mal2, 'conv1d_3', 'conv1d_4') + up(bal3, 'conv2d_transpose')) / 3, 'conv1d_5')
    bal1 = out((2 * inside(mal1, 'conv1d_6', 'conv1d_7') + up(bal2, 'conv2d_transpose_1')) / 3, 'conv1d_8')
    return [bal1, bal2, bal3]


def one_branch(branch, mals):
    """[BAL1, BAL2, BAL3] of one branch (its layers, branch_anchor_layer's scope)."""
    return branch_forward(lambda x, name, first: branch[name](x), lambda x, name: branch[name](x), *mals)


def both_branches(proposal, classification, mals, channels_last):
    """Both branches at once (the layers of each, branch_anchor_layer's scopes), as the
    channels of one network of twice the width: a layer reading a main anchor layer is one
    convolution with both branches' filters, every later one a grouped convolution
    (groups = 2). Fewer, larger kernels; the same numbers as one_branch twice. Returns the
    two branches' [BAL1, BAL2, BAL3]."""
    def both(name):
        return (torch.cat([proposal[name].weight, classification[name].weight]),
                torch.cat([proposal[name].bias, classification[name].bias]))

    def conv(x, name, first):
        return conv1d_same(x, *both(name), 1, 1 if first else 2, channels_last)

    def up(x, name):
        return conv_transpose_up(x, *both(name), 2, channels_last)

    halves = [bal.chunk(2, 1) for bal in branch_forward(conv, up, *mals)]
    return [h[0] for h in halves], [h[1] for h in halves]


class DecoupleSSAD(MainStream):

    def __init__(self, cfg, feature_dim):
        super().__init__(cfg, feature_dim, init=False)
        self.group_branches = cfg.group_branches
        init_weights(self, cfg.seed, cfg.identical_kernel_init)

    def add_heads(self):
        # the release's graph order: branches, then the three heads of each anchor layer together
        for branch in BRANCHES:
            self.add_module(f'branch_anchor_layer{branch}', branch_anchor_layer(self.width))
        for name in self.layers_name:
            self.add_module(f'mulClsReg_predict_layer{name}mainStream',
                            predict_layer(self.width, self.num_classes + 3, self.num_boxes))
            self.add_module(f'biClsReg_predict_layer{name}ProposalBranch',
                            predict_layer(self.width, 1 + 3, self.num_boxes))
            self.add_module(f'mulClsReg_predict_layer{name}ClassificationBranch',
                            predict_layer(self.width, self.num_classes + 3, self.num_boxes))

    def forward(self, x):
        mals = self.main_anchor_layers(x)
        main = self.run_heads(self.heads('mulClsReg', 'mainStream'), mals)
        proposal, classification = self.branch_anchor_layerProposalBranch, self.branch_anchor_layerClassificationBranch
        if self.group_branches:
            loc_bals, cls_bals = both_branches(proposal, classification, mals, self.channels_last)
        else:
            loc_bals, cls_bals = one_branch(proposal, mals), one_branch(classification, mals)
        loc = self.run_heads(self.heads('biClsReg', 'ProposalBranch'), loc_bals)
        cls = self.run_heads(self.heads('mulClsReg', 'ClassificationBranch'), cls_bals)
        k = self.num_classes
        localization = torch.cat([loc[..., :2], (main[..., k + 1:] + loc[..., 2:]) / 2], -1)
        classification = (main + cls) / 2
        return dict(main=main, loc_branch=loc, cls_branch=cls,
                    localization=localization, classification=classification)
