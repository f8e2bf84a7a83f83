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
RigL's Erdos-Renyi-Kernel ``erk``). With ``keep_scope: global`` (:class:`GlobalRanking`) the
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

import math
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..config import allowed
from ..errors import check_keep_ratio
from .topk import topk_mask

GRANULARITIES = allowed("granularity")  # declared with the parameter
# How many scores of a layer a keep ratio keeps (see keep_count), and how one global keep
# ratio becomes per-layer ratios (see allocate_keep_ratios): declared with the parameters.
KEEP_RULES = allowed("keep_rule")
KEEP_ALLOCATIONS = allowed("keep_allocation")
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
        self.ranking: GlobalRanking | None = None
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


def allocate_keep_ratios(sizes: list[int], keep_ratio: float, p: float = 1.0,
                         allocation: str = "closed_form",
                         shapes: list[tuple[int, ...]] | None = None) -> list[float]:
    """Per-layer keep ratios (in the order of ``sizes``) for a global ``keep_ratio`` with RBRN's
    adaptive rule ``r_l ~ n_l ** (p - 1)``: ``closed_form`` (:func:`closed_form_keep_ratios`,
    the workbook's) or ``rbrn`` (:func:`rbrn_keep_ratios`, RBRN's own walk); or ``erk``
    (:func:`erk_keep_ratios`, which needs the layers' ``shapes`` and ignores ``p``)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p={p!r} is invalid: it must be in [0, 1]")
    check_keep_ratio(keep_ratio)
    if allocation == "rbrn":
        return rbrn_keep_ratios(sizes, keep_ratio, p)
    if allocation == "erk":
        if shapes is None:
            raise ValueError("the erk allocation needs the layers' weight shapes")
        return erk_keep_ratios(shapes, keep_ratio)
    if allocation != "closed_form":
        raise ValueError(f"allocation {allocation!r} is invalid: valid allocations are "
                         f"{', '.join(KEEP_ALLOCATIONS)}")
    return closed_form_keep_ratios(sizes, keep_ratio, p)


def closed_form_keep_ratios(sizes: list[int], keep_ratio: float, p: float = 1.0) -> list[float]:
    """Layer l keeps ratio ``r_l = c * n_l ** (p - 1)`` (``n_l`` = its number of weights), capped
    at 1, with ``c`` chosen so that ``sum(r_l * n_l) = keep_ratio * sum(n_l)``. Layers that
    hit the cap keep everything and the remaining budget is re-solved over the others
    (smaller layers are capped first, since ``p - 1 <= 0``). ``p = 1`` is the uniform rule
    (exactly ``keep_ratio`` everywhere); ``p = 0`` gives every layer the same number of kept
    weights."""
    if p == 1.0:
        return [float(keep_ratio)] * len(sizes)
    budget = keep_ratio * sum(sizes)
    ratios: list[float | None] = [None] * len(sizes)
    while True:
        free = [i for i, r in enumerate(ratios) if r is None]
        if not free:
            break
        capped_total = sum(sizes[i] for i, r in enumerate(ratios) if r == 1.0)
        c = (budget - capped_total) / sum(sizes[i] ** p for i in free)
        over = [i for i in free if c * sizes[i] ** (p - 1) > 1.0]
        if not over:
            for i in free:
                ratios[i] = c * sizes[i] ** (p - 1)
            break
        for i in over:
            ratios[i] = 1.0
    return [float(r) for r in ratios]


def rbrn_keep_ratios(sizes: list[int], keep_ratio: float, p: float) -> list[float]:
    """RBRN's ``set_model_prune_rate`` (``code/arch/net_utils.py``) step for step (numpy float64
    and numpy's sums, so the ratios are the same doubles). Walking the layers from the smallest
    (stable: equal sizes in module order), each gets ``c * n ** (p - 1)`` capped at 1; its
    ``int(r * n)`` is taken off the budget ``int(keep_ratio * N)`` and ``c`` is re-solved over
    the layers left. The truncations make ``c`` drift: equal layers get slightly increasing
    ratios, and even ``p = 1`` is not exactly uniform."""
    if not sizes:
        return []
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    ordered = [sizes[i] for i in order]
    total = int(keep_ratio * np.sum(ordered))
    c = keep_ratio * np.sum(ordered) / np.sum(np.power(ordered, p))
    ratios = [0.0] * len(sizes)
    for idx, i in enumerate(order):
        r = c * np.power(ordered[idx], p - 1.0)
        if r > 1:
            r = 1.0
        total -= int(r * ordered[idx])
        if idx + 1 < len(ordered):  # RBRN divides by an empty sum after the last layer (unused)
            c = total / np.sum(np.power(ordered[idx + 1:], p))
        ratios[i] = float(r)
    return ratios


def erk_keep_ratios(shapes: list[tuple[int, ...]], keep_ratio: float) -> list[float]:
    """RigL's Erdos-Renyi-Kernel densities (Evci et al. 2020, ``rigl/sparse_utils.py``
    ``get_sparsities_erdos_renyi`` with ``include_kernel``, power scale 1), step for step in
    float64. Layer l's density is ``eps * sum(shape_l) / prod(shape_l)`` (conv: ``(n_in + n_out +
    k_h + k_w) / (n_in n_out k_h k_w)``; linear: ``(n_in + n_out) / (n_in n_out)``), with ``eps``
    solved so the kept counts add up to RigL's uniform total ``sum(n_l - floor((1 - k) n_l))``.
    While the largest density exceeds 1, every layer at the largest raw density is made dense
    (density 1; its count comes off the budget) and ``eps`` is solved again over the rest.
    These are the only dense layers (RigL keeps a first layer dense only through its own
    custom map: here ``dense_first``, which leaves the layer out of the masks altogether)."""
    sparsity = 1.0 - float(keep_ratio)
    sizes = [int(np.prod(shape)) for shape in shapes]
    raw = [float(np.sum(shape)) / float(np.prod(shape)) for shape in shapes]
    dense: set[int] = set()
    while True:
        rhs = 0.0
        divisor = 0.0
        for i, n in enumerate(sizes):
            n_zeros = int(np.floor(sparsity * n))
            if i in dense:
                rhs -= n_zeros
            else:
                rhs += n - n_zeros
                divisor += raw[i] * n
        if divisor == 0:  # every layer dense: the budget is the whole network
            break
        eps = rhs / divisor
        max_raw = max(raw[i] for i in range(len(sizes)) if i not in dense)
        if max_raw * eps <= 1:
            break
        dense |= {i for i in range(len(sizes)) if i not in dense and raw[i] == max_raw}
    return [1.0 if i in dense else float(eps * raw[i]) for i in range(len(sizes))]


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
