"""The quickstart's speed levers on this machine, measured side by side in one process (issue 33,
docs/quickstart.md "Seven minutes without native bf16").

    flock /tmp/heavy.lock .venv/bin/python bench/quickstart_levers.py pass
    flock /tmp/heavy.lock .venv/bin/python bench/quickstart_levers.py apgd --ticket RUN_DIR [--examples 300]
    ONEDNN_MAX_CPU_ISA=AVX2 ...   # the AVX2 path (a CPU without native bf16)

``pass``: ms per digit of one attack pass (forward + backward to the input, cross-entropy,
eval mode, masks frozen: what PGD and APGD repeat) of the quickstart's network (conv4, width
0.5, 10 % kept) for each evaluation batch, in the default layout, in channels_last and with
oneDNN off (ATen's convolutions), and
``torch.compile``d at two batches (compile time printed apart), in ``--precision``.

``apgd``: AutoAttack fast on a ticket, on the digits PGD-20 leaves of the first ``--examples``
test digits, with pyautoattack's APGD as it is and with APGD that stops on broken inputs
(:mod:`rst_lib.attacks.apgd_stop`): seconds, robust count, and the digits on which the two
disagree (same seed, same batches).

Every command prints the matmul yardstick (bench/matmul.py) first and one JSON line per result.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # rst_lib from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

import matmul  # noqa: E402
from rst_lib.attacks.autoattack import autoattack_robust, search_context  # noqa: E402
from rst_lib.attacks.gradient import PGD  # noqa: E402
from rst_lib.config import RunConfig  # noqa: E402
from rst_lib.data import load_dataset  # noqa: E402
from rst_lib.engine.evaluation import input_tensors  # noqa: E402
from rst_lib.engine.tasks import build_task  # noqa: E402
from rst_lib.engine.tuning import CompiledNetwork  # noqa: E402
from rst_lib.masks.masking import frozen_masks  # noqa: E402
from rst_lib.models.tickets import load_ticket  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def quickstart_config(**overrides) -> RunConfig:
    params = yaml.safe_load(open(ROOT / "params" / "quickstart.yaml"))
    for key in ("masking_examples", "progress"):
        params.pop(key, None)
    params.update(overrides)
    return RunConfig.from_dict(params)


def pass_ms(net, x, y, reps: int, precision: str) -> float:
    """Median ms per digit of ``reps`` attack passes on the batch ``x`` (after 2 untimed)."""
    times = []
    for r in range(reps + 2):
        xa = x.clone().requires_grad_()
        t = time.perf_counter()
        with search_context(precision, x.device):
            loss = F.cross_entropy(net(xa), y)
        torch.autograd.grad(loss, [xa])
        if r >= 2:
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times) / len(x)


def cmd_pass(args) -> None:
    cfg = quickstart_config()
    data = load_dataset(cfg.dataset)
    _, model = build_task(cfg, data, torch.device("cpu"))
    model.eval()
    x_all, y_all = input_tensors(data.test, 500)
    for layout in ("contiguous", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        model = model.to(memory_format=fmt)
        for batch in args.batches:
            x = x_all[:batch].contiguous(memory_format=fmt)
            with frozen_masks(model):
                ms = pass_ms(model, x, y_all[:batch], max(3, 2000 // batch), args.precision)
            emit(kind="pass", layout=layout, compiled=False, batch=batch,
                 precision=args.precision, ms_per_digit=round(ms, 3))
    model = model.to(memory_format=torch.contiguous_format)
    with torch.backends.mkldnn.flags(enabled=False):  # ATen's own convolutions instead of oneDNN
        for batch in args.batches:
            with frozen_masks(model):
                ms = pass_ms(model, x_all[:batch], y_all[:batch], max(3, 2000 // batch), args.precision)
            emit(kind="pass", layout="contiguous, mkldnn off", compiled=False, batch=batch,
                 precision=args.precision, ms_per_digit=round(ms, 3))
    net = CompiledNetwork(model)
    for batch in args.compile_batches:
        x = x_all[:batch].contiguous()
        with frozen_masks(model):
            t = time.perf_counter()
            pass_ms(net, x, y_all[:batch], 1, args.precision)  # compiles
            compile_s = time.perf_counter() - t
            ms = pass_ms(net, x, y_all[:batch], max(3, 2000 // batch), args.precision)
        emit(kind="pass", layout="contiguous", compiled=net.fallback or True, batch=batch,
             precision=args.precision, ms_per_digit=round(ms, 3), compile_s=round(compile_s, 1))


def cmd_apgd(args) -> None:
    cfg = quickstart_config()
    data = load_dataset(cfg.dataset)
    model = load_ticket(args.ticket).eval()
    x, y = input_tensors(data.test, args.examples)
    pgd = PGD(model, cfg.eval_eps_value, cfg.eval_alpha_value, cfg.eval_steps, early_stop=True)
    survivors = []
    torch.manual_seed(cfg.seed)
    with frozen_masks(model):
        for i in range(0, len(x), cfg.eval_batch_size):
            xb, yb = x[i:i + cfg.eval_batch_size], y[i:i + cfg.eval_batch_size]
            with torch.no_grad():
                ok = model(xb).argmax(1) == yb
            survivors.append(ok & (model(pgd(xb, yb)).argmax(1) == yb))
    keep = torch.cat(survivors)
    xs, ys = x[keep], y[keep]
    flags = {}
    for stop in args.order:
        t = time.perf_counter()
        flags[stop] = autoattack_robust(model, xs, ys, cfg.eval_eps_value, cfg.threat_model,
                                        cfg.autoattack, "cpu", cfg.seed, args.batch,
                                        precision=args.precision, stop_broken=stop == "stop")
        emit(kind="apgd", apgd="stops on broken inputs" if stop == "stop" else "pyautoattack as is",
             examples=len(x), pgd_survivors=len(xs), batch=args.batch, precision=args.precision,
             seconds=round(time.perf_counter() - t, 1), robust=int(flags[stop].sum()))
    if len(flags) == 2:
        a, b = flags["asis"], flags["stop"]
        emit(kind="apgd-compare", same_robust_set=bool((a == b).all()),
             robust_only_as_is=int((a & ~b).sum()), robust_only_stopping=int((b & ~a).sum()))


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pass")
    p.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256, 500])
    p.add_argument("--compile-batches", type=int, nargs="*", default=[128])
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    a = sub.add_parser("apgd")
    a.add_argument("--ticket", required=True, help="a ticket file or run folder")
    a.add_argument("--examples", type=int, default=300)
    a.add_argument("--batch", type=int, default=128)
    a.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    a.add_argument("--order", nargs="+", default=["asis", "stop"], choices=("asis", "stop"))
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(matmul.line(matmul.measure()), flush=True)
    {"pass": cmd_pass, "apgd": cmd_apgd}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
