"""Other mask encodings, measured against rst_lib's tickets (Elias-Fano positions).

At a keep ratio p the information in a mask is n * H(p) bits (H(0.05) = 0.286 bits per
weight). rst_lib stores ``2 + log2(1/p)`` bits per kept weight (Elias-Fano, 0.32 bits per
weight at p = 0.05). For comparison:

* ``packed``: 8 mask bits per byte (ticket format version 1);
* ``lzma``: the packed bits compressed with ``lzma`` (standard library).
"""
from __future__ import annotations

import lzma

import torch


def encode_masks(masks: dict[str, torch.Tensor], method: str) -> dict[str, torch.Tensor]:
    """Masks -> uint8 tensors (what a ticket would store) for ``method``."""
    from rst_lib.masks.codec import pack_bits
    out = {}
    for name, m in masks.items():
        if method == "packed":
            out[name] = pack_bits(m)
        elif method == "lzma":
            data = lzma.compress(pack_bits(m).numpy().tobytes(), preset=9 | lzma.PRESET_EXTREME)
            out[name] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        else:
            raise ValueError(method)
    return out


def decode_mask(data: torch.Tensor, shape, method: str) -> torch.Tensor:
    from rst_lib.masks.codec import unpack_bits
    if method == "packed":
        return unpack_bits(data, shape)
    raw = data.numpy().tobytes()
    if method == "lzma":
        return unpack_bits(torch.frombuffer(bytearray(lzma.decompress(raw)), dtype=torch.uint8),
                           shape)
    raise ValueError(method)
