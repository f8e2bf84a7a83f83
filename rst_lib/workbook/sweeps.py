"""Sweeps: a grid of parameters, one run folder per cell, several cells at once.

``run_sweep("params/sweeps/keep-ratios-cpu.yaml")`` expands a grid of parameters into
cells, gives each a deterministic run directory
``outputs/<notebook>/<sweep>/<key=value-...>/``, runs ``jobs`` cells at once in separate
processes (one per visible GPU by default), records failures and keeps going, and skips
cells whose ``run.json`` says ``finished``: re-running a killed sweep finishes only what
is missing. Sweep file::

    notebook: 01_search                       # a name in notebooks/ or a path
    name: keep-ratios                         # default: the file's stem
    params: params/01_search/cpu-demo.yaml    # base parameter file (optional)
    set: {epochs: 3}                          # fixed overrides (optional)
    grid:                                     # every combination is one cell
      keep_ratio: [0.05, 0.1]
    seeds: [0, 1, 2]                          # each cell once per seed (optional)
    cells: [{keep_ratio: 0.5, seed: 0}]       # extra cells (optional)
    jobs: 2                                   # optional; --jobs wins

With ``seeds``, each of ``cells`` runs once per seed too (a cell that sets its own seed once).
A study over several notebooks is one file with ``stages:``, a list of such specs (each
with its ``stage`` name and its own ``notebook``, ``params``, ``set``, ``grid``, ``seeds``, ``cells``; the top
level's ``set`` and ``seeds`` are their defaults). All cells of all stages form one sweep
(the same jobs pool, the same resume); a stage's cells go to
``outputs/<its notebook>/<sweep>/<stage>/<cell>/``. Stages do not feed each other: a notebook that
needs a ticket searches its own (``02_finetune`` with ``ticket: null``).
    executor: slurm                           # optional: local (default) | slurm; --executor wins
    slurm: {partition: gpu, gpus_per_cell: 1, time: 600}   # job options (rst_lib.workbook.cluster)
"""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import papermill
import torch
from tqdm.auto import tqdm

from ..config import load_params, read_yaml_mapping
from ..errors import ConfigError
from ..utils.files import read_json, sigterm_as_interrupt, write_json
from .runs import FINISHED, RunExists, prepare_run_dir, run_notebook, run_status
from .index import headline, refresh_index
from .params import absolute_path, normalize_params, validate_notebook_params

@dataclass
class SweepCell:
    name: str
    params: dict
    run_dir: Path
    notebook: Path | None = None      # a stage's notebook (None: the sweep's)
    params_file: Path | None = None   # a stage's parameter file (None: the sweep's)
    stage: str | None = None

    @property
    def label(self) -> str:  # unique across stages
        return f"{self.stage}/{self.name}" if self.stage else self.name


@dataclass
class Sweep:
    name: str
    notebook: Path
    params_file: Path | None
    cells: list[SweepCell]
    output_root: Path
    jobs: int | None = None
    path: Path | None = None
    directory: Path = field(default=Path("."))
    executor: str | None = None
    slurm: dict = field(default_factory=dict)


def _value_text(v) -> str:
    if isinstance(v, float):
        text = f"{v:g}"
    elif isinstance(v, (list, tuple)):
        text = ",".join(_value_text(x) for x in v)
    else:
        text = str(v)
    return re.sub(r"[^\w.,+-]+", "_", text)


def cell_name(values: dict) -> str:
    """Deterministic folder name of a grid cell: ``keep_ratio=0.1-seed=0``."""
    return "-".join(f"{k}={_value_text(v)}" for k, v in values.items()) or "default"


def _find(path: str, near: Path | None, kind: str, suffixes=("",)) -> Path:
    """``path`` relative to the current directory, else to the sweep file's folders."""
    bases = [Path.cwd()] + ([near.parent, *near.parent.parents] if near else [])
    tries = [Path(path)] + ([Path("notebooks") / path] if kind == "notebook" else [])
    for base in bases:
        for t in tries:
            for s in suffixes:
                p = (base / t).with_name((base / t).name + s) if s else base / t
                if p.is_file():
                    return p.resolve()
    raise ConfigError(f"{kind} {path!r} not found (looked in {Path.cwd()}"
                      + (f" and above {near.parent}" if near else "") + ")")


SWEEP_KEYS = ("notebook", "name", "params", "set", "grid", "seeds", "cells", "jobs", "output_root",
              "stages", "executor", "slurm")
STAGE_KEYS = ("stage", "notebook", "params", "set", "grid", "seeds", "cells")


def load_sweep(path: str | os.PathLike, overrides=(), output_root: str | os.PathLike | None = None,
               validate: bool = True) -> Sweep:
    """Read a sweep file (see the module docstring), expand it and check every cell.

    Every cell's parameters are validated before anything runs; ``overrides``
    (``key=value`` strings or a dict) apply to every cell.
    """
    path = Path(path)
    spec = read_yaml_mapping(path, "sweep file")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: "
                          f"{', '.join(SWEEP_KEYS)}")
    name = str(spec.get("name") or path.stem)
    if not re.fullmatch(r"[\w.=+,-]+", name):
        raise ConfigError(f"{path}: name {name!r} may only hold letters, digits and . = + , - _")
    root = Path(output_root or spec.get("output_root") or "outputs")
    stages = spec.get("stages")
    if stages is None:
        stages = [{k: spec[k] for k in STAGE_KEYS if k in spec}]
    elif (not isinstance(stages, list) or not stages or any(not isinstance(st, dict) for st in stages)
          or any(k in spec for k in ("notebook", "params", "grid", "cells"))):
        raise ConfigError(f"{path}: 'stages' must be a non-empty list of mappings (each with its "
                          "notebook), and then notebook, params, grid and cells belong to the stages")
    else:
        top_set = spec.get("set") or {}
        if not isinstance(top_set, dict):
            raise ConfigError(f"{path}: 'set' must be a mapping of parameter: value")
        stages = [{"seeds": spec.get("seeds"), **st, "set": {**top_set, **(st.get("set") or {})}}
                  for st in stages]
        names = [st.get("stage") for st in stages]
        if any(not isinstance(n, str) or not re.fullmatch(r"[\w.=+,-]+", n) for n in names) \
                or len(set(names)) < len(names):
            raise ConfigError(f"{path}: every stage needs its own 'stage' name (letters, digits, "
                              f". = + , - _): it is the stage's folder; got {names}")
    cells, seen = [], {}
    for i, stage in enumerate(stages):
        where = f"{path}" + (f", stage {stage.get('stage') or i + 1}" if "stages" in spec else "")
        for cell in _stage_cells(stage, path, where, name, root, overrides, validate):
            if cell.run_dir in seen:
                raise ConfigError(f"{where}: cell {cell.name!r} is also a cell of "
                                  f"{seen[cell.run_dir]} (same notebook and folder)")
            seen[cell.run_dir] = where
            cells.append(cell)
    jobs = spec.get("jobs")
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise ConfigError(f"{path}: jobs={jobs!r} is invalid: expected an integer >= 1")
    folders = {c.run_dir.parent for c in cells}
    slurm = spec.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ConfigError(f"{path}: 'slurm' must be a mapping of job options (partition: ...)")
    return Sweep(name, cells[0].notebook, cells[0].params_file, cells, root, jobs, path,
                 folders.pop() if len(folders) == 1 else (root / name).resolve(),
                 spec.get("executor"), slurm)


def _stage_cells(spec: dict, path: Path, where: str, name: str, root: Path, overrides,
                 validate: bool) -> list[SweepCell]:
    """The cells of one notebook's grid (a plain sweep file, or one of its stages)."""
    unknown = sorted(set(spec) - set(STAGE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: "
                          f"{', '.join(STAGE_KEYS)}")
    if not spec.get("notebook"):
        raise ConfigError(f"{where}: 'notebook' is missing (e.g. notebook: 01_search)")
    notebook = _find(str(spec["notebook"]), path, "notebook", ("", ".ipynb"))
    params_file = _find(str(spec["params"]), path, "parameter file") if spec.get("params") else None
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError(f"{where}: 'grid' must map parameter names to non-empty lists")
    extra_cells = spec.get("cells") or []
    if not isinstance(extra_cells, list) or any(not isinstance(c, dict) for c in extra_cells):
        raise ConfigError(f"{where}: 'cells' must be a list of mappings")
    fixed = spec.get("set") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}: 'set' must be a mapping of parameter: value")
    base = load_params(params_file, {})
    base.update(fixed)
    base.update(load_params(None, overrides))
    seeds = spec.get("seeds")
    if seeds is not None:
        if "seed" in grid or not isinstance(seeds, list) or not seeds or any(
                isinstance(v, bool) or not isinstance(v, int) for v in seeds):
            raise ConfigError(f"{where}: 'seeds' must be a non-empty list of integers (and the "
                              "grid must not also hold seed)")
        grid = {**grid, "seed": seeds}  # every cell once per seed: 07 shows mean +- std
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else []
    if seeds is not None and extra_cells:  # extra cells, once per seed too
        extra_cells = [{**c, "seed": sd} if "seed" not in c else c for c in extra_cells for sd in seeds]
        combos = combos if spec.get("grid") else []  # only cells: the seeds alone are no cell
    combos = (combos + [dict(c) for c in extra_cells]) or [{}]
    stage = spec.get("stage")
    directory = root / notebook.stem / name / (str(stage) if stage else "")
    cells, seen = [], set()
    for values in combos:
        cname = cell_name(values)
        if cname in seen:
            raise ConfigError(f"{where}: two cells are both named {cname!r}")
        seen.add(cname)
        params = {**base, **values}
        if "name" not in values:
            params["name"] = f"{name}-{stage}-{cname}" if stage else f"{name}-{cname}"
        try:
            params = normalize_params(notebook, params, absolute_path(root))
            if validate:
                validate_notebook_params(notebook, params)
        except ConfigError as e:
            raise ConfigError(f"sweep {name}, cell {cname}: {e}") from None
        cells.append(SweepCell(cname, params, (directory / cname).resolve(), notebook,
                               params_file, stage))
    return cells


def visible_gpus() -> list[str]:
    """CUDA device ids a job may be given (honours an existing CUDA_VISIBLE_DEVICES)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    n = torch.cuda.device_count()
    if n == 0:
        return []
    if env:
        ids = [s.strip() for s in env.split(",") if s.strip()]
        return ids[:n]
    return [str(i) for i in range(n)]


def _cell_summary(run_dir: Path) -> str:
    info = read_json(run_dir / "run.json")
    h = headline(run_dir)
    parts = [f"{info.get('seconds', 0):.0f} s"] if info.get("seconds") is not None else []
    for k, label in (("clean_acc", "clean"), ("pgd_acc", "PGD"), ("autoattack_acc", "AA")):
        if isinstance(h.get(k), (int, float)):
            parts.append(f"{label} {h[k]:.1%}")
    if info.get("status") == "failed":
        cell = info.get("failed_cell")
        parts.append(f"failed at cell {cell}" if cell is not None else "failed")
        if info.get("failed_cell_source"):
            parts.append(repr(info["failed_cell_source"][:60]))
        parts.append(str(info.get("error", ""))[:200])
    return ", ".join(parts)


@dataclass
class SweepResult:
    sweep: Sweep
    finished: list[str] = field(default_factory=list)   # run now and finished
    skipped: list[str] = field(default_factory=list)    # finished before: not run again
    failed: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted


def run_sweep(path: str | os.PathLike, jobs: int | None = None, overrides=(),
              output_root: str | os.PathLike | None = None, progress: bool = True,
              retry_failed: bool = True, dry_run: bool = False, log=None) -> SweepResult:
    """Run every cell of a sweep that has not finished yet (see the module docstring).

    Args:
        jobs: cells at once (separate processes). Default: the sweep file's ``jobs``, else
            the number of visible GPUs, else 1. With GPUs each job gets one
            (``CUDA_VISIBLE_DEVICES``); on CPU each gets ``cpus // jobs`` threads unless
            ``OMP_NUM_THREADS`` is set.
        retry_failed: also re-run cells that failed before (default); False leaves them.
        dry_run: only report what would run.
        log: a function for progress lines (default: print / tqdm.write).
    """
    sweep = load_sweep(path, overrides, output_root)
    gpus = visible_gpus()
    jobs = jobs or sweep.jobs or max(1, len(gpus))
    result = SweepResult(sweep)
    todo, stale = [], []
    for cell in sweep.cells:
        status = run_status(cell.run_dir)
        if status == FINISHED:
            result.skipped.append(cell.name)
            old = read_json(cell.run_dir / "run.json").get("params", {})
            changed = sorted(k for k in set(old) | set(cell.params)
                             if k != "run_dir" and old.get(k) != cell.params.get(k))
            if changed:
                stale.append(f"{cell.name} ({', '.join(changed)})")
        elif status == "running":
            raise RunExists(f"cell {cell.name} is being run right now ({cell.run_dir}); "
                            "is this sweep already running?")
        elif status == "failed" and not retry_failed:
            result.failed.append(cell.name)
        else:
            todo.append(cell)
    bar = None
    if progress and not dry_run:
        bar = tqdm(total=len(sweep.cells), initial=len(result.skipped), unit="run",
                   desc=f"sweep {sweep.name}", dynamic_ncols=True)
    say = log or (bar.write if bar is not None else print)
    say(f"sweep {sweep.name}: {len(sweep.cells)} cells of "
        f"{', '.join(dict.fromkeys((c.notebook or sweep.notebook).name for c in sweep.cells))} in "
        f"{sweep.directory}; {len(result.skipped)} finished before, {len(todo)} to run, "
        f"{jobs} at once" + (f" on GPUs {','.join(gpus)}" if gpus else " on CPU"))
    if stale:
        say(f"note: {len(stale)} finished cell(s) ran with other parameters and are kept: "
            f"{'; '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}. Delete a cell's folder "
            "to run it again.")
    if dry_run:
        for cell in sweep.cells:
            say(f"  {run_status(cell.run_dir):>11}  {cell.label}")
        if bar is not None:
            bar.close()
        return result
    for folder in {c.run_dir.parent for c in sweep.cells}:
        folder.mkdir(parents=True, exist_ok=True)
    pending = deque(todo)
    running: dict = {}  # Popen -> (cell, slot, log file)
    free = list(range(jobs))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with sigterm_as_interrupt():  # a plain kill stops the children as Ctrl-C does
        try:
            while pending or running:
                while pending and free:
                    cell, slot = pending.popleft(), free.pop(0)
                    extra = {"sweep": sweep.name, "sweep_file": str(sweep.path), "cell": cell.name}
                    params = {**cell.params, "run_dir": str(cell.run_dir)}
                    notebook = cell.notebook or sweep.notebook
                    if cell.stage:
                        extra["stage"] = cell.stage
                    prepare_run_dir(cell.run_dir, params, notebook, extra)
                    env = dict(os.environ)
                    if gpus:
                        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
                    else:
                        env.setdefault("OMP_NUM_THREADS", str(threads))
                        env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
                    spec = cell_spec(sweep, cell)
                    logf = open(cell.run_dir / "log.txt", "a")
                    logf.write(f"\n=== {datetime.now():%Y-%m-%d %H:%M:%S} start (slot {slot}) ===\n")
                    logf.flush()
                    proc = subprocess.Popen([sys.executable, "-m", "rst_lib.workbook.sweeps", json.dumps(spec)],
                                            stdout=logf, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
                    running[proc] = (cell, slot, logf)
                    say(f"started  {cell.label}" + (f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else ""))
                time.sleep(0.3)
                for proc in [p for p in running if p.poll() is not None]:
                    cell, slot, logf = running.pop(proc)
                    logf.close()
                    free.append(slot)
                    status = run_status(cell.run_dir)
                    if status == FINISHED:
                        result.finished.append(cell.name)
                        say(f"finished {cell.label}: {_cell_summary(cell.run_dir)}")
                    else:
                        if status in ("running", "dead", "queued"):  # the process died abruptly
                            info = read_json(cell.run_dir / "run.json")
                            info.update(status="failed", error=f"process exited with code {proc.returncode}"
                                        f" (see {cell.run_dir / 'log.txt'})")
                            write_json(cell.run_dir / "run.json", info)
                        result.failed.append(cell.name)
                        say(f"FAILED   {cell.label}: {_cell_summary(cell.run_dir)} "
                            f"(log: {cell.run_dir / 'log.txt'})")
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(failed=len(result.failed))
                    refresh_index(sweep.output_root)
        except KeyboardInterrupt:
            result.interrupted = True
            say(f"interrupted: stopping {len(running)} running cell(s); re-run the same command "
                "to finish the missing ones")
            for proc in running:
                proc.terminate()
            deadline = time.time() + 60
            for proc, (cell, _, logf) in running.items():
                try:
                    proc.wait(max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                logf.close()
            refresh_index(sweep.output_root)
        finally:
            if bar is not None:
                bar.close()
    done = len(result.finished) + len(result.skipped)
    say(f"sweep {sweep.name}: {done}/{len(sweep.cells)} finished, {len(result.failed)} failed"
        + (", interrupted" if result.interrupted else "")
        + f"; index: {sweep.output_root / 'index.html'}")
    return result


def cell_spec(sweep: Sweep, cell: SweepCell) -> dict:
    """What a process (or a cluster job) needs to run one cell: :func:`run_cell`'s argument."""
    params_file = cell.params_file or sweep.params_file
    extra = {"sweep": sweep.name, "sweep_file": str(sweep.path), "cell": cell.name}
    if cell.stage:
        extra["stage"] = cell.stage
    return {"notebook": str(cell.notebook or sweep.notebook), "params": cell.params,
            "run_dir": str(cell.run_dir), "output_root": absolute_path(sweep.output_root),
            "params_file": str(params_file) if params_file else None, "extra": extra}


def _cell_main(argv: list[str]) -> int:
    """Child process of a sweep: run one cell (``python -m rst_lib.workbook.sweeps SPEC_JSON``)."""
    return run_cell(json.loads(argv[0]))


def run_cell(spec: dict) -> int:
    """Run one cell (its notebook, resumed if it was started before); the exit code."""
    try:
        with sigterm_as_interrupt():
            run_notebook(spec["notebook"], None, spec["params"], spec["output_root"],
                         progress=False, run_dir=spec["run_dir"], extra=spec.get("extra"))
    except ConfigError as e:
        print(f"parameter error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except papermill.PapermillExecutionError as e:  # the notebook failed: run.json says where
        print(f"the notebook failed: {e.ename}: {e.evalue}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_cell_main(sys.argv[1:]))
