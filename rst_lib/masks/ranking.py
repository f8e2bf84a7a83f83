"""``keep_scope: global``: the scores of all masked layers of a network compete for one
budget (biprop's ``GlobalSubnetConv``, Gem-Miner), with an optional per-layer floor."""
from __future__ import annotations

import math

import torch
from torch import nn

from .masking import TopKMask, get_mask_param, masked_layers
from .topk import topk_mask


class GlobalRanking:
    """``keep_scope: global``: the scores of all masked layers compete for one budget.

    The budget is the sum of the layers' own counts (their allocated ratios and keep rule),
    so a global search keeps exactly as many scores as the per-layer search it is compared
    with, and a keep-ratio schedule (which sets the layers' ratios) moves the budget.
    ``min_fraction``: each layer first keeps its ``ceil(min_fraction * n_l)`` best scores (a
    floor, so no layer is emptied); the rest of the budget goes to the highest |scores| among
    all scores not already kept, wherever they are. Every layer's mask is thus the top-k_l of
    its own |scores|; the k_l follow from the scores, and are recomputed, like a layer's
    mask, only when some layer's scores change. Ties are broken as :func:`topk_mask` breaks
    them (continuous score inits make them practically impossible).
    """

    def __init__(self, layers: list[TopKMask], min_fraction: float = 0.0):
        self.layers = list(layers)
        self.min_fraction = float(min_fraction)
        self._masks: dict[int, torch.Tensor] = {}
        self._key: tuple | None = None
        self.mask_computations = 0

    def floors(self) -> list[int]:
        """Scores each layer keeps whatever the others score."""
        return [min(p.scores.numel(), math.ceil(self.min_fraction * p.scores.numel()))
                if self.min_fraction > 0 else 0 for p in self.ranked()]

    def ranked(self) -> list[TopKMask]:
        """The layers still ranked (a layer given a fixed mask with set_mask leaves)."""
        return [p for p in self.layers if p.fixed_count is None]

    def mask_of(self, layer: TopKMask) -> torch.Tensor:
        ranked = self.ranked()
        key = tuple((p.scores._version, p.scores.data_ptr(), p.scores.device, p.keep_ratio,
                     p.keep_rule) for p in ranked) + (self.min_fraction,)
        if self._key != key or id(layer) not in self._masks:
            self._masks = dict(zip(map(id, ranked), self.compute(ranked)))
            self._key = key
            self.mask_computations += 1
        return self._masks[id(layer)]

    def compute(self, ranked: list[TopKMask]) -> list[torch.Tensor]:
        budget = sum(p.budget for p in ranked)
        floors = self.floors()
        if sum(floors) > budget:
            raise ValueError(f"the per-layer floors (keep_min_fraction={self.min_fraction}) keep "
                             f"{sum(floors)} scores, more than the budget of {budget}")
        with torch.no_grad():
            values = [p.scores.detach().abs().flatten() for p in ranked]
            reserved = [topk_mask(v, m) if m else torch.zeros_like(v, dtype=torch.bool)
                        for v, m in zip(values, floors)]
            # |score| >= 0: a reserved entry at -1 ranks below every other score
            rest = torch.cat([torch.where(r, -1.0, v) for v, r in zip(values, reserved)])
            chosen = topk_mask(rest, budget - sum(floors))
            masks, start = [], 0
            for p, v, r in zip(ranked, values, reserved):
                masks.append((chosen[start:start + v.numel()] | r).view(p.scores.shape))
                start += v.numel()
        return masks


def rank_globally(model: nn.Module, min_fraction: float = 0.0) -> GlobalRanking | None:
    """Make every masked layer of ``model`` compete in one :class:`GlobalRanking`."""
    layers = [get_mask_param(m) for _, m in masked_layers(model)]
    if not layers:
        return None
    ranking = GlobalRanking(layers, min_fraction)
    for layer in layers:
        layer.ranking = ranking
    return ranking
