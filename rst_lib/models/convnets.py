"""The edge-popup ConvN family (conv2, conv4, conv6, conv8) and a plain MLP."""
from __future__ import annotations

from torch import nn

from .layers import bn2d, scaled
from .registry import register_model


class ConvNet(nn.Module):
    """The edge-popup ConvN family: pairs of 3x3 convs + 2x2 max-pool, then fc 256-256-C."""

    def __init__(self, channels: list[int], num_classes: int, in_channels: int, image_size: int,
                 width: float, norm: str, bn_affine: bool, **_):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        size = image_size
        for i, c in enumerate(channels):
            c = scaled(c, width)
            layers.append(nn.Conv2d(c_in, c, 3, padding=1, bias=False))
            if norm == "bn":
                layers.append(bn2d(c, bn_affine))
            layers.append(nn.ReLU(inplace=True))
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c_in = c
        self.features = nn.Sequential(*layers)
        hidden = scaled(256, width)
        fc: list[nn.Module] = [nn.Flatten(), nn.Linear(c_in * size * size, hidden, bias=False)]
        if norm == "bn":
            fc.append(nn.BatchNorm1d(hidden, affine=bn_affine))
        fc += [nn.ReLU(inplace=True), nn.Linear(hidden, hidden, bias=False)]
        if norm == "bn":
            fc.append(nn.BatchNorm1d(hidden, affine=bn_affine))
        fc += [nn.ReLU(inplace=True), nn.Linear(hidden, num_classes, bias=False)]
        self.classifier = nn.Sequential(*fc)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("conv2", norm_optional=True)
def conv2(**kw):
    return ConvNet([64, 64], **kw)


@register_model("conv4", norm_optional=True)
def conv4(**kw):
    return ConvNet([64, 64, 128, 128], **kw)


@register_model("conv6", norm_optional=True)
def conv6(**kw):
    return ConvNet([64, 64, 128, 128, 256, 256], **kw)


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
        h = scaled(hidden, width)
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
