"""Data pipeline benchmark: can the loader keep up with the search?

On the CIFAR-10 JPEG folder (``--cifar-dir``; skipped with a message when absent), images
per second delivered by

* the OLD path: ``ImageFolder`` + PIL transforms (RandomCrop(32, padding=4), flip,
  ToTensor) through a ``DataLoader`` with ``num_workers=0`` (as before) and with
  ``num_workers="auto"`` (after its workers started; the first pass, with the start-up, is
  in the JSON);
* the NEW path: the uint8 cache (``rst_lib.data.cache``) with crop + flip of whole batches
  on ``--device``; the one-time cache build (decoding all 60,000 JPEGs) and a reload of
  the built cache are timed separately;

against the images per second one search step consumes (``steps.Workload("ours")``:
PGD-k + score update, conv6 at batch 128, keep ratio 0.05, timed in a worker process like
the other benchmarks). Each loader pass covers the same fixed ``n_images`` training images.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import common
from common import Row, fmt_s


def _pass(loader, device: str) -> float:
    """Seconds for one full pass over ``loader`` (every batch materialized)."""
    import torch
    t0 = time.perf_counter()
    for x, _ in loader:
        x = x.to(device, non_blocking=True)  # where the step needs it (no-op if there)
        if device == "cuda":
            x.sum()  # make sure the batch exists before the clock stops
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_data_pipeline(args, rows: list[Row], log=print, n_images: int = 5000,
                        batch: int = 128, model: str = "conv6") -> dict:
    import torch

    from rst_lib.data.datasets import fixed_subset, load_dataset
    from rst_lib.data.loaders import make_loader, resolve_num_workers
    data_dir = Path(args.cifar_dir)
    if not (data_dir / "train").is_dir():
        msg = f"no CIFAR-10 JPEG folder at {data_dir} (train/ and test/ class folders)"
        log(f"[data_pipeline] skipped: {msg}")
        common.write_result("data_pipeline", {"machine": args.machine, "skipped": True,
                                              "reason": msg})
        rows.append(Row("data pipeline CIFAR-10 JPEG", "skipped (no data)"))
        return {"skipped": msg}
    torch.set_num_threads(args.threads)
    device = args.device
    out: dict = {"images": n_images, "batch": batch, "device": device}
    log(f"[data_pipeline] CIFAR-10 JPEG, {n_images} training images per pass, batch {batch}")

    with tempfile.TemporaryDirectory(prefix="rst-bench-cache-") as cache_dir:
        t0 = time.perf_counter()
        new = load_dataset("imagefolder", data_dir=data_dir, cache_dir=cache_dir)
        out["cache_build_s"] = time.perf_counter() - t0
        out["cache_images"] = len(new.train) + len(new.test)
        out["cache_bytes"] = sum(p.stat().st_size for p in Path(cache_dir).glob("*.pt"))
        t0 = time.perf_counter()
        new = load_dataset("imagefolder", data_dir=data_dir, cache_dir=cache_dir)
        out["cache_reload_s"] = time.perf_counter() - t0
    log(f"    cache build {out['cache_build_s']:.1f} s for {out['cache_images']} images, "
        f"reload {out['cache_reload_s']:.2f} s")
    sub = fixed_subset(new.train, n_images)
    loader = make_loader(sub, batch, shuffle=True, seed=0, device=device)
    new_s = [_pass(loader, device) for _ in range(3)]  # the first one moves the images over
    out["new_pass_s"] = new_s
    out["new_images_per_s"] = n_images / statistics.median(new_s)

    old = load_dataset("imagefolder", data_dir=data_dir, cache=False)
    old_sub = fixed_subset(old.train, n_images)
    old0 = _pass(make_loader(old_sub, batch, shuffle=True, seed=0, num_workers=0), device)
    out["old_workers0_s"] = old0
    out["old_workers0_images_per_s"] = n_images / old0
    workers = resolve_num_workers("auto")
    out["auto_workers"] = workers
    if workers:
        auto = make_loader(old_sub, batch, shuffle=True, seed=0, num_workers="auto")
        first, second = _pass(auto, device), _pass(auto, device)  # workers persist
        del auto
        out.update(old_auto_first_pass_s=first, old_auto_s=second,
                   old_auto_images_per_s=n_images / second)
    log(f"    images/s: new {out['new_images_per_s']:.0f}, old {out['old_workers0_images_per_s']:.0f}"
        + (f", old with {workers} worker(s) {out['old_auto_images_per_s']:.0f}" if workers else ""))

    step_k = (3,) if args.quick else (3, 10)
    consumed = {}
    spec = {"ours": dict(variant="ours", model_name=model, batch=batch, keep_ratio=0.05,
                         device=device)}
    with common.Workers(spec, args.threads) as w:
        for k in step_k:
            repeats = args.repeats or (1 if args.quick or k > 3 else 2)
            log(f"    search step {model} b{batch} PGD-{k}: {repeats} round(s)")
            r = w.rounds("search_step", k, repeats, warmup=("search_step", 1), log=log)["ours"]
            consumed[k] = {"median_s": r["median_s"], "images_per_s": batch / r["median_s"]}
    out["search_step"] = {"model": model, "batch": batch, "keep_ratio": 0.05, "pgd": consumed}
    common.write_result("data_pipeline", {"machine": args.machine, **out})

    new_ips, old_ips = out["new_images_per_s"], out["old_workers0_images_per_s"]
    rows.append(Row(f"data loader CIFAR-10 JPEG b{batch} (img/s)", f"{new_ips:.0f} (new)",
                    f"{old_ips:.0f} (old)", "", new_ips / old_ips, "new/old",
                    note=f"new: uint8 cache, crop + flip of whole batches on {device}; old: "
                    f"ImageFolder + PIL transforms, num_workers=0; {n_images} images per pass"))
    if workers:
        rows.append(Row(f"  same, old with num_workers=auto ({workers})", f"{new_ips:.0f} (new)",
                        f"{out['old_auto_images_per_s']:.0f} (old)", "",
                        new_ips / out["old_auto_images_per_s"], "new/old",
                        note=f"after the workers started (first pass "
                        f"{n_images / out['old_auto_first_pass_s']:.0f} img/s)"))
    for k, c in consumed.items():
        rows.append(Row(f"  loader vs search step {model} b{batch} PGD-{k}",
                        f"{new_ips:.0f} (new)", f"{old_ips:.0f} (old)",
                        f"{c['images_per_s']:.1f} (step)", new_ips / c["images_per_s"],
                        "new/step", 1.0, ">=",
                        note=f"the step consumes {c['images_per_s']:.1f} img/s on {device} "
                        f"({fmt_s(c['median_s'])} per batch); old/step "
                        f"{old_ips / c['images_per_s']:.1f}x"))
    rows.append(Row(f"  one-time cache build ({out['cache_images']} JPEGs)",
                    fmt_s(out["cache_build_s"]), "", "",
                    note=f"{out['cache_images'] / out['cache_build_s']:.0f} img/s decoded; "
                    f"{common.fmt_bytes(out['cache_bytes'])} on disk; a later load reads it "
                    f"in {fmt_s(out['cache_reload_s'])} (fingerprint + checksum + read)"))
    return out
