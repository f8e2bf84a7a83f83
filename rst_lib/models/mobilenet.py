"""MobileNetV2 (CIFAR stride pattern)."""
from __future__ import annotations

import torch
from torch import nn

from .layers import bn2d, scaled
from .registry import register_model


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise (stride) -> 1x1 linear projection.

    As in the paper and torchvision: no expansion conv when ``expand_ratio == 1``, ReLU6,
    and an identity residual only when ``stride == 1`` and the channel count is unchanged.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int, bn_affine: bool):
        super().__init__()
        hidden = c_in * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), bn2d(hidden, bn_affine),
                       nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                   bn2d(hidden, bn_affine), nn.ReLU6(inplace=True),
                   nn.Conv2d(hidden, c_out, 1, bias=False), bn2d(c_out, bn_affine)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) with the usual CIFAR adaptation.

    Stages (expansion t, channels c, blocks n, stride s) as in the paper, except - as in
    kuangliu/pytorch-cifar and chenyaofo/pytorch-cifar-models - the first conv has stride 1
    and the first downsampling stage (24 channels) stride 1: the two earliest of the five
    ImageNet downsamplings are dropped, so a 32x32 input ends at 4x4 (not 1x1). Every
    channel count, the 1280-channel last conv included, is scaled by ``width`` via ``_w``
    (torchvision rounds to multiples of 8 and keeps 1280 for width < 1; not done here so
    that width is the same plain multiplier as in the other models).
    """

    # t, c, n, s
    CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int, in_channels: int, width: float, bn_affine: bool, **_):
        super().__init__()
        c = scaled(32, width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, 1, 1, bias=False),
                                  bn2d(c, bn_affine), nn.ReLU6(inplace=True))
        blocks = []
        c_in = c
        for t, ch, n, s in self.CFG:
            c_out = scaled(ch, width)
            for j in range(n):
                blocks.append(InvertedResidual(c_in, c_out, s if j == 0 else 1, t, bn_affine))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        c_last = scaled(1280, width)
        self.head = nn.Sequential(nn.Conv2d(c_in, c_last, 1, bias=False),
                                  bn2d(c_last, bn_affine), nn.ReLU6(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_last, num_classes, bias=False)

    def forward(self, x):
        out = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.pool(out), 1))


@register_model("mobilenet_v2")
def mobilenet_v2(**kw):
    """MobileNetV2, expansion 6, depthwise convs, CIFAR strides (see :class:`MobileNetV2`)."""
    return MobileNetV2(**kw)
