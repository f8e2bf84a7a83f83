"""Compact mask encodings measured against rst_lib's ticket format (1 bit per weight).

At a keep ratio p the information in a mask is n * H(p) bits (H(0.05) = 0.286 bits per
weight), well below the 1 bit per weight of packed bits. Measured here, outside rst_lib:

* ``packed``: rst_lib's encoding, 8 mask bits per byte (what ``save_ticket`` stores);
* ``lzma``: the packed bits compressed with ``lzma`` (standard library);
* ``elias_fano``: the sorted positions of the kept weights in Elias-Fano form: ``l`` low
  bits per position plus a unary bit vector for the high parts, about ``2 + log2(1/p)`` bits
  per kept weight, encoded and decoded with a handful of vectorized numpy operations.
"""
from __future__ import annotations

import lzma

import numpy as np
import torch


def ef_encode(mask: torch.Tensor) -> dict:
    """Elias-Fano code of the positions of the ones of a flat boolean mask."""
    flat = mask.detach().flatten().cpu().numpy().astype(bool)
    u = flat.size
    pos = np.flatnonzero(flat).astype(np.int64)
    n = pos.size
    low_bits = max(0, int(np.floor(np.log2(u / n)))) if n else 0
    low = pos & ((1 << low_bits) - 1)
    high = pos >> low_bits
    # low parts: n * low_bits bits, most significant bit first
    if low_bits:
        shifts = np.arange(low_bits - 1, -1, -1, dtype=np.int64)
        low_stream = ((low[:, None] >> shifts) & 1).astype(np.uint8).ravel()
    else:
        low_stream = np.zeros(0, np.uint8)
    # high parts: one bit set at high[i] + i in a vector of n + (u >> low_bits) + 1 bits
    hv = np.zeros(n + (u >> low_bits) + 1, np.uint8)
    hv[high + np.arange(n)] = 1
    return {"u": u, "n": n, "l": low_bits,
            "low": np.packbits(low_stream).tobytes(), "high": np.packbits(hv).tobytes()}


def ef_decode(code: dict, shape) -> torch.Tensor:
    u, n, low_bits = code["u"], code["n"], code["l"]
    hv = np.unpackbits(np.frombuffer(code["high"], np.uint8))
    high = np.flatnonzero(hv)[:n] - np.arange(n)
    if low_bits:
        bits = np.unpackbits(np.frombuffer(code["low"], np.uint8))[: n * low_bits]
        bits = bits.reshape(n, low_bits).astype(np.int64)
        low = (bits << np.arange(low_bits - 1, -1, -1, dtype=np.int64)).sum(1)
    else:
        low = np.zeros(n, np.int64)
    flat = np.zeros(u, bool)
    flat[(high << low_bits) | low] = True
    return torch.from_numpy(flat).view(tuple(shape))


def ef_bytes(code: dict) -> int:
    return len(code["low"]) + len(code["high"]) + 12  # + u, n, l as three int32


def encode_masks(masks: dict[str, torch.Tensor], method: str) -> dict[str, torch.Tensor]:
    """Masks -> uint8 tensors (what a ticket would store) for ``method``."""
    from rst_lib.tickets import pack_bits
    out = {}
    for name, m in masks.items():
        if method == "packed":
            out[name] = pack_bits(m)
        elif method == "lzma":
            data = lzma.compress(pack_bits(m).numpy().tobytes(), preset=9 | lzma.PRESET_EXTREME)
            out[name] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        elif method == "elias_fano":
            c = ef_encode(m)
            header = np.array([c["u"], c["n"], c["l"]], np.int64).tobytes()
            lo = np.array([len(c["low"])], np.int64).tobytes()
            out[name] = torch.frombuffer(bytearray(header + lo + c["low"] + c["high"]),
                                         dtype=torch.uint8)
        else:
            raise ValueError(method)
    return out


def decode_mask(data: torch.Tensor, shape, method: str) -> torch.Tensor:
    from rst_lib.tickets import unpack_bits
    if method == "packed":
        return unpack_bits(data, shape)
    raw = data.numpy().tobytes()
    if method == "lzma":
        return unpack_bits(torch.frombuffer(bytearray(lzma.decompress(raw)), dtype=torch.uint8),
                           shape)
    u, n, low_bits, n_low = np.frombuffer(raw[:32], np.int64)
    code = {"u": int(u), "n": int(n), "l": int(low_bits), "low": raw[32:32 + n_low],
            "high": raw[32 + n_low:]}
    return ef_decode(code, shape)
