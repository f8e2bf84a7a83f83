"""More architectures for the registry: resnet34/50, wide_resnet (wrn28_10, wrn32_10),
vgg16, mobilenet_v2, conv8 and mlp.

Every model follows the rules of :func:`rst_lib.models.register_model`: bias-free
``nn.Conv2d`` / ``nn.Linear`` layers, BatchNorm non-affine unless ``bn_affine``, modules
registered in forward order (first conv/linear = input layer, last = classifier), every
channel count scaled by ``width`` through ``_w``. Weight init, masking and input
normalization are done by :func:`rst_lib.models.build_model`.

All convolutional models except ``conv8`` end with global average pooling, so any
``image_size >= 8`` works; ``conv8`` (four 2x2 max-pools before a flatten) needs
``image_size >= 16``.
"""
from __future__ import annotations

import torch
from torch import nn

from .models import BasicBlock, ConvNet, PreActBlock, ResNet, _bn2d, _w, register_model

# ------------------------------------------------------------------------------ ResNets


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
        self.bn1 = _bn2d(c_out, bn_affine)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride, 1, bias=False)
        self.bn2 = _bn2d(c_out, bn_affine)
        self.conv3 = nn.Conv2d(c_out, c_exp, 1, bias=False)
        self.bn3 = _bn2d(c_exp, bn_affine)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_exp:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_exp, 1, stride, bias=False),
                                          _bn2d(c_exp, bn_affine))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


@register_model("resnet34")
def resnet34(**kw):
    """ResNet-34 (He et al. 2016; BasicBlock [3, 4, 6, 3]) with the CIFAR stem."""
    return ResNet(BasicBlock, [3, 4, 6, 3], preact=False, **kw)


@register_model("resnet50")
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
    :class:`rst_lib.models.PreActBlock`, which computes the same function as the TRADES block.
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
        c = _w(16, width)
        self.conv1 = nn.Conv2d(in_channels, c, 3, 1, 1, bias=False)
        blocks = []
        c_in = c
        for i, stride in enumerate((1, 2, 2)):
            c_out = _w(16 * 2 ** i * widen_factor, width)
            for j in range(n):
                blocks.append(PreActBlock(c_in, c_out, stride if j == 0 else 1, bn_affine))
                c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.bn_final = _bn2d(c_in, bn_affine)
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


# --------------------------------------------------------------------------------- VGG

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG with BatchNorm (Simonyan & Zisserman 2015) adapted to small images.

    Each conv is 3x3 -> BN -> ReLU. A 2x2 max-pool is skipped when the feature map is
    already smaller than 2x2 (a 16x16 input keeps 4 of the 5 pools). Classifier choice: the
    CIFAR VGG of kuangliu/pytorch-cifar and the robust-ticket code, i.e. adaptive average
    pooling to 1x1 and a single linear layer (512 -> classes), not the 4096-4096 ImageNet
    head.
    """

    def __init__(self, cfg: list, num_classes: int, in_channels: int, image_size: int,
                 width: float, bn_affine: bool, **_):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, size = in_channels, int(image_size)
        for v in cfg:
            if v == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            c = _w(v, width)
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), _bn2d(c, bn_affine),
                       nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes, bias=False)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model("vgg16")
def vgg16(**kw):
    """VGG-16 with BatchNorm (configuration D), single linear classifier after 1x1 pooling."""
    return VGG(VGG16_CFG, **kw)


# ------------------------------------------------------------------------ MobileNetV2


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
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), _bn2d(hidden, bn_affine),
                       nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                   _bn2d(hidden, bn_affine), nn.ReLU6(inplace=True),
                   nn.Conv2d(hidden, c_out, 1, bias=False), _bn2d(c_out, bn_affine)]
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
        c = _w(32, width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, 1, 1, bias=False),
                                  _bn2d(c, bn_affine), nn.ReLU6(inplace=True))
        blocks = []
        c_in = c
        for t, ch, n, s in self.CFG:
            c_out = _w(ch, width)
            for j in range(n):
                blocks.append(InvertedResidual(c_in, c_out, s if j == 0 else 1, t, bn_affine))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        c_last = _w(1280, width)
        self.head = nn.Sequential(nn.Conv2d(c_in, c_last, 1, bias=False),
                                  _bn2d(c_last, bn_affine), nn.ReLU6(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_last, num_classes, bias=False)

    def forward(self, x):
        out = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.pool(out), 1))


@register_model("mobilenet_v2")
def mobilenet_v2(**kw):
    """MobileNetV2, expansion 6, depthwise convs, CIFAR strides (see :class:`MobileNetV2`)."""
    return MobileNetV2(**kw)


# ---------------------------------------------------------------------- edge-popup Conv8


@register_model("conv8", norm_optional=True)
def conv8(image_size: int = 32, **kw):
    """Edge-popup Conv8 (Ramanujan et al. 2020): 64,64,128,128,256,256,512,512 convs with a
    2x2 max-pool after every pair, then fc 256-256-classes. Needs ``image_size >= 16``."""
    if int(image_size) < 16:
        raise ValueError(f"conv8 needs image_size >= 16 (four 2x2 max-pools), got {image_size}")
    return ConvNet([64, 64, 128, 128, 256, 256, 512, 512], image_size=image_size, **kw)


# --------------------------------------------------------------------------------- MLP


class MLP(nn.Module):
    """Fully connected net: flatten -> ``depth`` x [Linear(hidden * width) -> BN1d -> ReLU]
    -> Linear(classes). BatchNorm1d only when ``norm == "bn"``."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, width: float,
                 bn_affine: bool, norm: str = "bn", depth: int = 2, hidden: int = 256, **_):
        super().__init__()
        depth = int(depth)
        if depth < 1:
            raise ValueError(f"mlp depth={depth} is invalid: it must be >= 1 hidden layer")
        h = _w(hidden, width)
        layers: list[nn.Module] = [nn.Flatten()]
        c_in = in_channels * int(image_size) ** 2
        for _ in range(depth):
            layers.append(nn.Linear(c_in, h, bias=False))
            if norm == "bn":
                layers.append(nn.BatchNorm1d(h, affine=bn_affine))
            layers.append(nn.ReLU(inplace=True))
            c_in = h
        layers.append(nn.Linear(c_in, num_classes, bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


@register_model("mlp", norm_optional=True, options=("depth", "hidden"))
def mlp(**kw):
    """MLP with ``depth`` hidden layers (default 2) of ``hidden`` units (default 256) x width."""
    return MLP(**kw)
