"""The verdict rule of the claims (:mod:`.claims`, notebook 08): paired by seed, one test per
kind of claim, Holm over the declared counted claims. docs/evaluation.md ("Verdicts") explains
it; tests/test_claims.py checks it on thousands of synthetic studies with a known truth.

* **Paired by seed.** The two arms of one seed share the random network, the data order and
  the seed's test images (each seed its own random subset of the test split), so the unit is
  the per-seed difference ``d_s = a_s - b_s``; seeds present in one arm only are left out and
  listed with the reason (``dropped``).
* **The variance of d_s** has two parts: the networks (which seed, which training noise) and
  the images (which test images the seed drew). Where each arm kept its per-image outcomes,
  the image part of seed ``s`` is *estimated* from its discordant pairs (McNemar):
  ``v_s = ((b + c)/m - d²)/(m - 1)``, ``b`` images right in a only, ``c`` right in b only,
  ``m`` images (:func:`within_seed_variance`). The interval is the t interval of the mean of
  ``d_s`` (n - 1 degrees of freedom) with the variance ``max(sample variance of d_s, mean
  v_s)``: the method-of-moments estimate of ``var(d_s) = σ²_networks + v`` with the
  network part truncated at 0. With independent images per seed the sample variance alone is
  unbiased for ``var(d_s)`` (t's own assumption); the maximum only widens it where the seeds
  happen to agree more than their images allow, so identical differences on a few seeds
  never make an interval by themselves, and ``d = 0`` exactly still has a variance.
  Metrics without per-image outcomes (a ratio) keep the sample variance alone: a zero
  standard error gives no interval.
* **One rule per kind of claim**, its margin δ declared before any run (points):
  *superiority* holds when the lower bound of the 95 % interval is above δ, does not hold
  when its upper bound is below δ; *non-inferiority* holds when the lower 95 % bound is
  above −δ, does not hold when the upper bound is below −δ; *equivalence* (two one-sided
  tests) holds when the 90 % interval is inside ±δ, does not hold when it is entirely
  outside. Anything else is *inconclusive at this scale*, with the smallest effect the study
  could have detected at 80 % power.
* **Not judged**: no paired seed is *not run yet*; fewer paired seeds than the study
  declares is *too few seeds: k of n* (its interval shown, no verdict).
* **Multiplicity**: Holm's step-down over the declared counted claims (family-wise error
  ≤ 5 %); a claim not judged enters the family with p = 1 (:func:`holm`).
"""
from __future__ import annotations

import math
import statistics

import numpy as np
from scipy import stats as scipy_stats

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive at this scale"
NOT_RUN, TOO_FEW = "not run yet", "too few seeds"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, TOO_FEW, NOT_RUN)   # the kinds a summary counts
SUPERIORITY, NON_INFERIORITY, EQUIVALENCE = "superiority", "non-inferiority", "equivalence"
KINDS = (SUPERIORITY, NON_INFERIORITY, EQUIVALENCE)
# one-sided error rate of each kind: the two-sided 95 % interval's bound (superiority,
# non-inferiority), the 90 % interval of two one-sided tests at 5 % (equivalence)
ALPHA = {SUPERIORITY: 0.025, NON_INFERIORITY: 0.025, EQUIVALENCE: 0.05}
POWER = 0.80        # the power at which the detectable effect is reported
MIN_SEEDS = 2       # below: no between-seed variance, never a verdict


# ------------------------------------------------------------------------- the statistics

def discordant_counts(a_right, b_right):
    """``(b, c, m)`` of two arms' per-image outcomes on the same images (booleans, last axis
    the images): ``b`` right in a only, ``c`` right in b only, ``m`` images."""
    a, b = np.asarray(a_right, dtype=bool), np.asarray(b_right, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"per-image outcomes of different shapes {a.shape} and {b.shape}: "
                         "the two arms were not scored on the same images")
    return (a & ~b).sum(-1), (~a & b).sum(-1), a.shape[-1]


def within_seed_variance(b, c, m):
    """The estimated variance of one seed's paired difference ``d = (b - c)/m`` that comes
    from its ``m`` test images: the sample variance of the per-image differences (+1, 0, −1)
    over ``m``, ``((b + c)/m - d²)/(m - 1)`` (McNemar). Arrays broadcast; ``m`` < 2: nan."""
    b, c = np.asarray(b, dtype=float), np.asarray(c, dtype=float)
    m = np.asarray(m, dtype=float)
    ok = m >= 2
    mm = np.where(ok, m, np.nan)
    d = (b - c) / mm
    return np.where(ok, np.maximum((b + c) / mm - d ** 2, 0.0) / (mm - 1), np.nan)


def independent_variance(a_right, b_right):
    """The image part of a difference of two accuracies measured on *different* images (the
    two arms did not share them): the sum of the two binomial sample variances."""
    def one(x):
        x = np.asarray(x, dtype=float)
        n = x.shape[-1]
        return x.var(-1, ddof=1) / n if n >= 2 else np.nan
    return one(a_right) + one(b_right)


def seed_variance(diffs, within=None):
    """The variance of one per-seed difference the rule uses (..., n) -> (...):
    ``max(sample variance of d_s, mean within-seed estimate)`` (within nan: not measured for
    that seed; none measured: the sample variance alone)."""
    d = np.asarray(diffs, dtype=float)
    sample = d.var(-1, ddof=1)
    if within is None:
        return sample
    w = np.broadcast_to(np.asarray(within, dtype=float), d.shape)
    seen = ~np.isnan(w)
    count = seen.sum(-1)
    mean_within = np.where(count > 0, np.where(seen, w, 0.0).sum(-1) / np.maximum(count, 1), 0.0)
    return np.maximum(sample, mean_within)


def paired_test(diffs, within, kind: str, margin: float):
    """The verdict rule on arrays: ``diffs`` (..., n) per-seed differences, ``within`` (...,
    n) or broadcastable: each difference's estimated image variance (:func:`within_seed_variance`;
    nan or None: not measured); ``margin`` δ as a fraction. Vectorised over the leading axes
    (thousands of synthetic studies at once).

    Returns a dict of arrays: mean, se, dof, lo/hi (the interval of the kind's level),
    p (the kind's one-sided p-value), holds/fails (booleans) and detectable (the smallest
    effect found at :data:`POWER`, see :func:`detectable_effect`). n < 2: nan, never holds.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    d = np.asarray(diffs, dtype=float)
    n = d.shape[-1]
    mean = d.mean(-1) if n else np.full(d.shape[:-1], np.nan)
    if n < MIN_SEEDS:
        nan = np.full(d.shape[:-1], np.nan)
        false = np.zeros(d.shape[:-1], dtype=bool)
        return {"n": n, "mean": mean, "se": nan, "dof": 0, "lo": nan, "hi": nan, "p": nan,
                "holds": false, "fails": false, "detectable": nan}
    # a zero standard error (identical differences and no image variance measured, e.g. a
    # ratio, or two copies of one network) gives no interval: never a verdict
    se = np.sqrt(seed_variance(d, within) / n)
    se = np.where(se > 0, se, np.nan)
    dof = n - 1
    q = scipy_stats.t.ppf(1 - ALPHA[kind], dof)
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
    """Holm's step-down adjusted p-values over the whole list: every entry is a member of the
    family, a nan (a claim not judged) counts as p = 1 (it can never hold, and the family
    stays the one declared, so verdicts do not change as more claims are run)."""
    p = [1.0 if v != v else float(v) for v in pvalues]
    m = len(p)
    out = [math.nan] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


# ------------------------------------------------------------------------- one verdict

def _as_map(v):
    return dict(v) if isinstance(v, dict) else dict(enumerate(v if v is not None else []))


def verdict(a_values, b_values, kind: str = SUPERIORITY, margin: float = 0.0,
            within=None, planned: int | None = None, dropped: dict | None = None) -> dict:
    """The verdict on two arms: ``{seed: value}`` mappings (paired by seed) or lists (paired
    by position). ``margin`` δ as a fraction; ``within``: each seed's estimated image
    variance of its difference (``{seed: v}`` or a list like the values; None or a missing
    seed: not measured); ``planned``: the number of paired seeds the study declares (None:
    :data:`MIN_SEEDS`); ``dropped``: ``{seed: reason}`` of seeds left out before pairing."""
    a, b = _as_map(a_values), _as_map(b_values)
    seeds = [s for s in a if s in b]
    dropped = {**{s: "only in arm a" for s in a if s not in b},
               **{s: "only in arm b" for s in b if s not in a}, **(dropped or {})}
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    w = _as_map(within)
    w = np.array([np.nan if w.get(s) is None else w[s] for s in seeds], dtype=float)
    t = paired_test(d[None, :], w[None, :], kind, margin)
    r = {k: (v[0].item() if isinstance(v, np.ndarray) else v) for k, v in t.items()}
    needed = max(planned or 0, MIN_SEEDS)  # a sweep may declare 1 seed (a control): shown only
    interval = (r["lo"], r["hi"]) if len(seeds) >= MIN_SEEDS and r["se"] == r["se"] else None
    out = {"kind": kind, "margin": margin, "n": len(seeds), "planned": needed, "declared": planned,
           "seeds": seeds,
           "unpaired": sorted((s for s in dropped if s in a or s in b), key=str),
           "dropped": dict(sorted(dropped.items(), key=lambda kv: str(kv[0]))),
           "differences": dict(zip(seeds, d.tolist())),
           "within": {s: (None if v != v else v) for s, v in zip(seeds, w.tolist())},
           "difference": r["mean"] if seeds else None, "interval": interval,
           "level": 1 - 2 * ALPHA[kind], "se": r["se"], "p": r["p"], "detectable": r["detectable"],
           "a": seed_stats(a.values()), "b": seed_stats(b.values())}
    if not seeds:
        ran = "arm a" if a else "arm b" if b else "neither arm"
        return {**out, "verdict": NOT_RUN, "p": math.nan,
                "why": f"no paired seed ({ran} has runs)" if a or b else "no run of either arm"}
    text = (f"paired difference {r['mean']:+.1%} over {len(seeds)} seed(s)"
            + (f", {out['level']:.0%} interval {r['lo']:+.1%} to {r['hi']:+.1%}" if interval else "")
            + f"; margin {margin:.1%}")
    if len(seeds) < needed:
        declared = f" (the study declares {planned})" if planned is not None and planned < needed else ""
        return {**out, "verdict": TOO_FEW, "p": math.nan,
                "why": f"{len(seeds)} of {needed} paired seeds needed{declared}: {text}"}
    if interval is None:
        return {**out, "verdict": INCONCLUSIVE,
                "why": f"{len(seeds)} seeds with identical differences ({r['mean']:+.1%}) and no "
                       "per-image outcomes to measure their image variance: no interval"}
    if r["holds"]:
        return {**out, "verdict": HOLDS, "why": text}
    if r["fails"]:
        return {**out, "verdict": FAILS, "why": text + " (the interval is on the wrong side)"}
    return {**out, "verdict": INCONCLUSIVE,
            "why": text + f"; detectable at {POWER:.0%} power: {detectable_text(kind, r['detectable'])}"}


def verdict_label(result: dict) -> str:
    """The verdict as shown: the kind, with ``k of n`` for too few seeds."""
    if result["verdict"] == TOO_FEW:
        return f"{TOO_FEW}: {result['n']} of {result['planned']}"
    return result["verdict"]


def detectable_text(kind: str, value: float) -> str:
    """The detectable effect of :func:`detectable_effect` in words."""
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
