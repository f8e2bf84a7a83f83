"""Per-image outcomes of an evaluation, kept compactly inside its JSON record.

A paired difference between two arms of one seed (same images) has a within-seed variance
that only its discordant images reveal; a record of accuracies alone loses it. So every
final evaluation stores, beside its numbers, WHICH test images it evaluated and one bit per
image and metric (correct / robust)::

    "outcomes": {
      "format": "rst-outcomes-1",
      "split_examples": 10000,        # size of the split the indices index
      "seed": 3,                      # the evaluation order's seed (datasets.evaluation_order)
      "indices": "<base64 of little-endian int32>",   # the split indices evaluated, in order
      "metrics": {"clean": {"examples": 500, "bits": "<base64 of numpy.packbits>"}, ...}}

A metric with ``examples = k`` covers the FIRST ``k`` of ``indices`` (clean and PGD on the
final examples, AutoAttack on its own, nested, prefix). :func:`load_outcomes` reads one
metric back as (indices, correct) arrays.
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np

FORMAT = "rst-outcomes-1"


def _bits(flags) -> str:
    return base64.b64encode(np.packbits(np.asarray(flags, dtype=bool))).decode("ascii")


def outcome_record(indices, split_examples: int, seed: int | None, metrics: dict) -> dict:
    """The ``outcomes`` entry of a record: ``indices`` (split indices evaluated, in order,
    as given with the data) and ``metrics`` ({name: per-image correct flags}, each covering
    a prefix of ``indices``)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    out = {"format": FORMAT, "split_examples": int(split_examples), "seed": seed,
           "indices": base64.b64encode(idx.astype("<i4").tobytes()).decode("ascii"),
           "metrics": {}}
    for name, flags in metrics.items():
        flags = np.asarray(flags.cpu() if hasattr(flags, "cpu") else flags, dtype=bool).reshape(-1)
        if len(flags) > len(idx):
            raise ValueError(f"outcomes {name!r}: {len(flags)} flags for {len(idx)} images")
        out["metrics"][name] = {"examples": int(len(flags)), "bits": _bits(flags)}
    return out


def _find(source) -> dict:
    """The ``outcomes`` dict of a record folder, a metrics.json dict, a final dict, or itself."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        source = json.loads((path / "metrics.json" if path.is_dir() else path).read_text())
    for key in (None, "outcomes", "final"):
        node = source if key is None else source.get(key)
        if isinstance(node, dict) and node.get("format") == FORMAT:
            return node
        if isinstance(node, dict) and isinstance(node.get("outcomes"), dict):
            return node["outcomes"]
    raise KeyError("no per-image outcomes in this record (written before they were kept?)")


def metric_names(source) -> list[str]:
    """The metrics whose per-image outcomes ``source`` holds."""
    return list(_find(source)["metrics"])


def load_outcomes(source, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(split indices, correct flags) of ``metric`` in ``source`` (a run or study-record
    folder, a metrics.json path or dict, a ``final`` dict or an ``outcomes`` dict): two
    arrays of equal length, int64 and bool."""
    rec = _find(source)
    if metric not in rec["metrics"]:
        raise KeyError(f"no per-image outcomes for {metric!r}: the record has {', '.join(rec['metrics'])}")
    entry = rec["metrics"][metric]
    n = int(entry["examples"])
    idx = np.frombuffer(base64.b64decode(rec["indices"]), dtype="<i4").astype(np.int64)
    bits = np.unpackbits(np.frombuffer(base64.b64decode(entry["bits"]), dtype=np.uint8), count=n)
    return idx[:n], bits.astype(bool)
