"""How sure a number is: 95 % intervals of accuracies and mean ± std over seeds.

An accuracy measured on n examples is a binomial proportion; its Wilson score interval
stays inside [0, 1] and is honest at 0 % or 100 %, where the normal approximation is not.
A difference of 1-2 points on 1,000 examples is inside such intervals: runs that differ
only in their seed say how much a setting's number moves.
"""
from __future__ import annotations

import math
import statistics
from typing import Iterable

Z95 = 1.959963984540054


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of an accuracy measured on ``n`` examples."""
    if n <= 0:
        return (0.0, 1.0)
    p = min(max(accuracy, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the interval holds p; clamping keeps rounding from putting p a hair outside it
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def accuracy_text(accuracy: float | None, n: int | None) -> str:
    """``45.6 % [42.5, 48.7] (n 1000)``: the accuracy, its 95 % interval and n."""
    if accuracy is None:
        return ""
    if not n:
        return f"{accuracy:.1%}"
    lo, hi = wilson_interval(accuracy, n)
    return f"{accuracy:.1%} [{lo:.1%}, {hi:.1%}] (n {n})"


def group_over_seeds(rows: list[dict], metrics: Iterable[str],
                     ignore: Iterable[str] = ("seed", "path", "run", "status", "name")) -> list[dict]:
    """Rows that differ only in ``ignore`` (the seed, where they were written) become one
    row with ``<metric>_mean``, ``<metric>_std`` (sample std; 0 for one seed), ``seeds``
    (the seeds) and ``n_seeds``; the other columns are those the rows share."""
    metrics, ignore = list(metrics), set(ignore)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = tuple(sorted((k, _hashable(v)) for k, v in r.items()
                           if k not in ignore and k not in metrics))
        groups.setdefault(key, []).append(r)
    out = []
    for key, members in groups.items():
        row = dict(key)
        row["seeds"] = sorted(m.get("seed") for m in members if m.get("seed") is not None)
        row["n_seeds"] = len(members)
        for m in metrics:
            values = [r[m] for r in members if isinstance(r.get(m), (int, float))]
            row[f"{m}_mean"] = statistics.fmean(values) if values else None
            row[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        out.append(row)
    return out


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v
