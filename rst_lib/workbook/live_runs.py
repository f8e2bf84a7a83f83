"""Records of a run made in a live kernel (a working copy in JupyterLab, a notebook run by
hand): the same files in its run folder as a batch run (:mod:`.runs`) leaves, so it shows
in ``outputs/index.html`` and 07 and can be shared the same way.

- ``run.json`` when the notebook makes its run folder (:func:`record_start`, called by
  ``ensure_run_dir(..., globals())``): the notebook, the working copy, the parameters (paths
  inside the project relative to its root, :mod:`rst_lib.utils.project`), ``status:
  running`` with the kernel's process (``dead`` once that kernel is
  gone without finishing, see :func:`~.runs.run_status`);
- ``status: finished`` and the time taken from the notebook's last cell (:func:`finish_run`);
- on request, the executed notebook and ``report.html`` (:func:`report_run`, or
  ``rst-workbook report RUN_DIR``): from the working copy as last saved - the kernel never
  sees the outputs the browser holds, so save first (Ctrl+S).

A batch run wrote its ``run.json`` before its kernel started and finishes it itself: these
functions leave such a run folder as it is.
"""
from __future__ import annotations

import os
import shutil
import socket
import time
from datetime import datetime
from pathlib import Path

from ..errors import ConfigError
from ..utils.files import read_json, write_json
from ..utils.project import record_paths, resolve_path
from .index import refresh_index
from .params import PROJECT_ROOT, find_notebook, parameter_specs
from .runs import FINISHED, render_run_report

LIVE = "live"  # run.json's "kernel" value for a run started in a live kernel
TIME = "%Y-%m-%d %H:%M:%S"


def _jsonable(value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value if value is None or isinstance(value, (str, int, float, bool)) else repr(value)


def kernel_notebook() -> str | None:
    """The notebook file this kernel runs for: Jupyter server (2.x) starts a session's
    kernel with ``JPY_SESSION_NAME`` set to the notebook's path; None outside one."""
    return os.environ.get("JPY_SESSION_NAME") or None


def record_start(run_dir: str | os.PathLike, notebook: str, namespace: dict,
                 output_root: str | os.PathLike | None = None) -> bool:
    """Write ``run_dir/run.json`` for a run made in a live kernel, unless the folder already
    holds one (a batch run's). ``namespace``: the notebook's globals; its parameters (the
    names of ``notebook``'s parameters cell) are recorded. ``output_root``: the folder whose
    ``index.html`` lists the run (None: the project's ``outputs/`` if the run is in it, else
    no index). Returns whether it wrote."""
    run_dir = Path(run_dir)
    outputs = PROJECT_ROOT / "outputs"
    if output_root is None and run_dir.resolve().is_relative_to(outputs.resolve()):
        output_root = outputs
    if (run_dir / "run.json").exists():
        return False
    template = find_notebook(notebook)
    names = list(parameter_specs(template))
    params = {k: _jsonable(namespace[k]) for k in names if k in namespace}
    params["run_dir"] = str(run_dir.resolve())
    shown = template.relative_to(PROJECT_ROOT) if template.is_relative_to(PROJECT_ROOT) else template
    write_json(run_dir / "run.json", record_paths({
        "notebook": str(shown), "working_copy": kernel_notebook(), "kernel": LIVE,
        "output_root": str(Path(output_root).resolve()) if output_root else None,
        "status": "running", "params": params, "started": datetime.now().strftime(TIME),
        "t0": time.time(), "pid": os.getpid(), "host": socket.gethostname()}))
    return True


def _live_record(run_dir: Path) -> dict:
    info = read_json(run_dir / "run.json")
    if not info:
        raise ConfigError(f"{str(run_dir)!r} holds no run.json: not a run folder")
    return info


def _refresh_index(info: dict) -> None:
    if info.get("output_root"):
        refresh_index(resolve_path(info["output_root"]))


def finish_run(run_dir: str | os.PathLike) -> None:
    """The notebook's last cell: a live run's ``run.json`` says finished (with its time) and
    the index lists it; then how to add the executed notebook and ``report.html``. A batch
    run's folder is left to the batch run."""
    run_dir = Path(run_dir)
    info = _live_record(run_dir)
    if info.get("kernel") != LIVE:
        return
    info.update(status=FINISHED, ended=datetime.now().strftime(TIME))
    if isinstance(info.get("t0"), (int, float)):
        info["seconds"] = round(time.time() - info["t0"], 1)
    info.pop("pid", None)
    write_json(run_dir / "run.json", record_paths(info))
    _refresh_index(info)
    print(f"run.json: finished. To keep the executed notebook and report.html in {run_dir} "
          f"(as a batch run does): save this notebook, then `rst-workbook report {run_dir}` "
          f"(or report_run(run_dir) in a cell).")


def report_run(run_dir: str | os.PathLike, notebook: str | os.PathLike | None = None) -> Path:
    """Copy the run's notebook as saved (``notebook``, else the working copy in its
    ``run.json``) into ``run_dir`` as ``<notebook>.ipynb``, render ``report.html`` the way a
    batch run does, record both in ``run.json`` and refresh the index. Returns the report."""
    run_dir = Path(run_dir).resolve()
    info = _live_record(run_dir)
    copy = info.get("working_copy")
    source = Path(notebook or (resolve_path(copy) if copy else ""))
    if not source.is_file():
        raise ConfigError(f"{run_dir}: which notebook made this run is not recorded (or "
                          f"{str(source)!r} is gone): give it, rst-workbook report RUN_DIR NOTEBOOK")
    target = run_dir / f"{Path(info.get('notebook') or source).stem}.ipynb"
    if source.resolve() != target:
        shutil.copyfile(source, target)
    info["notebook_saved"] = datetime.fromtimestamp(source.stat().st_mtime).strftime(TIME)
    root = Path(resolve_path(info.get("output_root") or run_dir.parent))  # report.html links its index
    render_run_report(run_dir, target, info, root)
    info["report"] = "report.html"
    write_json(run_dir / "run.json", record_paths(info))
    _refresh_index(info)
    return run_dir / "report.html"
