"""Statistics of a ticket's masks, as plain data for tables and figures.

RBRN (Liu et al., 2022) studies the structure of robust random subnetworks: how dense each
layer is, how many filters / input channels are pruned away entirely, and which 3x3 kernel
patterns survive. Every function here takes a masked model (any architecture, any ticket)
or directly a ``{layer name: bool mask}`` dict as returned by
:func:`rst_lib.masks.masking.get_masks`, and returns dicts, lists and CPU tensors (no plotting).

Conventions: conv masks are ``(out, in, kh, kw)`` (for grouped convs ``in`` is the input
channels per group, the weight's dim 1); linear masks ``(out, in)``. A 3x3 kernel pattern
is encoded as a 9-bit int read row-major from the most significant bit: bit ``8 - (3r + c)``
is kernel position (row r, column c), so ``format(code, "09b")`` spells the three rows,
e.g. ``0b010111010`` is a plus sign.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..masks.masking import weight_masks

_BITS = 2 ** torch.arange(8, -1, -1)  # row-major, top-left is the most significant bit


def _masks(model_or_masks: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Boolean CPU masks by layer name, in module order."""
    if isinstance(model_or_masks, nn.Module):
        masks = weight_masks(model_or_masks)  # per weight, also for kernel/filter scores
    else:
        masks = dict(model_or_masks)
    return {name: m.detach().bool().cpu() for name, m in masks.items()}


def _conv_masks(model_or_masks) -> dict[str, torch.Tensor]:
    return {n: m for n, m in _masks(model_or_masks).items() if m.dim() == 4}


def _kind(mask: torch.Tensor) -> str:
    return {4: "conv", 2: "linear"}.get(mask.dim(), f"{mask.dim()}d")


def encode_pattern(kernel: torch.Tensor) -> int:
    """9-bit code of a 3x3 boolean kernel (see the module docstring for the bit order)."""
    if tuple(kernel.shape) != (3, 3):
        raise ValueError(f"expected a 3x3 kernel, got shape {tuple(kernel.shape)}")
    return int((kernel.bool().flatten().long() * _BITS).sum())


def decode_pattern(code: int) -> torch.Tensor:
    """3x3 boolean kernel of a 9-bit code (inverse of :func:`encode_pattern`)."""
    if not 0 <= code < 512:
        raise ValueError(f"a 3x3 pattern code is in [0, 512), got {code}")
    return ((code // _BITS) % 2).bool().view(3, 3)


def layer_density(model_or_masks) -> dict[str, dict]:
    """Per masked layer: ``{"kind", "shape", "kept", "total", "density"}`` (kept fraction)."""
    out = {}
    for name, m in _masks(model_or_masks).items():
        kept, total = int(m.sum()), m.numel()
        out[name] = {"kind": _kind(m), "shape": list(m.shape), "kept": kept, "total": total,
                     "density": kept / total}
    return out


def filter_counts(model_or_masks) -> dict[str, dict[str, torch.Tensor]]:
    """Per masked conv layer: kept weights per output filter and per input channel.

    Returns ``{name: {"per_filter": LongTensor (out,), "per_channel": LongTensor (in,)}}``;
    ``per_filter[o]`` counts the kept weights of filter ``o`` (over all its input channels
    and kernel positions), ``per_channel[c]`` those reading input channel ``c`` (over all
    filters). Linear layers are left out (see :func:`pruned_units` for them).
    """
    return {name: {"per_filter": m.sum((1, 2, 3)), "per_channel": m.sum((0, 2, 3))}
            for name, m in _conv_masks(model_or_masks).items()}


def kernel_counts(model_or_masks) -> dict[str, torch.Tensor]:
    """Per masked conv layer: LongTensor (out, in) of kept weights in each kh x kw kernel."""
    return {name: m.sum((2, 3)) for name, m in _conv_masks(model_or_masks).items()}


def kernel_patterns(model_or_masks, layer: str | None = None, top: int | None = 20) -> dict:
    """Frequencies of the kept 3x3 patterns among the non-empty kernels of 3x3 conv layers.

    Args:
        layer: one layer name, or ``None`` for all 3x3 conv layers pooled together.
        top: number of most frequent patterns returned (``None``: all that occur).

    Returns ``{"layers": [...], "kernels": all kernels, "nonempty": non-empty kernels,
    "distinct": number of distinct non-empty patterns, "kept_histogram": list of 10 counts
    of kernels by number of kept weights (0..9), "patterns": [...]}``; each pattern is
    ``{"code": int, "pattern": 3x3 bool tensor, "kept": weights kept, "count": int,
    "fraction": count / nonempty}``, sorted by count (descending), then code.
    Raises ValueError if the layer is not a 3x3 conv or the model has none.
    """
    convs = {n: m for n, m in _conv_masks(model_or_masks).items() if m.shape[2:] == (3, 3)}
    if layer is not None:
        if layer not in convs:
            raise ValueError(f"{layer!r} is not a masked 3x3 conv layer; those are: {list(convs)}")
        convs = {layer: convs[layer]}
    if not convs:
        raise ValueError("the model has no masked 3x3 conv layer")
    codes = torch.cat([(m.reshape(-1, 9).long() * _BITS).sum(1) for m in convs.values()])
    freq = torch.bincount(codes, minlength=512)
    kept = torch.tensor([bin(c).count("1") for c in range(512)])
    hist = torch.bincount(kept, weights=freq.double(), minlength=10).long()
    nonempty = int(freq[1:].sum())
    order = sorted((c for c in range(1, 512) if freq[c] > 0), key=lambda c: (-int(freq[c]), c))
    if top is not None:
        order = order[:top]
    patterns = [{"code": c, "pattern": decode_pattern(c), "kept": int(kept[c]),
                 "count": int(freq[c]), "fraction": int(freq[c]) / nonempty} for c in order]
    return {"layers": list(convs), "kernels": int(codes.numel()), "nonempty": nonempty,
            "distinct": int((freq[1:] > 0).sum()), "kept_histogram": hist.tolist(),
            "patterns": patterns}


def pruned_units(model_or_masks) -> dict[str, dict]:
    """Per masked layer: fully pruned output units and fully pruned input units.

    An output unit (conv filter / linear neuron, dim 0) is pruned when none of its weights
    is kept; an input unit (input channel / input feature, dim 1) when no kept weight reads
    it. Returns ``{name: {"kind", "out_units", "pruned_out", "pruned_out_fraction",
    "in_units", "pruned_in", "pruned_in_fraction"}}``.
    """
    out = {}
    for name, m in _masks(model_or_masks).items():
        flat = m.reshape(m.shape[0], m.shape[1], -1)
        dead_out = int((~flat.any(2).any(1)).sum())
        dead_in = int((~flat.any(2).any(0)).sum())
        out[name] = {"kind": _kind(m), "out_units": m.shape[0], "pruned_out": dead_out,
                     "pruned_out_fraction": dead_out / m.shape[0], "in_units": m.shape[1],
                     "pruned_in": dead_in, "pruned_in_fraction": dead_in / m.shape[1]}
    return out


def mask_summary_table(model_or_masks) -> list[dict]:
    """One row per masked layer combining the statistics above, for a table.

    Columns: ``layer, kind, shape, kept, total, density, out_units, pruned_out,
    pruned_out_fraction, in_units, pruned_in, pruned_in_fraction`` and, for conv layers
    (``None`` otherwise): ``empty_kernels, empty_kernel_fraction, mean_kept_per_kernel``
    (over non-empty kernels) and, for 3x3 convs, ``top_pattern`` (code) and
    ``top_pattern_fraction``.
    """
    masks = _masks(model_or_masks)
    density, units, kernels = layer_density(masks), pruned_units(masks), kernel_counts(masks)
    rows = []
    for name, m in masks.items():
        row = {"layer": name, **density[name]}
        row.update({k: v for k, v in units[name].items() if k != "kind"})
        row.update(empty_kernels=None, empty_kernel_fraction=None, mean_kept_per_kernel=None,
                   top_pattern=None, top_pattern_fraction=None)
        if name in kernels:
            counts = kernels[name]
            nonempty = counts[counts > 0]
            row["empty_kernels"] = int((counts == 0).sum())
            row["empty_kernel_fraction"] = row["empty_kernels"] / counts.numel()
            row["mean_kept_per_kernel"] = float(nonempty.double().mean()) if len(nonempty) else 0.0
            if m.shape[2:] == (3, 3):
                top = kernel_patterns(masks, layer=name, top=1)["patterns"]
                row["top_pattern"] = top[0]["code"] if top else None
                row["top_pattern_fraction"] = top[0]["fraction"] if top else None
        rows.append(row)
    return rows
