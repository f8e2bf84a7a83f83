"""The fingerprint of what a ticket leaves to its seed: a SHA-256 of the rebuilt weights.

A ticket stores the seed and the masks, not the random weights (tickets.py). A torch whose
generator draws differently, or a changed init function, would rebuild other weights under
the same masks, and the ticket would load as another network without a word. So the ticket
stores a hash of every state entry it leaves to the seed, as saved, and loading hashes the
rebuilt network the same way and compares.

What is hashed, per entry (the caller names the entries: those not stored in the ticket):
its name, dtype and shape, then its values as little-endian bytes (the same hash on every
machine); a masked layer's weight only at its kept positions, the weights the network
computes with (a ticket does not rebuild pruned weights, e.g. those IteRand re-drew), which
also keeps the hash cheap (5 % of a ResNet18's weights: ``bench/ticket_fingerprint.py``).
Tensors on the meta device hold no values and are skipped. One SHA-256 over all entries
says whether anything differs; a short digest per entry names what.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

import torch
from torch import nn

from ..masks import masking

SCHEME = 1          # what is hashed and how; another scheme is not compared
SHORT_DIGEST = 12   # hex characters kept per entry: enough to name what differs


def _kept_positions(model: nn.Module) -> dict[str, torch.Tensor]:
    """state key of each masked weight -> its mask at the weight's shape."""
    return {f"{name}.parametrizations.weight.original":
            masking.get_mask_param(layer).mask().expand(masking.raw_weight(layer).shape)
            for name, layer in masking.masked_layers(model)}


def _tensor_digest(name: str, value: torch.Tensor, kept: torch.Tensor | None) -> str:
    h = hashlib.sha256(f"{name}|{value.dtype}|{tuple(value.shape)}".encode())
    value = value.detach()
    if kept is not None:
        value = value[kept.to(value.device)]
        h.update(f"|kept {value.numel()}".encode())
    value = value.cpu().contiguous()
    if value.dtype == torch.bfloat16:  # numpy has no bfloat16: its exact bits
        value = value.view(torch.int16)
    array = value.numpy()
    h.update(array.astype(array.dtype.newbyteorder("<"), copy=False).data)
    return h.hexdigest()


def entry_digests(model: nn.Module, keys: Iterable[str]) -> dict[str, str]:
    """Full SHA-256 (hex) of each state entry ``keys`` of ``model``, in ``keys``' order."""
    state = model.state_dict(keep_vars=True)
    kept = _kept_positions(model)
    return {key: _tensor_digest(key, state[key], kept.get(key)) for key in keys
            if not state[key].is_meta}


def _combined(digests: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{k}\0{d}\n" for k, d in sorted(digests.items()))
                          .encode()).hexdigest()


def fingerprint(model: nn.Module, keys: Iterable[str]) -> dict:
    """What a ticket stores: ``{"scheme", "sha256", "entries": {key: short digest}, "torch"}``."""
    digests = entry_digests(model, keys)
    return {"scheme": SCHEME, "sha256": _combined(digests),
            "entries": {k: d[:SHORT_DIGEST] for k, d in digests.items()},
            "torch": str(torch.__version__)}


def differing_entries(saved: dict, model: nn.Module, keys: Iterable[str]) -> list[str] | None:
    """The entries whose rebuilt values differ from the fingerprint ``saved`` (in state order;
    entries present on one side only count), ``[]`` if none, None if ``saved`` is of another
    scheme (not comparable)."""
    if saved.get("scheme") != SCHEME:
        return None
    digests = entry_digests(model, keys)
    if _combined(digests) == saved["sha256"]:
        return []
    entries = saved["entries"]
    differ = [k for k, d in digests.items() if entries.get(k) != d[:SHORT_DIGEST]]
    differ += [k for k in entries if k not in digests]
    return differ or ["(the combined hash)"]


def entry_label(key: str) -> str:
    """A state key as a user names it: ``body.features.0.weight`` for a masked weight."""
    return key.replace(".parametrizations.weight.original", ".weight")
