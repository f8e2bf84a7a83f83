"""A journal of finished work units (e.g. one attack on one batch), kept in a JSON file so a
killed evaluation resumes where it stopped instead of starting over.

Each unit's result is written (atomically) as soon as it is done. The file carries a
``key`` that fingerprints the computation (the model's tensors and the settings): a file
written for another model or other settings is ignored and overwritten, never reused.
Every unit must be deterministic on its own (seeded per unit, see :func:`unit_seed`), so
a resumed evaluation gives exactly the numbers of an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .files import read_json, write_text


def unit_seed(seed: int, index: int) -> int:
    """The seed of work unit ``index`` of a computation seeded with ``seed``: each batch
    meets the same random starts whether or not the batches before it ran in this process."""
    return (int(seed) * 1_000_003 + int(index)) % (2 ** 63)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's state (names, shapes, dtypes and values of every tensor)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not torch.is_tensor(t):
            continue
        t = t.detach().cpu().contiguous().reshape(-1)  # 0-d tensors: 1-d for the byte view
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fingerprint(model: nn.Module, settings: dict) -> str:
    """A key for :class:`Journal`: the model's tensors and the settings (JSON-able)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256((model_fingerprint(model) + text).encode()).hexdigest()[:32]


class Journal:
    """Results of finished units under ``path`` (None: kept in memory only).

    ``journal.run(unit, compute)`` returns the recorded result of ``unit`` or computes,
    records and returns it. Results must be JSON-able (lists of ints, numbers, dicts).
    """

    def __init__(self, path: str | os.PathLike | None, key: str):
        self.path = Path(path) if path is not None else None
        self.key = key
        data = read_json(self.path) if self.path is not None else {}
        self.units: dict = data.get("units", {}) if data.get("key") == key else {}
        self.resumed = len(self.units)  # units found done when this journal was opened

    def done(self, unit: str) -> bool:
        return unit in self.units

    def run(self, unit: str, compute: Callable[[], object]):
        if unit not in self.units:
            self.units[unit] = compute()
            if self.path is not None:
                # compact: rewritten after every unit (thousands of per-input flags)
                write_text(self.path, json.dumps({"key": self.key, "units": self.units},
                                                 separators=(",", ":")))
        return self.units[unit]

    def count(self, prefix: str) -> int:
        """How many recorded units start with ``prefix``."""
        return sum(u.startswith(prefix) for u in self.units)


def open_journal(run_dir: str | os.PathLike | None, name: str, key: str) -> Journal:
    """The journal ``run_dir/eval-state/<name>.json`` (in memory when ``run_dir`` is None)."""
    path = Path(run_dir) / "eval-state" / f"{name}.json" if run_dir is not None else None
    return Journal(path, key)
