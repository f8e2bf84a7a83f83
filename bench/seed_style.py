"""The *seed-style* baseline: masks recomputed with a full sort on every forward pass.

Written for the benchmarks after the masked layers of the seed code bases (hidden-networks'
``SubnetConv`` as used by Robust Scratch Tickets): a ``Conv2d`` / ``Linear`` subclass with a
``scores`` parameter whose ``forward`` ranks ``|scores|`` with a full ``sort()`` of the flat
tensor, builds the 0/1 mask, multiplies it into the weight and runs the layer. The gradient
to the scores is straight-through (d|s| gets the mask gradient, then ``abs`` gives the sign).
The seed attack (:func:`seed_pgd`) calls ``loss.backward()`` at every step, so every attack
step also sorts every layer and back-propagates into the scores (the score graph stays alive).

Two deliberate differences from the seeds, so that the comparison is exact:

* the kept count is ``rst_lib.masks.masking.keep_count`` (``round(keep_ratio * n)``), not the seeds'
  ``n - int((1 - k) * n)``, which can differ by one weight;
* the layers are converted from an ``rst_lib`` model (:func:`to_seed_style`), so they hold the
  very same weight and score tensors (copies) and the masks are identical.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rst_lib.masks import masking


class GetSubnet(torch.autograd.Function):
    """0/1 mask of the ``k`` largest entries of ``scores`` by a full sort (seed style)."""

    @staticmethod
    def forward(ctx, scores, k):
        out = scores.clone()
        _, idx = scores.flatten().sort()
        j = scores.numel() - k  # number of dropped entries
        flat = out.view(-1)
        flat[idx[:j]] = 0
        flat[idx[j:]] = 1
        return out

    @staticmethod
    def backward(ctx, g):
        return g, None  # straight-through


class SeedSubnetConv(nn.Conv2d):
    """``nn.Conv2d`` whose forward re-sorts its scores (the seeds' ``SubnetConv``)."""

    k: int = 1

    def forward(self, x):
        subnet = GetSubnet.apply(self.scores.abs(), self.k)
        w = self.weight * subnet
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class SeedSubnetLinear(nn.Linear):
    """``nn.Linear`` counterpart of :class:`SeedSubnetConv`."""

    k: int = 1

    def forward(self, x):
        subnet = GetSubnet.apply(self.scores.abs(), self.k)
        return F.linear(x, self.weight * subnet, self.bias)


def _seed_layer(layer: nn.Module) -> nn.Module:
    p = masking.get_mask_param(layer)
    w = masking.raw_weight(layer).detach()
    if isinstance(layer, nn.Conv2d):
        new = SeedSubnetConv(layer.in_channels, layer.out_channels, layer.kernel_size,
                             layer.stride, layer.padding, layer.dilation, layer.groups,
                             bias=layer.bias is not None, padding_mode=layer.padding_mode)
    elif isinstance(layer, nn.Linear):
        new = SeedSubnetLinear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    else:  # pragma: no cover - rst_lib masks only Conv2d / Linear
        raise TypeError(f"cannot convert {type(layer).__name__}")
    with torch.no_grad():
        new.weight.copy_(w)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    new.weight.requires_grad_(False)  # frozen random weights, as in the seeds' prune mode
    new.scores = nn.Parameter(p.scores.detach().clone())
    new.k = p.k
    return new.to(w.device)


def untie_scores_(model: nn.Module) -> int:
    """Make every layer's top-k set unique: nudge scores tied with the k-th largest ``|s|``.

    With float32 scores two entries can share the k-th largest magnitude; ``torch.topk`` and a
    full sort may then keep different ones. The benchmarks compare identical masks, so the
    tied entries are moved apart by a few ulps (no other score changes). Returns how many
    scores moved.
    """
    moved = 0
    for _, layer in masking.masked_layers(model):
        p = masking.get_mask_param(layer)
        with torch.no_grad():
            flat = p.scores.view(-1)
            a = flat.abs()
            k = p.k
            if k >= a.numel():
                continue
            top = torch.topk(a, k + 1).values
            kth, nxt = top[k - 1], top[k]
            if kth != nxt:
                continue
            idx = (a == kth).nonzero().flatten()
            steps = torch.arange(len(idx), dtype=flat.dtype, device=flat.device)
            new = kth * (1 + steps * 4 * torch.finfo(flat.dtype).eps)
            flat[idx] = torch.where(flat[idx] >= 0, new, -new)
            moved += len(idx) - 1
    return moved


def to_seed_style(model: nn.Module) -> nn.Module:
    """A deep copy of an ``rst_lib`` masked model with every masked layer made seed-style.

    Everything else (BatchNorm state, unmasked layers, normalization) is copied as is.
    """
    seed = copy.deepcopy(model)
    for name, layer in list(masking.masked_layers(seed)):
        parent_name, _, child = name.rpartition(".")
        parent = seed.get_submodule(parent_name) if parent_name else seed
        setattr(parent, child, _seed_layer(layer))
    return seed


def seed_score_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [m.scores for m in model.modules() if isinstance(m, (SeedSubnetConv, SeedSubnetLinear))]


def seed_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Boolean mask of every seed-style layer, by name (same names as the rst_lib model)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (SeedSubnetConv, SeedSubnetLinear)):
            with torch.no_grad():
                out[name] = GetSubnet.apply(m.scores.abs(), m.k).bool()
    return out


def seed_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
             steps: int, random_start: bool = True, eval_mode: bool = True) -> torch.Tensor:
    """L-inf PGD as the seeds write it: ``loss.backward()`` at every step, masks re-sorted on
    every forward, gradients flowing into the scores too (they are zeroed by the caller's
    ``optimizer.zero_grad()`` before the update, as in the seeds' training loop)."""
    was_training = model.training
    if eval_mode:
        model.eval()
    try:
        delta = torch.zeros_like(x)
        if random_start:
            delta.uniform_(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
        delta.requires_grad_(True)
        for _ in range(steps):
            loss = F.cross_entropy(model(x + delta), y, reduction="sum")
            loss.backward()
            with torch.no_grad():
                d = (delta + alpha * delta.grad.sign()).clamp(-eps, eps)
                delta.copy_((x + d).clamp(0, 1) - x)
            delta.grad.zero_()
    finally:
        model.train(was_training)
    return (x + delta).detach()
