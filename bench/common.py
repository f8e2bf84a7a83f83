"""Shared helpers: machine info, memory probes, side-by-side timing in worker processes,
results files and the printed table."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


# ------------------------------------------------------------------------- machine / memory


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def cpu_busy_fraction(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy during ``seconds`` while this process sleeps (from /proc/stat):
    what other processes use. Timings taken while this is high are stretched and noisy."""
    def snap():
        vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals[:8]), idle
    try:
        t0, i0 = snap()
        time.sleep(seconds)
        t1, i1 = snap()
    except (OSError, ValueError, IndexError):
        return None
    return round(1 - (i1 - i0) / max(1, t1 - t0), 3)


def machine_info() -> dict:
    import torch
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_start": loadavg(),
        "busy_before_start": cpu_busy_fraction(),
        "timing_workers_malloc_env": TIMING_MALLOC_ENV,
    }
    return info


def _status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


def peak_rss_mb() -> float:
    """Peak resident set size since the last :func:`reset_peak_rss` (VmHWM), else ru_maxrss."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":
            kb /= 1024
    return kb / 1024


def release_free_memory() -> None:
    """Give free heap memory back to the OS (glibc ``malloc_trim``) so RSS = live memory."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------- worker processes


def _worker(conn, spec: dict) -> None:
    """Runs in a fresh process: builds one Workload and times its operations on request."""
    sys.path.insert(0, str(BENCH_DIR))
    import gc

    import torch
    torch.set_num_threads(spec["threads"])
    from steps import Workload
    try:
        w = Workload(**spec["workload"])
        gc.collect()
        release_free_memory()  # building (e.g. copying our model) must not count as step memory
        dev = w.device
        cuda = dev.type == "cuda"
        base = rss_mb()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 2**20
        reset_ok = reset_peak_rss()
        conn.send({"ok": True, "base_mb": base, "peak_reset": reset_ok})
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                break
            op, arg = msg
            if cuda:
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            value = getattr(w, op)(arg)
            if cuda:
                torch.cuda.synchronize()
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            peak = (torch.cuda.max_memory_allocated() / 2**20) if cuda else peak_rss_mb()
            conn.send({"ok": True, "seconds": dt, "cpu_seconds": cpu, "value": value,
                       "peak_mb": peak})
    except Exception as e:  # report, do not hang the parent
        import traceback
        conn.send({"ok": False, "error": f"{type(e).__name__}: {e}", "tb": traceback.format_exc()})
    finally:
        conn.close()


TIMING_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296",
                     "MALLOC_TOP_PAD_": "1073741824"}


class Workers:
    """One process per variant; the parent asks them in turn, so only one runs at a time.

    Side by side: every round runs each variant once, in a rotating order, so slow drifts of
    the machine (other processes, frequency) hit all variants alike. Separate processes also
    give each variant its own peak-RSS mark.
    """

    def __init__(self, specs: dict[str, dict], threads: int, exact_memory: bool = False):
        ctx = mp.get_context("spawn")
        self.names = list(specs)
        self.procs, self.conns = {}, {}
        # exact_memory: glibc serves every allocation of >= 64 kB by its own mmap and unmaps
        # it on free (a fixed threshold also turns off glibc's adaptive one), so the RSS
        # follows the live tensors instead of heap reuse and fragmentation. Slows
        # allocation: for memory measurements only, never for timings.
        # Timing workers (all versions alike) get the opposite: glibc keeps freed memory for
        # reuse instead of unmapping it, so large tensors do not cost fresh zeroed pages on
        # every allocation. Here that made batch-128 steps 18-30% faster for every version
        # (batch-32 ones 5-10% slower) and removed an allocator artifact of a few % between
        # processes with different allocation patterns.
        env = ({"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
               if exact_memory else TIMING_MALLOC_ENV)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            for name, wl in specs.items():
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_worker, args=(child, {"workload": wl, "threads": threads}),
                                daemon=True)
                p.start()
                self.procs[name], self.conns[name] = p, parent
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.base = {}
        for name in self.names:  # wait for every model to be built
            self.base[name] = self._recv(name)["base_mb"]

    def _recv(self, name):
        msg = self.conns[name].recv()
        if not msg.get("ok"):
            self.close()
            raise RuntimeError(f"worker {name!r} failed: {msg.get('error')}\n{msg.get('tb', '')}")
        return msg

    def call(self, name: str, op: str, arg) -> dict:
        self.conns[name].send((op, arg))
        return self._recv(name)

    def rounds(self, op: str, arg, repeats: int, warmup: tuple[str, object] | None = None,
               log=None) -> dict[str, dict]:
        """``warmup`` (op, arg) once per variant, then ``repeats`` rotating rounds of op(arg)."""
        out = {n: {"seconds": [], "cpu_seconds": [], "values": [], "peak_mb": None}
               for n in self.names}
        if warmup is not None:
            for n in self.names:
                r = self.call(n, *warmup)
                out[n]["warmup_seconds"] = r["seconds"]
        for i in range(repeats):
            k = i % len(self.names)
            for n in self.names[k:] + self.names[:k]:
                r = self.call(n, op, arg)
                out[n]["seconds"].append(r["seconds"])
                out[n]["cpu_seconds"].append(r["cpu_seconds"])
                out[n]["values"].append(r["value"])
                out[n]["peak_mb"] = r["peak_mb"]
                if log:
                    log(f"    round {i + 1}/{repeats} {n:>15}: {r['seconds']:.2f} s "
                        f"(cpu {r['cpu_seconds']:.2f} s)")
        for n in self.names:
            out[n]["median_s"] = statistics.median(out[n]["seconds"]) if out[n]["seconds"] else None
            out[n]["median_cpu_s"] = (statistics.median(out[n]["cpu_seconds"])
                                      if out[n]["cpu_seconds"] else None)
            out[n]["base_mb"] = self.base[n]
        return out

    def close(self):
        for name, c in self.conns.items():
            try:
                c.send(("stop", None))
            except (OSError, BrokenPipeError):
                pass
        for p in self.procs.values():
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def paired_ratios(a: list[float], b: list[float]) -> list[float]:
    """Per-round ratios a[i] / b[i] (the two were measured back to back in round i)."""
    return [x / y for x, y in zip(a, b)]


# ------------------------------------------------------------------------------ results


def write_result(name: str, obj: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


class Row:
    """One table line: ``ratio`` compared with ``target`` by ``op`` ('>=' or '<=')."""

    def __init__(self, bench, ours="", seed="", dense="", ratio=None, ratio_label="",
                 target=None, op=">=", note="", cpu_ratio=None):
        self.bench, self.ours, self.seed, self.dense = bench, ours, seed, dense
        self.cpu_ratio = cpu_ratio  # the same ratio of process CPU times (cross-check)
        self.ratio, self.ratio_label, self.target, self.op, self.note = (
            ratio, ratio_label, target, op, note)

    @property
    def met(self):
        if self.target is None or self.ratio is None:
            return None
        return self.ratio >= self.target if self.op == ">=" else self.ratio <= self.target

    def cells(self):
        ratio = "" if self.ratio is None else f"{self.ratio_label} {self.ratio:.2f}x".strip()
        if self.cpu_ratio is not None:
            ratio += f" (cpu {self.cpu_ratio:.2f}x)"
        target = "" if self.target is None else f"{self.op} {self.target:g}x"
        met = {True: "yes", False: "NO", None: "-"}[self.met]
        return [self.bench, self.ours, self.seed, self.dense, ratio, target, met]

    def to_dict(self):
        return {"benchmark": self.bench, "ours": self.ours, "seed_style": self.seed,
                "dense": self.dense, "ratio": self.ratio, "ratio_label": self.ratio_label,
                "cpu_ratio": self.cpu_ratio, "target": self.target, "op": self.op,
                "met": self.met, "note": self.note}


HEADER = ["benchmark", "ours", "seed-style", "dense", "ratio", "target", "met?"]


def format_table(rows: list[Row], markdown: bool = False) -> str:
    cells = [HEADER] + [r.cells() for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(c) + " |" for c in cells[1:]]
        return "\n".join(lines)
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    fmt = lambda c: "  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip()  # noqa: E731
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(cells[0]), sep] + [fmt(c) for c in cells[1:]])


def fmt_s(x: float | None) -> str:
    return "" if x is None else (f"{x:.3f} s" if x < 1 else f"{x:.2f} s")


def fmt_mb(x: float | None) -> str:
    return "" if x is None else f"{x:.0f} MB"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return ""
    for unit, f in (("MB", 2**20), ("kB", 2**10)):
        if n >= f:
            return f"{n / f:.2f} {unit}"
    return f"{n} B"
