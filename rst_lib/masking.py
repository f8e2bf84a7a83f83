"""Masked layers: frozen random weights, learned per-weight scores, top-k masks.

A mask is a :mod:`torch.nn.utils.parametrize` parametrization of a layer's ``weight``:
``layer.weight`` returns ``original_weight * mask(scores)``. Any ``nn.Conv2d`` /
``nn.Linear`` of any architecture becomes a masked layer with :func:`apply_masks`.

Cost model (why it is built this way): adversarial search runs the network 8-12 times
per optimizer step. The seeds re-sort every layer's scores on every forward pass. Here

* the binary mask is cached and recomputed only when the scores change (their autograd
  version counter moves, i.e. after ``optimizer.step()`` or a ``load_state_dict``), so
  ``torch.topk`` runs once per layer per optimizer step;
* :func:`frozen_masks` additionally computes every masked weight once, without an
  autograd graph to the scores (via ``parametrize.cached()``), for attack steps and
  evaluation, where only the input gradient is needed.

Top-k rule: ``k = round(keep_ratio * n)`` (at least 1) of the ``n`` scores of a layer are
kept, ranked by ``|score|`` as in edge-popup / RST / RBRN. Exactly ``k`` entries are kept
even when scores tie; among tied scores the winners are the ones ``torch.topk`` returns
(deterministic for a given device and build). Continuous random score inits make ties
practically impossible; a ticket loaded from bits has exactly ``k`` ones and no ambiguity.

The gradient is straight-through (edge-popup): d loss / d score = d loss / d mask *
sign(score), where d loss / d mask = d loss / d masked_weight * weight.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

WEIGHT_INITS = ("binary", "signed_constant", "kaiming_normal")
SCORE_INITS = ("kaiming_uniform", "uniform")


def keep_count(keep_ratio: float, n: int) -> int:
    """Number of kept entries of a layer with ``n`` scores: round(keep_ratio * n), >= 1."""
    return max(1, min(n, int(round(keep_ratio * n))))


def fan_in(weight: torch.Tensor) -> int:
    """Inputs feeding one output unit (in_channels / groups * kernel area)."""
    return weight[0].numel()


class _MaskedWeight(torch.autograd.Function):
    """weight * mask with a straight-through gradient to the scores (fused: one multiply)."""

    @staticmethod
    def forward(ctx, weight, scores, mask):
        ctx.save_for_backward(weight, scores, mask)
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        weight, scores, mask = ctx.saved_tensors
        grad_weight = grad_scores = None
        if ctx.needs_input_grad[0]:
            grad_weight = grad * mask
        if ctx.needs_input_grad[1]:
            # |s| ranks the scores; d|s|/ds taken as +1 at s == 0 so zero scores can move.
            sign = torch.where(scores >= 0, 1.0, -1.0).to(grad.dtype)
            grad_scores = grad * weight * sign
        return grad_weight, grad_scores, None


class TopKMask(nn.Module):
    """Parametrization ``weight -> weight * topk_mask(|scores|)`` for one layer.

    Args:
        weight: the layer's weight (only its shape, dtype and device are used).
        keep_ratio: fraction of weights kept in this layer, in (0, 1].
    """

    def __init__(self, weight: torch.Tensor, keep_ratio: float):
        super().__init__()
        if not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
        self.keep_ratio = float(keep_ratio)
        self.scores = nn.Parameter(torch.empty_like(weight))
        self._mask: torch.Tensor | None = None
        self._mask_key: tuple | None = None
        self.mask_computations = 0  # how often top-k ran (tests and benchmarks read it)

    @property
    def k(self) -> int:
        return keep_count(self.keep_ratio, self.scores.numel())

    def mask(self) -> torch.Tensor:
        """The 0/1 mask (same dtype as the scores), recomputed only when the scores change."""
        s = self.scores
        key = (s._version, s.data_ptr(), s.device, s.dtype, self.keep_ratio)
        if self._mask is None or self._mask_key != key:
            with torch.no_grad():
                flat = s.detach().abs().flatten()
                idx = torch.topk(flat, self.k, sorted=False).indices
                m = torch.zeros_like(flat)
                m[idx] = 1.0
                self._mask = m.view_as(s)
            self._mask_key = key
            self.mask_computations += 1
        return self._mask

    def set_mask(self, mask: torch.Tensor) -> None:
        """Make this layer keep exactly ``mask`` (bool/0-1 tensor of the weight's shape)."""
        mask = mask.to(dtype=self.scores.dtype, device=self.scores.device).view_as(self.scores)
        kept = int(mask.sum().item())
        if kept < 1:
            raise ValueError("a mask must keep at least one weight")
        with torch.no_grad():
            # scores 1 for kept, 0 for dropped: top-k with k == kept is then exactly `mask`.
            self.scores.copy_(mask)
        self.keep_ratio = kept / mask.numel()  # round(kept / n * n) == kept: k round-trips

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        mask = self.mask()
        if torch.is_grad_enabled() and (weight.requires_grad or self.scores.requires_grad):
            return _MaskedWeight.apply(weight, self.scores, mask)
        return weight * mask


# --------------------------------------------------------------------------- inits


def init_weight_(weight: torch.Tensor, kind: str, generator: torch.Generator,
                 keep_ratio: float = 1.0, scale_fan: bool = False) -> None:
    """Draw frozen random weights in place.

    * ``binary``: exactly +1/-1 (RBRN). The scale is left to the BatchNorm layers.
    * ``signed_constant``: +-gain/sqrt(fan) with the ReLU gain (RST / edge-popup).
    * ``kaiming_normal``: N(0, gain^2 / fan).

    ``scale_fan`` multiplies the fan by the layer's keep ratio (RBRN's "correct" rule), so
    that the kept weights, not all of them, keep activations at unit scale. The older
    edge-popup code multiplied by (1 - kept fraction), which only agrees at 50 %.
    Weights are drawn on the CPU from ``generator`` so a seed gives the same network on
    every device.
    """
    if kind not in WEIGHT_INITS:
        raise ValueError(f"unknown weight_init {kind!r}; valid: {', '.join(WEIGHT_INITS)}")
    fan = fan_in(weight) * (keep_ratio if scale_fan else 1.0)
    gain = math.sqrt(2.0)  # ReLU
    std = gain / math.sqrt(fan)
    shape = weight.shape
    if kind == "kaiming_normal":
        w = torch.randn(shape, generator=generator) * std
    else:
        sign = torch.randint(0, 2, shape, generator=generator).float() * 2 - 1
        w = sign if kind == "binary" else sign * std
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


# ----------------------------------------------------------------- model-level helpers


def is_masked(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module, "weight") and any(
        isinstance(p, TopKMask) for p in module.parametrizations.weight)


def get_mask_param(module: nn.Module) -> TopKMask:
    for p in module.parametrizations.weight:
        if isinstance(p, TopKMask):
            return p
    raise ValueError(f"{type(module).__name__} has no TopKMask")


def masked_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, layer) for every masked layer, in module order."""
    for name, m in model.named_modules():
        if is_masked(m):
            yield name, m


def add_mask(layer: nn.Module, keep_ratio: float) -> TopKMask:
    """Register a top-k mask on ``layer.weight`` and freeze the weight."""
    mask = TopKMask(layer.weight, keep_ratio)
    parametrize.register_parametrization(layer, "weight", mask, unsafe=True)
    layer.parametrizations.weight.original.requires_grad_(False)
    return mask


def raw_weight(layer: nn.Module) -> torch.Tensor:
    """The unmasked weight tensor of a (possibly masked) layer."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


def score_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [get_mask_param(m).scores for _, m in masked_layers(model)]


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Boolean mask of every masked layer, by layer name."""
    return {name: get_mask_param(m).mask().bool() for name, m in masked_layers(model)}


def set_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    layers = dict(masked_layers(model))
    if set(layers) != set(masks):
        raise ValueError(f"mask layers differ: model has {sorted(layers)}, got {sorted(masks)}")
    for name, m in layers.items():
        get_mask_param(m).set_mask(masks[name])


def keep_ratios(model: nn.Module) -> dict[str, float]:
    """Actual kept fraction of every masked layer."""
    return {name: get_mask_param(m).k / get_mask_param(m).scores.numel()
            for name, m in masked_layers(model)}


def mask_summary(model: nn.Module) -> dict:
    """Kept / total weights of every masked layer and of the whole masked part."""
    layers = {}
    for name, m in masked_layers(model):
        p = get_mask_param(m)
        layers[name] = {"kept": p.k, "total": p.scores.numel(), "keep_ratio": p.k / p.scores.numel()}
    kept = sum(v["kept"] for v in layers.values())
    total = sum(v["total"] for v in layers.values())
    return {"layers": layers, "kept": kept, "total": total,
            "keep_ratio": kept / total if total else 1.0}


@contextmanager
def frozen_masks(model: nn.Module):
    """Compute every masked weight once, with no graph to the scores, and reuse it.

    For attack steps and evaluation: inside the block every forward pass reuses the same
    masked weight tensors (``parametrize.cached()``), and backward passes only reach the
    inputs. Do not take an optimizer step on the scores inside this block.
    """
    with parametrize.cached():
        with torch.no_grad():
            for _, m in masked_layers(model):
                m.weight  # noqa: B018 - populates the cache without an autograd graph
        yield
