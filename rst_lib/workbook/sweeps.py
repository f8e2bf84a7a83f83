"""Sweeps: the cells of a sweep file (:mod:`.sweep_files`), several at once, one run folder each.

``run_sweep("params/sweeps/keep-ratios-cpu.yaml")`` runs ``jobs`` cells at once in separate
processes (one per visible GPU by default), records failures and keeps going, and skips
cells whose ``run.json`` says ``finished`` (or whose committed study record does): re-running
a killed sweep finishes only what is missing. A cell that reads earlier cells (stage
references) starts once they have finished and fails if one of them failed; a finished cell
of a study is copied to its record folder (:func:`.sweep_files.save_record`).
``--executor slurm`` hands the cells to Slurm instead (:mod:`.cluster`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..utils.progress import tqdm  # its notebook bars leave text, not a widget

from ..errors import ConfigError
from ..utils import progress_log
from ..utils.files import read_json, sigterm_as_interrupt, write_json
from ..utils.project import record_paths
from .follow import LogFollower
from .runs import FINISHED, RunExists, prepare_run_dir, run_notebook, run_status
from .index import headline, refresh_index
from .params import absolute_path
from .params import validate_notebook_params
from .sweep_files import (Sweep, SweepCell, cell_name, choose_from_pilot, load_sweep,  # noqa: F401
                          save_record)


def visible_gpus() -> list[str]:
    """CUDA device ids a job may be given (honours an existing CUDA_VISIBLE_DEVICES)."""
    import torch  # only to count GPUs: `sweep --status` and `--dry-run` start without it
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
    left: list[str] = field(default_factory=list)       # not started: --max-cells was reached

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted


def run_sweep(path: str | os.PathLike, jobs: int | None = None, overrides=(),
              output_root: str | os.PathLike | None = None, progress: bool = True,
              retry_failed: bool = True, dry_run: bool = False, log=None,
              max_cells: int | None = None) -> SweepResult:
    """Run every cell of a sweep that has not finished yet (see the module docstring).

    Args:
        jobs: cells at once (separate processes). Default: the sweep file's ``jobs``, else
            the number of visible GPUs, else 1. With GPUs each job gets one
            (``CUDA_VISIBLE_DEVICES``); on CPU each gets ``cpus // jobs`` threads unless
            ``OMP_NUM_THREADS`` is set.
        retry_failed: also re-run cells that failed before (default); False leaves them.
        dry_run: only report what would run.
        max_cells: start at most this many cells, then stop once they are done (e.g. one cell
            at a time under ``flock``, so that other jobs interleave); re-running resumes.
        log: a function for progress lines (default: print / tqdm.write).
    """
    if max_cells is not None and max_cells < 1:
        raise ConfigError(f"max_cells={max_cells!r}: give at least 1 (or leave it out: all)")
    sweep = load_sweep(path, overrides, output_root)
    gpus = visible_gpus()
    jobs = jobs or sweep.jobs or max(1, len(gpus))
    result = SweepResult(sweep)
    todo, stale = [], []
    # cells whose ticket a later cell reads (a pilot read for its choice does not count)
    referenced = {d for c in sweep.cells for d in c.depends_on
                  if not any(d in labels for labels, _ in c.choices.values())}
    for cell in sweep.cells:
        status = run_status(cell.run_dir)
        if cell.committed:  # its record is in the study folder (perhaps from another machine)
            result.skipped.append(cell.name)
            if status != FINISHED:
                continue
        if status == FINISHED:
            if cell.record_dir is not None and not cell.committed:
                save_record(cell, cell.label in referenced)  # finished before the study kept records
            if cell.name in result.skipped:
                continue
            result.skipped.append(cell.name)
            old = record_paths(read_json(cell.run_dir / "run.json").get("params", {}))
            new = record_paths(cell.params)  # as recorded: paths in the project relative to it
            changed = sorted(k for k in set(old) | set(new)  # chosen_in: chosen at the start
                             if k != "run_dir" and k not in cell.choices and old.get(k) != new.get(k))
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
            say(f"  {'committed' if cell.committed else run_status(cell.run_dir):>11}  {cell.label}")
        if bar is not None:
            bar.close()
        return result
    for folder in {c.run_dir.parent for c in sweep.cells}:
        folder.mkdir(parents=True, exist_ok=True)
    pending = deque(todo)
    done_labels = {c.label for c in sweep.cells if c.name in result.skipped}
    failed_labels: set = set()
    running: dict = {}  # Popen -> (cell, slot, log file)
    followers: dict = {}  # Popen -> its cell's progress lines, printed as they come
    free = list(range(jobs))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    started = 0

    def may_start() -> bool:
        return max_cells is None or started < max_cells
    with sigterm_as_interrupt():  # a plain kill stops the children as Ctrl-C does
        try:
            while running or (pending and may_start()):
                while pending and free and may_start():
                    cell = next_ready_cell(pending, done_labels, failed_labels, say, result, bar)
                    if cell is None:
                        if not running and pending:  # waiting on nothing: a dependency is missing
                            for c in pending:
                                failed_labels.add(c.label)
                                result.failed.append(c.name)
                                say(f"FAILED   {c.label}: the cells it reads did not finish")
                            pending.clear()
                        break
                    try:
                        cell.params = {**cell.params, **choose_from_pilot(cell, sweep.cells)}
                        if cell.depends_on:  # its tickets exist now: the full check
                            validate_notebook_params(cell.notebook or sweep.notebook, cell.params)
                    except ConfigError as e:
                        failed_labels.add(cell.label)
                        result.failed.append(cell.name)
                        say(f"FAILED   {cell.label}: {e}")
                        if bar is not None:
                            bar.update(1)
                        continue
                    slot = free.pop(0)
                    extra = {"sweep": sweep.name, "sweep_file": str(sweep.path.resolve()),
                             "cell": cell.name}
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
                    if progress:
                        followers[proc] = follow_progress(cell.run_dir, cell.label, say, skip=logf.tell())
                    started += 1
                    say(f"started  {cell.label}" + (f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else ""))
                time.sleep(0.3)
                for proc in [p for p in running if p.poll() is not None]:
                    cell, slot, logf = running.pop(proc)
                    logf.close()
                    if proc in followers:
                        followers.pop(proc).stop()
                    free.append(slot)
                    status = run_status(cell.run_dir)
                    if status == FINISHED:
                        save_record(cell, cell.label in referenced)
                        done_labels.add(cell.label)
                        result.finished.append(cell.name)
                        say(f"finished {cell.label}: {_cell_summary(cell.run_dir)}")
                    else:
                        if status in ("running", "dead", "queued"):  # the process died abruptly
                            info = read_json(cell.run_dir / "run.json")
                            info.update(status="failed", error=f"process exited with code {proc.returncode}"
                                        f" (see {cell.run_dir / 'log.txt'})")
                            write_json(cell.run_dir / "run.json", record_paths(info))
                        result.failed.append(cell.name)
                        failed_labels.add(cell.label)
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
            for follower in followers.values():
                follower.stop()
            if bar is not None:
                bar.close()
    done = len(result.finished) + len(result.skipped)
    result.left = [c.name for c in pending]
    if result.left and not result.interrupted:
        say(f"stopped after {started} cell(s) (max_cells={max_cells}): {len(result.left)} left; "
            "re-run the same command to run the next")
    say(f"sweep {sweep.name}: {done}/{len(sweep.cells)} finished, {len(result.failed)} failed"
        + (", interrupted" if result.interrupted else "")
        + f"; index: {sweep.output_root / 'index.html'}")
    return result


def follow_progress(run_dir: Path, label: str, say, skip: int) -> LogFollower:
    """A running cell's progress lines (not the rest of what it prints into the same
    log.txt, past its first ``skip`` bytes), each said after the cell's label."""
    def out(line: str) -> None:
        if progress_log.is_progress_line(line):
            say(f"{label}  {line}")

    follower = LogFollower(run_dir / progress_log.LOG_FILE, out, offset=skip)
    follower.start()
    return follower


def next_ready_cell(pending: deque, done: set, failed: set, say, result: SweepResult, bar):
    """The first pending cell whose referenced cells have all finished (removed from
    ``pending``); cells that read a failed cell fail here. None: nothing is ready yet."""
    for cell in list(pending):
        if any(d in failed for d in cell.depends_on):
            pending.remove(cell)
            failed.add(cell.label)
            result.failed.append(cell.name)
            say(f"FAILED   {cell.label}: it reads "
                f"{', '.join(d for d in cell.depends_on if d in failed)}, which failed")
            if bar is not None:
                bar.update(1)
            continue
        if all(d in done for d in cell.depends_on):
            pending.remove(cell)
            return cell
    return None


def cell_spec(sweep: Sweep, cell: SweepCell) -> dict:
    """What a process (or a cluster job) needs to run one cell: :func:`run_cell`'s argument."""
    params_file = cell.params_file or sweep.params_file
    extra = {"sweep": sweep.name, "sweep_file": str(sweep.path.resolve()), "cell": cell.name}
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
    import papermill  # its error class; run_notebook loads it anyway
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
