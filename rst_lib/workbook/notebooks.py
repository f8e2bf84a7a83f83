"""Helpers the workbook notebooks share: a :class:`RunConfig` from the parameter
variables, the run folder, tickets from files / run folders / globs, tickets at several
keep ratios of ONE random network, any saved model, and ``summary.json``."""
from __future__ import annotations

import glob
import os
import time
from pathlib import Path
from typing import Iterable

import torch

from ..config import RunConfig
from ..utils.files import TORCH_LOAD_ERRORS, model_file, new_run_dir, read_json, write_json
from ..utils.project import record_paths, resolve_paths
from ..utils import progress_log
from ..utils.stats import accuracy_text
from ..engine.tasks import build_task, load_run_data
from ..models.tickets import (TicketError, TicketRebuildError, load_ticket, resolve_ticket,
                              ticket_meta)
from ..engine.training import train
from ..engine.checks import check_masking_parameters
from ..engine.evaluation import ClassAccuracy
from ..errors import ConfigError
from .params import (ALL_PATH_PARAMS, PATH_LIST_PARAMS, PATH_PARAMS, PROJECT_ROOT,
                     check_model_file, path_base)
from .live_runs import record_start
from .sweep_files import load_sweep

# Path parameters that name something to read: a missing one is a ConfigError up front.
_INPUTS = ("ticket", "pretrained", "data_dir", "runs_root", "checkpoint", "sweep", "tickets", "run_dirs")
# Path parameters that name where to write (made absolute the same way, created later).
_OUTPUTS = ("run_dir", "data_cache_dir")


def _absolute(value: str) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else path_base() / p)


def resolve_path_parameters(namespace: dict) -> None:
    """Make the path parameters in ``namespace`` absolute, IN PLACE, the way a batch run
    does before its kernel starts, and refuse a missing input with one ConfigError line.

    A relative path is taken from the project root when the kernel runs inside the project
    (``notebooks/``, a working copy in ``work/``, the root itself), else from the kernel's
    folder (:func:`~rst_lib.workbook.params.path_base`): ``outputs/01_search/...`` means the
    same in JupyterLab as in ``rst-workbook run`` typed in the project root.
    """
    base = path_base()
    for name in PATH_PARAMS + _OUTPUTS:
        if isinstance(namespace.get(name), str) and namespace[name]:
            namespace[name] = _absolute(namespace[name])
    for name in PATH_LIST_PARAMS:
        value = namespace.get(name)
        if isinstance(value, (str, os.PathLike)):
            value = [value]
        if isinstance(value, (list, tuple)):
            namespace[name] = [_absolute(str(v)) if isinstance(v, (str, os.PathLike)) else v
                               for v in value]
    for name in _INPUTS:
        values = namespace.get(name)
        for value in values if isinstance(values, list) else [values]:
            if not isinstance(value, str) or not value:
                continue
            hint = f" (relative paths are taken from {str(base)!r})"
            if any(ch in value for ch in "*?["):
                if not glob.glob(value):
                    raise ConfigError(f"{name}: no file matches {value!r}{hint}")
            elif not Path(value).exists():
                raise ConfigError(f"{name}: {value!r} does not exist{hint}")
            elif name in ("ticket", "tickets"):
                check_model_file(value)  # a ticket that will load, or why not


def config_from(namespace: dict, **overrides):
    """A validated :class:`RunConfig` from every RunConfig field defined in ``namespace``.

    Notebooks call ``config_from(globals())`` right after the parameters cell, before any
    run folder is made: path parameters become absolute in ``namespace`` and must exist
    (:func:`resolve_path_parameters`), the masking checks must be stronger than the
    evaluation they check; the parameter variables that are RunConfig fields become the
    config, the rest (``run_dir``, ``progress``, notebook-only parameters) are ignored.
    Every mistake is one :class:`ConfigError` line.
    """
    resolve_path_parameters(namespace)
    # data_dir None means $RST_DATA_DIR or data/: the project's data/ here too (the CLI sets
    # it to the data/ of the folder it is typed in), not a data/ inside notebooks/
    os.environ.setdefault("RST_DATA_DIR", str(path_base() / "data"))
    names = set(RunConfig.field_names())
    params = {k: v for k, v in namespace.items() if k in names and not callable(v)
              and not type(v).__name__ == "module"}
    params.update(overrides)
    cfg = RunConfig.from_dict(params)
    if namespace.get("masking_checks") and "masking_more_steps" in namespace:
        check_masking_parameters(cfg.eval_steps, cfg.eval_alpha_value,
                                 namespace["masking_more_steps"],
                                 namespace.get("masking_restarts", 5), cfg.eval_restarts)
    return cfg


def ensure_run_dir(run_dir: str | os.PathLike | None, notebook: str, name: str | None,
                   namespace: dict | None = None, outputs: str | os.PathLike | None = None) -> Path:
    """``run_dir`` (created if needed) or, when None, a fresh
    ``<project>/outputs/<notebook>/<name>-<time>`` (``name`` None: the notebook's name),
    wherever the kernel runs. With the notebook's ``namespace`` (``globals()``), a folder
    that holds no ``run.json`` yet (not a batch run's) gets one recording this live run and
    its parameters (:func:`~rst_lib.workbook.live_runs.record_start`), and this kernel's
    progress lines go to its ``log.txt`` (:mod:`rst_lib.utils.progress_log`)."""
    root = None  # the run's index: the outputs folder it is made in
    if run_dir:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(outputs or PROJECT_ROOT / "outputs")
        path = new_run_dir(root / notebook, name or notebook)
    if namespace is not None:
        record_start(path, notebook, namespace, root)
        # the kernel's progress lines go to the run folder's log (rst-workbook run prints them)
        progress_log.log_to(path, notebook)
    return path


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A model file from a path: a run directory gives its ``ticket.pt``, else its
    ``last.pt`` (a run killed before the end); a file is itself."""
    try:
        return model_file(path)
    except FileNotFoundError as e:
        raise TicketError(str(e)) from None


def resolve_tickets(paths: str | os.PathLike | Iterable[str | os.PathLike] | None) -> list[Path]:
    """Ticket files from paths, run directories or glob patterns (in order, deduplicated).

    A directory without its own ``ticket.pt`` contributes every ``*/ticket.pt`` directly
    below it (e.g. a sweep folder), sorted.
    """
    if not paths:
        return []
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for item in paths:
        matches = sorted(glob.glob(str(Path(item).expanduser()))) if any(
            ch in str(item) for ch in "*?[") else [str(item)]
        if not matches:
            raise FileNotFoundError(f"no file matches {str(item)!r}")
        for m in matches:
            p = Path(m)
            if p.is_dir() and not (p / "ticket.pt").is_file():
                found = sorted(p.glob("*/ticket.pt"))
                if not found:
                    raise FileNotFoundError(f"{str(p)!r} holds no ticket.pt (nor */ticket.pt)")
                new = found
            else:
                new = [resolve_ticket(p)]
            out += [q for q in new if q.resolve() not in {o.resolve() for o in out}]
    return out


def ticket_label(path: str | os.PathLike) -> str:
    """A short label for a ticket: ``keep 0.1`` (plus the task unless it is a search)."""
    meta = ticket_meta(path)
    keep = meta.get("model_config", {}).get("keep_ratio")
    task = meta.get("run", {}).get("task", "search")
    label = f"keep {keep:g}" if isinstance(keep, (int, float)) else Path(path).parent.name
    return label if task == "search" else f"{label} ({task})"


def load_tickets(paths: Iterable[str | os.PathLike], device="cpu") -> dict:
    """``{label: model}`` for ticket files (labels from :func:`ticket_label`, made unique)."""
    out: dict = {}
    for p in paths:
        label = ticket_label(p)
        base, i = label, 2
        while label in out:
            label, i = f"{base} #{i}", i + 1
        out[label] = load_ticket(p, device)
    return out


def search_tickets(cfg, keep_ratios: Iterable[float], root: str | os.PathLike,
                   progress: bool = True, data=None, resume: bool = True) -> list[Path]:
    """Search one ticket per keep ratio in ONE random network (``cfg.seed``).

    Each goes to ``root/keep-<ratio>/`` (metrics.json, ticket.pt); ``resume`` continues or
    reuses a search already there (an interrupted notebook run picks up where it stopped).
    Returns the ticket paths, in the order of ``keep_ratios``.
    """
    data = data or load_run_data(cfg)
    paths = []
    for r in keep_ratios:
        c = cfg.replace(keep_ratio=float(r), name=f"{cfg.name}-keep{float(r):g}")
        res = train(c, Path(root) / f"keep-{float(r):g}", progress=progress, data=data,
                     resume=resume)
        paths.append(res.ticket_path)
    return paths


def load_any(path: str | os.PathLike, device="cpu", data=None):
    """A model from a ticket file, a run directory or a ``last.pt`` checkpoint.

    Returns ``(model, info)`` with ``info = {"kind", "path", "config"}``; ``config`` is the
    :class:`RunConfig` dict the model was found with (from the ticket's metadata or the
    run's ``metrics.json``), or ``{}`` when unknown.
    """
    p = resolve_checkpoint(path)
    try:
        model = load_ticket(p, device)
        return model, {"kind": "ticket", "path": str(p), "config": ticket_meta(p).get("run", {})}
    except TicketRebuildError:
        raise  # a ticket, refused: not to be read as a checkpoint
    except TicketError as e:
        if not p.is_file():
            raise
        ticket_error = e
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS:  # report the ticket error, the more useful one
        raise ticket_error from None
    metrics = read_json(p.parent / "metrics.json")
    if not (isinstance(ck, dict) and "model" in ck and metrics.get("config")):
        raise TicketError(f"{str(p)!r} is neither a ticket nor a last.pt checkpoint with a "
                          "metrics.json next to it") from None
    if str(metrics["config"].get("task", "")).startswith("finetune"):
        raise TicketError(f"{str(p)!r}: load the ticket.pt of a finetune run, not its last.pt")
    recorded = resolve_paths(metrics["config"], ALL_PATH_PARAMS)  # relative: from the project root
    cfg = RunConfig.from_dict({k: v for k, v in recorded.items() if k != "pretrained"},
                              strict=False)
    _, model = build_task(cfg, data, torch.device(device))
    model.load_state_dict(ck["model"])
    return model.eval(), {"kind": "checkpoint", "path": str(p), "config": recorded}


def sweep_run_dirs(sweep: str | os.PathLike, output_root: str | os.PathLike | None = None) -> list[Path]:
    """The run folders of a sweep file's cells (every stage; finished or not), in its order:
    a cell's committed study record where it has one (a sweep with ``study:``), else its run
    folder. ``output_root``: where the sweep ran (None: the file's own, else the project's
    ``outputs/``). Relative paths (``sweep``, ``output_root``, the file's ``output_root``)
    are taken as a notebook's path parameters are (:func:`path_base`): from the project
    root in a kernel anywhere inside it (``notebooks/``, ``work/``, a subfolder)."""
    return [c.read_dir for c in sweep_cells(sweep, output_root)]


def sweep_cells(sweep: str | os.PathLike, output_root: str | os.PathLike | None = None) -> list:
    """The cells of a sweep file (stage, resolved parameters with the seed, ``read_dir``...),
    paths taken as :func:`sweep_run_dirs` takes them: what a study declares it runs."""
    base = path_base()
    return load_sweep(base / Path(sweep), base=base, output_root=output_root, validate=False).cells


def write_summary(run_dir: str | os.PathLike, headline: dict, **extra) -> Path:
    """``run_dir/summary.json`` with ``headline`` (the metrics the run index shows); paths
    inside the project relative to its root, as every record has them."""
    path = Path(run_dir) / "summary.json"
    write_json(path, record_paths({"headline": headline, **extra,
                                   "written": time.strftime("%Y-%m-%d %H:%M:%S")}))
    return path



def final_table(rows: list[dict]) -> list[dict]:
    """Display rows of :func:`~rst_lib.engine.evaluation.final_evaluation` results: every accuracy
    with its 95 % interval and number of test examples; AutoAttack next to PGD."""
    out = []
    for r in rows:
        row = {"model": r.get("model", ""), "clean": accuracy_text(r["clean_acc"], r["examples"]),
               r.get("pgd", "PGD"): accuracy_text(r["pgd_acc"], r["examples"])}
        if r.get("autoattack_acc") is not None:
            row[f"AutoAttack ({r['autoattack']['version']})"] = accuracy_text(
                r["autoattack_acc"], r["autoattack"]["examples"])
        out.append(row)
    return out


def per_class_table(final: dict) -> list[dict]:
    """Display rows of the per-class accuracies of one ``final_evaluation`` result
    (:class:`~rst_lib.engine.evaluation.ClassAccuracy` rows): one row per class (clean and
    PGD on its test examples, AutoAttack on its AutoAttack examples). A class far below the
    others, or a headline from few classes, shows at once."""
    out = []
    for name, r in (final.get("per_class") or {}).items():
        r = ClassAccuracy.from_dict(r)
        row = {"class": name, "examples": r.examples, "clean": _percent(r.clean_acc),
               final.get("pgd", "PGD"): _percent(r.pgd_acc)}
        if final.get("autoattack"):  # AutoAttack ran: a column for every class
            row["AutoAttack"] = f"{_percent(r.autoattack_acc)} (n {r.autoattack_examples})"
        out.append(row)
    return out


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def checks_markdown(checks: dict | None) -> str:
    """The gradient-masking checks of :func:`~rst_lib.engine.checks.final_checks` as Markdown:
    every measured accuracy, then the flags (or that there are none)."""
    if not checks:
        return "Gradient-masking checks skipped (`masking_checks = False`)."
    n = checks["n_examples"]
    ran = checks.get("ran", {})  # what each check ran, e.g. "PGD-100, step 0.01"
    rows = [f"| {ran.get(k, k)} | {accuracy_text(v, n)} |" for k, v in checks["accuracy"].items()]
    rows += [f"| PGD at eps {e:.3g} | {accuracy_text(a, n)} |" for e, a in checks["eps_curve"]]
    flags = ("**Flags:**\n" + "\n".join(f"- {f}" for f in checks["flags"]) if checks["flags"]
             else f"**No flag** on {n} test inputs (no sign of gradient masking; not a proof).")
    return "| check | accuracy |\n|---|---|\n" + "\n".join(rows) + "\n\n" + flags
