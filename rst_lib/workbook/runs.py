"""Batch runs of workbook notebooks: papermill into a run folder, then its report.

``run_notebook("notebooks/01_search.ipynb", "params/01_search/cpu-demo.yaml")`` checks the
parameters against the notebook's ``parameters`` cell and :class:`RunConfig` *before*
starting a kernel, creates ``outputs/<notebook>/<name>-<timestamp>/`` (or uses an explicit
``run_dir``), executes the notebook there (it receives ``run_dir``), renders
``report.html`` - also when a cell fails, so the report shows where it stopped - records
the outcome in ``run.json`` and refreshes ``outputs/index.html``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import yaml
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from ..config import load_params
from ..errors import ConfigError
from ..utils.files import new_run_dir, read_json, write_json, write_text
from ..utils.progress_log import LOG_FILE
from ..utils.project import record_paths
from .follow import following
from .report import precision_item, render_html
from .index import headline, refresh_index
from .params import (PROJECT_ROOT, absolute_path, normalize_params, param_file,
                     validate_notebook_params)

KERNEL_NAME = "rst-workbook"  # installed into the venv by `make`; falls back to python3
FINISHED = "finished"


class LocalKernelManager(AsyncKernelManager):
    """Kernels talk over local IPC sockets (in the temp folder), not TCP: nothing listens on
    the network, and ipykernel does not warn "running over TCP without encryption"."""

    def __init__(self, **kw):
        kw.setdefault("transport", "ipc")
        kw.setdefault("ip", os.path.join(tempfile.gettempdir(), f"rst-kernel-{uuid.uuid4().hex}"))
        super().__init__(**kw)


class RunExists(ConfigError):
    """The run directory already holds a finished run (or one running right now)."""


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def run_status(run_dir: str | os.PathLike) -> str:
    """``finished`` / ``failed`` / ``interrupted`` / ``running`` / ``queued`` / ``dead`` /
    ``missing``. ``dead``: run.json says running but its process is gone (killed)."""
    info = read_json(Path(run_dir) / "run.json")
    status = info.get("status", "missing")
    if status == "running" and not (info.get("host") == socket.gethostname()
                                    and _pid_alive(info.get("pid"))):
        return "dead"
    return status


def run_dir_mode(run_dir: str | os.PathLike, params: dict) -> str:
    """What :func:`prepare_run_dir` would do with ``run_dir`` for a run with ``params``,
    without touching it: ``"new"``, ``"resume"`` (an unfinished run with the same
    parameters) or ``"restart"`` (an unfinished run with others); :class:`RunExists` for a
    finished run or one whose process is alive, :class:`ConfigError` for a non-empty folder
    that is not a run folder."""
    run_dir = Path(run_dir)
    if not (run_dir.exists() and any(run_dir.iterdir())):
        return "new"
    if not (run_dir / "run.json").is_file():
        raise ConfigError(f"run_dir {str(run_dir)!r} is not empty and holds no run.json: "
                          "not a run directory; choose another one")
    status = run_status(run_dir)
    if status == FINISHED:
        raise RunExists(f"{run_dir} already holds a finished run")
    if status == "running":
        raise RunExists(f"{run_dir} is being run right now by process "
                        f"{read_json(run_dir / 'run.json').get('pid')}")
    old = yaml.safe_load((run_dir / "params.yaml").read_text()) \
        if (run_dir / "params.yaml").is_file() else None
    # compared as recorded (paths inside the project relative to it): a run folder moved
    # with its project, or recorded before paths were, resumes the same
    return "resume" if old is not None and record_paths(old) == record_paths(params) else "restart"


def prepare_run_dir(run_dir: str | os.PathLike, params: dict, notebook: str | os.PathLike,
                    extra: dict | None = None) -> str:
    """Make ``run_dir`` ready for a run of ``notebook`` with ``params``.

    Raises :class:`RunExists` if it holds a finished run or one whose process is alive.
    An unfinished run with the same parameters is continued in place (its searches resume
    from their ``last.pt``); with other parameters its files are removed first. A
    non-empty directory that is not a run directory is refused. Returns ``"new"``,
    ``"resume"`` or ``"restart"`` (see :func:`run_dir_mode`).
    """
    run_dir = Path(run_dir)
    mode = run_dir_mode(run_dir, params)
    if mode == "restart":
        for child in run_dir.iterdir():
            if child.name == LOG_FILE:
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "params.yaml", yaml.safe_dump(record_paths(params), sort_keys=False))
    if mode != "resume" or run_status(run_dir) in ("missing", "dead"):
        write_json(run_dir / "run.json", record_paths({
            "notebook": str(Path(notebook).resolve()), "status": "queued", "params": params,
            **(extra or {})}))
    return mode


def _kernel_name() -> str:
    return KERNEL_NAME if KERNEL_NAME in KernelSpecManager().find_kernel_specs() else "python3"


def status_line(status: dict) -> str:
    """When the run ran and how long it took (and where it stopped), from its ``run.json``."""
    seconds = status.get("seconds")
    took = "" if not isinstance(seconds, (int, float)) else (
        f"{seconds:.0f} s" if seconds < 120 else f"{seconds // 60:.0f} min {seconds % 60:.0f} s")
    when = status.get("ended") or status.get("started") or ""
    line = ", ".join(filter(None, [f"{'ended' if status.get('ended') else 'started'} {when}" if when else "",
                                   f"took {took}" if took else ""]))
    if status.get("status") in ("failed", "interrupted") and status.get("error"):
        cell = f"cell {status['failed_cell']}: " if status.get("failed_cell") is not None else ""
        line += f"; stopped at {cell}{status['error'].splitlines()[0][:200]}"
    return line


def report_header_facts(run_dir: Path, status: dict) -> list[str]:
    """The report's header lines after its title and status, one short fact each: which
    run, which sweep cell, which test images. Add a fact here to show it on every report."""
    facts = [f"run {run_dir.name}"]
    if status.get("sweep"):
        facts.append(f"sweep {status['sweep']}, cell {status.get('cell', '?')}")
    if status.get("kernel") == "live":
        facts.append("run in JupyterLab")
    h = headline(run_dir)
    if h.get("examples"):  # the header says what the final table says, on the same inputs
        facts.append(f"{h['examples']} test examples")
    precision = precision_item(read_json(run_dir / "metrics.json"))
    if precision:  # what precision: auto chose, and why
        facts.append(precision)
    return facts


def render_run_report(run_dir: Path, out_nb: Path, status: dict, output_root: Path) -> None:
    """``run_dir/report.html`` from the executed notebook ``out_nb`` and the run's record."""
    index = output_root / "index.html"
    href = os.path.relpath(index, run_dir) if output_root.exists() else None
    params = {k: v for k, v in status.get("params", {}).items() if k != "run_dir"}
    render_html(out_nb, run_dir / "report.html", title=Path(status["notebook"]).stem,
                status=status["status"], status_line=status_line(status),
                items=report_header_facts(run_dir, status), index_href=href,
                params=params, relative_to=PROJECT_ROOT)


def batch_params(notebook: Path, params_file: str | os.PathLike | None, overrides,
                 output_root: Path, run_dir: str | os.PathLike | None) -> tuple[dict, str | None]:
    """A batch run's parameters as its kernel gets them (file, then overrides; batch
    defaults; absolute paths: the file's relative ones from the project root, the
    overrides' from the current folder) and its run folder if one was given (``run_dir=``
    or ``-p run_dir=...``; None: a new one)."""
    params = param_file(params_file) if params_file else {}
    params.update(load_params(None, overrides))
    given = params.pop("run_dir", None)  # `-p run_dir=...` works like run_dir=
    return normalize_params(notebook, params, absolute_path(output_root)), run_dir or given


def run_name(notebook: Path, params: dict) -> str:
    """The name a new run folder starts with: ``name`` or the notebook's (safe characters)."""
    return re.sub(r"[^\w.=-]+", "_", str(params.get("name") or notebook.stem))


def run_notebook(notebook: str | os.PathLike, params_file: str | os.PathLike | None = None,
                 overrides=(), output_root: str | os.PathLike = "outputs",
                 progress: bool = True, run_dir: str | os.PathLike | None = None,
                 index: bool = True, extra: dict | None = None) -> Path:
    """Execute ``notebook`` with parameters into a run directory; returns that directory.

    Args:
        params_file: a YAML mapping of parameters; ``overrides``: ``key=value`` strings or
            a dict (applied after the file).
        output_root: where new run directories go (``<root>/<notebook>/<name>-<time>``)
            and where ``index.html`` is refreshed.
        progress: print the run's progress lines as the kernel writes them (one per
            epoch, the final evaluation's stages with an estimate of what is left: the run
            folder's ``log.txt``, see :mod:`.follow`); the notebook's own ``progress``
            parameter (its bars) defaults to False in batch runs.
        run_dir: an explicit run directory instead of a new timestamped one; it must not
            hold a finished run (see :func:`prepare_run_dir`).
        extra: more fields for ``run.json`` (a sweep records its name and cell).

    Raises :class:`ConfigError` (before any kernel starts) on bad parameters, and the
    papermill error if a cell fails (after writing ``run.json`` and ``report.html``).
    """
    import papermill  # 1.5 s of imports: loaded when a notebook runs, not with the CLI
    notebook = Path(notebook)
    if not notebook.is_file():
        raise ConfigError(f"notebook {str(notebook)!r} does not exist")
    output_root = Path(output_root)
    params, run_dir = batch_params(notebook, params_file, overrides, output_root, run_dir)
    validate_notebook_params(notebook, params)
    if run_dir is None:
        run_dir = new_run_dir(output_root / notebook.stem, run_name(notebook, params))
    run_dir = Path(run_dir).resolve()
    params["run_dir"] = str(run_dir)
    prepare_run_dir(run_dir, params, notebook, extra)
    out_nb = run_dir / f"{notebook.stem}.ipynb"
    t0 = time.time()
    status = {"notebook": str(notebook.resolve()),
              "params_file": str(Path(params_file).resolve()) if params_file else None,
              **(extra or {}), "status": "running", "params": params,
              "started": datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
              "pid": os.getpid(), "host": socket.gethostname()}
    write_json(run_dir / "run.json", record_paths(status))
    if progress:
        print(f"{notebook.stem}: running in {run_dir}; progress (also in its {LOG_FILE}):",
              flush=True)
    try:
        with following(run_dir / LOG_FILE) if progress else contextlib.nullcontext():
            papermill.execute_notebook(str(notebook), str(out_nb), parameters=params,
                                       kernel_name=_kernel_name(), progress_bar=False,
                                       cwd=str(run_dir), kernel_manager_class=LocalKernelManager)
        status["status"] = FINISHED
    except papermill.PapermillExecutionError as e:
        first = next((line for line in str(e.source).splitlines() if line.strip()), "")
        status.update(status="failed", failed_cell=e.exec_count, failed_cell_index=e.cell_index,
                      failed_cell_source=first[:200], error=f"{e.ename}: {e.evalue}"[:2000])
        raise
    except BaseException as e:  # interrupted (Ctrl-C, SIGTERM) or papermill itself failed
        status.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                      error=f"{type(e).__name__}: {e}"[:2000])
        raise
    finally:
        status["seconds"] = round(time.time() - t0, 1)
        status["ended"] = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        status.pop("pid", None)
        if out_nb.exists():
            try:
                render_run_report(run_dir, out_nb, status, output_root)
                status["report"] = "report.html"
            except Exception as e:  # noqa: BLE001 - keep the run's record; the traceback is logged
                logging.getLogger("rst_lib").exception("could not render %s", run_dir / "report.html")
                status["report_error"] = f"{type(e).__name__}: {e}"
        write_json(run_dir / "run.json", record_paths(status))
        if index:
            refresh_index(output_root)
    return run_dir
