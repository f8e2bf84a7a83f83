"""The records a claims study is judged on: one per finished run folder (or committed
study record) of a claims sweep, with its stage, seed, resolved parameters, named metrics,
the test images of each and, where the run kept them, each metric's per-image outcomes
(:mod:`.claims` judges them, docs/evaluation.md "Verdicts")."""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..config import RunConfig
from ..data.outcomes import load_outcomes
from ..utils.files import read_json


def _final_metrics(final: dict | None, prefix: str = "") -> tuple[dict, dict, dict]:
    """(metrics, number of test images of each, which images: the SHA-256 of their indices)
    of a ``final`` block of metrics.json."""
    if not final:
        return {}, {}, {}
    m = final.get("examples")
    sha = (final.get("subset") or {}).get("indices_sha256")
    aa = ((final.get("autoattack") or {}).get("subset") or {}).get("indices_sha256")
    robust_sha = aa if "autoattack_acc" in final else sha
    pairs = {"clean": (final.get("clean_acc"), m, sha), "pgd": (final.get("pgd_acc"), m, sha),
             "robust": (final.get("robust_acc"), final.get("robust_examples", m), robust_sha)}
    metrics = {prefix + k: float(v) for k, (v, _, _) in pairs.items() if isinstance(v, (int, float))}
    examples = {prefix + k: n for k, (v, n, _) in pairs.items() if isinstance(v, (int, float)) and isinstance(n, int)}
    images = {prefix + k: h for k, (v, _, h) in pairs.items() if isinstance(v, (int, float)) and h}
    return metrics, examples, images


def transfer_ratio(clean: float, transferred: float, whitebox: float) -> float | None:
    """``(clean - transferred) / (clean - white-box)``: the share of the white-box attack's
    damage that the transferred attack does (0: nothing transfers, 1: all of it)."""
    gap = clean - whitebox
    return (clean - transferred) / gap if gap > 0 else None


def _transfer_metrics(run_dir: Path) -> tuple[dict, dict, dict]:
    """The transfer ratio of early-stop PGD (RST's test_trans.py) and the accuracies it is
    made of, from 03's transfer.json (means over the tickets and over the ordered pairs);
    the third dict says why the ratio is missing (a gap clean − white-box ≤ 0)."""
    t = read_json(run_dir / "transfer.json").get("early-stop") or {}
    matrix, clean, n = t.get("matrix"), t.get("clean"), t.get("n")
    if not matrix or not clean or len(matrix) < 2:
        return {}, {}, {}
    k = len(matrix)
    diag = sum(matrix[i][i] for i in range(k)) / k
    off = sum(matrix[i][j] for i in range(k) for j in range(k) if i != j) / (k * (k - 1))
    metrics = {"clean": sum(clean) / k, "whitebox": diag, "transferred": off}
    examples = {key: n for key in metrics} if isinstance(n, int) else {}
    ratio = transfer_ratio(metrics["clean"], off, diag)
    if ratio is None:  # no white-box damage to share: the seed is dropped, and says why
        return metrics, examples, {"transfer_ratio": f"no transfer ratio: clean − white-box = "
                                                     f"{metrics['clean'] - diag:+.1%} ≤ 0"}
    metrics["transfer_ratio"] = ratio  # not an accuracy: no per-image outcomes
    return metrics, examples, {}


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


def _notebook_metrics(notebook: str, run_dir: Path) -> dict:
    """``{"metrics", "examples" (number of test images of each), "images" (which images, where
    recorded), "config" (resolved), "missing" ({metric: why it is missing})}`` of one run
    folder of ``notebook``."""
    metrics: dict = {}
    examples: dict = {}
    images: dict = {}
    config: dict = {}
    missing: dict = {}
    if notebook.startswith(("00_", "01_")):
        m = read_json(run_dir / "metrics.json")
        metrics, examples, images = _final_metrics(m.get("final"))
        if metrics:  # a collapsed run is stopped; it still has its final numbers
            metrics["collapsed"] = 1.0 if (m.get("stopped") or {}).get("reason") == "collapse" else 0.0
        config = m.get("config") or {}
    elif notebook.startswith("02_"):
        summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
        for row in summary.get("final") or []:  # the ticket as given (no subfolder when reused)
            if str(row.get("model", "")).startswith("ticket"):
                mm, ee, ii = _final_metrics(row, "ticket.")
                metrics.update(mm)
                examples.update(ee)
                images.update(ii)
        for sub in sorted(p for p in run_dir.iterdir() if (p / "metrics.json").is_file()):
            m = read_json(sub / "metrics.json")
            mm, ee, ii = _final_metrics(m.get("final"), f"{sub.name}.")
            metrics.update(mm)
            examples.update(ee)
            images.update(ii)
            if sub.name in ("ticket", "finetune") and not config:  # the ticket's network
                config = {k: v for k, v in (m.get("config") or {}).items()
                          if k not in ("task", "epochs", "lr", "name", "ticket")}
    elif notebook.startswith("03_"):
        metrics, examples, missing = _transfer_metrics(run_dir)
    elif notebook.startswith("04_"):
        metrics, examples = _r2s_metrics(run_dir)
    return {"metrics": metrics, "examples": examples, "images": images, "config": config,
            "missing": missing}


def _outcomes_of(source, names: dict) -> dict:
    """``{metric: {"images": SHA-256 of the split indices, "right": per-image booleans}}`` of
    ``names`` ({record metric: outcome metric}) that ``source`` kept."""
    out = {}
    for metric, name in names.items():
        try:
            idx, right = load_outcomes(source, name)
        except KeyError:  # a record written before outcomes were kept, or another metric
            continue
        out[metric] = {"images": hashlib.sha256(idx.astype("<i8").tobytes()).hexdigest(), "right": right}
    return out


def _final_names(final: dict | None, prefix: str = "") -> dict:
    """The outcome metric behind each accuracy of a ``final`` block (robust: AutoAttack's
    per-example worst case where it ran, else PGD)."""
    if not final:
        return {}
    return {prefix + "clean": "clean", prefix + "pgd": "pgd",
            prefix + "robust": "autoattack" if "autoattack_acc" in final else "pgd"}


def _per_image_outcomes(notebook: str, run_dir: Path) -> dict:
    """``{metric: {"images": key of its image set, "right": per-image booleans}}`` of the
    accuracies whose run kept per-image outcomes (01 and 02: every final evaluation; the
    transfer ratio and R2S's minimum over attacks have none: they are judged by the seeds'
    spread alone)."""
    out: dict = {}
    if notebook.startswith(("00_", "01_")):
        final = read_json(run_dir / "metrics.json").get("final")
        out.update(_outcomes_of(final or {}, _final_names(final)))
    elif notebook.startswith("02_"):
        summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
        for row in summary.get("final") or []:
            if str(row.get("model", "")).startswith("ticket"):
                out.update(_outcomes_of(row, _final_names(row, "ticket.")))
        for sub in sorted(p for p in run_dir.iterdir() if (p / "metrics.json").is_file()):
            final = read_json(sub / "metrics.json").get("final")
            out.update(_outcomes_of(final or {}, _final_names(final, f"{sub.name}.")))
    return out


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
        found = _notebook_metrics(notebook, d)
        params = {**defaults, **found["config"], **(info.get("params") or {})}
        records.append({"run_dir": str(d), "notebook": notebook,
                        "stage": (info.get("extra") or {}).get("stage") or info.get("stage"),
                        "seed": params.get("seed"), "params": params, "metrics": found["metrics"],
                        "examples": found["examples"], "images": found["images"],
                        "missing": found["missing"],
                        "outcomes": _per_image_outcomes(notebook, d)})
    return records


