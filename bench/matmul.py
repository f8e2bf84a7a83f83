"""The machine yardstick the docs quote beside every timing: a 2048x2048 fp32 matmul's GFLOPS
with the threads torch uses, and the CPU's ISA facts, in one line.

    .venv/bin/python bench/matmul.py            # one line (run it under the lock: flock /tmp/heavy.lock ...)
    .venv/bin/python bench/matmul.py --json     # the same as JSON
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python bench/matmul.py   # oneDNN capped to the AVX2 path

GFLOPS = 2 n^3 / seconds of one ``a @ b``: the median of ``--reps`` timed products after
``--warmup`` untimed ones (min and max are printed too: a spread far above a few percent means
something else was running). The matmul is ATen's fp32 GEMM (MKL / oneDNN), so it measures
the cores, their fp32 vector units and the threads, not the bf16 path; the ISA facts say
which bf16 path the machine has: the CPU flags (avx2, avx512f, avx512_bf16, amx), torch's
``get_cpu_capability()``, oneDNN's bf16 answer and ``ONEDNN_MAX_CPU_ISA`` if set.

Importable: ``measure()`` returns the numbers as a dict and ``line(m)`` the one line
(``sys.path.insert(0, "bench"); import matmul``), so other benchmarks quote the same figure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # rst_lib from this checkout

from rst_lib.utils.machine import cpu_facts, describe_cpu  # noqa: E402

SIZE = 2048


def matmul_seconds(n: int = SIZE, reps: int = 9, warmup: int = 3) -> list[float]:
    """Seconds of each of ``reps`` timed ``n x n`` fp32 products (after ``warmup`` untimed)."""
    import torch
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return times


def measure(n: int = SIZE, reps: int = 9, warmup: int = 3) -> dict:
    """GFLOPS (median, min, max over ``reps``), the load average, and the CPU facts."""
    import os
    times = matmul_seconds(n, reps, warmup)
    flop = 2 * n ** 3
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {"n": n, "reps": reps, "gflops": round(flop / statistics.median(times) / 1e9, 1),
            "gflops_min": round(flop / max(times) / 1e9, 1),
            "gflops_max": round(flop / min(times) / 1e9, 1),
            "loadavg": load, **cpu_facts()}


def line(m: dict) -> str:
    """``matmul 2048² fp32: 186.3 GFLOPS (median of 9; 180.1-190.2); AMD EPYC; ...``."""
    return (f"matmul {m['n']}² fp32: {m['gflops']:.1f} GFLOPS (median of {m['reps']}; "
            f"{m['gflops_min']:.1f}-{m['gflops_max']:.1f}); {describe_cpu(m)}; load {m['loadavg']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=9, help="timed products (default 9)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed products first (default 3)")
    ap.add_argument("--size", type=int, default=SIZE, help="matrix side (default 2048)")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = ap.parse_args(argv)
    m = measure(args.size, args.reps, args.warmup)
    print(json.dumps(m) if args.json else line(m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
