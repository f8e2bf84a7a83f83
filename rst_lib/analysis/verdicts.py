"""The verdict rule of the claims (:mod:`.claims`, notebook 08): paired by seed, one test per
kind of claim, Holm over the counted claims. docs/evaluation.md ("Verdicts") explains it;
tests/test_claims.py checks it on thousands of synthetic studies with a known truth.

* **Paired by seed.** The two arms of one seed share the random network, the data order and
  the test images, so the unit is the per-seed difference ``d_s = a_s - b_s``; seeds present
  in one arm only are left out (listed in ``unpaired``).
* **The interval** is the t interval of the mean of ``d_s`` (n - 1 degrees of freedom), with
  the variance of ``d_s`` taken as ``max(sample variance, evaluation floor)``. The floor is
  the smallest McNemar variance a difference ``d`` of two accuracies on the same ``m`` test
  images can have, ``(|d| - d²)/m`` (at least ``|d|·m`` images must be classified
  differently): a few seeds that happen to show identical differences on 500 test images do
  not make a zero-width interval. A zero standard error (no floor: identical differences of
  a ratio, or two copies of one network) gives no verdict; one seed gives no between-seed
  variance: inconclusive.
* **One rule per kind of claim**, its margin δ declared before any run (points):
  *superiority* holds when the lower bound of the 95 % interval is above δ (δ = 0 unless the
  paper says "notably"), does not hold when its upper bound is below δ;
  *non-inferiority* holds when the lower 95 % bound is above −δ, does not hold when the upper
  bound is below −δ; *equivalence* (two one-sided tests) holds when the 90 % interval is
  inside ±δ, does not hold when it is entirely outside. Anything else is *inconclusive at
  this scale*, reported with the smallest effect the study could have detected at 80 % power.
* **Multiplicity**: Holm's step-down over the counted claims (family-wise error ≤ 5 %).
  Sanity checks and controls are shown, not counted.
"""
from __future__ import annotations

import math
import statistics

import numpy as np
from scipy import stats as scipy_stats

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive at this scale"
SUPERIORITY, NON_INFERIORITY, EQUIVALENCE = "superiority", "non-inferiority", "equivalence"
KINDS = (SUPERIORITY, NON_INFERIORITY, EQUIVALENCE)
# one-sided error rate of each kind: the two-sided 95 % interval's bound (superiority,
# non-inferiority), the 90 % interval of two one-sided tests at 5 % (equivalence)
ALPHA = {SUPERIORITY: 0.025, NON_INFERIORITY: 0.025, EQUIVALENCE: 0.05}
POWER = 0.80        # the power at which the detectable effect is reported
MIN_SEEDS = 2       # below: no between-seed variance, no verdict


# ------------------------------------------------------------------------- the statistics

def evaluation_floor(diffs, examples):
    """The smallest evaluation variance a paired difference of two accuracies on the same
    ``examples`` test images can have: the images on which the two models disagree make the
    difference, and there are at least ``|d|·m`` of them, so its McNemar variance
    ``(discordant - d²)/m`` is at least ``(|d| - d²)/m``. Arrays work; ``examples`` None or 0:
    no floor (0)."""
    d = np.abs(np.asarray(diffs, dtype=float))
    m = np.asarray(np.nan if examples is None else examples, dtype=float)
    floor = (d - d ** 2) / np.where(m > 0, m, np.nan)
    return np.nan_to_num(floor, nan=0.0)


def paired_test(diffs, floor, kind: str, margin: float):
    """The verdict rule on arrays: ``diffs`` (..., n) per-seed differences, ``floor`` (...,
    n) or broadcastable: the evaluation variance of each difference; ``margin`` δ as a
    fraction. Vectorised over the leading axes (thousands of synthetic studies at once).

    Returns a dict of arrays: mean, se, dof, lo/hi (the interval of the kind's level),
    p (the kind's one-sided p-value), holds/fails (booleans) and detectable (the smallest
    effect found at :data:`POWER`, see :func:`detectable_effect`). n < 2: nan, never holds.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    d = np.asarray(diffs, dtype=float)
    n = d.shape[-1]
    mean = d.mean(-1) if n else np.full(d.shape[:-1], np.nan)
    floor = np.broadcast_to(np.asarray(floor, dtype=float), d.shape)
    if n < MIN_SEEDS:
        nan = np.full(d.shape[:-1], np.nan)
        false = np.zeros(d.shape[:-1], dtype=bool)
        return {"n": n, "mean": mean, "se": nan, "dof": 0, "lo": nan, "hi": nan, "p": nan,
                "holds": false, "fails": false, "detectable": nan}
    var = np.maximum(d.var(-1, ddof=1), floor.mean(-1))
    # a zero standard error (identical differences and no evaluation floor, e.g. a ratio
    # metric or two copies of one network) gives no interval: never a verdict
    se = np.sqrt(var / n)
    se = np.where(se > 0, se, np.nan)
    dof = n - 1
    alpha = ALPHA[kind]
    q = scipy_stats.t.ppf(1 - alpha, dof)
    lo, hi = mean - q * se, mean + q * se
    if kind == SUPERIORITY:
        p = scipy_stats.t.sf((mean - margin) / se, dof)
        holds, fails = lo > margin, hi < margin
    elif kind == NON_INFERIORITY:
        p = scipy_stats.t.sf((mean + margin) / se, dof)
        holds, fails = lo > -margin, hi < -margin
    else:
        p = np.maximum(scipy_stats.t.sf((mean + margin) / se, dof),
                       scipy_stats.t.cdf((mean - margin) / se, dof))
        holds, fails = (lo > -margin) & (hi < margin), (lo > margin) | (hi < -margin)
    holds, fails = holds & (se == se), fails & (se == se)
    return {"n": n, "mean": mean, "se": se, "dof": dof, "lo": lo, "hi": hi, "p": p,
            "holds": holds, "fails": fails, "detectable": detectable_effect(se, dof, kind, margin)}


def detectable_effect(se, dof: int, kind: str, margin: float):
    """The smallest effect the study finds with probability :data:`POWER` (normal-theory
    approximation with t quantiles, standard error ``se`` as observed):

    * superiority: the true difference δ + (t₁₋α + t_power)·se;
    * non-inferiority: the margin it could establish when the arms are truly equal,
      (t₁₋α + t_power)·se (the declared δ should be at least this);
    * equivalence: the same for ±δ when the arms are equal, (t₁₋α + t₍₁₊power₎/₂)·se.
    """
    qa = scipy_stats.t.ppf(1 - ALPHA[kind], dof)
    if kind == EQUIVALENCE:
        return (qa + scipy_stats.t.ppf((1 + POWER) / 2, dof)) * np.asarray(se)
    spread = (qa + scipy_stats.t.ppf(POWER, dof)) * np.asarray(se)
    return margin + spread if kind == SUPERIORITY else spread


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (nan stays nan and does not count)."""
    idx = [i for i, p in enumerate(pvalues) if p == p]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def verdict(a_values, b_values, kind: str = SUPERIORITY, margin: float = 0.0,
            examples=None) -> dict:
    """The verdict on two arms: ``{seed: value}`` mappings (paired by seed) or lists (paired
    by position). ``margin`` δ as a fraction; ``examples``: the number of test images each
    seed's two accuracies were measured on (an int, or per seed like the values; None: not
    accuracies, no evaluation floor)."""
    def as_map(v):
        return dict(v) if isinstance(v, dict) else dict(enumerate(v if v is not None else []))
    a, b = as_map(a_values), as_map(b_values)
    seeds = [s for s in a if s in b]
    unpaired = sorted(set(a) ^ set(b), key=str)
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    m = as_map(examples) if isinstance(examples, (dict, list, tuple)) else {s: examples for s in seeds}
    floor = evaluation_floor(d, np.array([m.get(s) or 0 for s in seeds], dtype=float))
    t = paired_test(d[None, :], floor[None, :], kind, margin)
    r = {k: (v[0].item() if isinstance(v, np.ndarray) else v) for k, v in t.items()}
    out = {"kind": kind, "margin": margin, "n": len(seeds), "seeds": seeds, "unpaired": unpaired,
           "differences": dict(zip(seeds, d.tolist())), "difference": r["mean"] if seeds else None,
           "interval": (r["lo"], r["hi"]) if len(seeds) >= MIN_SEEDS else None,
           "level": 1 - 2 * ALPHA[kind], "se": r["se"], "p": r["p"], "detectable": r["detectable"],
           "a": seed_stats(a.values()), "b": seed_stats(b.values())}
    if len(seeds) < MIN_SEEDS:
        return {**out, "verdict": INCONCLUSIVE,
                "why": f"{len(seeds)} paired seed(s): no between-seed variance to judge by"}
    lo, hi = r["lo"], r["hi"]
    text = (f"paired difference {r['mean']:+.1%} over {len(seeds)} seeds, {out['level']:.0%} "
            f"interval {lo:+.1%} to {hi:+.1%}; margin {margin:.1%}")
    if r["se"] != r["se"]:
        return {**out, "verdict": INCONCLUSIVE, "interval": None,
                "why": f"{len(seeds)} seeds with identical differences ({r['mean']:+.1%}) and no "
                       "evaluation noise to bound them: no interval"}
    if r["holds"]:
        return {**out, "verdict": HOLDS, "why": text}
    if r["fails"]:
        return {**out, "verdict": FAILS, "why": text + " (the interval is on the wrong side)"}
    return {**out, "verdict": INCONCLUSIVE,
            "why": text + f"; detectable at {POWER:.0%} power: {_detectable_text(kind, r['detectable'])}"}


def _detectable_text(kind: str, value: float) -> str:
    if kind == SUPERIORITY:
        return f"a true difference of {value:+.1%}"
    return f"a margin of ±{value:.1%} when the arms are equal" if kind == EQUIVALENCE \
        else f"a margin of {value:.1%} when the arms are equal"


def seed_stats(values) -> dict:
    """Mean, sample std and n of one arm's per-seed values (shown beside the paired test)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None}
    return {"n": n, "mean": statistics.fmean(values), "std": statistics.stdev(values) if n > 1 else 0.0}
