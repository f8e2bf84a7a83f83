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
from pathlib import Path

import matplotlib.pyplot as plt

from ..config import RunConfig
from ..utils.files import read_json
from .verdicts import (ALPHA, EQUIVALENCE, FAILS, HOLDS, INCONCLUSIVE, KINDS, MIN_SEEDS,  # noqa: F401
                       NON_INFERIORITY, SUPERIORITY, holm, seed_stats, verdict)


# ------------------------------------------------------------------------- the runs

def _final_metrics(final: dict | None, prefix: str = "") -> tuple[dict, dict]:
    """(metrics, test images of each) of a ``final`` block of metrics.json."""
    if not final:
        return {}, {}
    m = final.get("examples")
    pairs = {"clean": (final.get("clean_acc"), m), "pgd": (final.get("pgd_acc"), m),
             "robust": (final.get("robust_acc"), final.get("robust_examples", m))}
    metrics = {prefix + k: float(v) for k, (v, _) in pairs.items() if isinstance(v, (int, float))}
    examples = {prefix + k: n for k, (v, n) in pairs.items() if isinstance(v, (int, float)) and isinstance(n, int)}
    return metrics, examples


def transfer_ratio(clean: float, transferred: float, whitebox: float) -> float | None:
    """``(clean - transferred) / (clean - white-box)``: the share of the white-box attack's
    damage that the transferred attack does (0: nothing transfers, 1: all of it)."""
    gap = clean - whitebox
    return (clean - transferred) / gap if gap > 0 else None


def _transfer_metrics(run_dir: Path) -> tuple[dict, dict]:
    """The transfer ratio of early-stop PGD (RST's test_trans.py) and the accuracies it is
    made of, from 03's transfer.json (means over the tickets and over the ordered pairs)."""
    t = read_json(run_dir / "transfer.json").get("early-stop") or {}
    matrix, clean, n = t.get("matrix"), t.get("clean"), t.get("n")
    if not matrix or not clean or len(matrix) < 2:
        return {}, {}
    k = len(matrix)
    diag = sum(matrix[i][i] for i in range(k)) / k
    off = sum(matrix[i][j] for i in range(k) for j in range(k) if i != j) / (k * (k - 1))
    metrics = {"clean": sum(clean) / k, "whitebox": diag, "transferred": off}
    examples = {key: n for key in metrics} if isinstance(n, int) else {}
    ratio = transfer_ratio(metrics["clean"], off, diag)
    if ratio is not None:
        metrics["transfer_ratio"] = ratio  # not an accuracy: no evaluation floor
    return metrics, examples


def _r2s_metrics(run_dir: Path) -> tuple[dict, dict]:
    """R2S against its best member: the switch under its strongest adaptive attack (the
    minimum over switching, EOT and AutoAttack rand) and the best member alone, white-box."""
    r = read_json(run_dir / "r2s.json")
    members, member_clean = r.get("member_whitebox_acc") or [], r.get("member_clean_acc") or []
    n = r.get("n")
    adaptive = {k: r[k] for k in ("switching_acc", "adaptive_eot_acc", "autoattack_rand_acc")
                if isinstance(r.get(k), (int, float))}
    metrics = {"clean": r.get("clean_acc"), "fixed_member": r.get("fixed_member_mean_acc")}
    examples = {"clean": n, "fixed_member": n}
    if adaptive:
        strongest = min(adaptive, key=adaptive.get)
        metrics["adaptive"] = adaptive[strongest]
        examples["adaptive"] = r.get("autoattack_rand_examples", n) if strongest == "autoattack_rand_acc" else n
    if members:
        best = max(range(len(members)), key=lambda i: members[i])
        metrics["best_member_whitebox"] = members[best]
        examples["best_member_whitebox"] = n
        if len(member_clean) == len(members):
            metrics["best_member_clean"] = member_clean[best]
            examples["best_member_clean"] = n
    metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    return metrics, {k: examples[k] for k in metrics if isinstance(examples.get(k), int)}


def _notebook_metrics(notebook: str, run_dir: Path) -> tuple[dict, dict, dict]:
    """(metrics, test images of each, resolved config) of one run folder of ``notebook``."""
    metrics: dict = {}
    examples: dict = {}
    config: dict = {}
    if notebook.startswith(("00_", "01_")):
        m = read_json(run_dir / "metrics.json")
        metrics, examples = _final_metrics(m.get("final"))
        if metrics:  # a collapsed run is stopped; it still has its final numbers
            metrics["collapsed"] = 1.0 if (m.get("stopped") or {}).get("reason") == "collapse" else 0.0
        config = m.get("config") or {}
    elif notebook.startswith("02_"):
        summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
        for row in summary.get("final") or []:  # the ticket as given (no subfolder when reused)
            if str(row.get("model", "")).startswith("ticket"):
                mm, ee = _final_metrics(row, "ticket.")
                metrics.update(mm)
                examples.update(ee)
        for sub in sorted(p for p in run_dir.iterdir() if (p / "metrics.json").is_file()):
            m = read_json(sub / "metrics.json")
            mm, ee = _final_metrics(m.get("final"), f"{sub.name}.")
            metrics.update(mm)
            examples.update(ee)
            if sub.name in ("ticket", "finetune") and not config:  # the ticket's network
                config = {k: v for k, v in (m.get("config") or {}).items()
                          if k not in ("task", "epochs", "lr", "name", "ticket")}
    elif notebook.startswith("03_"):
        metrics, examples = _transfer_metrics(run_dir)
    elif notebook.startswith("04_"):
        metrics, examples = _r2s_metrics(run_dir)
    return metrics, examples, config


def collect_records(run_dirs) -> list[dict]:
    """One record per finished run folder: ``{"run_dir", "notebook", "stage", "seed",
    "params", "metrics", "examples"}``. ``params``: the run's resolved configuration (every
    RunConfig field: the schema default where the run did not set it); ``examples``: the
    test images of each accuracy (its evaluation floor). Unfinished runs are skipped."""
    defaults = RunConfig().to_dict()
    records = []
    for d in map(Path, run_dirs):
        info = read_json(d / "run.json")
        if info.get("status") != "finished":
            continue
        notebook = Path(info.get("notebook", d.parent.parent.name)).stem
        metrics, examples, config = _notebook_metrics(notebook, d)
        params = {**defaults, **config, **(info.get("params") or {})}
        records.append({"run_dir": str(d), "notebook": notebook,
                        "stage": (info.get("extra") or {}).get("stage") or info.get("stage"),
                        "seed": params.get("seed"), "params": params, "metrics": metrics,
                        "examples": examples})
    return records


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


def judge_claim(claim: Claim, records: list[dict]) -> dict:
    """The claim's arms measured on ``records`` and its verdict (before multiplicity)."""
    a_runs, b_runs = claim.a.runs(records), claim.b.runs(records)
    a = {s: r["metrics"][claim.a.metric] for s, r in a_runs.items()}
    b = {s: r["metrics"][claim.b.metric] for s, r in b_runs.items()}
    # the evaluation floor needs both accuracies' test images (the smaller count)
    examples = {s: min(a_runs[s]["examples"].get(claim.a.metric) or 0,
                       b_runs[s]["examples"].get(claim.b.metric) or 0) for s in a_runs if s in b_runs}
    result = verdict(a, b, claim.kind, claim.margin / 100, examples)
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


def judge_claims(records: list[dict], claims=None) -> list[dict]:
    """Every claim judged, then Holm's correction over the counted claims: a counted claim
    holds only if its Holm-adjusted p-value is below its kind's α (family-wise ≤ 5 %)."""
    results = [judge_claim(c, records) for c in (claims or CLAIMS)]
    counted = [r for r in results if r["claim"].counted]
    adjusted = holm([r["p"] if r["n"] >= MIN_SEEDS else math.nan for r in counted])
    for r, p in zip(counted, adjusted):
        r["p_holm"] = p
        if r["verdict"] == HOLDS and not p < ALPHA[r["kind"]]:
            r["verdict"] = INCONCLUSIVE
            r["why"] += f"; holds alone (p = {r['p']:.3g}) but not after Holm over {len(counted)} claims (p = {p:.3g})"
    for r in results:
        r.setdefault("p_holm", None)
    return results


def _fmt(s: dict) -> str:
    if not s["n"]:
        return "no run"
    if s["n"] < 2:
        return f"{s['mean']:.1%} (1 seed)"
    return f"{s['mean']:.1%} ± {s['std']:.1%} ({s['n']} seeds)"


def claims_table(results: list[dict]) -> list[dict]:
    """Display rows: paper, claim, kind and margin, the two arms (mean ± std over seeds),
    the paired difference and its interval, what is shown beside, the verdict and why."""
    rows = []
    for r in results:
        c = r["claim"]
        diff = "–" if r["interval"] is None else (
            f"{r['difference']:+.1%} [{r['interval'][0]:+.1%}, {r['interval'][1]:+.1%}] ({r['level']:.0%}, {r['n']} pairs)")
        beside = ""
        if r["beside"] and r["beside"]["difference"] is not None:
            beside = f"{r['beside']['metric']}: {r['beside']['difference']:+.1%}"
        rows.append({"paper": c.paper, "claim": c.text, "counted": "yes" if c.counted else "shown",
                     "kind": f"{c.kind}, δ = {c.margin:g}",
                     "compared": f"{c.a.label} − {c.b.label} ({c.a.metric} − {c.b.metric})",
                     "a": _fmt(r["a"]), "b": _fmt(r["b"]), "paired difference": diff, "beside": beside,
                     "verdict": r["verdict"], "why": r["why"]})
    return rows


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
    ax.set_title(f"{claim.key}: {result['verdict']}", fontsize=8)
    return ax


# The claims and the stages that test them (params/sweeps/claims-*.yaml name the stages).
# Margins are declared here, before any run, in points: 2 points is about the 95 % half-width
# of one accuracy on 2,000 test images and well below the effects the papers report (RST's
# existence and property figures show gaps of 3-10 points; RBRN's ablations 1-5 points).
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
