"""How one global keep ratio becomes per-layer keep ratios (``keep_allocation``): the
workbook's closed form of RBRN's adaptive rule, RBRN's own walk, and RigL's ERK."""
from __future__ import annotations

import numpy as np

from ..config import allowed
from ..errors import check_keep_ratio

KEEP_ALLOCATIONS = allowed("keep_allocation")  # declared with the parameter


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
