"""Masked layers: frozen random weights, learned per-weight scores, top-k masks.

A mask is a :mod:`torch.nn.utils.parametrize` parametrization of a layer's ``weight``:
``layer.weight`` returns ``original_weight * mask(scores)``. Any ``nn.Conv2d`` /
``nn.Linear`` of any architecture becomes a masked layer with :func:`apply_masks`.

Cost model (why it is built this way): adversarial search runs the network 8-12 times
per optimizer step. The seeds re-sort every layer's scores on every forward pass. Here

* the binary mask is cached and recomputed only when the scores change (their autograd
  version counter moves, i.e. after ``optimizer.step()`` or a ``load_state_dict``), so
  top-k runs once per layer per optimizer step (:func:`topk_mask`: on the CPU a sampled
  threshold band narrows it to a few entries, exact and 2.4-5x faster than ``torch.topk``
  in ``make bench``);
* :func:`frozen_masks` additionally computes every masked weight once, without an
  autograd graph to the scores (via ``parametrize.cached()``), for attack steps and
  evaluation, where only the input gradient is needed.

Top-k rule: ``k`` of the ``n`` scores of a layer are kept, ranked by ``|score|`` as in
edge-popup / RST / RBRN; :func:`keep_count` says how many (``keep_rule``: ``round`` =
``round(keep_ratio * n)``, at least 1, the workbook's; ``getsubnet`` = ``n - int((1 - keep_ratio)
* n)``, what the seeds' ``GetSubnet`` keeps). Per-layer keep ratios come from one global ratio
by :func:`allocate_keep_ratios` (``keep_allocation``: ``closed_form``, RBRN's ``rbrn`` walk or
RigL's Erdos-Renyi-Kernel ``erk``, in :mod:`.allocation`). With ``keep_scope: global``
(:class:`~rst_lib.masks.ranking.GlobalRanking`) the
per-layer counts only add up to the budget and the scores of all layers compete for it.
Exactly ``k`` entries are kept
even when scores tie; among tied scores the winners are the ones ``torch.topk`` returns
(on all entries or on the band of :func:`topk_mask`; deterministic for a given device and
build). Continuous random score inits make ties
practically impossible; a ticket loaded from bits has exactly ``k`` ones and no ambiguity.

The gradient is straight-through (edge-popup): d loss / d score = d loss / d mask *
sign(score), where d loss / d mask = d loss / d masked_weight * weight.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..config import allowed
from ..errors import check_keep_ratio
from .topk import topk_mask
# The per-layer allocations live in .allocation (re-exported: one place to import masks from).
from .allocation import (KEEP_ALLOCATIONS, allocate_keep_ratios, closed_form_keep_ratios,  # noqa: F401
                         erk_keep_ratios, rbrn_keep_ratios)

GRANULARITIES = allowed("granularity")  # declared with the parameter
# How many scores of a layer a keep ratio keeps (see keep_count), and how one global keep
# ratio becomes per-layer ratios (see allocate_keep_ratios): declared with the parameters.
KEEP_RULES = allowed("keep_rule")
KEEP_SCOPES = allowed("keep_scope")


def score_shape(weight_shape: torch.Size, granularity: str) -> tuple[int, ...]:
    """Shape of the scores of one layer; each score gates an equal block of weights.

    * ``weight``: one score per weight (edge-popup, RST, RBRN).
    * ``kernel``: one score per k x k kernel, shape (out, in, 1, 1).
    * ``filter``: one score per output filter / neuron, shape (out, 1, ...).
    * ``row``: one score per kernel row, shape (out, in, kh, 1).
    For linear layers a kernel and a row are single weights (``kernel``/``row`` act per weight).
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    shape = tuple(weight_shape)
    if granularity == "weight" or len(shape) < 3 and granularity in ("kernel", "row"):
        return shape
    if granularity == "filter":
        return (shape[0],) + (1,) * (len(shape) - 1)
    if granularity == "kernel":
        return shape[:2] + (1,) * (len(shape) - 2)
    return shape[:3] + (1,) * (len(shape) - 3)  # row


def keep_count(keep_ratio: float, n: int, rule: str = "round") -> int:
    """Kept entries of a layer with ``n`` scores at ``keep_ratio``: ``round`` (the workbook's):
    ``round(keep_ratio * n)``, at least 1; ``getsubnet``: :func:`getsubnet_keep_count`."""
    if rule == "getsubnet":
        return getsubnet_keep_count(keep_ratio, n)
    if rule != "round":
        raise ValueError(f"keep rule {rule!r} is invalid: valid rules are {', '.join(KEEP_RULES)}")
    return max(1, min(n, int(round(keep_ratio * n))))


def getsubnet_keep_count(keep_ratio: float, n: int) -> int:
    """What ``GetSubnet`` keeps in edge-popup / RST (``utils/conv_type.py``) / RBRN
    (``code/arch/conv_type.py``): it zeroes the ``int((1 - k) * n)`` lowest |scores| (a double
    product, truncated), so ``n - int((1 - k) * n)`` stay: usually ``ceil(k * n)``, e.g. 87
    (not 86) of 1,728 at k = 0.05. Computed with the same double expression as there."""
    return n - int((1.0 - float(keep_ratio)) * n)


def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``weight`` where ``mask`` (bool, broadcastable) is set, else 0."""
    # torch.where, not weight * mask: a float * bool product takes a slow type-promotion path
    return torch.where(mask, weight, 0.0)


class _MaskedWeight(torch.autograd.Function):
    """weight * mask with a straight-through gradient to the scores."""

    @staticmethod
    def forward(ctx, weight, scores, mask):
        ctx.save_for_backward(weight, scores, mask)
        return apply_mask(weight, mask)

    @staticmethod
    def backward(ctx, grad):
        weight, scores, mask = ctx.saved_tensors
        grad_weight = grad_scores = None
        if ctx.needs_input_grad[0]:
            grad_weight = apply_mask(grad, mask)
        if ctx.needs_input_grad[1]:
            # |s| ranks the scores; d|s|/ds taken as +1 at s == 0 so zero scores can move.
            # (A float +-1 tensor built in place: torch.where(c, 1.0, -1.0) is ~7x slower.)
            # sum_to_size returns the fresh product itself or a fresh sum: safe to scale in place
            sign = (scores >= 0).to(grad.dtype).mul_(2).sub_(1)
            grad_scores = (grad * weight).sum_to_size(scores.shape).mul_(sign)
        return grad_weight, grad_scores, None


class TopKMask(nn.Module):
    """Parametrization ``weight -> weight * topk_mask(|scores|)`` for one layer.

    Args:
        weight: the layer's weight (only its shape, dtype and device are used).
        keep_ratio: fraction of the scores (so of the weights) kept in this layer, in (0, 1].
        granularity: what one score gates, see :func:`score_shape`.
        keep_rule: how many scores ``keep_ratio`` keeps, see :func:`keep_count`.
    """

    def __init__(self, weight: torch.Tensor, keep_ratio: float, granularity: str = "weight",
                 keep_rule: str = "round"):
        super().__init__()
        check_keep_ratio(keep_ratio)
        if keep_rule not in KEEP_RULES:
            raise ValueError(f"keep_rule {keep_rule!r} is invalid: valid rules are {', '.join(KEEP_RULES)}")
        self.keep_ratio = float(keep_ratio)
        self.keep_rule = keep_rule
        self.granularity = granularity
        self.scores = nn.Parameter(torch.empty(score_shape(weight.shape, granularity),
                                               dtype=weight.dtype, device=weight.device))
        # RST's discard mode: scores whose gradient is stopped (they still take part in the
        # top-k). None until first used (saves a byte per weight); then a bool buffer in
        # the state dict.
        self.register_buffer("discarded", None, persistent=True)
        # IteRand (rerandomize.py): the optimizer step at which each weight was last re-drawn
        # (0: never). None until the first re-draw; then an int32 buffer in the state dict, so
        # a resumed run and the ticket (which stores it instead of the weights) know it.
        self.register_buffer("redrawn_at", None, persistent=True)
        self.init_keep_ratio = self.keep_ratio  # the ratio the weight scale was drawn with
        # keep_scope global: the GlobalRanking this layer competes in (None: top-k in the layer)
        self.ranking = None  # a ranking.GlobalRanking
        # a mask set with set_mask keeps exactly its count (also 0: a layer emptied by a
        # global ranking), whatever the ratio or the other layers say
        self.fixed_count: int | None = None
        self._mask: torch.Tensor | None = None
        self._mask_key: tuple | None = None
        self.mask_computations = 0  # how often top-k ran (tests and benchmarks read it)

    @property
    def budget(self) -> int:
        """The scores this layer's ratio keeps (with a global ranking: its share of the total)."""
        if self.fixed_count is not None:
            return self.fixed_count
        return keep_count(self.keep_ratio, self.scores.numel(), self.keep_rule)

    @property
    def k(self) -> int:
        """The scores this layer keeps now (with a global ranking: as the scores rank)."""
        if self.ranking is not None and self.fixed_count is None:
            return int(self.mask().sum())
        return self.budget

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, *args):
        # A state with a discard (re-draw) record creates the buffer; a full (strict) state
        # without one means nothing was discarded (re-drawn), e.g. saved before the first.
        for name, dtype in (("discarded", torch.bool), ("redrawn_at", torch.int32)):
            key = prefix + name
            if getattr(self, name) is None and key in state_dict:
                setattr(self, name, torch.zeros(state_dict[key].shape, dtype=dtype,
                                                device=self.scores.device))
            elif getattr(self, name) is not None and key not in state_dict and strict:
                setattr(self, name, None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, *args)

    def mask(self) -> torch.Tensor:
        """The boolean mask (1 byte per score), recomputed only when the scores change."""
        if self.ranking is not None and self.fixed_count is None:
            return self.ranking.mask_of(self)
        s = self.scores
        key = (s._version, s.data_ptr(), s.device, s.dtype, self.keep_ratio, self.keep_rule,
               self.fixed_count)
        if self._mask is None or self._mask_key != key:
            with torch.no_grad():
                self._mask = topk_mask(s.detach().abs().flatten(), self.k).view(s.shape)
            self._mask_key = key
            self.mask_computations += 1
        return self._mask

    def set_mask(self, mask: torch.Tensor) -> None:
        """Make this layer keep exactly ``mask`` (bool/0-1 tensor of the weight's shape)."""
        mask = mask.to(dtype=self.scores.dtype, device=self.scores.device).reshape(self.scores.shape)
        kept = int(mask.sum().item())
        if kept < 1 and self.ranking is None:
            raise ValueError("a mask must keep at least one weight")
        with torch.no_grad():
            # scores 1 for kept, 0 for dropped: top-k with k == kept is then exactly `mask`.
            self.scores.copy_(mask)
        # round(kept / n * n) == kept: k round-trips (the getsubnet rule's truncation of
        # (1 - kept / n) * n could land one below n - kept, so a set mask counts by round)
        self.keep_ratio, self.keep_rule = max(kept, 1) / mask.numel(), "round"
        # The count is pinned: a globally ranked layer (which may keep 0) leaves the ranking
        # and keeps exactly this mask, so a ticket reloads with its masks whatever they are.
        self.fixed_count = kept

    def discard_lowest(self, fraction: float) -> None:
        """RST's ``discard_low_score``: the lowest ``int(fraction * n)`` |scores| of this layer
        (all of them ranked, the set recomputed, not accumulated) stop receiving gradient
        (:meth:`zero_discarded_grad`). They still compete for the mask."""
        n = self.scores.numel()
        low = n - int(fraction * n)  # entries kept out of the discarded set
        with torch.no_grad():
            flat = self.scores.detach().abs().flatten()
            self.discarded = (~topk_mask(flat, low).view(self.scores.shape) if low > 0 else
                              torch.ones_like(self.scores, dtype=torch.bool))

    def zero_discarded_grad(self) -> None:
        """Zero the gradient of discarded scores (call between backward and the optimizer
        step, as RST's ``clear_low_score_grad``; weight decay and momentum still apply)."""
        if self.discarded is not None and self.scores.grad is not None:
            self.scores.grad.masked_fill_(self.discarded, 0.0)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        mask = self.mask()
        if torch.is_grad_enabled() and (weight.requires_grad or self.scores.requires_grad):
            return _MaskedWeight.apply(weight, self.scores, mask)
        return apply_mask(weight, mask)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        ctx.save_for_backward(w)
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype)  # hard-tanh straight-through (BinaryConnect)


class BinarizeSTE(nn.Module):
    """Parametrization ``w -> sign(w)`` (+-1) with a clipped straight-through gradient.

    For the binary-weight adversarial-training baseline (RBRN's BNN baseline): latent real
    weights are trained, the forward pass sees +-1, BatchNorm supplies the scale.
    """

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _SignSTE.apply(w)


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


def add_mask(layer: nn.Module, keep_ratio: float, granularity: str = "weight",
             keep_rule: str = "round") -> TopKMask:
    """Register a top-k mask on ``layer.weight`` and freeze the weight."""
    mask = TopKMask(layer.weight, keep_ratio, granularity, keep_rule)
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
    """Boolean mask of every masked layer, by layer name, at the scores' shape."""
    return {name: get_mask_param(m).mask().clone() for name, m in masked_layers(model)}


def weight_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Boolean mask of every masked layer at the weight's shape (block masks broadcast)."""
    return {name: get_mask_param(m).mask().expand(raw_weight(m).shape).clone()
            for name, m in masked_layers(model)}


def set_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    layers = dict(masked_layers(model))
    if set(layers) != set(masks):
        raise ValueError(f"mask layers differ: model has {sorted(layers)}, got {sorted(masks)}")
    for name, m in layers.items():
        get_mask_param(m).set_mask(masks[name])


def discard_low_scores(model: nn.Module, fraction: float) -> None:
    """RST's discard step on every masked layer, each layer ranked on its own."""
    for _, layer in masked_layers(model):
        get_mask_param(layer).discard_lowest(fraction)


def zero_discarded_grads(model: nn.Module) -> None:
    for _, layer in masked_layers(model):
        get_mask_param(layer).zero_discarded_grad()


def set_keep_ratios(model: nn.Module, ratios: dict[str, float]) -> None:
    """Change the keep ratio of masked layers (by layer name); masks follow on next use."""
    layers = dict(masked_layers(model))
    for name, r in ratios.items():
        check_keep_ratio(r, f"keep ratio of {name}")
        mask = get_mask_param(layers[name])
        mask.keep_ratio, mask.fixed_count = float(r), None


def keep_ratios(model: nn.Module) -> dict[str, float]:
    """Actual kept fraction of every masked layer."""
    return {name: get_mask_param(m).k / get_mask_param(m).scores.numel()
            for name, m in masked_layers(model)}


def mask_summary(model: nn.Module) -> dict:
    """Kept / total weights of every masked layer and of the whole masked part (a score
    of a ``kernel``/``filter``/``row`` granularity gates a block of weights)."""
    layers = {}
    for name, m in masked_layers(model):
        p = get_mask_param(m)
        total = raw_weight(m).numel()
        kept = p.k * (total // p.scores.numel())
        layers[name] = {"kept": kept, "total": total, "keep_ratio": kept / total}
    kept = sum(v["kept"] for v in layers.values())
    total = sum(v["total"] for v in layers.values())
    return {"layers": layers, "kept": kept, "total": total,
            "keep_ratio": kept / total if total else 1.0}


def kept_fractions(model: nn.Module, per_layer: bool = False) -> dict:
    """An epoch's record of the kept weights: ``keep_ratio`` of the masked part and, with
    ``per_layer`` (a global ranking, whose layers' shares move with the scores),
    ``layer_keep_ratio``: each layer's kept fraction by name."""
    summary = mask_summary(model)
    out = {"keep_ratio": summary["keep_ratio"]}
    if per_layer:
        out["layer_keep_ratio"] = {n: v["keep_ratio"] for n, v in summary["layers"].items()}
    return out


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
