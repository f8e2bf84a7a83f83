"""Exact, compact encodings of a boolean mask: bits packed 8 per byte, or the Elias-Fano
code of the positions of the kept (or, above one half, the pruned) weights, whichever is
smaller (:func:`encode_mask`); :func:`decode_mask` inverts it."""
from __future__ import annotations

import torch


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Boolean tensor -> uint8 tensor with 8 mask bits per byte (big-endian bit order)."""
    flat = mask.detach().flatten().to(torch.uint8).cpu()
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    return (flat * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape) -> torch.Tensor:
    n = int(torch.Size(shape).numel())
    shifts = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0], dtype=torch.uint8)
    bits = (packed.view(-1, 1) >> shifts) & 1
    return bits.flatten()[:n].bool().view(shape)


def _msb_first_shifts(bits: int) -> torch.Tensor:
    """Shifts that split an integer into ``bits`` bits, most significant first."""
    return torch.arange(bits - 1, -1, -1, dtype=torch.int64)


def ef_encode(positions: torch.Tensor, universe: int) -> dict:
    """Elias-Fano code of sorted distinct ``positions`` in ``range(universe)``.

    Each position is split into ``l = floor(log2(universe / n))`` low bits, stored verbatim,
    and a high part, stored in unary as a bit vector with a one at ``high[i] + i``; in all
    at most ``n * (l + 2) + 1`` bits."""
    n = positions.numel()
    # with no positions, enough low bits that the unary part shrinks to one bit
    low_bits = (universe // n).bit_length() - 1 if n else universe.bit_length()
    pos = positions.to(torch.int64).cpu()
    high = pos >> low_bits
    if low_bits:
        low = ((pos & ((1 << low_bits) - 1)).view(-1, 1) >> _msb_first_shifts(low_bits)) & 1
    else:
        low = pos.new_zeros(0)
    upper = torch.zeros(n + (universe >> low_bits) + 1, dtype=torch.bool)
    upper[high + torch.arange(n)] = True
    return {"n": n, "l": low_bits, "low": pack_bits(low.bool()), "high": pack_bits(upper)}


def ef_decode(code: dict, universe: int) -> torch.Tensor:
    """The sorted positions encoded by :func:`ef_encode`."""
    n, low_bits = int(code["n"]), int(code["l"])
    upper_len = n + (universe >> low_bits) + 1
    high = unpack_bits(code["high"], (upper_len,)).nonzero().squeeze(1)
    if high.numel() != n:
        raise ValueError(f"Elias-Fano code holds {high.numel()} positions, expected {n}")
    high = high - torch.arange(n)
    if low_bits:
        bits = unpack_bits(code["low"], (n * low_bits,)).view(n, low_bits).to(torch.int64)
        low = (bits << _msb_first_shifts(low_bits)).sum(1)
    else:
        low = torch.zeros(n, dtype=torch.int64)
    return (high << low_bits) | low


def encode_mask(mask: torch.Tensor) -> dict:
    """A boolean mask -> the smallest exact encoding (a dict of ints, strings and tensors)."""
    flat = mask.detach().flatten().bool().cpu()
    u = flat.numel()
    bits = {"encoding": "bits", "shape": list(mask.shape), "data": pack_bits(flat)}
    inverted = int(flat.sum()) * 2 > u  # code the rarer value
    ones = (~flat if inverted else flat).nonzero().squeeze(1)
    code = ef_encode(ones, u)
    if code["low"].numel() + code["high"].numel() + 16 >= bits["data"].numel():
        return bits
    return {"encoding": "elias_fano", "shape": list(mask.shape), "inverted": inverted, **code}


def decode_mask(code: dict) -> torch.Tensor:
    shape = torch.Size(code["shape"])
    if code["encoding"] == "bits":
        return unpack_bits(code["data"], shape)
    if code["encoding"] != "elias_fano":
        raise ValueError(f"unknown mask encoding {code['encoding']!r}")
    u = int(shape.numel())
    pos = ef_decode(code, u)
    if pos.numel() and (pos.min() < 0 or pos.max() >= u):
        raise ValueError("Elias-Fano positions out of range")
    flat = torch.zeros(u, dtype=torch.bool)
    flat[pos] = True
    return (~flat if code["inverted"] else flat).view(shape)
