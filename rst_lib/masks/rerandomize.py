"""IteRand (Chijiwa et al., NeurIPS 2021): during a search, re-draw some of the random weights
the masks currently drop, reproducibly from the run's seed and the step.

What IteRand does (dchiji-ntt/iterand, ``commands/train.py`` and
``models/networks/sparse_modules.py``, its ``bernoulli`` mode, the one all its paper configs
use): before every ``rerand_freq``-th optimizer step, in each sparse layer, the weights whose
score is among the lowest ``sparsity * rerand_rate`` of the layer (with ``rerand_rate`` 1: the
pruned weights) are each replaced, with probability ``rerand_lambda``, by a fresh draw of the
layer's weight distribution; every other weight is left alone. Here the ranking is by
``|score|`` (the workbook's top-k rule; IteRand ranks the raw scores), the candidates are the
``round(rerand_rate * dropped)`` lowest |scores| of a layer (at rate 1 exactly the weights its
mask drops, whatever the scope), and the fresh draw is :func:`~rst_lib.masks.inits.init_weight_`
with the layer's own init (scheme, fan, the keep ratio it was built with). IteRand's
``manual`` mode (``w <- lambda w + mu r``) is not offered: a mixed weight would depend on every
event before it, and no file short of the weights could rebuild it.

Reproducible without storing weights: event ``step`` draws, for masked layer number ``i``,
the fresh weights and then the Bernoulli coins from one generator seeded by ``(seed, step,
i)`` (:func:`event_generator`), on the CPU, the whole layer at once. So a weight's value
depends only on the last event that re-drew it: the layer's ``redrawn_at`` buffer records
that step (0: never). A ticket stores, for each KEPT weight, which step that was (one byte
per kept weight while a run has fewer than 256 events; see :func:`redraw_recipe`) and
rebuilds the kept weights from the seed (:func:`apply_redraw_recipe`). Pruned weights are
not rebuilt (the mask zeroes them, so the ticket's outputs do not depend on them).
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from . import masking
from .inits import init_weight_
from .topk import topk_mask


def event_generator(seed: int, step: int, layer_index: int) -> torch.Generator:
    """The random stream of one re-randomization event in one layer: independent of the
    device, the batch order and every other (seed, step, layer)."""
    digest = hashlib.sha256(f"iterand/{seed}/{step}/{layer_index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def fresh_draw(layer: nn.Module, layer_index: int, seed: int, step: int, weight_init: str,
               scale_fan: bool) -> tuple[torch.Tensor, torch.Generator]:
    """Event ``step``'s fresh weights for a whole layer (CPU) and its generator, positioned
    after them (the Bernoulli coins come next)."""
    g = event_generator(seed, step, layer_index)
    weight = masking.raw_weight(layer)
    fresh = torch.empty(weight.shape, dtype=weight.dtype)
    init_weight_(fresh, weight_init, g, masking.get_mask_param(layer).init_keep_ratio, scale_fan)
    return fresh, g


def redraw_candidates(mask_param: masking.TopKMask, rate: float) -> torch.Tensor:
    """The scores whose weights may be re-drawn: the ``round(rate * dropped)`` lowest |scores|
    (bool, at the scores' shape); at ``rate`` 1 the complement of the mask."""
    mask = mask_param.mask()
    n = mask.numel()
    dropped = n - int(mask.sum())
    m = int(round(rate * dropped))
    if m == dropped:
        return ~mask
    if m == 0:
        return torch.zeros_like(mask)
    flat = mask_param.scores.detach().abs().flatten()
    return (~topk_mask(flat, n - m)).view(mask.shape)


@torch.no_grad()
def rerandomize(model: nn.Module, step: int, rate: float, lam: float, seed: int,
                weight_init: str, scale_fan: bool) -> int:
    """One IteRand event at optimizer step ``step`` (1-based) on every masked layer of
    ``model``; returns how many weights were re-drawn."""
    redrawn = 0
    for index, (_, layer) in enumerate(masking.masked_layers(model)):
        p = masking.get_mask_param(layer)
        weight = masking.raw_weight(layer)
        fresh, g = fresh_draw(layer, index, seed, step, weight_init, scale_fan)
        coins = torch.rand(weight.shape, generator=g) < lam
        replace = (redraw_candidates(p, rate).expand(weight.shape).cpu() & coins).to(weight.device)
        weight.copy_(torch.where(replace, fresh.to(weight.device), weight))
        if p.redrawn_at is None:
            p.redrawn_at = torch.zeros(weight.shape, dtype=torch.int32, device=weight.device)
        p.redrawn_at.masked_fill_(replace, step)
        redrawn += int(replace.sum())
    return redrawn


def at_step(model: nn.Module, cfg, step: int) -> int | None:
    """The training loop's hook, before optimizer step ``step`` (1-based, counted over the
    whole run): an event when ``cfg.rerand_freq`` divides it (IteRand's callback fires before
    iteration ``it`` when ``(it + 1) % rerand_freq == 0``, the same steps). Returns the
    re-drawn count at an event, else None."""
    if not cfg.rerand_freq or step % cfg.rerand_freq:
        return None
    return rerandomize(model, step, cfg.rerand_rate, cfg.rerand_lambda, cfg.seed,
                       cfg.weight_init, cfg.scale_fan)


def redraw_recipe(layer: nn.Module, weight_mask: torch.Tensor) -> dict | None:
    """What a ticket stores instead of a re-drawn layer's weights: ``{"steps": the distinct
    event steps that last re-drew some kept weight, "index": for every kept weight (in flat
    order), 0 or 1 + the position of its step in "steps"}``, the index as uint8 / int16 /
    int32 (whichever holds it). None if no kept weight was re-drawn."""
    redrawn_at = masking.get_mask_param(layer).redrawn_at
    if redrawn_at is None:
        return None
    at_kept = redrawn_at.flatten()[weight_mask.flatten().to(redrawn_at.device)].cpu().long()
    steps = sorted(set(at_kept.unique().tolist()) - {0})
    if not steps:
        return None
    lookup = torch.zeros(int(at_kept.max()) + 1, dtype=torch.long)
    lookup[torch.tensor(steps)] = torch.arange(1, len(steps) + 1)
    dtype = torch.uint8 if len(steps) < 256 else (torch.int16 if len(steps) < 32767 else torch.int32)
    return {"steps": steps, "index": lookup[at_kept].to(dtype)}


@torch.no_grad()
def apply_redraw_recipe(layer: nn.Module, layer_index: int, recipe: dict, weight_mask: torch.Tensor,
                        seed: int, weight_init: str, scale_fan: bool) -> None:
    """Rebuild a layer's kept weights from :func:`redraw_recipe` (its weights must be the
    freshly built ones): each re-drawn kept weight takes its last event's fresh draw. The
    layer's ``redrawn_at`` records those steps again (0 for pruned weights)."""
    weight = masking.raw_weight(layer)
    kept = weight_mask.flatten().nonzero().squeeze(1)
    index = recipe["index"].long()
    if index.numel() != kept.numel():
        raise ValueError(f"re-draw recipe covers {index.numel()} weights, the mask keeps "
                         f"{kept.numel()}")
    flat = weight.detach().cpu().flatten().clone()
    redrawn_at = torch.zeros(flat.numel(), dtype=torch.int32)
    for position, step in enumerate(recipe["steps"], start=1):
        chosen = kept[index == position]
        fresh, _ = fresh_draw(layer, layer_index, seed, int(step), weight_init, scale_fan)
        flat[chosen] = fresh.flatten()[chosen]
        redrawn_at[chosen] = int(step)
    weight.copy_(flat.view(weight.shape).to(weight.device))
    masking.get_mask_param(layer).redrawn_at = redrawn_at.view(weight.shape).to(weight.device)
