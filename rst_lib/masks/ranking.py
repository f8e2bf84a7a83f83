"""``keep_scope: global``: the scores of all masked layers of a network compete for one
budget (biprop's ``GlobalSubnetConv``, Gem-Miner), with an optional per-layer floor."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from .masking import TopKMask, get_mask_param, masked_layers
from .topk import topk_mask


def floor_count(min_fraction: float, n: int) -> int:
    """The scores a layer of ``n`` keeps whatever the others score: ``ceil(min_fraction * n)``."""
    return min(n, math.ceil(min_fraction * n)) if min_fraction > 0 else 0


def largest_floor(ranking: "GlobalRanking") -> float:
    """The largest ``keep_min_fraction`` (to 4 decimals, rounded down) whose floors fit the
    budget of ``ranking``'s layers (their ratios as they are now)."""
    layers = ranking.ranked()
    budget, sizes = sum(p.budget for p in layers), [p.scores.numel() for p in layers]
    f = math.floor(ranking.min_fraction * 1e4) / 1e4
    while f > 0 and sum(floor_count(f, n) for n in sizes) > budget:
        f = round(f - 1e-4, 4)
    return max(f, 0.0)


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
        return [floor_count(self.min_fraction, p.scores.numel()) for p in self.ranked()]

    def check_floors(self) -> None:
        """THE rule for ``keep_min_fraction`` (the mask and the up-front check both call it):
        the floors, ``ceil(min_fraction * n_l)`` per layer, must fit in the budget, the sum of
        the layers' own counts (``round(keep_ratio * n_l)`` with uniform allocation). A floor
        equal to ``keep_ratio`` can fail by rounding: ceil floors against a rounded budget."""
        budget, floors = sum(p.budget for p in self.ranked()), self.floors()
        if sum(floors) > budget:
            raise ConfigError(f"keep_min_fraction={self.min_fraction:g} is too large for this "
                             f"network: its per-layer floors (ceil of the fraction of each layer's "
                             f"scores) keep {sum(floors):,} scores, more than the budget of "
                             f"{budget:,} the keep ratio allows; use a floor of at most "
                             f"{largest_floor(self):g}")

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
        self.check_floors()
        budget, floors = sum(p.budget for p in ranked), self.floors()
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
    ranking.check_floors()  # at build time: one clear line before any compute
    for layer in layers:
        layer.ranking = ranking
    return ranking
