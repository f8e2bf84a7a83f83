"""rst-workbook benchmark suite (issue 6): ``make bench`` or ``.venv/bin/python bench/run.py``.

Benchmarks (``--only`` takes a comma-separated list of these names):

* ``search_step``  adversarial search step (PGD-10 + score update), ours / seed-style / dense,
                   conv4 and resnet18 at batch 128 and 32; also gives ``peak_memory``.
* ``eval_pgd20``   PGD-20 evaluation throughput on a saved-and-loaded ticket, ours / seed-style.
* ``ticket_size``  resnet18 ticket at keep ratio 0.05 vs a full fp32 checkpoint.
* ``cifar10``      time to a robust ticket on real CIFAR-10 (skipped without the data).
* ``ideas``        the issue's optimization ideas, each measured on its own.
* ``data_pipeline`` loader images/s on the CIFAR-10 JPEGs, old PIL path vs the uint8 cache,
                   against what a search step consumes (bench/data_pipeline.py).
* ``amp``          ours' search step in fp32 vs bf16 autocast, side by side (CPU or GPU).
* ``gpu_table``    ``--device cuda``: resnet18/34 b256 search steps in fp32, bf16, bf16 +
                   compile, ours / dense / seed-style, images/s, peak memory, and the RBRN
                   ResNet34 preset's estimated time (bench/gpu_table.py; skipped on the CPU).
* ``cli_startup``  how fast ``rst-workbook`` answers: light commands, refusals, ``model``,
                   beside ``python -c pass`` (bench/cli_startup.py).

Every timing is measured side by side: one worker process per variant, the variants run one
after the other in rotating order for each round, after one warm-up call each (same shapes,
1 attack step); the reported time is the median over the rounds. Results go to
``bench/results/<name>.json``; the table is printed and written to ``bench/results/table.md``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import Row, fmt_bytes, fmt_mb, fmt_s  # noqa: E402

CIFAR_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg"
ALL = ("search_step", "eval_pgd20", "ticket_size", "cifar10", "ideas", "data_pipeline")
ALL += ("amp", "gpu_table")  # bench/gpu_table.py
ALL += ("cli_startup",)  # bench/cli_startup.py

# (model, batch, repeats) of the search-step benchmark; a resnet18 step takes tens of seconds
# on a 2-core CPU (the seed-style one about twice that), so resnet18 gets one round fewer.
SEARCH_CONFIGS = {
    "full": [("conv4", 128, 3), ("conv4", 32, 5), ("resnet18", 32, 3), ("resnet18", 128, 2)],
    "quick": [("conv4", 32, 1), ("conv4", 128, 1), ("resnet18", 32, 1)],
}
SEED_TARGET = {128: 1.5, 32: 2.5}  # ours >= this many times faster than seed-style
DENSE_TARGET = 1.05                # ours <= this times the dense time
EVAL_CONFIGS = {"full": [("conv4", 32, 3), ("conv4", 128, 2)], "quick": [("conv4", 32, 1)],
                "more": [("conv4", 32, 3), ("conv4", 128, 2), ("resnet18", 32, 2)]}
EVAL_TARGET = 2.0
TICKET_TARGET = 100.0


def _pct(x) -> str:
    return "?" if x is None else f"{x:.0%}"


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------ 1 and 3


def bench_search_step(args, rows: list[Row]) -> None:
    configs = SEARCH_CONFIGS["quick" if args.quick else "full"]
    results, mem = {}, {}
    for model, batch, repeats in configs:
        repeats = args.repeats or repeats
        log(f"[search_step] {model} batch {batch}: PGD-10 + update, {repeats} round(s)")
        variants = ["ours", "seed", "dense"]
        if batch <= 32 and args.plaintopk:  # where the mask cost weighs most
            variants.append("ours_plaintopk")
        specs = {v: dict(variant=v, model_name=model, batch=batch, keep_ratio=0.05,
                         device=args.device) for v in variants}
        with common.Workers(specs, args.threads) as w:
            r = w.rounds("search_step", 10, repeats, warmup=("search_step", 1), log=log)
        key = f"{model}_b{batch}"
        o, s, d = (r[v]["median_s"] for v in ("ours", "seed", "dense"))
        oc, sc, dc = (r[v]["median_cpu_s"] for v in ("ours", "seed", "dense"))
        results[key] = {
            "model": model, "batch": batch, "keep_ratio": 0.05, "pgd_steps": 10,
            "repeats": repeats, "variants": r,
            "seed_over_ours": s / o, "ours_over_dense": o / d,
            "cpu_seed_over_ours": sc / oc, "cpu_ours_over_dense": oc / dc,
            "paired_seed_over_ours": common.paired_ratios(r["seed"]["seconds"], r["ours"]["seconds"]),
            "paired_ours_over_dense": common.paired_ratios(r["ours"]["seconds"], r["dense"]["seconds"]),
            "targets": {"seed_over_ours": SEED_TARGET.get(batch), "ours_over_dense": DENSE_TARGET},
        }
        mem[key] = _peak_memory(args, model, batch)
        log(f"    peak MB (exact-memory workers, PGD-1 steps): "
            + ", ".join(f"{v} {m['peak_mb']:.0f}" for v, m in mem[key].items()))
        name = f"search step {model} b{batch}"
        if batch in SEED_TARGET:
            rows.append(Row(name, fmt_s(o), fmt_s(s), fmt_s(d), s / o, "seed/ours",
                            SEED_TARGET[batch], ">=", cpu_ratio=sc / oc))
        rows.append(Row(name, fmt_s(o), fmt_s(s), fmt_s(d), o / d, "ours/dense",
                        DENSE_TARGET, "<=", cpu_ratio=oc / dc))
        if "ours_plaintopk" in r:
            f, fc = r["ours_plaintopk"]["median_s"], r["ours_plaintopk"]["median_cpu_s"]
            results[key]["ours_plaintopk_over_dense"] = f / d
            rows.append(Row("  same, ours with plain torch.topk masks", fmt_s(f), fmt_s(s),
                            fmt_s(d), f / d, "ours/dense", cpu_ratio=fc / dc, note="rst_lib with "
                            "torch.topk on all scores instead of topk.topk_mask (same masks)"))
    common.write_result("search_step", {"machine": args.machine, "results": results})
    unit = "CUDA max_memory_allocated" if args.device == "cuda" else "peak RSS (VmHWM)"
    common.write_result("peak_memory", {
        "machine": args.machine, "unit": f"MB, {unit} of a worker process running two search "
        "steps with a PGD-1 attack (the same peak as PGD-10), in exact-memory mode (glibc mmaps "
        "and unmaps every allocation >= 64 kB); reset after the model was built; "
        "step_mb = peak - RSS after building", "results": mem})
    for key, m in mem.items():
        if not key.endswith("b128") and not args.quick:
            continue
        rows.append(Row(f"peak memory search step {key.replace('_b', ' b')}",
                        fmt_mb(m["ours"]["peak_mb"]), fmt_mb(m["seed"]["peak_mb"]),
                        fmt_mb(m["dense"]["peak_mb"]), m["ours"]["peak_mb"] / m["seed"]["peak_mb"],
                        "ours/seed", 1.0, "<="))


def _peak_memory(args, model: str, batch: int) -> dict:
    """Peak memory of a search step per version, in fresh exact-memory worker processes."""
    variants = ("ours", "seed", "dense")
    specs = {v: dict(variant=v, model_name=model, batch=batch, keep_ratio=0.05,
                     device=args.device) for v in variants}
    out = {}
    with common.Workers(specs, args.threads, exact_memory=True) as w:
        for v in variants:
            w.call(v, "search_step", 1)
            r = w.call(v, "search_step", 1)
            out[v] = {"peak_mb": r["peak_mb"], "base_mb": w.base[v],
                      "step_mb": r["peak_mb"] - w.base[v]}
    return out


# ------------------------------------------------------------------------------------ 2


def bench_eval(args, rows: list[Row]) -> None:
    configs = EVAL_CONFIGS["quick" if args.quick else ("more" if args.eval_resnet else "full")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model, batch, repeats in configs:
            repeats = args.repeats or repeats
            log(f"[eval_pgd20] {model} batch {batch}: clean + PGD-20, {repeats} round(s)")
            ticket = os.path.join(tmp, f"{model}.pt")
            specs = {v: dict(variant=v, model_name=model, batch=batch, keep_ratio=0.05,
                             ticket_path=ticket if v == "ours" else None, device=args.device)
                     for v in ("ours", "seed", "dense")}
            with common.Workers(specs, args.threads) as w:
                r = w.rounds("eval_batch", 20, repeats, warmup=("eval_batch", 1), log=log)
                clean = [w.call("ours", "clean_forward", None)["seconds"] for _ in range(3)]
            o, s, d = (r[v]["median_s"] for v in ("ours", "seed", "dense"))
            oc, sc = r["ours"]["median_cpu_s"], r["seed"]["median_cpu_s"]
            results[f"{model}_b{batch}"] = {
                "model": model, "batch": batch, "pgd_steps": 20, "repeats": repeats,
                "variants": r,
                "images_per_s": {"ours": batch / o, "seed": batch / s, "dense": batch / d},
                "ours_over_seed_throughput": s / o, "cpu_ours_over_seed_throughput": sc / oc,
                "ours_over_dense_time": o / d, "seed_over_dense_time": s / d,
                "target": EVAL_TARGET,
                "robust_acc_equal": r["ours"]["values"] == r["seed"]["values"],
                "clean_forward_s": statistics.median(clean),
                "clean_forward_share": statistics.median(clean) / o,
            }
            rows.append(Row(f"PGD-20 eval {model} b{batch} (img/s)", f"{batch / o:.1f}",
                            f"{batch / s:.1f}", f"{batch / d:.1f}", s / o, "ours/seed",
                            EVAL_TARGET, ">=", cpu_ratio=sc / oc,
                            note=f"ours takes {o / d:.2f}x the time of the dense network's "
                            f"PGD-20 evaluation, seed-style {s / d:.2f}x: at this batch "
                            f"ours/seed can reach at most about {s / d:.2f}x"))
    common.write_result("eval_pgd20", {"machine": args.machine, "results": results})
    args.eval_results = results


# ------------------------------------------------------------------------------------ 4


def bench_ticket(args, rows: list[Row]) -> None:
    import torch

    import rst_lib
    import ticket_codec
    from rst_lib.masks import masking
    from rst_lib.models.tickets import ticket_payload
    from steps import build_ours, make_batch
    log("[ticket_size] resnet18, keep ratio 0.05")
    torch.manual_seed(0)
    model = build_ours("resnet18", 0.05)
    model.train()
    with torch.no_grad(), masking.frozen_masks(model):  # BN statistics differ, as after a search
        model(make_batch(64)[0])
    model.eval()
    kept = sum(masking.get_mask_param(m).k for _, m in masking.masked_layers(model))
    total = sum(masking.get_mask_param(m).scores.numel() for _, m in masking.masked_layers(model))
    out = {"model": "resnet18", "keep_ratio": 0.05, "kept_weights": kept, "masked_weights": total}
    with tempfile.TemporaryDirectory() as tmp:
        tpath = Path(tmp) / "ticket.pt"
        rst_lib.save_ticket(model, tpath)
        ticket_bytes = tpath.stat().st_size
        loaded = rst_lib.load_ticket(tpath)
        x = make_batch(16)[0]
        with torch.no_grad():
            out["ticket_reproduces_outputs"] = bool(torch.equal(model(x), loaded(x)))
        # the full checkpoint: every weight and score in fp32 plus the BatchNorm statistics
        full = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        cpath = Path(tmp) / "full.pt"
        torch.save(full, cpath)
        full_bytes = cpath.stat().st_size
        out.update(ticket_bytes=ticket_bytes, full_checkpoint_bytes=full_bytes,
                   ratio=full_bytes / ticket_bytes, bytes_per_kept_weight=ticket_bytes / kept,
                   target=TICKET_TARGET,
                   checkpoint_size_bytes_rst_lib=rst_lib.models.tickets.checkpoint_size_bytes(model))
        # the same ticket with other mask encodings, for comparison: rst_lib's version-1
        # packed bits (1 bit per weight) and those bits lzma-compressed (bench-local)
        masks = masking.get_masks(model)
        shapes = {k: list(v.shape) for k, v in masks.items()}
        payload = ticket_payload(model)
        out["mask_encodings"] = {k: v["encoding"] for k, v in payload["masks"].items()}
        out["mask_bytes"] = sum(t.numel() for v in payload["masks"].values()
                                for t in v.values() if isinstance(t, torch.Tensor))
        alt = {}
        for method in ("packed", "lzma"):
            t0 = time.perf_counter()
            enc = ticket_codec.encode_masks(masks, method)
            t_enc = time.perf_counter() - t0
            payload["masks"] = enc
            p = Path(tmp) / f"ticket_{method}.pt"
            torch.save(payload, p)
            t0 = time.perf_counter()
            ok = all(torch.equal(ticket_codec.decode_mask(enc[k], shapes[k], method), masks[k])
                     for k in masks)
            t_dec = time.perf_counter() - t0
            alt[method] = {"bytes": p.stat().st_size, "ratio": full_bytes / p.stat().st_size,
                           "bytes_per_kept_weight": p.stat().st_size / kept,
                           "mask_bytes": sum(v.numel() for v in enc.values()),
                           "round_trip_exact": ok, "encode_s": t_enc, "decode_s": t_dec}
        out["other_mask_encodings"] = alt
    common.write_result("ticket_size", {"machine": args.machine, **out})
    rows.append(Row("ticket size resnet18 kr 0.05", fmt_bytes(ticket_bytes),
                    f"{fmt_bytes(full_bytes)} (full)", "", full_bytes / ticket_bytes, "full/ticket",
                    TICKET_TARGET, ">=",
                    note=f"{ticket_bytes / kept:.2f} bytes per kept weight (Elias-Fano masks: "
                    f"{out['mask_bytes'] * 8 / kept:.2f} bits per kept weight); "
                    f"outputs of the loaded ticket identical: {out['ticket_reproduces_outputs']}"))
    for method, label in (("packed", "masks as packed bits (ticket v1)"),
                          ("lzma", "masks as lzma'd packed bits")):
        a = alt[method]
        rows.append(Row(f"  same, {label}", fmt_bytes(a["bytes"]), f"{fmt_bytes(full_bytes)} (full)",
                        "", a["ratio"], "full/ticket",
                        note=f"{a['bytes_per_kept_weight']:.2f} bytes per kept weight"))


# ------------------------------------------------------------------------------------ 5


def bench_cifar10(args, rows: list[Row]) -> None:
    import torch

    from rst_lib import RunConfig, train
    from rst_lib.models.tickets import checkpoint_size_bytes
    data_dir = Path(args.cifar_dir)
    if not (data_dir / "train").is_dir():
        log(f"[cifar10] skipped: no CIFAR-10 JPEG copy at {data_dir}")
        common.write_result("cifar10", {"machine": args.machine, "skipped": True,
                                        "reason": f"no data at {data_dir}"})
        rows.append(Row("CIFAR-10 time to ticket", "skipped (no data)"))
        return
    epochs, n_train, n_eval = (1, 1000, 200) if args.quick else (3, 5000, 500)
    params = dict(name="bench-cifar10", seed=0, device=args.device, dataset="imagefolder",
                  data_dir=str(data_dir), train_examples=n_train, eval_examples=n_eval,
                  batch_size=128, eval_batch_size=250, model="conv4", width=0.5,
                  keep_ratio=0.1, end_with_bn=True, epochs=epochs, optimizer="sgd", lr=0.1,
                  lr_schedule="cosine", train_attack="fgsm_rs", eps="8/255", alpha="10/255",
                  eval_alpha="2/255", eval_steps=20, final_examples=n_eval, autoattack="none")
    log(f"[cifar10] conv4 width 0.5, keep 0.1, FGSM-RS, {n_train} train / {n_eval} test "
        f"images, {epochs} epoch(s)")
    torch.set_num_threads(args.threads)
    cfg = RunConfig(**params)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = train(cfg, run_dir=tmp, progress=False)
        wall = time.perf_counter() - t0
        ticket_bytes = Path(res.ticket_path).stat().st_size if res.ticket_path else None
    best = res.final  # test-split numbers of the ticket chosen on the validation split
    out = {"params": params, "wall_s": wall, "best": res.best, "final": best, "history": res.history,
           "ticket_bytes": ticket_bytes, "full_checkpoint_bytes": checkpoint_size_bytes(res.model),
           "warnings": res.warnings}
    common.write_result("cifar10", {"machine": args.machine, **out})
    rows.append(Row(f"CIFAR-10 ticket conv4 w0.5, {n_train // 1000}k img, {epochs} ep",
                    f"{wall:.0f} s; clean {best['clean_acc']:.1%}, PGD-20 {best['pgd_acc']:.1%}",
                    note="reference for later changes, no target"))


# ------------------------------------------------------------------------------- ideas


def _mask_micro(args) -> dict:
    """Cost of producing every mask of a model once: full sort vs topk vs kthvalue."""
    import torch
    from torch.utils import benchmark

    import seed_style
    from rst_lib.masks import masking, topk
    from steps import TopKSubnet, build_ours
    torch.set_num_threads(args.threads)
    out = {}
    for name in ("conv4", "resnet18"):
        model = build_ours(name, 0.05)
        layers = [masking.get_mask_param(m) for _, m in masking.masked_layers(model)]
        scores = [(p.scores.detach(), p.k) for p in layers]

        def sort_all():
            return [seed_style.GetSubnet.apply(s.abs(), k) for s, k in scores]

        def topk_all():
            return [TopKSubnet.apply(s.abs(), k) for s, k in scores]

        def banded_all():  # what rst_lib's masks run
            return [topk.topk_mask(s.abs().flatten(), k) for s, k in scores]

        def kth_all():  # threshold at the k-th largest |s| (keeps > k entries on ties)
            return [(s.abs() >= s.abs().flatten().kthvalue(s.numel() - k + 1).values).float()
                    for s, k in scores]

        def cached_all():
            return [p.mask() for p in layers]

        cached_all()
        res = {}
        for label, fn in (("sort", sort_all), ("topk", topk_all), ("kthvalue", kth_all),
                          ("topk_mask", banded_all), ("cached", cached_all)):
            t = benchmark.Timer(stmt="fn()", globals={"fn": fn},
                                num_threads=args.threads).blocked_autorange(min_run_time=0.5)
            res[label] = t.median
        res["sort_over_topk"] = res["sort"] / res["topk"]
        res["topk_over_topk_mask"] = res["topk"] / res["topk_mask"]
        res["same_masks"] = all(torch.equal(a.flatten().bool(), b) for a, b in
                                zip(topk_all(), banded_all()))
        res["scores"] = sum(s.numel() for s, _ in scores)
        out[name] = res
    return out


def bench_ideas(args, rows: list[Row]) -> None:
    log("[ideas] mask production: full sort vs topk vs kthvalue vs cache")
    micro = _mask_micro(args)
    r18 = micro["resnet18"]
    rows.append(Row("idea topk vs sort: all masks resnet18", fmt_s(r18["topk"]), fmt_s(r18["sort"]),
                    "", r18["sort_over_topk"], "sort/topk",
                    note=f"kthvalue {fmt_s(r18['kthvalue'])}, cached {r18['cached'] * 1e6:.0f} us"))
    rows.append(Row("idea banded top-k: all masks resnet18", fmt_s(r18["topk_mask"]),
                    "", "", r18["topk_over_topk_mask"], "topk/topk_mask",
                    note=f"rst_lib.masks.topk.topk_mask vs torch.topk; same masks: "
                    f"{r18['same_masks']}"))
    model, batch = ("conv4", 32) if not args.ideas_model else args.ideas_model
    repeats = args.repeats or (1 if args.quick else 2)
    variants = ["ours", "ours_nocache", "ours_plaintopk", "ours_cl", "dense", "dense_cl", "seed",
                "seed_topk", "seed_inputgrad"]
    if args.device == "cuda":
        variants.append("ours_amp")
    log(f"[ideas] {model} batch {batch}: search step per variant, {repeats} round(s)")
    specs = {v: dict(variant=v, model_name=model, batch=batch, keep_ratio=0.05,
                     device=args.device) for v in variants}
    with common.Workers(specs, args.threads) as w:
        r = w.rounds("search_step", 10, repeats, warmup=("search_step", 1), log=log)
    med = {v: r[v]["median_s"] for v in variants}
    cpu = {v: r[v]["median_cpu_s"] for v in variants}
    ideas = {
        "mask cache + frozen masks in attack (ours_nocache / ours)": ("ours_nocache", "ours"),
        "topk instead of sort, seed-style (seed / seed_topk)": ("seed", "seed_topk"),
        "no score graph in attack, seed-style (seed / seed_inputgrad)": ("seed", "seed_inputgrad"),
        "banded top-k (ours_plaintopk / ours)": ("ours_plaintopk", "ours"),
        "channels_last (ours / ours_cl)": ("ours", "ours_cl"),
        "channels_last, dense (dense / dense_cl)": ("dense", "dense_cl"),
    }
    if "ours_amp" in med:
        ideas["autocast (ours / ours_amp)"] = ("ours", "ours_amp")
    speedups = {}
    for label, (slow, fast) in ideas.items():
        speedups[label] = med[slow] / med[fast]
        rows.append(Row(f"idea {label.split(' (')[0]} ({model} b{batch})", "", "", "",
                        med[slow] / med[fast], f"{slow}/{fast}", cpu_ratio=cpu[slow] / cpu[fast]))
    rows.append(Row(f"  ours vs dense ({model} b{batch})", fmt_s(med["ours"]),
                    fmt_s(med["seed"]), fmt_s(med["dense"]), med["ours"] / med["dense"],
                    "ours/dense", cpu_ratio=cpu["ours"] / cpu["dense"]))
    rows.append(Row(f"  ours vs dense, both channels_last ({model} b{batch})",
                    fmt_s(med["ours_cl"]), "", fmt_s(med["dense_cl"]),
                    med["ours_cl"] / med["dense_cl"], "ours/dense",
                    cpu_ratio=cpu["ours_cl"] / cpu["dense_cl"]))
    rows.append(Row(f"  ours with plain torch.topk vs dense ({model} b{batch})",
                    fmt_s(med["ours_plaintopk"]), "", fmt_s(med["dense"]),
                    med["ours_plaintopk"] / med["dense"], "ours/dense",
                    cpu_ratio=cpu["ours_plaintopk"] / cpu["dense"]))
    clean_share = None
    if getattr(args, "eval_results", None):
        k = next(iter(args.eval_results))
        clean_share = args.eval_results[k]["clean_forward_share"]
        rows.append(Row(f"idea reuse clean forward in eval ({k.replace('_b', ' b')})", "", "", "",
                        1 / (1 - clean_share), "max speed-up",
                        note="upper bound: one clean forward out of the PGD-20 evaluation"))
    mem_model, mem_batch = ("conv4", 128) if args.quick else ("resnet18", 32)
    log(f"[ideas] peak memory of one search step, {mem_model} batch {mem_batch}: "
        "bool vs float mask cache")
    mem_variants = ("ours", "ours_floatmask", "seed")
    specs = {v: dict(variant=v, model_name=mem_model, batch=mem_batch, keep_ratio=0.05,
                     device=args.device) for v in mem_variants}
    with common.Workers(specs, args.threads, exact_memory=True) as w:
        mem = {}
        for v in mem_variants:
            w.call(v, "search_step", 1)
            mem[v] = {"base_mb": w.base[v], **w.call(v, "search_step", 1)}
    rows.append(Row(f"idea bool mask cache: peak memory {mem_model} b{mem_batch}",
                    fmt_mb(mem["ours"]["peak_mb"]), fmt_mb(mem["seed"]["peak_mb"]), "",
                    mem["ours_floatmask"]["peak_mb"] / mem["ours"]["peak_mb"], "float/bool",
                    note=f"ours with a float32 mask cache: {fmt_mb(mem['ours_floatmask']['peak_mb'])} "
                    "(exact-memory workers, 1 search step each with PGD-1)"))
    compiled = _compile_probe(args) if args.compile else {"skipped": "run with --compile"}
    common.write_result("ideas", {
        "machine": args.machine, "mask_production_s": micro,
        "search_step": {"model": model, "batch": batch, "repeats": repeats, "variants": r,
                        "median_s": med, "speedups": speedups},
        "clean_forward_share_of_eval": clean_share,
        "peak_memory_mask_cache": {"model": mem_model, "batch": mem_batch, "variants": mem},
        "torch_compile": compiled,
        "autocast": "see amp.json (the amp benchmark)" if args.device != "cuda" else speedups.get(
            "autocast (ours / ours_amp)"),
    })
    if args.compile and "speedup" in compiled:
        rows.append(Row("idea torch.compile eval fwd+bwd (conv4 b32)", "", "", "",
                        compiled["speedup"], "eager/compiled",
                        note=f"compile took {compiled['compile_s']:.0f} s"))


def _compile_probe(args) -> dict:
    """torch.compile of the frozen-mask attack step (forward + input gradient), conv4 b32."""
    import torch
    import torch.nn.functional as F

    from rst_lib.masks import masking
    from steps import build_ours, make_batch
    log("[ideas] torch.compile probe (conv4 b32, frozen-mask forward + input gradient)")
    model = build_ours("conv4", 0.05).eval()
    x, y = make_batch(32)

    def grad_step(m):
        d = torch.zeros_like(x, requires_grad=True)
        loss = F.cross_entropy(m(x + d), y, reduction="sum")
        return torch.autograd.grad(loss, d)[0]

    try:
        with masking.frozen_masks(model):
            compiled = torch.compile(model)
            t0 = time.perf_counter()
            grad_step(compiled)
            compile_s = time.perf_counter() - t0
            times = {}
            for label, m in (("eager", model), ("compiled", compiled)):
                grad_step(m)
                ts = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    grad_step(m)
                    ts.append(time.perf_counter() - t0)
                times[label] = statistics.median(ts)
        return {"compile_s": compile_s, **times, "speedup": times["eager"] / times["compiled"]}
    except Exception as e:  # compile needs a working C++ toolchain; report, do not fail
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}


# ------------------------------------------------------------------------ data pipeline


def bench_data_pipeline(args, rows: list[Row]) -> None:
    import data_pipeline  # bench/data_pipeline.py: old loader vs uint8 cache vs search step
    data_pipeline.bench_data_pipeline(args, rows, log=log)


# ------------------------------------------------------------- mixed precision, GPU table


def bench_amp(args, rows: list[Row]) -> None:
    import gpu_table  # bench/gpu_table.py: ours in fp32 vs bf16 autocast
    gpu_table.bench_amp(args, rows, log=log)


def bench_gpu_table(args, rows: list[Row]) -> None:
    import gpu_table  # bench/gpu_table.py: the --device cuda table
    gpu_table.bench_gpu_table(args, rows, log=log)


def bench_cli_startup(args, rows: list[Row]) -> None:
    import cli_startup  # bench/cli_startup.py: a fresh interpreter per CLI call
    cli_startup.bench_cli_startup(args, rows, log=log)


# ------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None,
                    help=f"comma-separated subset of: {', '.join(ALL)} (peak_memory = search_step)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 round, small configurations, 1 CIFAR epoch")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per configuration")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--compile", action="store_true", help="also probe torch.compile (slow)")
    ap.add_argument("--ideas-model", default=None, help="model,batch for the ideas step, "
                    "e.g. resnet18,32 (default conv4,32)")
    ap.add_argument("--cifar-dir", default=str(CIFAR_DIR))
    ap.add_argument("--eval-resnet", action="store_true",
                    help="also measure the PGD-20 evaluation on resnet18 at batch 32 (slow)")
    ap.add_argument("--plaintopk", action="store_true", help="add ours with plain torch.topk "
                    "to the batch-32 search steps")
    args = ap.parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    if args.ideas_model:
        m, b = args.ideas_model.split(",")
        args.ideas_model = (m, int(b))
    only = ALL if not args.only else tuple(
        "search_step" if n.strip() == "peak_memory" else n.strip() for n in args.only.split(","))
    bad = [n for n in only if n not in ALL]
    if bad:
        ap.error(f"unknown benchmark(s) {bad}; valid: {', '.join(ALL)}, peak_memory")
    args.machine = common.machine_info()
    args.eval_results = None
    m = args.machine
    log(f"machine: {m['platform']} | CPU: {m['cpu']} ({m['cpu_count']} logical) | "
        f"torch {m['torch']} | threads {m['threads']} | device {args.device}"
        + (f" ({m['cuda']})" if m["cuda"] else "") + f" | load {m['loadavg_start']}")
    if m["busy_before_start"] is not None and m["busy_before_start"] > 0.1:
        log(f"WARNING: other processes kept {m['busy_before_start']:.0%} of the CPUs busy just "
            "before the start; timings will be stretched and noisy (compare ratios only)")
    t_start = time.perf_counter()
    rows: list[Row] = []
    timings = {}
    for name in ALL:
        if name not in only:
            continue
        t0 = time.perf_counter()
        {"search_step": bench_search_step, "eval_pgd20": bench_eval, "ticket_size": bench_ticket,
         "cifar10": bench_cifar10, "ideas": bench_ideas,
         "data_pipeline": bench_data_pipeline, "amp": bench_amp,
         "gpu_table": bench_gpu_table, "cli_startup": bench_cli_startup}[name](args, rows)
        timings[name] = time.perf_counter() - t0
        log(f"  ({name}: {timings[name]:.0f} s)")
    total = time.perf_counter() - t_start
    m["loadavg_end"] = common.loadavg()
    m["busy_after_end"] = common.cpu_busy_fraction()
    header = (f"machine: {m['platform']}; CPU: {m['cpu']} ({m['cpu_count']} logical); "
              f"torch {m['torch']}; threads {m['threads']}; device {args.device}; "
              f"load average start {m['loadavg_start']}, end {m['loadavg_end']}; CPUs busy "
              f"with other processes before start {_pct(m['busy_before_start'])}, after end "
              f"{_pct(m['busy_after_end'])}")
    table = common.format_table(rows)
    cli = sys.argv[1:] if argv is None else list(argv)
    cmd = ("make bench" if os.environ.get("MAKELEVEL") and not cli
           else " ".join([".venv/bin/python bench/run.py"] + cli))
    print("\n" + header)
    print(f"command: {cmd}; total {total:.0f} s\n")
    print(table)
    notes = [r for r in rows if r.note]
    if any(r.cpu_ratio is not None for r in rows):
        notes.append(Row("(cpu ...)", note="the same ratio of the workers' process CPU times: a "
                         "cross-check that other processes on the machine barely move when "
                         "threads = 1 (with more threads, OpenMP spin-waiting counts as CPU)"))
    if any(r.bench.startswith("idea") for r in rows):
        notes.append(Row("idea rows", note="time without / time with that one change (its "
                         "speed-up alone: > 1 helps); ablation variants are described in "
                         "bench/README.md"))
    if notes:
        print()
        for r in notes:
            print(f"  {r.bench.strip()}: {r.note}")
    missed = [r for r in rows if r.met is False]
    print(f"\n{sum(r.met is True for r in rows)} target(s) met, {len(missed)} missed"
          + (": " + "; ".join(r.bench.strip() + " " + r.ratio_label for r in missed) if missed else ""))
    md = (f"{header}\n\ncommand: `{cmd}`, total {total:.0f} s\n\n"
          + common.format_table(rows, markdown=True) + "\n")
    if notes:
        md += "\n" + "\n".join(f"- {r.bench.strip()}: {r.note}" for r in notes) + "\n"
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (common.RESULTS_DIR / "table.md").write_text(md)
    common.write_result("summary", {"machine": m, "command": cmd, "total_s": total,
                                    "bench_s": timings, "rows": [r.to_dict() for r in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
