"""Sweeps on a Slurm cluster through submitit: one job per cell, one notebook run per job.

``rst-workbook sweep FILE --executor slurm`` submits every cell that is neither finished
nor queued/running (job ids are recorded in each cell's ``job.json``), as one job array
(``array_parallelism`` cells at once); each job appends its output to the cell's
``log.txt`` (submitit's own files stay in ``<sweep>/.submitit/``, linked from the cell as
``job.out`` / ``job.err``). A preempted or timed-out job is requeued by submitit's
checkpointing hook and its run resumes from ``last.pt`` (training) and ``eval-state/``
(the final evaluation). ``--status`` lists every cell's state.

The job options are declared once, in :class:`SlurmOptions`: the command line flags
(``--partition`` ...) and the sweep file's ``slurm:`` mapping are both made from it.
``executor: submitit-local`` runs the same jobs through submitit's local executor (no
Slurm; for machines without one, and for tests).
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import submitit

from ..errors import ConfigError
from ..utils.files import read_json, write_json
from .index import run_progress
from .runs import FINISHED, prepare_run_dir, run_status
from .sweep_files import Sweep, SweepCell
from .sweeps import cell_spec, run_cell

EXECUTORS = ("local", "slurm", "submitit-local")
JOB_FILE = "job.json"
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                 "RESIZING", "SUSPENDED"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"}


def _opt(default, help_: str, metavar: str | None = None):
    return field(default=default, metadata={"help": help_, "metavar": metavar})


@dataclass
class SlurmOptions:
    """Options of the jobs a sweep submits (the one place they are declared)."""
    partition: str | None = _opt(None, "Slurm partition (default: the cluster's default)", "NAME")
    gpus_per_cell: int = _opt(0, "GPUs per cell (job); 0 for CPU-only cells", "N")
    cpus_per_cell: int = _opt(2, "CPU cores per cell (also its OMP_NUM_THREADS)", "N")
    time: int = _opt(240, "time limit per job in minutes; a job stopped at its limit is "
                          "requeued and resumes from last.pt", "MINUTES")
    mem_gb: float | None = _opt(None, "memory per job in GB (default: the partition's)", "GB")
    account: str | None = _opt(None, "Slurm account to charge", "NAME")
    array_parallelism: int = _opt(16, "cells running at once (the job array's throttle)", "N")
    sbatch: list = _opt((), "extra sbatch option, e.g. --sbatch=--qos=high (repeatable)", "OPT")
    setup: list = _opt((), "shell line run before each job, e.g. 'module load cuda' "
                           "(repeatable)", "LINE")

    @classmethod
    def from_mapping(cls, values: dict, where: str) -> "SlurmOptions":
        """Options from a mapping (the sweep file's ``slurm:``); one ConfigError line per mistake."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        out = {}
        for key, value in values.items():
            f = known.get(key)
            if f is None:
                raise ConfigError(f"{where}: unknown slurm option {key!r}; valid: "
                                  f"{', '.join(known)}")
            out[key] = _check(key, value, f, where)
        return cls(**out)

    def merged(self, overrides: dict) -> "SlurmOptions":
        """These options with the command line's given values (None: not given) on top."""
        given = {k: v for k, v in overrides.items() if v is not None}
        checked = SlurmOptions.from_mapping(given, "command line")
        return dataclasses.replace(self, **{k: getattr(checked, k) for k in given})

    def executor_parameters(self) -> dict:
        """submitit ``update_parameters`` keywords for these options."""
        extra = {}
        for line in self.sbatch:
            m = re.fullmatch(r"(?:#SBATCH\s+)?--([\w-]+)(?:[= ](.+))?", str(line).strip())
            if not m:
                raise ConfigError(f"sbatch option {line!r} is invalid: expected --name=value "
                                  "(e.g. --qos=high)")
            extra[m.group(1).replace("-", "_")] = m.group(2) if m.group(2) is not None else True
        params = dict(timeout_min=self.time, gpus_per_node=self.gpus_per_cell,
                      cpus_per_task=self.cpus_per_cell, slurm_array_parallelism=self.array_parallelism,
                      slurm_setup=list(self.setup), slurm_additional_parameters=extra)
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.account:
            params["slurm_account"] = self.account
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        return params


def add_arguments(parser) -> None:
    """One command line flag per :class:`SlurmOptions` field (``--gpus-per-cell`` ...)."""
    group = parser.add_argument_group("cluster jobs (--executor slurm; also the sweep file's slurm:)")
    for f in dataclasses.fields(SlurmOptions):
        kind = OPTION_KINDS.get(f.name, str)
        kw = dict(action="append") if kind is list else dict(type=kind)
        default = f" (default: {f.default})" if f.default not in (None, ()) else ""
        group.add_argument("--" + f.name.replace("_", "-"), dest=f"slurm_{f.name}", default=None,
                           metavar=f.metadata["metavar"], help=f.metadata["help"] + default, **kw)


def cli_options(args) -> dict:
    """The :class:`SlurmOptions` values given on the command line (None: not given)."""
    return {f.name: getattr(args, f"slurm_{f.name}") for f in dataclasses.fields(SlurmOptions)}


OPTION_KINDS = {"gpus_per_cell": int, "cpus_per_cell": int, "time": int, "array_parallelism": int,
                "mem_gb": float, "sbatch": list, "setup": list}


def _check(key: str, value, f, where: str):
    kind = OPTION_KINDS.get(key, str)
    if kind is list:
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: slurm option {key}={value!r} is invalid: expected a "
                              "list of strings")
        return list(value)
    if value is None and f.default is None:
        return None
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          if kind is float else isinstance(value, kind) and not isinstance(value, bool))
    low = 0 if key == "gpus_per_cell" else 1
    if not ok or (kind in (int, float) and value < low):
        raise ConfigError(f"{where}: slurm option {key}={value!r} is invalid: expected "
                          f"{'a number' if kind is float else kind.__name__}"
                          + (f" >= {low}" if kind in (int, float) else ""))
    return value


class CellJob:
    """The callable a job runs: one sweep cell (its notebook run, resumed if it was
    started before). submitit calls :meth:`checkpoint` on preemption or timeout: the
    same call is requeued, and the run continues from last.pt and eval-state/."""

    def __call__(self, spec: dict) -> str:
        run_dir = Path(spec["run_dir"])
        threads = os.environ.get("SLURM_CPUS_PER_TASK") or spec.get("threads")
        if threads:
            os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        job = (f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
               if "SLURM_ARRAY_JOB_ID" in os.environ else
               os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID", "?"))
        with open(run_dir / "log.txt", "a") as log:  # the run's output goes to the cell
            saved = os.dup(1), os.dup(2)
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
            try:
                print(f"\n=== {datetime.now():%Y-%m-%d %H:%M:%S} start (job {job}) ===", flush=True)
                code = run_cell(spec)
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        if code:
            info = read_json(run_dir / "run.json")
            raise RuntimeError(f"cell {run_dir.name} failed (exit {code}): "
                               f"{info.get('error', 'see log.txt')}")
        return run_status(run_dir)

    def checkpoint(self, spec: dict):
        return submitit.helpers.DelayedSubmission(CellJob(), spec)


def job_states(job_ids: list[str], executor: str) -> dict[str, str]:
    """Scheduler state of each job id (``PENDING``, ``RUNNING``, ``COMPLETED`` ...;
    ``UNKNOWN`` when the scheduler no longer knows it). Slurm: ``squeue``, then ``scontrol``
    (no accounting database is needed); submitit-local: whether the process lives."""
    states = {}
    if executor == "submitit-local":
        for j in job_ids:
            states[j] = "RUNNING" if _process_alive(j) else "UNKNOWN"
        return states
    if job_ids:
        out = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(job_ids)])
        for line in out.splitlines():
            jid, _, state = line.partition("|")
            states[jid.strip()] = state.strip()
    for j in job_ids:
        if j not in states:
            m = re.search(r"JobState=(\w+)", _run(["scontrol", "show", "job", j]))
            states[j] = m.group(1) if m else "UNKNOWN"
    return states


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _process_alive(pid: str) -> bool:
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has ended


@dataclass
class CellState:
    cell: SweepCell
    state: str            # finished, running, queued, failed, not submitted
    detail: str = ""
    job_id: str | None = None


def cell_states(sweep: Sweep) -> list[CellState]:
    """Each cell's state from its run.json, its job.json and the scheduler; a cell whose
    study record says finished is finished (on a fresh clone too, without its run folder)."""
    records = {c.label: read_json(c.run_dir / JOB_FILE) for c in sweep.cells}
    by_executor: dict = {}
    for r in records.values():
        if r.get("job_id"):
            by_executor.setdefault(r.get("executor", "slurm"), []).append(r["job_id"])
    known = {}
    for executor, ids in by_executor.items():
        known.update(job_states(ids, executor))
    out = []
    for c in sweep.cells:
        rec, status = records[c.label], FINISHED if c.committed else run_status(c.run_dir)
        job = rec.get("job_id")
        sched = known.get(job, "") if job else ""
        if status == FINISHED:
            out.append(CellState(c, "finished", _finished_text(c.read_dir), job))
        elif sched in RUNNING_STATES:
            out.append(CellState(c, "running", f"job {job}; {run_progress(c.run_dir) or 'starting'}",
                                 job))
        elif sched in QUEUED_STATES:
            out.append(CellState(c, "queued", f"job {job} {sched.lower()}", job))
        elif job or status in ("failed", "interrupted", "dead"):
            out.append(CellState(c, "failed", _last_error(c.run_dir, job, sched), job))
        else:
            out.append(CellState(c, "not submitted", "", None))
    return out


def _finished_text(run_dir: Path) -> str:
    m = read_json(run_dir / "metrics.json").get("final") or {}
    parts = [f"{label} {m[k]:.1%}" for k, label in (("clean_acc", "clean"), ("pgd_acc", "PGD"),
                                                    ("autoattack_acc", "AutoAttack"))
             if isinstance(m.get(k), (int, float))]
    return ", ".join(parts)


def _last_error(run_dir: Path, job: str | None, sched: str) -> str:
    """The last error line: run.json's error, else the last line of the cell's log that
    looks like one, else what the scheduler says."""
    info = read_json(run_dir / "run.json")
    if info.get("status") in ("failed", "interrupted") and info.get("error"):
        return str(info["error"]).strip().splitlines()[-1][:300]
    lines = []
    if (run_dir / "log.txt").is_file():
        lines = [s.strip() for s in (run_dir / "log.txt").read_text(errors="replace")
                 .replace("\r", "\n").splitlines() if s.strip()]
    errors = [s for s in lines if re.search(r"error|exception|killed|cancel", s, re.I)]
    where = f"job {job} {sched.lower() or 'ended'}" if job else "not running"
    return f"{where}: {(errors or lines or ['no output'])[-1][:300]}"


def submit_sweep(sweep: Sweep, executor: str, options: SlurmOptions, dry_run: bool = False,
                 say=print) -> list[CellState]:
    """Submit every cell that is neither finished nor queued/running; returns the states
    (after submission) of all cells."""
    states = cell_states(sweep)
    todo = [s for s in states if s.state in ("failed", "not submitted")]
    say(f"sweep {sweep.name}: {len(sweep.cells)} cells of {sweep.notebook.name}; "
        f"{sum(s.state == 'finished' for s in states)} finished, "
        f"{sum(s.state in ('queued', 'running') for s in states)} queued or running, "
        f"{len(todo)} to submit ({executor})")
    if dry_run:
        for s in states:
            action = "submit" if s in todo else "keep"
            say(f"  {action:>6}  {s.state:>13}  {s.cell.name}  {s.detail}")
        return states
    if not todo:
        return states
    folder = sweep.directory / ".submitit"
    ex = (submitit.AutoExecutor(folder=folder / "%j", cluster="slurm") if executor == "slurm"
          else submitit.LocalExecutor(folder=folder / "%j"))
    params = options.executor_parameters()
    if executor == "slurm":
        ex.update_parameters(name=f"rst-{sweep.name}", **params)
    else:
        ex.update_parameters(timeout_min=options.time, cpus_per_task=options.cpus_per_cell)
    specs = []
    for s in todo:
        spec = {**cell_spec(sweep, s.cell), "threads": options.cpus_per_cell}
        prepare_run_dir(s.cell.run_dir, {**s.cell.params, "run_dir": str(s.cell.run_dir)},
                        sweep.notebook, spec["extra"])
        specs.append(spec)
    with ex.batch():
        jobs = [ex.submit(CellJob(), spec) for spec in specs]
    for s, job in zip(todo, jobs):
        old = read_json(s.cell.run_dir / JOB_FILE)
        history = old.get("history", []) + ([old["job_id"]] if old.get("job_id") else [])
        write_json(s.cell.run_dir / JOB_FILE, {
            "executor": executor, "job_id": str(job.job_id), "history": history,
            "submitted": time.strftime("%Y-%m-%d %H:%M:%S"),
            "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)})
        for name, target in (("job.out", job.paths.stdout), ("job.err", job.paths.stderr)):
            link = s.cell.run_dir / name
            link.unlink(missing_ok=True)
            link.symlink_to(target)
        say(f"submitted {s.cell.name}: job {job.job_id}"
            + (f" (was {history[-1]})" if history else ""))
    return cell_states(sweep)


def status_lines(states: list[CellState]) -> list[str]:
    width = max((len(s.cell.label) for s in states), default=4)
    counts: dict = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    lines = [f"{s.state:>13}  {s.cell.label:<{width}}  {s.detail}".rstrip() for s in states]
    return lines + [", ".join(f"{v} {k}" for k, v in counts.items())]


def cancel_job(job_id: str, executor: str) -> None:
    """Cancel one cell's job (``scancel``; submitit-local: SIGINT to its controller, which
    stops the task as submitit's own ``cancel`` does)."""
    if executor == "submitit-local":
        if _process_alive(job_id):
            os.kill(int(job_id), signal.SIGINT)
        return
    subprocess.run(["scancel", str(job_id)], check=True, capture_output=True, timeout=30)
