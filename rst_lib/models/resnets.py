"""ResNets with the CIFAR stem: post-activation (resnet18/34/50, RST's and RBRN's cResNet),
pre-activation (preact_resnet18) and Wide ResNets."""
from __future__ import annotations

import torch
from torch import nn

from .layers import bn2d, scaled
from .registry import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int, bn_affine: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = bn2d(c_out, bn_affine)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = bn2d(c_out, bn_affine)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          bn2d(c_out, bn_affine))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int, bn_affine: bool):
        super().__init__()
        self.bn1 = bn2d(c_in, bn_affine)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = bn2d(c_out, bn_affine)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


class ResNet(nn.Module):
    """ResNet with the CIFAR stem (3x3 conv, stride 1, no max-pool)."""

    def __init__(self, block, num_blocks: list[int], num_classes: int, in_channels: int,
                 width: float, bn_affine: bool, preact: bool, planes=None, **_):
        super().__init__()
        # planes: the stem and stage widths given outright (RBRN's small baselines,
        # code/arch/resnet_cifar_small.py ResNetCustom: stem = planes[0]); else 64 * 2^i * width
        if planes is not None:
            planes = [int(p) for p in planes]
            if len(planes) != len(num_blocks) or min(planes) < 1:
                raise ValueError(f"planes={planes} is invalid: it must be {len(num_blocks)} "
                                 "stage widths >= 1 (e.g. [6, 13, 26, 51])")
        widths = planes or [scaled(64 * 2 ** i, width) for i in range(len(num_blocks))]
        c = planes[0] if planes else scaled(64, width)
        self.conv1 = nn.Conv2d(in_channels, c, 3, 1, 1, bias=False)
        self.bn1 = None if preact else bn2d(c, bn_affine)
        stages = []
        c_in = c
        for i, n in enumerate(num_blocks):
            c_out = widths[i]
            for j in range(n):
                stages.append(block(c_in, c_out, 2 if (i > 0 and j == 0) else 1, bn_affine))
                c_in = c_out * block.expansion
        self.layers = nn.Sequential(*stages)
        self.bn_final = bn2d(c_in, bn_affine) if preact else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes, bias=False)

    def forward(self, x):
        out = self.conv1(x)
        if self.bn1 is not None:
            out = torch.relu(self.bn1(out))
        out = self.layers(out)
        if self.bn_final is not None:
            out = torch.relu(self.bn_final(out))
        return self.fc(torch.flatten(self.pool(out), 1))


@register_model("resnet18", options=("planes",))
def resnet18(**kw):
    return ResNet(BasicBlock, [2, 2, 2, 2], preact=False, **kw)


@register_model("preact_resnet18")
def preact_resnet18(**kw):
    return ResNet(PreActBlock, [2, 2, 2, 2], preact=True, **kw)


class Bottleneck(nn.Module):
    """ResNet bottleneck block (1x1 -> 3x3 -> 1x1, output ``4 * c_out`` channels).

    As in torchvision's ResNet v1.5 and the common CIFAR code (kuangliu/pytorch-cifar), the
    stride sits on the 3x3 conv; the shortcut is a 1x1 conv + BN when the shape changes.
    """

    expansion = 4

    def __init__(self, c_in: int, c_out: int, stride: int, bn_affine: bool):
        super().__init__()
        c_exp = c_out * self.expansion
        self.conv1 = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn1 = bn2d(c_out, bn_affine)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride, 1, bias=False)
        self.bn2 = bn2d(c_out, bn_affine)
        self.conv3 = nn.Conv2d(c_out, c_exp, 1, bias=False)
        self.bn3 = bn2d(c_exp, bn_affine)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_exp:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_exp, 1, stride, bias=False),
                                          bn2d(c_exp, bn_affine))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


@register_model("resnet34", options=("planes",))
def resnet34(**kw):
    """ResNet-34 (He et al. 2016; BasicBlock [3, 4, 6, 3]) with the CIFAR stem; ``planes``:
    four stage widths instead of 64/128/256/512 (x width), e.g. RBRN's ResNet34_001_p1."""
    return ResNet(BasicBlock, [3, 4, 6, 3], preact=False, **kw)


@register_model("resnet50", options=("planes",))
def resnet50(**kw):
    """ResNet-50 (He et al. 2016; Bottleneck [3, 4, 6, 3], expansion 4) with the CIFAR stem."""
    return ResNet(Bottleneck, [3, 4, 6, 3], preact=False, **kw)


# -------------------------------------------------------------------------- Wide ResNet


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis 2016), pre-activation, as in the CIFAR
    adversarial-training code (TRADES / Rice et al. ``wideresnet.py``).

    3x3 conv (16 channels) -> three stages of ``(depth - 4) / 6`` pre-activation blocks with
    16k, 32k, 64k channels (strides 1, 2, 2; 1x1 conv shortcut where the shape changes)
    -> BN -> ReLU -> global average pool -> linear. No dropout (TRADES' default
    ``dropRate=0``), and without TRADES' unused ``sub_block1``. The block is
    :class:`PreActBlock`, which computes the same function as the TRADES block.
    """

    def __init__(self, depth: int, widen_factor: float, num_classes: int, in_channels: int,
                 width: float, bn_affine: bool, **_):
        super().__init__()
        depth = int(depth)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"wide_resnet depth={depth} is invalid: it must be 6n + 4 with n >= 1 "
                             "(10, 16, 22, 28, 34, 40, ...)")
        if widen_factor <= 0:
            raise ValueError(f"wide_resnet widen_factor={widen_factor!r} is invalid: it must be > 0")
        n = (depth - 4) // 6
        c = scaled(16, width)
        self.conv1 = nn.Conv2d(in_channels, c, 3, 1, 1, bias=False)
        blocks = []
        c_in = c
        for i, stride in enumerate((1, 2, 2)):
            c_out = scaled(16 * 2 ** i * widen_factor, width)
            for j in range(n):
                blocks.append(PreActBlock(c_in, c_out, stride if j == 0 else 1, bn_affine))
                c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.bn_final = bn2d(c_in, bn_affine)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes, bias=False)

    def forward(self, x):
        out = self.layers(self.conv1(x))
        out = torch.relu(self.bn_final(out))
        return self.fc(torch.flatten(self.pool(out), 1))


@register_model("wide_resnet", options=("depth", "widen_factor"))
def wide_resnet(depth: int = 28, widen_factor: float = 10, **kw):
    """WRN-``depth``-``widen_factor`` (defaults: WRN-28-10); ``depth`` must be 6n + 4."""
    return WideResNet(depth, widen_factor, **kw)


@register_model("wrn28_10")
def wrn28_10(**kw):
    """WRN-28-10: 4 blocks per stage, about 36.5M weights at width 1."""
    return WideResNet(28, 10, **kw)


@register_model("wrn32_10")
def wrn32_10(**kw):
    """Madry et al.'s "WRN-32-10" (MadryLab/cifar10_challenge): 5 blocks per stage.

    Madry et al. count 1 + 3 * 5 * 2 + 1 = 32 layers; in Zagoruyko's 6n + 4 counting the same
    network is WRN-34-10 (TRADES' name), so this is ``wide_resnet(depth=34)``: about 46.2M
    weights at width 1. (Madry's TF code uses parameter-free avg-pool + zero-pad shortcuts;
    here the shortcuts are the 1x1 convs of the TRADES code.)
    """
    return WideResNet(34, 10, **kw)
