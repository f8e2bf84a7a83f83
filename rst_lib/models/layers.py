"""Small building blocks every architecture shares: input normalization inside the model,
non-affine-by-default BatchNorm, channel counts scaled by ``width``."""
from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std per channel; lives in the model so attacks see [0, 1] pixels."""

    def __init__(self, mean, std, channels: int):
        super().__init__()
        mean = list(mean) if len(mean) == channels else list(mean) * channels
        std = list(std) if len(std) == channels else list(std) * channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


def bn2d(c: int, affine: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, affine=affine)


def scaled(c: int, width: float) -> int:
    """``c`` channels times ``width`` (at least one)."""
    return max(1, int(round(c * width)))
