"""The speed defaults, measured on both kinds of CPU side by side (issue 33, item 2).

    flock /tmp/heavy.lock .venv/bin/python bench/defaults.py            # ~5 min on 2 cores
    flock /tmp/heavy.lock .venv/bin/python bench/defaults.py --compile  # + torch.compile (minutes)

What the shipped files and defaults fix for speed, each timed in fp32 on the quickstart's
network (conv4 width 0.5, keep 0.1, 1x28x28 digits) and on the CIFAR CPU recipe's
(params/01_search/cifar10-cpu.yaml: conv4 width 0.5, keep 0.5, last BN, 3x32x32), once with
oneDNN as it is and once capped to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``, the path of CPUs without
AVX-512), each in its own process with its matmul figure and ISA line (bench/matmul.py):

* ``eval_batch_size``: an evaluation attack step (forward + backward to the input, eval mode,
  masks frozen) in ms per image at batch 32, 64, 128, 250 and 500;
* threads: the same step at batch 128 with 1 thread and with torch's default (the cores);
* ``channels_last`` (auto = off on the CPU): that step at batch 128, and the recipe's training
  step (its attack + the score update, through rst_lib's own batch step), NCHW vs NHWC;
* ``compile`` (default off; ``--compile``): the training step compiled (rst_lib's
  CompiledNetwork), its first call (compilation) and later steps;
* ``num_workers`` (auto = none with 2 CPUs or fewer) is not timed: both recipes read the uint8
  cache of small images, which uses no loader process (rst_lib.data.cache).

Per cell: one warm-up call, then interleaved timed calls; the fastest and the median are kept
(the fastest is what the machine can do; other processes only add time). Results go to
``results/defaults.json`` and a Markdown table to ``results/defaults.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

NETWORKS = {
    "quickstart": dict(params="params/quickstart.yaml", shape=(1, 28, 28)),
    "cifar10-cpu": dict(params="params/01_search/cifar10-cpu.yaml", shape=(3, 32, 32)),
}
EVAL_BATCHES = (32, 64, 128, 250, 500)
ISAS = {"native": None, "avx2": "AVX2"}


def _timed(fn, reps: int) -> dict:
    fn()  # warm-up (oneDNN builds its kernels)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"min_s": min(times), "median_s": statistics.median(times), "reps": reps}


def _cfg(name: str):
    from rst_lib import RunConfig
    from rst_lib.config import load_params
    params = load_params(ROOT / NETWORKS[name]["params"])
    params.update(precision="fp32", autoattack_precision="fp32", device="cpu")
    params.pop("data_dir", None)
    params["dataset"] = "mnist5k" if name == "quickstart" else "cifar10"
    return RunConfig.from_dict(params, strict=False)


def _model(cfg, shape):
    from rst_lib import create_model
    return create_model(cfg.model, 10, shape[0], image_size=shape[1], width=cfg.width,
                        keep_ratio=cfg.keep_ratio, end_with_bn=cfg.end_with_bn, seed=0)


def eval_step(model, x):
    """An evaluation attack step: forward + backward to the input (masks frozen)."""
    import torch
    import torch.nn.functional as F
    from rst_lib.masks.masking import frozen_masks

    def run():
        with frozen_masks(model), torch.enable_grad():
            xa = x.clone().requires_grad_(True)
            logits = model(xa)
            torch.autograd.grad(F.cross_entropy(logits, logits.detach().argmax(1)), xa)
    return run


def train_step(cfg, model, x, y, compiled: bool = False):
    """The recipe's training step (its attack + the score update), rst_lib's batch step."""
    import torch
    from rst_lib.engine.batch_steps import EpochContext
    from rst_lib.engine.tasks import make_optimizer, make_train_attack, trainable_parameters
    from rst_lib.engine.tuning import CompiledNetwork
    model.train()
    net = CompiledNetwork(model) if compiled else model  # as prepare_run builds it
    ctx = EpochContext.build(model, make_optimizer(trainable_parameters(model), cfg), cfg,
                             torch.device("cpu"), 10_000, attack=make_train_attack(net, cfg, 10_000),
                             forward_model=net, progress=False)
    ctx.step.start_epoch()
    ctx.step.set_eps(cfg.eps, cfg.alpha)

    def run():
        xb, yb, index = ctx.batch_to_device((x, y))
        ctx.step(ctx, xb, yb, index, cfg.eps, (0, 0))
    return run


def child(isa_label: str, do_compile: bool, reps: int) -> dict:
    import torch
    import matmul
    from rst_lib.engine.tuning import to_channels_last
    out = {"isa": isa_label, "machine": matmul.measure(), "networks": {}}
    default_threads = torch.get_num_threads()
    for name, spec in NETWORKS.items():
        cfg, shape = _cfg(name), spec["shape"]
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((500, *shape), generator=gen)
        y = torch.randint(0, 10, (500,), generator=gen)
        model = _model(cfg, shape).eval()
        rows = {}
        for b in EVAL_BATCHES:
            rows[f"eval b{b}"] = _timed(eval_step(model, x[:b]), reps) | {"images": b}
        torch.set_num_threads(1)
        rows["eval b128, 1 thread"] = _timed(eval_step(model, x[:128]), reps) | {"images": 128}
        torch.set_num_threads(default_threads)
        cl = _model(cfg, shape).eval().to(memory_format=torch.channels_last)
        rows["eval b128, channels_last"] = _timed(eval_step(cl, to_channels_last(x[:128])),
                                                  reps) | {"images": 128}
        tb = cfg.batch_size
        rows[f"train b{tb}"] = _timed(train_step(cfg, _model(cfg, shape), x[:tb], y[:tb]),
                                      reps) | {"images": tb}
        cl_cfg = cfg.replace(channels_last=True)
        rows[f"train b{tb}, channels_last"] = _timed(train_step(
            cl_cfg, _model(cfg, shape).to(memory_format=torch.channels_last), x[:tb], y[:tb]),
            reps) | {"images": tb}
        if do_compile:
            step = train_step(cfg, _model(cfg, shape), x[:tb], y[:tb], compiled=True)
            t = time.perf_counter()
            step()
            first = time.perf_counter() - t
            rows[f"train b{tb}, compiled"] = _timed(step, reps) | {"images": tb,
                                                                   "first_call_s": first}
        out["networks"][name] = {"train_attack": cfg.train_attack, "steps": cfg.steps,
                                 "batch_size": tb, "rows": rows}
        print(f"[{isa_label}] {name} done", file=sys.stderr, flush=True)
    out["threads"] = default_threads
    return out


def table(results: list[dict]) -> str:
    import matmul
    lines = []
    for r in results:
        lines.append(f"* {r['isa']}: {matmul.line(r['machine'])}")
    lines.append("")
    names = list(results[0]["networks"])
    head = "| network | measurement | " + " | ".join(
        f"{r['isa']}: ms/image (fastest, median)" for r in results) + " |"
    lines += [head, "|---|---|" + "---|" * len(results)]
    for name in names:
        for row in results[0]["networks"][name]["rows"]:
            cells = []
            for r in results:
                c = r["networks"][name]["rows"][row]
                cell = f"{1e3 * c['min_s'] / c['images']:.3f}, {1e3 * c['median_s'] / c['images']:.3f}"
                if "first_call_s" in c:
                    cell += f" (first call {c['first_call_s']:.0f} s)"
                cells.append(cell)
            lines.append(f"| {name} | {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.compile, args.reps)))
        return 0
    results = []
    for label, isa in ISAS.items():
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("ONEDNN_MAX_CPU_ISA", None)
        if isa:
            env["ONEDNN_MAX_CPU_ISA"] = isa
        argv = [sys.executable, __file__, "--child", label, "--reps", str(args.reps)]
        out = subprocess.run(argv + (["--compile"] if args.compile else []), env=env,
                             stdout=subprocess.PIPE, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    (BENCH / "results").mkdir(exist_ok=True)
    (BENCH / "results" / "defaults.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    (BENCH / "results" / "defaults.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
