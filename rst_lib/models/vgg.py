"""VGG16 with BatchNorm, CIFAR-sized (global average pooling before the classifier)."""
from __future__ import annotations

import torch
from torch import nn

from .layers import bn2d, scaled
from .registry import register_model


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
            c = scaled(v, width)
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), bn2d(c, bn_affine),
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
