"""Frozen random weights and initial scores, drawn from a seeded generator."""
from __future__ import annotations

import math

import torch

from ..config import allowed

# The values each parameter allows are declared with it (rst_lib.config.RunConfig).
WEIGHT_INITS = allowed("weight_init")
SCORE_INITS = allowed("score_init")
SCORE_FAN_MODES = allowed("score_fan_mode")


def fan_in(weight: torch.Tensor) -> int:
    """Inputs feeding one output unit (in_channels / groups * kernel area)."""
    return weight[0].numel()


# Below this many scores torch.topk is already cheap; above, a sampled threshold band wins.



def init_weight_(weight: torch.Tensor, kind: str, generator: torch.Generator,
                 keep_ratio: float = 1.0, scale_fan: bool = False) -> None:
    """Draw frozen random weights in place (fan mode: fan_in; ReLU gain for kaiming/constant).

    * ``signed_constant``: +-gain/sqrt(fan) (edge-popup / RST).
    * ``unsigned_constant``: +gain/sqrt(fan) everywhere.
    * ``kaiming_normal``: N(0, gain^2/fan); ``kaiming_uniform``: U(-b, b), b = gain*sqrt(3/fan).
    * ``xavier_normal``: N(0, 2/(fan_in+fan_out)); ``xavier_constant``: +-sqrt(2/(fan_in+fan_out)).
    * ``binary``: exactly +1/-1 (RBRN); the scale is left to the BatchNorm layers.
    * ``uniform``: U(-1, 1).

    ``scale_fan`` multiplies the fan(s) by the layer's keep ratio (RBRN's "correct" rule), so
    that the kept weights, not all of them, keep activations at unit scale. The older
    edge-popup code multiplied by (1 - kept fraction), which only agrees at 50 %.
    Weights are drawn on the CPU from ``generator`` so a seed gives the same network on
    every device, and the draw depends only on the shape (never on ``keep_ratio``).
    """
    if kind not in WEIGHT_INITS:
        raise ValueError(f"unknown weight_init {kind!r}; valid: {', '.join(WEIGHT_INITS)}")
    shape = weight.shape
    scale = keep_ratio if scale_fan else 1.0
    fan = fan_in(weight) * scale
    fan_avg2 = (fan_in(weight) + shape[0] * (weight[0, 0].numel() if weight.dim() > 1 else 1)) * scale
    gain = math.sqrt(2.0)  # ReLU
    if kind in ("kaiming_normal", "xavier_normal"):
        std = gain / math.sqrt(fan) if kind == "kaiming_normal" else math.sqrt(2.0 / fan_avg2)
        w = torch.randn(shape, generator=generator) * std
    elif kind in ("kaiming_uniform", "uniform"):
        bound = gain * math.sqrt(3.0 / fan) if kind == "kaiming_uniform" else 1.0
        w = (torch.rand(shape, generator=generator) * 2 - 1) * bound
    else:
        sign = torch.randint(0, 2, shape, generator=generator).float() * 2 - 1
        if kind == "binary":
            w = sign
        elif kind == "unsigned_constant":
            w = torch.ones(shape) * (gain / math.sqrt(fan))
        elif kind == "xavier_constant":
            w = sign * math.sqrt(2.0 / fan_avg2)
        else:  # signed_constant
            w = sign * (gain / math.sqrt(fan))
    with torch.no_grad():
        weight.copy_(w)


def init_scores_(scores: torch.Tensor, kind: str, generator: torch.Generator,
                 scale: float = 0.01, fan_scaled: bool = False) -> None:
    """Initialize scores in place.

    * ``kaiming_uniform``: U(-1/sqrt(fan), 1/sqrt(fan)) (kaiming uniform with a = sqrt(5),
      the edge-popup / RST default).
    * ``uniform``: U(-scale, scale), RBRN's small init ``a``; ``fan_scaled`` divides the
      bound by sqrt(fan) (RBRN's fan-scaled score mode for this layer).
    """
    if kind not in SCORE_INITS:
        raise ValueError(f"unknown score_init {kind!r}; valid: {', '.join(SCORE_INITS)}")
    fan = fan_in(scores)
    if kind == "kaiming_uniform":
        bound = 1.0 / math.sqrt(fan)
    else:
        bound = scale / math.sqrt(fan) if fan_scaled else scale
    s = (torch.rand(scores.shape, generator=generator) * 2 - 1) * bound
    with torch.no_grad():
        scores.copy_(s)
