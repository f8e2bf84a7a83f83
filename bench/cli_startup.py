"""How fast ``rst-workbook`` answers (issue 27): each light command, a refused parameter and
the two commands that build a network, timed as a user runs them (a fresh interpreter per
call, from the project root), beside a bare ``python -c pass`` and ``python -c "import torch"``.

    .venv/bin/python bench/cli_startup.py            # 7 rounds; ~1 min on a 2-core CPU
    .venv/bin/python bench/run.py --only cli_startup # the same, inside the bench suite

Like hyperfine: one warm-up call of each command, then ``--rounds`` rounds in which every
command runs once, in an order rotated each round (a slow moment of the machine is shared);
the median, min and max wall time are reported. Writes bench/results/cli_startup.json and
bench/results/cli_startup.md. Targets: 1.5 s (``new``: 2 s); ``model`` and ``run --check``
build the network on the meta device and need torch, so they carry torch's import time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PROBE = "bench-startup-probe"  # work/<this>.ipynb, written by `new` and removed after


def commands(out: str) -> list[tuple[str, list[str], float | None]]:
    """(label, argv after the interpreter, target seconds or None)."""
    cli = ["-m", "rst_lib.workbook.cli"]
    return [
        ("python -c pass", ["-c", "pass"], None),
        ("python -c 'import torch'", ["-c", "import torch"], None),
        ("--help", cli + ["--help"], 1.5),
        ("params 01_search", cli + ["params", "01_search"], 1.5),
        ("index", cli + ["index", "-o", out], 1.5),
        ("sweep smoke.yaml --status", cli + ["sweep", "params/sweeps/smoke.yaml", "--status", "-o", out], 1.5),
        ("new 01_search", cli + ["new", "01_search", PROBE, "--force"], 2.0),
        ("run: keep_ratio=abc refused", cli + ["run", "01_search", "-p", "keep_ratio=abc", "-o", out], 1.5),
        ("run: keep_ratoi=0.1 refused", cli + ["run", "01_search", "-p", "keep_ratoi=0.1", "-o", out], 1.5),
        ("model -p resnet34 preset", cli + ["model", "-p", "params/presets/rbrn-resnet34-cifar10.yaml"], 1.5),
        ("run --check quickstart", cli + ["run", "00_quickstart", "-p", "params/quickstart.yaml",
                                          "--check", "-o", out], None),
    ]


def time_once(argv: list[str], root: Path = ROOT) -> tuple[float, int]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # that checkout's rst_lib
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], cwd=root, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0, proc.returncode


def measure(rounds: int = 7, log=print, root: Path = ROOT) -> dict:
    """``root``: the checkout whose CLI is timed (another one: e.g. an exported older
    commit, to compare before and after)."""
    with tempfile.TemporaryDirectory() as out:
        cmds = commands(out)
        times: dict[str, list[float]] = {label: [] for label, _, _ in cmds}
        codes = {}
        for label, argv, _ in cmds:  # warm-up: the page cache holds the files afterwards
            _, codes[label] = time_once(argv, root)
        for r in range(rounds):
            k = r % len(cmds)
            for label, argv, _ in cmds[k:] + cmds[:k]:
                times[label].append(time_once(argv, root)[0])
            log(f"  round {r + 1}/{rounds} done")
    (root / "work" / f"{PROBE}.ipynb").unlink(missing_ok=True)
    rows = []
    for label, _, target in cmds:
        t = times[label]
        med = statistics.median(t)
        rows.append({"command": label, "median_s": med, "min_s": min(t), "max_s": max(t),
                     "rounds": t, "exit_code": codes[label], "target_s": target,
                     "met": None if target is None else med <= target})
    return {"rows": rows, "rounds": rounds, "root": str(root), "python": sys.version.split()[0],
            "loadavg": os.getloadavg(), "cpus": os.cpu_count()}


def markdown(result: dict) -> str:
    lines = [f"CLI start-up, median of {result['rounds']} rounds (fresh interpreter per call, "
             f"project root, {result['cpus']} CPUs, load average at the end "
             f"{', '.join(f'{x:.2f}' for x in result['loadavg'])})", "",
             "| command | median | min | max | exit | target | met |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        target = "" if r["target_s"] is None else f"<= {r['target_s']:g} s"
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        lines.append(f"| `{r['command']}` | {r['median_s']:.2f} s | {r['min_s']:.2f} s | "
                     f"{r['max_s']:.2f} s | {r['exit_code']} | {target} | {met} |")
    return "\n".join(lines) + "\n"


def write(result: dict, name: str = "cli_startup") -> str:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (RESULTS / f"{name}.md").write_text(md)
    return md


def bench_cli_startup(args, rows, log=print) -> None:
    """bench/run.py's hook: the same measurement, one table row per command."""
    from common import Row
    result = measure(rounds=3 if args.quick else (args.repeats or 7), log=log)
    write(result)
    for r in result["rows"]:
        rows.append(Row(f"cli {r['command']}", ours=f"{r['median_s']:.2f} s",
                        note="" if r["target_s"] is None else f"target <= {r['target_s']:g} s: "
                        + ("met" if r["met"] else "MISSED")))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--root", default=str(ROOT),
                    help="the checkout whose CLI is timed (default: this one)")
    ap.add_argument("--name", default="cli_startup", help="results/<name>.md and .json")
    args = ap.parse_args(argv)
    print(write(measure(args.rounds, root=Path(args.root).resolve()), args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
