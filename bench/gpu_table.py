"""Mixed precision and tuned steps: the ``amp`` row (ours in fp32 vs bf16, any device) and
the GPU table (``gpu_table``, ``bench/run.py --device cuda``).

GPU table: one search step (PGD-10 inner attack + score update; the weight update for dense)
of resnet18 and resnet34 at batch 256, for ours / dense / seed-style, each in fp32, bf16 and
bf16 + ``torch.compile``; images/s and peak GPU memory (``torch.cuda.max_memory_allocated``,
reset for every configuration after its warm-up step), with cuDNN autotuning and
channels_last as a run has them on CUDA (``tuning.backend_settings``, ``channels_last:
auto``). From ours' rows it estimates the time of the RBRN ResNet34 preset
(``params/presets/rbrn-resnet34-cifar10.yaml``) per configuration.

Configurations run one after the other in this process (a GPU runs one kernel stream at a
time anyway); each is built, warmed up (one step with a 1-step attack: the same graphs, so
compilation happens there), then timed over ``repeats`` steps (median). A configuration that
fails (e.g. out of memory) is reported as such and the table goes on. On the CPU the same
code runs (tests/test_precision.py, tiny models) and peak memory is reported as n/a.
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from pathlib import Path

import torch

import common
from common import Row, fmt_s
from rst_lib.config import load_params
from rst_lib.engine.tuning import backend_settings
from steps import Workload

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "params" / "presets" / "rbrn-resnet34-cifar10.yaml"
CIFAR10_TRAIN = 50_000
GPU_MODELS = ("resnet18", "resnet34")
GPU_BATCH = 256
PGD_STEPS = 10
VERSIONS = ("ours", "dense", "seed")
CONFIGS = (("fp32", False), ("bf16", False), ("bf16", True))  # (precision, compile)
AMP_CONFIGS = {"full": [("conv4", 128, 3), ("resnet18", 32, 3)], "quick": [("conv4", 32, 2)]}
COLUMNS = ("model", "batch", "version", "config", "step_s", "images_per_s", "peak_mb",
           "vs_fp32")


def config_label(precision: str, compiled: bool) -> str:
    return precision + (" + compile" if compiled else "")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_one(version: str, model: str, batch: int, precision: str, compiled: bool,
                device: str = "cuda", steps: int = PGD_STEPS, repeats: int = 3,
                width: float = 1.0, keep_ratio: float = 0.05) -> dict:
    """One configuration: median seconds of a search step, images/s, peak memory (CUDA)."""
    dev = torch.device(device)
    entry = {"model": model, "batch": batch, "version": version, "precision": precision,
             "compile": compiled, "config": config_label(precision, compiled),
             "pgd_steps": steps, "width": width, "device": str(dev)}
    wl = None
    try:
        wl = Workload(version, model, batch, keep_ratio=keep_ratio, width=width, device=device,
                      precision=precision, compile=compiled, channels_last="auto")
        _sync(dev)
        t0 = time.perf_counter()
        wl.search_step(1)  # warm-up: cuDNN autotuning, compilation of the attack and update
        _sync(dev)
        entry["warmup_s"] = time.perf_counter() - t0
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times, losses = [], []
        for _ in range(repeats):
            _sync(dev)
            t0 = time.perf_counter()
            losses.append(wl.search_step(steps))
            _sync(dev)
            times.append(time.perf_counter() - t0)
        entry.update(step_s=statistics.median(times), seconds=times, losses=losses,
                     images_per_s=batch / statistics.median(times),
                     peak_mb=(torch.cuda.max_memory_allocated(dev) / 2**20
                              if dev.type == "cuda" else None),
                     compiled=wl.compiled, channels_last=wl.cl)
        if compiled and not wl.compiled:
            entry["note"] = f"compile fell back to eager: {wl.net.fallback}"
    except Exception as e:  # e.g. out of memory: report it, measure the rest
        entry["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    finally:
        del wl
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return entry


def measure_table(device: str = "cuda", models=GPU_MODELS, batch: int = GPU_BATCH,
                  steps: int = PGD_STEPS, repeats: int = 3, versions=VERSIONS, configs=CONFIGS,
                  width: float = 1.0, log=print) -> list[dict]:
    """Every (model, version, configuration); ``vs_fp32`` is the speed-up over the same
    model and version in fp32 (images/s ratio)."""
    entries = []
    with backend_settings(device):  # cudnn.benchmark on CUDA, as train() sets it
        for model in models:
            for version in versions:
                for precision, compiled in configs:
                    log(f"[gpu_table] {model} b{batch} {version} {config_label(precision, compiled)}")
                    entries.append(measure_one(version, model, batch, precision, compiled,
                                               device, steps, repeats, width))
    for e in entries:
        base = next((b for b in entries if (b["model"], b["version"], b["config"]) ==
                     (e["model"], e["version"], "fp32") and "images_per_s" in b), None)
        if "images_per_s" in e and base is not None:
            e["vs_fp32"] = e["images_per_s"] / base["images_per_s"]
    return entries


def rbrn_estimate(entries: list[dict], preset: Path = PRESET,
                  train_size: int = CIFAR10_TRAIN) -> list[dict]:
    """Hours of the RBRN ResNet34 preset for each of ours' configurations of its model.

    Training: epochs x ceil(train examples / batch) steps at the measured step time (train
    examples: the 50,000 CIFAR-10 images minus the val_fraction split). Included: the
    per-epoch validation check (val examples, PGD-eval_steps), estimated at the search
    step's rate per image, scaled by its passes (3 eval_steps + 2 forward-pass equivalents
    against 3 (steps + 1): a backward costs about two forwards). Excluded: data loading,
    the final test PGD and AutoAttack (standard, 10,000 images: hours on its own).
    Measured at another batch or PGD step count than the preset's, the row says so.
    """
    p = load_params(preset)
    epochs, batch, steps = p["epochs"], p["batch_size"], p["steps"]
    n_val = max(1, round(p["val_fraction"] * train_size))
    n_train = train_size - n_val
    eval_steps = p.get("eval_steps", 20)
    steps_per_epoch = math.ceil(n_train / batch)
    out = []
    for e in entries:
        if e["version"] != "ours" or e["model"] != p["model"]:
            continue
        row = {"preset": preset.name, "config": e["config"], "epochs": epochs,
               "train_examples": n_train, "val_examples": n_val, "batch": batch,
               "steps_per_epoch": steps_per_epoch,
               "included": "search steps + per-epoch validation (PGD-%d on %d images)"
                           % (eval_steps, n_val),
               "excluded": "data loading, final test PGD and AutoAttack"}
        if "images_per_s" not in e:
            row["error"] = e.get("error", "not measured")
            out.append(row)
            continue
        step_s = batch / e["images_per_s"]  # exact when measured at the preset's batch
        eval_s = n_val * (3 * eval_steps + 2) / (3 * (steps + 1)) / e["images_per_s"]
        row.update(step_s=step_s, train_hours=epochs * steps_per_epoch * step_s / 3600,
                   eval_hours=epochs * eval_s / 3600)
        row["total_hours"] = row["train_hours"] + row["eval_hours"]
        if (e["batch"], e["pgd_steps"]) != (batch, steps):
            row["note"] = (f"measured at batch {e['batch']} with PGD-{e['pgd_steps']}, the preset "
                           f"runs batch {batch} with PGD-{steps}: not its time")
        out.append(row)
    return out


def _cell(e: dict, key: str) -> str:
    v = e.get(key)
    if key == "peak_mb":
        return "n/a" if v is None else f"{v:.0f}"
    if v is None:
        return ""
    if key == "step_s":
        return fmt_s(v)
    if key == "images_per_s":
        return f"{v:.1f}"
    if key == "vs_fp32":
        return f"{v:.2f}x"
    return str(v)


def format_table(entries: list[dict], estimates: list[dict]) -> str:
    """The table as printed: one line per configuration, then the preset estimates."""
    head = ["model", "batch", "version", "config", "step", "images/s", "peak MB", "vs fp32"]
    cells = [head] + [[_cell(e, k) for k in COLUMNS] if "error" not in e else
                      [e["model"], str(e["batch"]), e["version"], e["config"], "error: " + e["error"],
                       "", "", ""] for e in entries]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in estimates:
        what = (f"{r['total_hours']:.1f} h ({r['train_hours']:.1f} h search + "
                f"{r['eval_hours']:.1f} h validation)" if "total_hours" in r else
                f"n/a ({r['error']})")
        lines.append(f"{r['preset']} ({r['epochs']} epochs x {r['steps_per_epoch']} steps), ours "
                     f"{r['config']}: {what}" + (f"; {r['note']}" if r.get("note") else ""))
    if estimates:
        lines.append(f"  estimates include {estimates[0]['included']}; exclude "
                     f"{estimates[0]['excluded']}")
    return "\n".join(lines)


def table_rows(entries: list[dict], estimates: list[dict]) -> list[Row]:
    """Rows of the benchmark summary: per model and configuration, images/s (peak MB) of
    ours / seed-style / dense and the ours/seed throughput ratio; then the estimates."""
    rows = []
    for model, batch, config in dict.fromkeys((e["model"], e["batch"], e["config"])
                                              for e in entries):  # in measuring order
        by = {e["version"]: e for e in entries if (e["model"], e["batch"], e["config"]) ==
              (model, batch, config)}

        def cell(v):
            e = by.get(v)
            if e is None:
                return ""
            if "error" in e:
                return "error"
            peak = "peak n/a" if e["peak_mb"] is None else f"peak {e['peak_mb']:.0f} MB"
            return f"{e['images_per_s']:.1f} img/s, {peak}"

        o, s = by.get("ours", {}), by.get("seed", {})
        ratio = (o["images_per_s"] / s["images_per_s"]
                 if "images_per_s" in o and "images_per_s" in s else None)
        rows.append(Row(f"search step {model} b{batch} {config}", cell("ours"), cell("seed"),
                        cell("dense"), ratio, "ours/seed" if ratio is not None else ""))
    for r in estimates:
        rows.append(Row(f"RBRN resnet34 preset, ours {r['config']}",
                        f"{r['total_hours']:.1f} h" if "total_hours" in r else "n/a",
                        note=f"{r['epochs']} epochs x {r['steps_per_epoch']} steps at batch "
                        f"{r['batch']}; includes {r['included']}; excludes {r['excluded']}"
                        + (f"; {r['note']}" if r.get("note") else "")))
    return rows


def bench_gpu_table(args, rows: list[Row], log=print) -> None:
    """``bench/run.py --device cuda``: the table above (skipped on the CPU)."""
    if args.device != "cuda":
        log("[gpu_table] skipped: needs --device cuda (the CPU path is tested by "
            "tests/test_precision.py)")
        common.write_result("gpu_table", {"machine": args.machine, "skipped": True,
                                          "reason": "needs --device cuda"})
        rows.append(Row("GPU table (search step b256, fp32/bf16/compile)",
                        "skipped (needs --device cuda)"))
        return
    repeats = args.repeats or (1 if args.quick else 3)
    entries = measure_table("cuda", repeats=repeats, log=log)
    estimates = rbrn_estimate(entries)
    log("\n" + format_table(entries, estimates) + "\n")
    common.write_result("gpu_table", {"machine": args.machine, "repeats": repeats,
                                      "batch": GPU_BATCH, "pgd_steps": PGD_STEPS,
                                      "entries": entries, "rbrn_estimate": estimates})
    rows.extend(table_rows(entries, estimates))


def bench_amp(args, rows: list[Row], log=print) -> None:
    """Ours' search step (PGD-10 + update) in fp32 and in bf16 autocast, side by side in
    worker processes (rounds in rotating order, as every timing of bench/run.py)."""
    configs = AMP_CONFIGS["quick" if args.quick else "full"]
    results = {}
    for model, batch, repeats in configs:
        repeats = args.repeats or repeats
        log(f"[amp] {model} batch {batch}: ours fp32 vs bf16, PGD-10 + update, {repeats} round(s)")
        specs = {p: dict(variant="ours", model_name=model, batch=batch, keep_ratio=0.05,
                         device=args.device, precision=p) for p in ("fp32", "bf16")}
        with common.Workers(specs, args.threads) as w:
            r = w.rounds("search_step", 10, repeats, warmup=("search_step", 1), log=log)
        f, b = r["fp32"]["median_s"], r["bf16"]["median_s"]
        fc, bc = r["fp32"]["median_cpu_s"], r["bf16"]["median_cpu_s"]
        key = f"{model}_b{batch}"
        results[key] = {"model": model, "batch": batch, "pgd_steps": 10, "repeats": repeats,
                        "variants": r, "fp32_over_bf16": f / b, "cpu_fp32_over_bf16": fc / bc,
                        "first_round_loss": {p: r[p]["values"][0] for p in r}}
        rows.append(Row(f"mixed precision: search step {model} b{batch} ({args.device})",
                        f"fp32 {fmt_s(f)}, bf16 {fmt_s(b)}", "", "", f / b, "fp32/bf16",
                        cpu_ratio=fc / bc, note="ours in fp32 and under bf16 autocast "
                        "(rst_lib.engine.precision), side by side; loss of the first timed step: fp32 "
                        f"{r['fp32']['values'][0]:.3f}, bf16 {r['bf16']['values'][0]:.3f}"))
    common.write_result("amp", {"machine": args.machine, "results": results})
