"""The two papers' claims, tested on a sweep's run folders: which runs test each claim, the
paired differences over seeds and a verdict a statistician would sign.

A sweep with ``stages:`` (``params/sweeps/claims-*.yaml``) writes one run folder per cell;
:func:`collect_records` turns each into a record (its stage, seed, resolved parameters,
named metrics and the test images of each), a :class:`Claim` compares two :class:`Arm` s of
records and :func:`judge_claims` decides with the rule of :mod:`.verdicts` (paired by seed,
a test per kind of claim and margin, Holm over the counted claims; docs/evaluation.md
"Verdicts").
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import matplotlib.pyplot as plt

from .claim_records import collect_records, transfer_ratio  # noqa: F401
from .verdicts import (ALPHA, EQUIVALENCE, FAILS, HOLDS, INCONCLUSIVE, KINDS, MIN_SEEDS,  # noqa: F401
                       NON_INFERIORITY, NOT_RUN, SUPERIORITY, TOO_FEW, VERDICTS, discordant_counts, holm,
                       independent_variance, seed_stats, verdict, verdict_label, within_seed_variance)


# ------------------------------------------------------------------------- the claims

@dataclass(frozen=True)
class Arm:
    """Runs of one ``stage`` (whose resolved parameters match ``where``) and the metric
    read from each."""
    label: str
    stage: str
    metric: str
    where: dict = field(default_factory=dict)

    def matches(self, record: dict) -> bool:
        return (record["stage"] == self.stage and self.metric in record["metrics"]
                and all(record["params"].get(k) == v for k, v in self.where.items()))

    def runs(self, records: list[dict]) -> dict:
        """``{seed: record}`` of the matching runs (one per seed; a repeated seed is an error)."""
        out: dict = {}
        for r in records:
            if not self.matches(r):
                continue
            if r["seed"] in out:
                raise ValueError(f"{self.label}: two runs with seed {r['seed']} "
                                 f"(stage {self.stage}, {self.where})")
            out[r["seed"]] = r
        return out

    def dropped(self, records: list[dict]) -> dict:
        """``{seed: reason}`` of runs of this arm that have no value for its metric and say
        why (a transfer ratio whose clean − white-box gap is ≤ 0)."""
        return {r["seed"]: f"{self.label}: {r['missing'][self.metric]}" for r in records
                if r["stage"] == self.stage and self.metric in (r.get("missing") or {})
                and all(r["params"].get(k) == v for k, v in self.where.items())}

    def values(self, records: list[dict]) -> dict:
        """``{seed: value}`` of the matching runs."""
        return {s: r["metrics"][self.metric] for s, r in self.runs(records).items()}


@dataclass(frozen=True)
class Claim:
    """One claim: arm ``a`` against arm ``b`` (``a - b`` per seed), its kind and margin δ
    in points, declared before any run. ``counted``: False for sanity checks and controls
    (shown, kept out of the Holm family). ``beside``: another metric shown next to it (the
    clean accuracy where the paper claims both, the collapse count...)."""
    key: str
    paper: str
    text: str
    a: Arm
    b: Arm
    kind: str = SUPERIORITY
    margin: float = 0.0        # δ in points (percentage points; ratio x 100 for ratios)
    counted: bool = True
    beside: str | tuple | None = None  # a metric of both arms shown beside (not judged):
    # one name for both arms, or (a's metric, b's metric) when the arms are one run's rows
    note: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.key}: kind {self.kind!r} is not one of {KINDS}")
        if self.margin < 0:
            raise ValueError(f"claim {self.key}: the margin is a distance (>= 0 points)")


def _within(a_run: dict, b_run: dict, a_metric: str, b_metric: str):
    """The estimated image variance of one seed's paired difference, from the two runs'
    per-image outcomes: McNemar on the discordant pairs when both arms were scored on the
    same images, the two binomial variances when not; None without per-image outcomes."""
    oa, ob = (a_run.get("outcomes") or {}).get(a_metric), (b_run.get("outcomes") or {}).get(b_metric)
    if oa is None or ob is None:
        return None
    if oa["images"] == ob["images"]:
        return float(within_seed_variance(*discordant_counts(oa["right"], ob["right"])))
    return float(independent_variance(oa["right"], ob["right"]))


def _shared_images(runs: dict, metric: str, seeds) -> bool:
    """Did two paired seeds score this arm on the same test images (one image set for all)?"""
    keys = [((runs[s].get("outcomes") or {}).get(metric) or {}).get("images")
            or (runs[s].get("images") or {}).get(metric) for s in seeds]
    keys = [k for k in keys if k is not None]
    return len(keys) >= 2 and len(set(keys)) < len(keys)


def judge_claim(claim: Claim, records: list[dict], planned: set | None = None) -> dict:
    """The claim's arms measured on ``records`` and its verdict (before multiplicity);
    ``planned``: the seeds the study declares for it (:func:`planned_seeds`; None: any
    :data:`MIN_SEEDS` paired seeds judge it). A seed outside ``planned`` in one arm only is
    not the claim's and is not listed as dropped."""
    a_runs, b_runs = claim.a.runs(records), claim.b.runs(records)
    a = {s: r["metrics"][claim.a.metric] for s, r in a_runs.items()}
    b = {s: r["metrics"][claim.b.metric] for s, r in b_runs.items()}
    paired = [s for s in a_runs if s in b_runs]
    within = {s: _within(a_runs[s], b_runs[s], claim.a.metric, claim.b.metric) for s in paired}
    dropped = {**claim.b.dropped(records), **claim.a.dropped(records)}
    if planned is not None:  # seeds the study does not declare for this claim
        a = {s: v for s, v in a.items() if s in planned or s in b}
        b = {s: v for s, v in b.items() if s in planned or s in a}
    result = verdict(a, b, claim.kind, claim.margin / 100, within,
                     None if planned is None else len(planned), dropped)
    if result["verdict"] in (HOLDS, FAILS, INCONCLUSIVE) and (
            _shared_images(a_runs, claim.a.metric, paired) or _shared_images(b_runs, claim.b.metric, paired)):
        # one image set for every seed: the interval misses which images were drawn, a part
        # that more seeds do not shrink; the verdict would be about these images only
        result = {**result, "verdict": INCONCLUSIVE,
                  "why": result["why"] + "; but the seeds share one set of test images, so this "
                         "is about those images, not the test distribution: not judged"}
    beside = None
    if claim.beside:
        ma, mb = (claim.beside, claim.beside) if isinstance(claim.beside, str) else claim.beside
        ba = {s: r["metrics"][ma] for s, r in a_runs.items() if ma in r["metrics"]}
        bb = {s: r["metrics"][mb] for s, r in b_runs.items() if mb in r["metrics"]}
        beside = {"metric": ma if ma == mb else f"{ma} − {mb}", "a": ba, "b": bb,
                  "difference": statistics.fmean(ba[s] - bb[s] for s in ba if s in bb)
                  if any(s in bb for s in ba) else None}
    # only the runs the arms kept (their stage and their `where`)
    runs = sorted({r["run_dir"] for r in [*a_runs.values(), *b_runs.values()]})
    return {"claim": claim, "a_values": a, "b_values": b, "runs": runs, "beside": beside, **result}


def planned_seeds(claim: Claim, cells) -> set:
    """The paired seeds a sweep declares for ``claim``: the seeds of its cells (``.stage``,
    ``.params``) that both arms' stages and ``where`` select."""
    def seeds(arm):
        return {c.params.get("seed") for c in cells
                if c.stage == arm.stage and all(c.params.get(k) == v for k, v in arm.where.items())}
    return seeds(claim.a) & seeds(claim.b)


def judge_claims(records: list[dict], claims=None, cells=None) -> list[dict]:
    """Every claim judged, then Holm's correction over the counted claims: a counted claim
    holds only if its Holm-adjusted p-value is below its kind's α (family-wise ≤ 5 %). The
    family is every counted claim given; one not judged (not run yet, too few seeds, no
    interval) enters with p = 1. ``cells``: the sweep's cells, which declare each claim's
    seeds (None: :data:`MIN_SEEDS` paired seeds suffice)."""
    claims = list(claims or CLAIMS)
    results = [judge_claim(c, records, planned_seeds(c, cells) if cells is not None else None)
               for c in claims]
    counted = [r for r in results if r["claim"].counted]
    adjusted = holm([r["p"] if r["verdict"] in (HOLDS, FAILS, INCONCLUSIVE) else math.nan
                     for r in counted])
    family = [r["claim"].key for r in counted]
    for r, p in zip(counted, adjusted):
        r["p_holm"], r["family"] = p, family
        if r["verdict"] == HOLDS and not p < ALPHA[r["kind"]]:
            r["verdict"] = INCONCLUSIVE
            r["why"] += (f"; holds alone (p = {r['p']:.3g}) but not after Holm over the "
                         f"{len(counted)} counted claims (p = {p:.3g})")
    for r in results:
        r.setdefault("p_holm", None)
        r.setdefault("family", None)
    return results


def verdict_counts(results: list[dict]) -> dict:
    """``{verdict kind: number}`` over ``results``, every kind of :data:`VERDICTS` (0 too)."""
    return {v: sum(r["verdict"] == v for r in results) for v in VERDICTS}


def family_text(results: list[dict]) -> str:
    """What the Holm family is: its size, which claims in it were judged and which not."""
    counted = [r for r in results if r["claim"].counted]
    judged = [r["claim"].key for r in counted if r["verdict"] in (HOLDS, FAILS, INCONCLUSIVE)]
    waiting = {v: [r["claim"].key for r in counted if r["verdict"] == v] for v in (NOT_RUN, TOO_FEW)}
    text = f"Holm over the {len(counted)} counted claims (family-wise error ≤ 5 %): {len(judged)} judged"
    text += f" ({', '.join(judged)})" if judged else ""
    for v, keys in waiting.items():
        if keys:
            text += f"; {len(keys)} {v} ({', '.join(keys)}), in the family with p = 1"
    return text


def _fmt(s: dict) -> str:
    if not s["n"]:
        return "no run"
    if s["n"] < 2:
        return f"{s['mean']:.1%} (1 seed)"
    return f"{s['mean']:.1%} ± {s['std']:.1%} ({s['n']} seeds)"


def _difference_text(r: dict) -> str:
    if r["difference"] is None:
        return "–"
    if r["interval"] is None:
        return f"{r['difference']:+.1%} (no interval)"
    lo, hi = r["interval"]
    return f"{r['difference']:+.1%} [{lo:+.1%}, {hi:+.1%}]"


def claims_table(results: list[dict]) -> list[dict]:
    """Full rows (claims.json): paper, claim, kind and margin, the two arms (mean ± std over
    seeds), the paired difference and its interval, what is shown beside, the verdict and
    why, the seeds dropped with their reason."""
    rows = []
    for r in results:
        c = r["claim"]
        diff = _difference_text(r)
        if r["interval"] is not None:
            diff += f" ({r['level']:.0%}, {r['n']} pairs)"
        beside = ""
        if r["beside"] and r["beside"]["difference"] is not None:
            beside = f"{r['beside']['metric']}: {r['beside']['difference']:+.1%}"
        rows.append({"paper": c.paper, "claim": c.text, "counted": "yes" if c.counted else "shown",
                     "kind": f"{c.kind}, δ = {c.margin:g}",
                     "compared": f"{c.a.label} − {c.b.label} ({c.a.metric} − {c.b.metric})",
                     "a": _fmt(r["a"]), "b": _fmt(r["b"]), "paired difference": diff, "beside": beside,
                     "verdict": verdict_label(r), "why": r["why"],
                     "dropped": {str(s): why for s, why in r["dropped"].items()}})
    return rows


def verdict_table(results: list[dict]) -> list[dict]:
    """Narrow display rows (they fit a notebook's width): the claim's key, kind and margin,
    paired seeds, the difference with its interval, the verdict. The why is
    :func:`why_lines`."""
    return [{"claim": r["claim"].key + ("" if r["claim"].counted else " (shown)"),
             "kind, δ (points)": f"{r['kind']}, {r['claim'].margin:g}",
             "seeds": f"{r['n']} of {r['planned']}" if r["verdict"] != NOT_RUN else f"0 of {r['planned']}",
             "a − b [interval]": _difference_text(r), "verdict": verdict_label(r)} for r in results]


def why_lines(results: list[dict]) -> str:
    """One Markdown line per claim: why its verdict, and any seed dropped with its reason."""
    lines = []
    for r in results:
        line = f"- **{r['claim'].key}** ({verdict_label(r)}): {r['why']}"
        if r["dropped"]:
            line += "; dropped: " + "; ".join(f"seed {s} ({why})" for s, why in r["dropped"].items())
        lines.append(line)
    return "\n".join(lines)


def plot_claim(result: dict, ax=None):
    """Per-seed paired differences (dots), their mean and interval (bar), the margin(s)."""
    ax = ax or plt.subplots(figsize=(4, 3))[1]
    claim = result["claim"]
    ys = [100 * v for v in result["differences"].values()]
    ax.scatter([0] * len(ys), ys, color="C0", alpha=0.7, zorder=3)
    if result["interval"] is not None:
        lo, hi = result["interval"]
        ax.errorbar([0.2], [100 * result["difference"]], yerr=[[100 * (result["difference"] - lo)],
                                                             [100 * (hi - result["difference"])]],
                    fmt="s", color="C1", capsize=4)
    ax.axhline(0, color="gray", lw=0.8)
    for m in {SUPERIORITY: [claim.margin], NON_INFERIORITY: [-claim.margin],
              EQUIVALENCE: [-claim.margin, claim.margin]}[claim.kind]:
        if m:
            ax.axhline(m, color="C3", ls="--", lw=0.8)
    ax.set_xticks([])
    ax.set_xlim(-0.5, 0.7)
    ax.set_ylabel(f"{claim.a.label} − {claim.b.label} (points)", fontsize=7)
    ax.set_title(f"{claim.key}: {verdict_label(result)}", fontsize=8)
    return ax


# The claims and the stages that test them (params/sweeps/claims-*.yaml name the stages).
# Margins are declared here, before any run, in points. Why 2 points: well below the effects
# the papers report (RST's existence and property figures show gaps of 3-10 points, RBRN's
# ablations 1-5), and about what this study's images can resolve: the mean paired difference
# of 5 seeds on 500 images each (2,500 image pairs) with a fifth of them discordant has an
# image-only 95 % half-width of t(0.975, 4) * sqrt(0.2 / 2500) = 2.5 points; on 300 images
# (finetune, RBRN) 3.2 and on 200 (transfer, R2S) 3.9 points, wider than δ: there a
# non-inferiority or equivalence claim at δ = 2 can hold only if the networks barely vary and
# the arms barely disagree (docs/claims-cifar10-cpu.md "Sizing": what each claim can detect).
# RBRN's setting (the stage "rbrn"): keep ratio small, p = 0.1, last BN, +-1 weights, uniform
# scores U(-a, a) with a = 0.01; each claim changes one of them.
RBRN_BASE = {"adaptive_p": 0.1, "end_with_bn": True, "weight_init": "binary", "score_init": "uniform"}
CLAIMS = [
    Claim("rst-existence-dense", "RST", "existence: a robust scratch ticket (no weight trained) "
          "matches or beats an adversarially trained dense network of about the same number of "
          "weights (robust accuracy)",
          Arm("ticket", "search", "robust"), Arm("dense, same weights", "dense", "robust"),
          kind=NON_INFERIORITY, margin=2.0, beside="clean",
          note="dense width chosen so its weights ~ the ticket's kept weights; its lr chosen on "
               "validation data by the pilot stage dense-lr (see the sweep file)"),
    Claim("rst-property-reinit", "RST", "property: the ticket without training has better or "
          "comparable robust accuracy than adversarial training of the same sparse structure "
          "from re-initialized weights (RST's ft_reinit, same lr and epochs as ft_inherit)",
          Arm("ticket", "finetune", "ticket.robust"),
          Arm("re-initialized, trained", "finetune", "finetune_reinit.robust"),
          kind=NON_INFERIORITY, margin=2.0),
    Claim("rst-property-reinit-clean", "RST", "property: ... and better or comparable natural "
          "(clean) accuracy", Arm("ticket", "finetune", "ticket.clean"),
          Arm("re-initialized, trained", "finetune", "finetune_reinit.clean"),
          kind=NON_INFERIORITY, margin=2.0),
    Claim("rst-property-inherit", "RST", "property: finetuned with inherited weights, the ticket "
          "reaches notably better robust accuracy than with re-initialized weights (same mask, "
          "epochs and lr: RST ran both 160 epochs at lr 0.1)",
          Arm("inherited, finetuned", "finetune", "finetune.robust"),
          Arm("re-initialized, finetuned", "finetune", "finetune_reinit.robust"),
          kind=SUPERIORITY, margin=1.0, beside=("finetune.clean", "finetune_reinit.clean"),
          note="'notably better': δ = 1 point"),
    Claim("rst-application-transfer", "RST", "application: attacks transfer poorly between tickets "
          "of different keep ratios of the same random network: the transfer ratio (clean − "
          "transferred) / (clean − white-box) of early-stop PGD is no higher than between two "
          "tickets of different random networks",
          Arm("control: tickets of two random networks", "transfer-control", "transfer_ratio"),
          Arm("tickets of one random network", "transfer", "transfer_ratio"),
          kind=NON_INFERIORITY, margin=10.0, beside="clean",
          note="ratio x 100 points; δ = 0.10 of the white-box damage"),
    Claim("rst-application-r2s", "RST", "application: R2S is more robust than its best member "
          "alone: the switch under its strongest adaptive attack (min over switching PGD, EOT "
          "PGD and AutoAttack rand) against the best member's white-box accuracy",
          Arm("R2S, strongest adaptive attack", "r2s", "adaptive"),
          Arm("best member alone, white-box", "r2s", "best_member_whitebox"),
          kind=SUPERIORITY, margin=0.0, beside=("clean", "best_member_clean"),
          note="beside: the clean-accuracy cost, the switch's clean minus the best member's"),
    Claim("rst-application-r2s-clean", "RST", "application: R2S's clean-accuracy cost against its "
          "best member stays within 2 points", Arm("R2S, clean", "r2s", "clean"),
          Arm("best member, clean", "r2s", "best_member_clean"), kind=NON_INFERIORITY, margin=2.0),
    Claim("rst-rtt", "RST", "comparison: the scratch ticket against a robust ticket drawn from "
          "adversarially trained weights (RTT, same width and keep ratio)",
          Arm("scratch ticket", "search", "robust"), Arm("RTT", "rtt", "robust"),
          kind=NON_INFERIORITY, margin=2.0, counted=False, beside="clean",
          note="shown: the RST README states no direction for RTTs; the study reports the gap"),
    Claim("rbrn-adaptive", "RBRN", "adaptive per-layer keep ratios (p = 0.1) beat uniform ones "
          "at a small keep ratio", Arm("p = 0.1", "rbrn", "robust", RBRN_BASE),
          Arm("uniform (p = 1)", "rbrn", "robust", {**RBRN_BASE, "adaptive_p": 1.0}),
          kind=SUPERIORITY, beside="clean"),
    Claim("rbrn-last-bn", "RBRN", "the last BatchNorm (on the logits) helps",
          Arm("last BN", "rbrn", "robust", RBRN_BASE),
          Arm("no last BN", "rbrn", "robust", {**RBRN_BASE, "end_with_bn": False}),
          kind=SUPERIORITY, beside="collapsed",
          note="beside: the difference in collapsed runs (a collapse counts as 1)"),
    Claim("rbrn-binary", "RBRN", "+-1 weights are about as good as full-precision random weights",
          Arm("+-1 weights", "rbrn", "robust", RBRN_BASE),
          Arm("kaiming normal", "rbrn", "robust", {**RBRN_BASE, "weight_init": "kaiming_normal"}),
          kind=EQUIVALENCE, margin=2.0, beside="clean"),
    Claim("rbrn-score-init", "RBRN", "RBRN's small uniform score init (a = 0.01) beats RST's "
          "kaiming-uniform scores", Arm("U(-a, a), a = 0.01", "rbrn", "robust", RBRN_BASE),
          Arm("kaiming uniform (RST)", "rbrn", "robust", {**RBRN_BASE, "score_init": "kaiming_uniform"}),
          kind=SUPERIORITY, beside="clean"),
    # sanity checks and controls: shown, never counted
    Claim("check-natural", "RST", "sanity check: the robust ticket is more robust than a ticket "
          "searched without attack", Arm("ticket", "search", "robust"),
          Arm("natural ticket", "natural", "robust"), counted=False, beside="clean"),
    Claim("check-random-mask", "RST", "control: the robust ticket beats a random mask of the same "
          "random network", Arm("ticket", "search", "robust"),
          Arm("random mask", "random-mask", "clean"), counted=False,
          note="the random mask's clean accuracy (its robust accuracy is ~0): a searched mask "
               "should beat even that"),
    Claim("check-r2s-fixed", "RST", "control: R2S under a fixed-member attack (the paper's "
          "setting, not adaptive) against its best member", Arm("R2S, fixed-member PGD", "r2s", "fixed_member"),
          Arm("best member alone, white-box", "r2s", "best_member_whitebox"), counted=False),
]
