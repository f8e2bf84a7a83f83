"""Run workbook notebooks in batch: papermill into run directories, HTML reports, sweeps.

``run_notebook("notebooks/01_search.ipynb", "params/01_search/cpu-demo.yaml")`` checks the
parameters against the notebook's ``parameters`` cell and :class:`RunConfig` *before*
starting a kernel, creates ``outputs/<notebook>/<name>-<timestamp>/`` (or uses an explicit
``run_dir``), executes the notebook there (it receives ``run_dir``), renders
``report.html`` - also when a cell fails, so the report shows where it stopped - records
the outcome in ``run.json`` and refreshes ``outputs/index.html``.

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
      seed: [0, 1]
    cells: [{keep_ratio: 0.5, seed: 0}]       # extra cells (optional)
    jobs: 2                                   # optional; --jobs wins
"""
from __future__ import annotations

import ast
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from .config import ConfigError, RunConfig, load_params, parse_number

KERNEL_NAME = "rst-workbook"  # installed into the venv by `make`; falls back to python3

# Parameters holding paths: made absolute against the caller's working directory (the
# kernel runs in notebooks/), run directories given as `ticket` become their ticket.pt.
PATH_PARAMS = ("ticket", "pretrained", "data_dir", "runs_root", "checkpoint")
PATH_LIST_PARAMS = ("tickets", "run_dirs")
# Batch runs default these notebook parameters (no tqdm widgets, no ipywidgets explorer).
BATCH_DEFAULTS = {"progress": False, "interactive": False}
FINISHED = "finished"


class RunExists(ConfigError):
    """The run directory already holds a finished run (or one running right now)."""


# --------------------------------------------------------------------- parameters

_NO_DEFAULT = object()


def notebook_parameters(notebook: str | os.PathLike) -> dict:
    """Names and default values (as source text) of a notebook's ``parameters`` cell."""
    return {name: spec["default"] for name, spec in parameter_specs(notebook).items()}


def parameter_specs(notebook: str | os.PathLike) -> dict:
    """``{name: {"default": source text, "value": literal or _NO_DEFAULT, "help": comment}}``."""
    import papermill
    out = {}
    for name, info in papermill.inspect_notebook(str(notebook)).items():
        try:
            value = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError, TypeError):
            value = _NO_DEFAULT
        out[name] = {"default": info["default"], "value": value, "help": info.get("help") or ""}
    return out


def _type_error(name, value, expected: str) -> ConfigError:
    return ConfigError(f"{name}={value!r} is invalid: expected {expected}, "
                       f"got {type(value).__name__}")


def _check_like(name: str, value, default, none_ok: bool) -> None:
    """``value`` must have the type of the parameter's default value (notebook-only params)."""
    if value is None:
        if none_ok:
            return
        raise _type_error(name, value, type(default).__name__)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _type_error(name, value, "true or false")
    elif isinstance(default, (int, float)):
        if isinstance(value, bool):
            raise _type_error(name, value, "a number")
        if isinstance(default, int) and not isinstance(value, int):
            raise _type_error(name, value, "an integer")
        if not isinstance(value, (int, float)):
            parse_number(name, value)  # '8/255' is a number too
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise _type_error(name, value, "a string")
    elif isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise _type_error(name, value, "a list")
        kinds = {type(v) for v in default}
        if len(kinds) == 1:
            for v in value:
                _check_like(name, v, default[0], False)
    elif isinstance(default, dict):
        if not isinstance(value, dict):
            raise _type_error(name, value, "a mapping")


def validate_notebook_params(notebook: str | os.PathLike, params: dict) -> None:
    """Unknown names or bad values fail here, before any kernel starts.

    * every name must be a parameter of the notebook's ``parameters`` cell (the error lists
      the valid ones);
    * RunConfig fields are checked by :meth:`RunConfig.from_dict` together with the
      notebook's own defaults (so combinations are checked too);
    * other parameters must have the type of their default value; ``None`` is accepted
      where the default is ``None`` or the parameter's comment mentions ``None``.
    """
    specs = parameter_specs(notebook)
    if not specs:
        raise ConfigError(f"{notebook} has no cell tagged 'parameters'")
    unknown = sorted(set(params) - set(specs) - {"run_dir"})
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for {Path(notebook).name}; "
                          f"valid parameters: {', '.join(sorted(specs))}")
    fields = set(RunConfig.field_names())
    merged = {k: s["value"] for k, s in specs.items()
              if k in fields and s["value"] is not _NO_DEFAULT}
    merged.update({k: v for k, v in params.items() if k in fields})
    RunConfig.from_dict(merged)
    for name, value in params.items():
        spec = specs.get(name)
        if name in fields or spec is None or spec["value"] is _NO_DEFAULT:
            continue
        default = spec["value"]
        if default is None:
            continue
        _check_like(name, value, default, none_ok="None" in spec["help"])


def _abspath(p) -> str:
    return os.path.abspath(os.path.expanduser(str(p)))


def normalize_params(notebook: str | os.PathLike, params: dict,
                     output_root: str | os.PathLike = "outputs") -> dict:
    """Batch defaults and absolute paths (the kernel runs with cwd = the notebook's folder).

    * ``progress`` / ``interactive`` default to False when the notebook has them;
    * ``runs_root`` defaults to ``output_root``;
    * path parameters become absolute; a run directory given as ``ticket`` becomes its
      ``ticket.pt`` (or ``last.pt``); a single string given for ``tickets`` / ``run_dirs``
      becomes a list.
    """
    specs = parameter_specs(notebook)
    params = dict(params)
    for k, v in BATCH_DEFAULTS.items():
        if k in specs and k not in params:
            params[k] = v
    if "runs_root" in specs and "runs_root" not in params:
        params["runs_root"] = str(output_root)
    for k in PATH_PARAMS:
        if isinstance(params.get(k), str) and params[k]:
            params[k] = _abspath(params[k])
            if k == "ticket" and Path(params[k]).is_dir():
                for name in ("ticket.pt", "last.pt"):  # a run directory: its ticket (or checkpoint)
                    if (Path(params[k]) / name).is_file():
                        params[k] = str(Path(params[k]) / name)
                        break
    for k in PATH_LIST_PARAMS:
        v = params.get(k)
        if isinstance(v, str):
            v = [v]
        if isinstance(v, (list, tuple)):
            params[k] = [_abspath(p) if isinstance(p, str) else p for p in v]
    return params


# --------------------------------------------------------------------- run directories


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, obj) -> None:
    from .train import write_json
    write_json(path, obj)


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def run_status(run_dir: str | os.PathLike) -> str:
    """``finished`` / ``failed`` / ``interrupted`` / ``running`` / ``queued`` / ``dead`` /
    ``missing``. ``dead``: run.json says running but its process is gone (killed)."""
    info = _read_json(Path(run_dir) / "run.json")
    status = info.get("status", "missing")
    if status == "running" and not (info.get("host") == socket.gethostname()
                                    and _pid_alive(info.get("pid"))):
        return "dead"
    return status


def prepare_run_dir(run_dir: str | os.PathLike, params: dict, notebook: str | os.PathLike,
                    extra: dict | None = None) -> str:
    """Make ``run_dir`` ready for a run of ``notebook`` with ``params``.

    Raises :class:`RunExists` if it holds a finished run or one whose process is alive.
    An unfinished run with the same parameters is continued in place (its searches resume
    from their ``last.pt``); with other parameters its files are removed first. A
    non-empty directory that is not a run directory is refused. Returns ``"new"``,
    ``"resume"`` or ``"restart"``.
    """
    run_dir = Path(run_dir)
    mode = "new"
    if run_dir.exists() and any(run_dir.iterdir()):
        if not (run_dir / "run.json").is_file():
            raise ConfigError(f"run_dir {str(run_dir)!r} is not empty and holds no run.json: "
                              "not a run directory; choose another one")
        status = run_status(run_dir)
        if status == FINISHED:
            raise RunExists(f"{run_dir} already holds a finished run")
        if status == "running":
            raise RunExists(f"{run_dir} is being run right now by process "
                            f"{_read_json(run_dir / 'run.json').get('pid')}")
        old = yaml.safe_load((run_dir / "params.yaml").read_text()) \
            if (run_dir / "params.yaml").is_file() else None
        if old == params:
            mode = "resume"
        else:
            mode = "restart"
            for child in run_dir.iterdir():
                if child.name == "log.txt":
                    continue
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if mode != "resume" or run_status(run_dir) in ("missing", "dead"):
        _write_json(run_dir / "run.json", {"notebook": str(notebook), "status": "queued",
                                           "params": params, **(extra or {})})
    return mode


def _kernel_name() -> str:
    from jupyter_client.kernelspec import KernelSpecManager
    return KERNEL_NAME if KERNEL_NAME in KernelSpecManager().find_kernel_specs() else "python3"


def render_html(notebook_path, html_path=None, **kw) -> Path:
    """See :func:`rst_lib.report.render_html`."""
    from .report import render_html as _render
    return _render(notebook_path, html_path, **kw)


def _index(output_root: Path) -> None:
    from .report import write_index
    try:
        write_index(output_root)
    except OSError as e:  # the index is a convenience; never fail a run for it
        print(f"rst-workbook: could not write {output_root}/index.html: {e}", file=sys.stderr)


def _render_report(run_dir: Path, out_nb: Path, status: dict, output_root: Path) -> None:
    from .report import headline
    h = headline(run_dir)
    items = [f"run {run_dir.name}", status.get("started", "")]
    if status.get("seconds") is not None:
        items.append(f"{status['seconds']:.0f} s")
    for k, label in (("clean_acc", "clean"), ("pgd_acc", "PGD"), ("autoattack_acc", "AutoAttack")):
        if isinstance(h.get(k), (int, float)):
            items.append(f"{label} {h[k]:.1%}")
    index = output_root / "index.html"
    href = os.path.relpath(index, run_dir) if output_root.exists() else None
    render_html(out_nb, run_dir / "report.html", title=Path(status["notebook"]).stem,
                status=status["status"], items=[i for i in items if i], index_href=href)


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
        progress: papermill's cell progress bar (the notebook's own ``progress``
            parameter defaults to False in batch runs).
        run_dir: an explicit run directory instead of a new timestamped one; it must not
            hold a finished run (see :func:`prepare_run_dir`).
        extra: more fields for ``run.json`` (a sweep records its name and cell).

    Raises :class:`ConfigError` (before any kernel starts) on bad parameters, and the
    papermill error if a cell fails (after writing ``run.json`` and ``report.html``).
    """
    import papermill
    notebook = Path(notebook)
    if not notebook.is_file():
        raise ConfigError(f"notebook {str(notebook)!r} does not exist")
    output_root = Path(output_root)
    params = load_params(params_file, overrides)
    given = params.pop("run_dir", None)  # `-p run_dir=...` works like run_dir=
    run_dir = run_dir or given
    params = normalize_params(notebook, params, _abspath(output_root))
    validate_notebook_params(notebook, params)
    if run_dir is None:
        from .train import new_run_dir
        name = re.sub(r"[^\w.=-]+", "_", str(params.get("name") or notebook.stem))
        run_dir = new_run_dir(output_root / notebook.stem, name)
    run_dir = Path(run_dir).resolve()
    params["run_dir"] = str(run_dir)
    prepare_run_dir(run_dir, params, notebook, extra)
    out_nb = run_dir / f"{notebook.stem}.ipynb"
    t0 = time.time()
    status = {"notebook": str(notebook), "params_file": str(params_file) if params_file else None,
              **(extra or {}), "status": "running", "params": params,
              "started": datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
              "pid": os.getpid(), "host": socket.gethostname()}
    _write_json(run_dir / "run.json", status)
    try:
        papermill.execute_notebook(str(notebook), str(out_nb), parameters=params,
                                   kernel_name=_kernel_name(), progress_bar=progress,
                                   cwd=str(notebook.parent.resolve()))
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
                _render_report(run_dir, out_nb, status, output_root)
                status["report"] = "report.html"
            except Exception as e:  # noqa: BLE001 - keep the run's record even so
                status["report_error"] = f"{type(e).__name__}: {e}"
        _write_json(run_dir / "run.json", status)
        if index:
            _index(output_root)
    return run_dir


def read_run(run_dir: str | os.PathLike) -> dict:
    run_dir = Path(run_dir)
    out = _read_json(run_dir / "run.json")
    if (run_dir / "metrics.json").exists():
        out["metrics"] = _read_json(run_dir / "metrics.json")
    return out


# ------------------------------------------------------------------------------ sweeps


@dataclass
class SweepCell:
    name: str
    params: dict
    run_dir: Path


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


SWEEP_KEYS = ("notebook", "name", "params", "set", "grid", "cells", "jobs", "output_root")


def load_sweep(path: str | os.PathLike, overrides=(), output_root: str | os.PathLike | None = None,
               validate: bool = True) -> Sweep:
    """Read a sweep file (see the module docstring), expand it and check every cell.

    Every cell's parameters are validated before anything runs; ``overrides``
    (``key=value`` strings or a dict) apply to every cell.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} does not exist")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected a mapping with notebook, params, set, grid")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: "
                          f"{', '.join(SWEEP_KEYS)}")
    if not spec.get("notebook"):
        raise ConfigError(f"{path}: 'notebook' is missing (e.g. notebook: 01_search)")
    notebook = _find(str(spec["notebook"]), path, "notebook", ("", ".ipynb"))
    params_file = _find(str(spec["params"]), path, "parameter file") if spec.get("params") else None
    name = str(spec.get("name") or path.stem)
    if not re.fullmatch(r"[\w.=+,-]+", name):
        raise ConfigError(f"{path}: name {name!r} may only hold letters, digits and . = + , - _")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError(f"{path}: 'grid' must map parameter names to non-empty lists")
    extra_cells = spec.get("cells") or []
    if not isinstance(extra_cells, list) or any(not isinstance(c, dict) for c in extra_cells):
        raise ConfigError(f"{path}: 'cells' must be a list of mappings")
    fixed = spec.get("set") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{path}: 'set' must be a mapping of parameter: value")
    base = load_params(params_file, {})
    base.update(fixed)
    base.update(load_params(None, overrides))
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else []
    combos += [dict(c) for c in extra_cells]
    if not combos:
        combos = [{}]
    root = Path(output_root or spec.get("output_root") or "outputs")
    directory = root / notebook.stem / name
    cells, seen = [], set()
    for values in combos:
        cname = cell_name(values)
        if cname in seen:
            raise ConfigError(f"{path}: two cells are both named {cname!r}")
        seen.add(cname)
        params = {**base, **values}
        params["name"] = f"{name}-{cname}" if "name" not in values else params["name"]
        try:
            params = normalize_params(notebook, params, _abspath(root))
            if validate:
                validate_notebook_params(notebook, params)
        except ConfigError as e:
            raise ConfigError(f"sweep {name}, cell {cname}: {e}") from None
        cells.append(SweepCell(cname, params, (directory / cname).resolve()))
    jobs = spec.get("jobs")
    if jobs is not None and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise ConfigError(f"{path}: jobs={jobs!r} is invalid: expected an integer >= 1")
    return Sweep(name, notebook, params_file, cells, root, jobs, path, directory)


def visible_gpus() -> list[str]:
    """CUDA device ids a job may be given (honours an existing CUDA_VISIBLE_DEVICES)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch
        n = torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        n = 0
    if n == 0:
        return []
    if env:
        ids = [s.strip() for s in env.split(",") if s.strip()]
        return ids[:n]
    return [str(i) for i in range(n)]


def _cell_summary(run_dir: Path) -> str:
    from .report import headline
    info = _read_json(run_dir / "run.json")
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
            old = _read_json(cell.run_dir / "run.json").get("params", {})
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
        from tqdm.auto import tqdm
        bar = tqdm(total=len(sweep.cells), initial=len(result.skipped), unit="run",
                   desc=f"sweep {sweep.name}", dynamic_ncols=True)
    say = log or (bar.write if bar is not None else print)
    say(f"sweep {sweep.name}: {len(sweep.cells)} cells of {sweep.notebook.name} in "
        f"{sweep.directory}; {len(result.skipped)} finished before, {len(todo)} to run, "
        f"{jobs} at once" + (f" on GPUs {','.join(gpus)}" if gpus else " on CPU"))
    if stale:
        say(f"note: {len(stale)} finished cell(s) ran with other parameters and are kept: "
            f"{'; '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}. Delete a cell's folder "
            "to run it again.")
    if dry_run:
        for cell in sweep.cells:
            say(f"  {run_status(cell.run_dir):>11}  {cell.name}")
        if bar is not None:
            bar.close()
        return result
    sweep.directory.mkdir(parents=True, exist_ok=True)
    pending = deque(todo)
    running: dict = {}  # Popen -> (cell, slot, log file)
    free = list(range(jobs))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    previous = signal.getsignal(signal.SIGTERM)

    def _terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    try:
        while pending or running:
            while pending and free:
                cell, slot = pending.popleft(), free.pop(0)
                extra = {"sweep": sweep.name, "sweep_file": str(sweep.path), "cell": cell.name}
                params = {**cell.params, "run_dir": str(cell.run_dir)}
                prepare_run_dir(cell.run_dir, params, sweep.notebook, extra)
                env = dict(os.environ)
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
                else:
                    env.setdefault("OMP_NUM_THREADS", str(threads))
                    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
                spec = {"notebook": str(sweep.notebook), "params": cell.params,
                        "run_dir": str(cell.run_dir), "output_root": _abspath(sweep.output_root),
                        "params_file": str(sweep.params_file) if sweep.params_file else None,
                        "extra": extra}
                logf = open(cell.run_dir / "log.txt", "a")
                logf.write(f"\n=== {datetime.now():%Y-%m-%d %H:%M:%S} start (slot {slot}) ===\n")
                logf.flush()
                proc = subprocess.Popen([sys.executable, "-m", "rst_lib.runner", json.dumps(spec)],
                                        stdout=logf, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
                running[proc] = (cell, slot, logf)
                say(f"started  {cell.name}" + (f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else ""))
            time.sleep(0.3)
            for proc in [p for p in running if p.poll() is not None]:
                cell, slot, logf = running.pop(proc)
                logf.close()
                free.append(slot)
                status = run_status(cell.run_dir)
                if status == FINISHED:
                    result.finished.append(cell.name)
                    say(f"finished {cell.name}: {_cell_summary(cell.run_dir)}")
                else:
                    if status in ("running", "dead", "queued"):  # the process died abruptly
                        info = _read_json(cell.run_dir / "run.json")
                        info.update(status="failed", error=f"process exited with code {proc.returncode}"
                                    f" (see {cell.run_dir / 'log.txt'})")
                        _write_json(cell.run_dir / "run.json", info)
                    result.failed.append(cell.name)
                    say(f"FAILED   {cell.name}: {_cell_summary(cell.run_dir)} "
                        f"(log: {cell.run_dir / 'log.txt'})")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(failed=len(result.failed))
                _index(sweep.output_root)
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
        _index(sweep.output_root)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if bar is not None:
            bar.close()
    done = len(result.finished) + len(result.skipped)
    say(f"sweep {sweep.name}: {done}/{len(sweep.cells)} finished, {len(result.failed)} failed"
        + (", interrupted" if result.interrupted else "")
        + f"; index: {sweep.output_root / 'index.html'}")
    return result


def _cell_main(argv: list[str]) -> int:
    """Child process of a sweep: run one cell (``python -m rst_lib.runner SPEC_JSON``)."""
    spec = json.loads(argv[0])

    def _terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    try:
        run_notebook(spec["notebook"], None, spec["params"], spec["output_root"], progress=False,
                     run_dir=spec["run_dir"], extra=spec.get("extra"))
    except ConfigError as e:
        print(f"parameter error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - recorded in run.json
        print(f"the notebook failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_cell_main(sys.argv[1:]))
