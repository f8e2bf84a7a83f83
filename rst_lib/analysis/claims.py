"""The two papers' claims, tested on a sweep's run folders: which runs test each claim, the
measured numbers over seeds and a verdict.

A sweep with ``stages:`` (``params/sweeps/claims-*.yaml``) writes one run folder per cell;
:func:`collect_records` turns each into a record (its stage, seed, resolved parameters and
named metrics), a :class:`Claim` compares two :class:`Arm` s of records (e.g. the tickets
of stage ``search`` against the dense networks of stage ``dense``) and :func:`verdict`
decides:

* **inconclusive** when an arm has fewer than 2 seeds, when the difference of the means is
  not larger than the larger of the two seed standard deviations (inside the seed spread),
  or when the 95 % interval of the difference (Welch) holds 0;
* else **holds** when the difference has the sign the claim predicts, **does not hold**
  when it has the other.

The robust number of a run is AutoAttack's (``robust_acc`` of the final evaluation) where
the notebook measured it; the claims on transfer and R2S use the PGD numbers those
notebooks measure (said in each claim's metric).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
from scipy import stats as scipy_stats

from ..config import RunConfig
from ..utils.files import read_json

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive at this scale"


# ------------------------------------------------------------------------- the runs

def _final_metrics(final: dict | None, prefix: str = "") -> dict:
    if not final:
        return {}
    out = {f"{prefix}clean": final.get("clean_acc"), f"{prefix}pgd": final.get("pgd_acc"),
           f"{prefix}robust": final.get("robust_acc")}
    return {k: v for k, v in out.items() if isinstance(v, (int, float))}


def _notebook_metrics(notebook: str, run_dir: Path) -> tuple[dict, dict]:
    """(metrics, resolved config) of one run folder of ``notebook``."""
    metrics: dict = {}
    config: dict = {}
    if notebook.startswith(("00_", "01_")):
        m = read_json(run_dir / "metrics.json")
        metrics = _final_metrics(m.get("final"))
        config = m.get("config") or {}
    elif notebook.startswith("02_"):
        for sub in sorted(p for p in run_dir.iterdir() if (p / "metrics.json").is_file()):
            m = read_json(sub / "metrics.json")
            metrics.update(_final_metrics(m.get("final"), f"{sub.name}."))
            if sub.name == "ticket":
                config = m.get("config") or {}
    elif notebook.startswith("03_"):
        h = read_json(run_dir / "summary.json").get("headline", {})
        metrics = {"whitebox": h.get("pgd_acc"), "transfer": h.get("transfer_acc"),
                   "robust": h.get("robust_acc")}
    elif notebook.startswith("04_"):
        r = read_json(run_dir / "r2s.json")
        members = r.get("member_whitebox_acc") or []
        metrics = {"fixed_member": r.get("fixed_member_mean_acc"),
                   "switching": r.get("switching_acc"), "adaptive_eot": r.get("adaptive_eot_acc"),
                   "autoattack_rand": r.get("autoattack_rand_acc"), "clean": r.get("clean_acc"),
                   "member_whitebox": statistics.fmean(members) if members else None}
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, config


def collect_records(run_dirs) -> list[dict]:
    """One record per finished run folder: ``{"run_dir", "notebook", "stage", "seed",
    "params", "metrics"}``. ``params``: the run's resolved configuration (every RunConfig
    field: the schema default where the run did not set it). Unfinished runs are skipped."""
    defaults = RunConfig().to_dict()
    records = []
    for d in map(Path, run_dirs):
        info = read_json(d / "run.json")
        if info.get("status") != "finished":
            continue
        notebook = Path(info.get("notebook", d.parent.parent.name)).stem
        metrics, config = _notebook_metrics(notebook, d)
        params = {**defaults, **(info.get("params") or {}), **config}
        records.append({"run_dir": str(d), "notebook": notebook,
                        "stage": (info.get("extra") or {}).get("stage") or info.get("stage"),
                        "seed": params.get("seed"), "params": params, "metrics": metrics})
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

    def values(self, records: list[dict]) -> dict:
        """``{seed: value}`` of the matching runs (one per seed; a repeated seed is an error)."""
        out: dict = {}
        for r in records:
            if r["stage"] != self.stage or self.metric not in r["metrics"]:
                continue
            if any(r["params"].get(k) != v for k, v in self.where.items()):
                continue
            if r["seed"] in out:
                raise ValueError(f"{self.label}: two runs with seed {r['seed']} "
                                 f"(stage {self.stage}, {self.where})")
            out[r["seed"]] = r["metrics"][self.metric]
        return out


@dataclass(frozen=True)
class Claim:
    key: str
    paper: str
    text: str
    a: Arm
    b: Arm
    predicts: str = "a > b"   # the claim holds when arm a's metric is above arm b's
    note: str = ""


def seed_stats(values) -> dict:
    """Mean, sample std, n and the 95 % t-interval of the mean over seeds."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    half = float(scipy_stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "std": std, "ci95": (mean - half, mean + half)}


def verdict(a_values, b_values, predicts: str = "a > b") -> dict:
    """The verdict rule (module docstring) on two lists of per-seed values."""
    sa, sb = seed_stats(a_values), seed_stats(b_values)
    out = {"a": sa, "b": sb, "difference": None, "difference_ci95": None}
    if sa["n"] < 2 or sb["n"] < 2:
        return {**out, "verdict": INCONCLUSIVE,
                "why": f"{min(sa['n'], sb['n'])} seed(s): no seed spread to judge a difference"}
    diff = sa["mean"] - sb["mean"]
    va, vb = sa["std"] ** 2 / sa["n"], sb["std"] ** 2 / sb["n"]
    se = math.sqrt(va + vb)
    if se > 0:  # Welch-Satterthwaite degrees of freedom
        dof = (va + vb) ** 2 / ((va ** 2 / (sa["n"] - 1) if va else 0) + (vb ** 2 / (sb["n"] - 1) if vb else 0))
        half = float(scipy_stats.t.ppf(0.975, dof)) * se
    else:
        half = 0.0
    out.update(difference=diff, difference_ci95=(diff - half, diff + half))
    spread = max(sa["std"], sb["std"])
    if abs(diff) <= spread or diff - half <= 0 <= diff + half:
        return {**out, "verdict": INCONCLUSIVE,
                "why": f"difference {diff:+.1%} is inside the seed spread (std up to {spread:.1%}, "
                       f"95 % interval of the difference {diff - half:+.1%} to {diff + half:+.1%})"}
    sign = 1 if predicts == "a > b" else -1
    ok = diff * sign > 0
    return {**out, "verdict": HOLDS if ok else FAILS,
            "why": f"difference {diff:+.1%}, 95 % interval {diff - half:+.1%} to {diff + half:+.1%}, "
                   f"beyond the seed spread ({spread:.1%})"}


def judge_claim(claim: Claim, records: list[dict]) -> dict:
    """The claim's arms measured on ``records`` and its verdict."""
    a, b = claim.a.values(records), claim.b.values(records)
    result = verdict(list(a.values()), list(b.values()), claim.predicts)
    runs = [r["run_dir"] for r in records if r["stage"] in (claim.a.stage, claim.b.stage)]
    return {"claim": claim, "a_values": a, "b_values": b, "runs": runs, **result}


def judge_claims(records: list[dict], claims=None) -> list[dict]:
    return [judge_claim(c, records) for c in (claims or CLAIMS)]


def _fmt(s: dict) -> str:
    if not s["n"]:
        return "no run"
    if s["n"] < 2:
        return f"{s['mean']:.1%} (1 seed)"
    lo, hi = max(0.0, s["ci95"][0]), min(1.0, s["ci95"][1])  # accuracies: clipped to [0, 1]
    return f"{s['mean']:.1%} ± {s['std']:.1%} [{lo:.1%}, {hi:.1%}] ({s['n']} seeds)"


def claims_table(results: list[dict]) -> list[dict]:
    """Display rows: paper, claim, what is compared, the two arms (mean ± std over seeds,
    95 % interval of the mean, seeds), the verdict and why."""
    return [{"paper": r["claim"].paper, "claim": r["claim"].text,
             "compared": f"{r['claim'].a.label} vs {r['claim'].b.label} ({r['claim'].a.metric})",
             "a": _fmt(r["a"]), "b": _fmt(r["b"]), "verdict": r["verdict"], "why": r["why"]}
            for r in results]


def plot_claim(result: dict, ax=None):
    """Per-seed values of both arms (dots) with their mean and 95 % interval (bars)."""
    ax = ax or plt.subplots(figsize=(4, 3))[1]
    claim = result["claim"]
    for i, (arm, vals, s) in enumerate(((claim.a, result["a_values"], result["a"]),
                                        (claim.b, result["b_values"], result["b"]))):
        ys = [100 * v for v in vals.values()]
        ax.scatter([i] * len(ys), ys, color="C%d" % i, alpha=0.7, zorder=3)
        if s["n"] > 1:
            lo, hi = s["ci95"]
            ax.errorbar([i + 0.15], [100 * s["mean"]], yerr=[[100 * (s["mean"] - lo)], [100 * (hi - s["mean"])]],
                        fmt="s", color="C%d" % i, capsize=4)
    ax.set_xticks([0, 1], [claim.a.label, claim.b.label], fontsize=8)
    ax.set_xlim(-0.5, 1.6)
    ax.set_ylabel(f"{claim.a.metric} accuracy (%)")
    ax.set_title(f"{claim.paper}: {result['verdict']}", fontsize=9)
    return ax


# The claims and the stages that test them (params/sweeps/claims-*.yaml name the stages).
# RBRN's setting (the stage "rbrn"): keep ratio small, p = 0.1, last BN, +-1 weights; each
# claim changes one of them.
RBRN_BASE = {"adaptive_p": 0.1, "end_with_bn": True, "weight_init": "binary"}
CLAIMS = [
    Claim("rst-existence-dense", "RST", "existence: a robust scratch ticket (no weight trained) "
          "is as robust as an adversarially trained dense network of about the same number of weights",
          Arm("ticket", "search", "robust"), Arm("dense, same weights", "dense", "robust"),
          note="dense width chosen so its weights ~ the ticket's kept weights (see the sweep file)"),
    Claim("rst-existence-natural", "RST", "existence: the robust ticket is more robust than a "
          "ticket searched without attack (natural edge-popup control)",
          Arm("ticket", "search", "robust"), Arm("natural ticket", "natural", "robust")),
    Claim("rst-property-reinit", "RST", "property: the ticket is as robust as adversarial "
          "training of the same sparse structure from re-initialized weights",
          Arm("ticket", "finetune", "ticket.robust"),
          Arm("finetune_reinit", "finetune", "finetune_reinit.robust")),
    Claim("rst-property-inherit", "RST", "property: finetuning the ticket's inherited weights "
          "beats finetuning re-initialized ones",
          Arm("inherited", "finetune", "finetune.robust"),
          Arm("re-initialized", "finetune", "finetune_reinit.robust")),
    Claim("rst-application-transfer", "RST", "application: attacks made on a ticket of one keep "
          "ratio transfer poorly to tickets of other keep ratios of the same random network",
          Arm("transferred PGD", "transfer", "transfer"), Arm("white-box PGD", "transfer", "whitebox")),
    Claim("rst-application-r2s-fixed", "RST", "application: R2S raises robust accuracy under a "
          "fixed-member attack", Arm("R2S, fixed-member PGD", "r2s", "fixed_member"),
          Arm("member alone, white-box", "r2s", "member_whitebox")),
    Claim("rst-application-r2s-switching", "RST", "application: R2S raises robust accuracy under "
          "a switching attack", Arm("R2S, switching PGD", "r2s", "switching"),
          Arm("member alone, white-box", "r2s", "member_whitebox")),
    Claim("rst-application-r2s-eot", "RST", "application (not claimed by the paper, checked): "
          "what an adaptive EOT attack leaves of R2S's gain",
          Arm("R2S, adaptive EOT PGD", "r2s", "adaptive_eot"),
          Arm("member alone, white-box", "r2s", "member_whitebox")),
    Claim("rbrn-adaptive", "RBRN", "adaptive per-layer keep ratios (p = 0.1) beat uniform ones "
          "at a small keep ratio", Arm("p = 0.1", "rbrn", "robust", RBRN_BASE),
          Arm("uniform (p = 1)", "rbrn", "robust", {**RBRN_BASE, "adaptive_p": 1.0})),
    Claim("rbrn-last-bn", "RBRN", "the last BatchNorm (on the logits) helps",
          Arm("last BN", "rbrn", "robust", RBRN_BASE),
          Arm("no last BN", "rbrn", "robust", {**RBRN_BASE, "end_with_bn": False})),
    Claim("rbrn-binary", "RBRN", "+-1 weights are as good as full-precision random weights",
          Arm("+-1 weights", "rbrn", "robust", RBRN_BASE),
          Arm("kaiming normal", "rbrn", "robust", {**RBRN_BASE, "weight_init": "kaiming_normal"}),
          note="'as good as': a difference inside the seed spread supports it"),
]
