"""Notebook parameters: what a notebook's ``parameters`` cell declares, checked and
normalized before any kernel starts (unknown names, types, RunConfig combinations,
paths made absolute)."""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import io
import json
import os
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..config import RunConfig, allowed, check_fields, load_params, param
from ..data.locations import check_available
from ..errors import ConfigError, did_you_mean, parse_number
from ..utils.files import model_file
from ..utils.project import PROJECT_ROOT, resolve_paths

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"

# Parameters holding paths: made absolute before a kernel starts (the kernel runs in its run
# folder), run directories given as `ticket` become their ticket.pt. Relative: from the project
# root in a parameter file (param_file), from the current folder on the command line.
PATH_PARAMS = ("ticket", "pretrained", "data_dir", "runs_root", "checkpoint", "sweep")
PATH_LIST_PARAMS = ("tickets", "run_dirs")
ALL_PATH_PARAMS = PATH_PARAMS + PATH_LIST_PARAMS + ("run_dir", "data_cache_dir")
# Batch runs default these notebook parameters (no tqdm widgets, no ipywidgets explorer).
BATCH_DEFAULTS = {"progress": False, "interactive": False}

_NO_DEFAULT = object()


def find_notebook(name: str | os.PathLike) -> Path:
    """A notebook by path (relative to the current folder) or by name in the project's
    notebooks/ (``01_search``, ``01_search.ipynb``), from any folder."""
    p = Path(name).expanduser()
    if p.is_file():
        return p.resolve()
    stem = p.name.removesuffix(".ipynb")
    candidate = NOTEBOOKS_DIR / f"{stem}.ipynb"
    if candidate.is_file():
        return candidate
    known = sorted(q.stem for q in NOTEBOOKS_DIR.glob("*.ipynb"))
    raise ConfigError(f"unknown notebook {str(name)!r}{did_you_mean(stem, known)}: no file "
                      f"{str(p.resolve())!r}, and the notebooks in {str(NOTEBOOKS_DIR)!r} are "
                      f"{', '.join(known)}")


def parameter_specs(notebook: str | os.PathLike) -> dict:
    """``{name: {"default": source text, "value": literal or _NO_DEFAULT, "help": comment}}``
    of the notebook's ``parameters`` cell, in order.

    Read from the notebook's JSON with :mod:`ast` (what papermill's ``inspect_notebook``
    returns for these cells, without importing papermill and nbformat: 1.5 s of start-up)."""
    path = Path(notebook).resolve()
    try:
        stat = path.stat()
    except OSError as e:
        raise ConfigError(f"{notebook} is not a readable notebook: {e}") from None
    specs = _cell_specs(str(path), stat.st_mtime_ns, stat.st_size)
    return {name: dict(spec) for name, spec in specs.items()}


@functools.lru_cache(maxsize=32)
def _cell_specs(path: str, mtime_ns: int, size: int) -> dict:
    """:func:`parameter_specs` of one version of a notebook file (a sweep checks the same
    notebook for every cell)."""
    source = parameters_source(path)
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ConfigError(f"{path}: the parameters cell is not Python: {e}") from None
    lines = source.splitlines(keepends=True)
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        elif isinstance(node, ast.AnnAssign) and node.value is not None and isinstance(node.target, ast.Name):
            name = node.target.id
        else:
            continue
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, SyntaxError, TypeError):
            value = _NO_DEFAULT
        out[name] = {"default": _segment(lines, node.value), "value": value,
                     "help": comments.get(node.end_lineno, "")}
    return out


def _segment(lines: list[str], node: ast.expr) -> str:
    """The source text of ``node`` (``ast.get_source_segment`` re-splits the whole cell on
    every call: quadratic in the cell's length)."""
    first, last = node.lineno - 1, node.end_lineno - 1
    if first == last:
        return lines[first].encode()[node.col_offset:node.end_col_offset].decode()
    parts = [lines[first].encode()[node.col_offset:].decode(), *lines[first + 1:last],
             lines[last].encode()[:node.end_col_offset].decode()]
    return "".join(parts)


def parameters_source(notebook: str | os.PathLike) -> str:
    """The source of the notebook's first cell tagged ``parameters`` ("" if none)."""
    try:
        cells = json.loads(Path(notebook).read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError) as e:
        raise ConfigError(f"{notebook} is not a readable notebook: {e}") from None
    for cell in cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = cell.get("source", "")
            return "".join(source) if isinstance(source, list) else source
    return ""


def validate_notebook_params(notebook: str | os.PathLike, params: dict) -> RunConfig:
    """Unknown names or bad values fail here, before any kernel starts; returns the run's
    :class:`RunConfig` (the notebook's defaults with ``params`` over them).

    * first what needs no torch (:func:`check_notebook_params`): names, types, allowed values,
      the data's presence - a mistyped value is refused in a fraction of a second;
    * then RunConfig's combinations by :func:`~rst_lib.engine.tasks.check_run` (the model is
      checked against the registry, a finetune's ticket is read), the masking checks'
      strength, and every ticket or run folder given must hold a model file that loads.
    """
    cfg = check_notebook_params(notebook, params)
    # torch from here on: imported here, not at the top, so that the light refusals above
    # (and the CLI's light commands) start without it
    from ..engine.checks import check_masking_parameters
    from ..engine.tasks import check_run
    check_run(cfg)
    specs = parameter_specs(notebook)
    for path in ([params["ticket"]] if params.get("ticket") else []) + list(
            params.get("tickets") or []):
        check_model_file(path)
    if params.get("masking_checks", specs.get("masking_checks", {}).get("value")) is True:
        more = params.get("masking_more_steps", specs.get("masking_more_steps", {}).get("value"))
        restarts = params.get("masking_restarts", specs.get("masking_restarts", {}).get("value"))
        if more is not None and restarts is not None:
            check_masking_parameters(cfg.eval_steps, cfg.eval_alpha_value, more, restarts,
                                     cfg.eval_restarts)
    return cfg


def check_notebook_params(notebook: str | os.PathLike, params: dict) -> RunConfig:
    """The checks of :func:`validate_notebook_params` that need neither torch nor a kernel:

    * every name must be a parameter of the notebook's ``parameters`` cell (the error lists
      the valid ones);
    * RunConfig's fields, with the notebook's own defaults, against their declaration
      (:meth:`RunConfig.validate`: types, allowed values, ranges);
    * the notebooks' own parameters against :class:`NotebookParams`;
    * the dataset's files are there (or will be downloaded).
    Returns the run's :class:`RunConfig` (validated)."""
    specs = parameter_specs(notebook)
    if not specs:
        raise ConfigError(f"{notebook} has no cell tagged 'parameters'")
    unknown = sorted(set(params) - set(specs) - {"run_dir"})
    if unknown:
        hint = did_you_mean(unknown[0], specs) if len(unknown) == 1 else ""
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}{hint} for {Path(notebook).name}; "
                          f"valid parameters: {', '.join(sorted(specs))}")
    fields = set(RunConfig.field_names())
    merged = {k: s["value"] for k, s in specs.items()
              if k in fields and s["value"] is not _NO_DEFAULT}
    merged.update({k: v for k, v in params.items() if k in fields})
    cfg = RunConfig.from_dict(merged)  # validated: types, allowed values, ranges
    own = {k: v for k, v in params.items() if k in NotebookParams.__dataclass_fields__}
    NotebookParams(**own).validate(own)
    check_available(cfg.dataset, cfg.data_dir, cfg.download)  # the data is there
    return cfg


def check_model_file(path: str) -> None:
    """A ticket (file or run folder) or a run's ``last.pt`` that will load: refused here,
    before a kernel starts, with what is wrong with it."""
    from ..engine.training import load_checkpoint  # torch: only when a model file is given
    from ..models.tickets import TicketError, read_ticket
    if any(ch in str(path) for ch in "*?["):
        return  # a glob: its matches are resolved in the notebook
    p = Path(path)
    if p.is_dir() and not (p / "ticket.pt").is_file() and list(p.glob("*/ticket.pt")):
        return  # a sweep folder: its tickets are loaded in the notebook
    try:
        p = model_file(p)
    except FileNotFoundError as e:
        raise TicketError(str(e)) from None
    if p.name != "last.pt":
        read_ticket(p)
        return
    try:
        load_checkpoint(p)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def param_file(path: str | os.PathLike) -> dict:
    """A parameter file's mapping, its relative paths taken from the project root wherever
    the command runs (``data_dir: ../shared/...`` in params/ means the project's neighbour)."""
    return resolve_paths(load_params(path), ALL_PATH_PARAMS)


def absolute_path(p) -> str:
    return os.path.abspath(os.path.expanduser(str(p)))


def path_base(cwd: str | os.PathLike | None = None) -> Path:
    """What a relative path parameter is relative to inside a notebook's kernel: the
    project root when the kernel runs inside the project (``notebooks/``, ``work/``, the
    root), else the kernel's own folder. (The CLI takes paths from where it is typed and
    hands the kernel absolute ones.)"""
    here = Path(cwd or os.getcwd()).resolve()
    return PROJECT_ROOT if here == PROJECT_ROOT or PROJECT_ROOT in here.parents else here


def normalize_params(notebook: str | os.PathLike, params: dict,
                     output_root: str | os.PathLike = "outputs") -> dict:
    """Batch defaults and absolute paths (the kernel runs in the run folder).

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
            params[k] = absolute_path(params[k])
            if k == "ticket" and Path(params[k]).is_dir():
                with contextlib.suppress(FileNotFoundError):  # else refused by validation
                    params[k] = str(model_file(params[k]))  # a run folder: its model file
    for k in PATH_LIST_PARAMS:
        v = params.get(k)
        if isinstance(v, str):
            v = [v]
        if isinstance(v, (list, tuple)):
            params[k] = [absolute_path(p) if isinstance(p, str) else p for p in v]
    return params


# ------------------------------------------------------------- the notebooks' parameters


@dataclass
class NotebookParams:
    """Parameters of the notebooks that are not run parameters (:class:`RunConfig` holds
    those): declared once here, with default, type, unit and help, like RunConfig's."""

    run_dir: str | None = param(None, "the run folder (None: a new one under outputs/<notebook>/)", "path")
    progress: bool = param(True, "progress bars")
    resume: bool = param(True, "continue trainings already in run_dir (their last.pt)")
    tickets: list[str] = param([], "ticket.pt files / run folders / globs of ONE random network (empty: search here)", "paths")
    keep_ratios: list[float] = param([0.05, 0.1, 0.3], "keep ratios searched here when tickets is empty", "fractions")
    tasks: list[str] = param(["finetune", "finetune_reinit", "finetune_full"], "the finetunes to run")
    search_epochs: int = param(5, "epochs of the ticket search when ticket is None", "epochs")
    search_lr: float = param(0.1, "its learning rate (scores)")
    transfer_examples: int | None = param(500, "test inputs attacked on every source (None: all)", "examples")
    same_network: bool = param(True, "the tickets must share one random network (RST's experiment); False: a control pair of different random networks")
    mode: str = param("batch", "R2S draws one member per query batch or per input", choices=("batch", "example"))
    eot_samples: int = param(10, "gradient samples per step of the adaptive (EOT) attack")
    eval_draws: int = param(5, "member draws the switch's accuracy is averaged over")
    r2s_examples: int | None = param(500, "test inputs of the R2S evaluation (None: all)", "examples")
    r2s_batch_size: int = param(100, "batch mode draws one member per batch: smaller batches, more draws", "examples")
    r2s_autoattack: bool = param(True, "also AutoAttack's rand version (EOT) on the switch")
    interactive: bool = param(True, "ipywidgets explorer (needs a live Jupyter front end)")
    layer: str | None = param(None, "conv layer of the filter maps (None: the last 3x3 conv)")
    top_patterns: int = param(20, "kept 3x3 patterns shown per ticket")
    eval_dataset: str | None = param(None, "test data (None: the dataset the ticket was found on)", choices=allowed("dataset"))
    pgd_steps: list[int] = param([10, 20, 50], "PGD-k for each k (step eval_alpha, eval_restarts restarts)")
    eps_curve: list[float | str] | None = param(None, "eps values of the curve (None: 0 to 1.5 x the evaluation eps)", "pixels in [0, 1]")
    curve_steps: int = param(10, "PGD steps of the curve (step scaled with eps)")
    curve_examples: int | None = param(500, "test inputs of the curve (None: all)", "examples")
    masking_checks: bool = param(True, "the gradient-masking checks of Carlini et al. (2019) on the final ticket")
    masking_examples: int | None = param(500, "test inputs of the masking checks (None: all)", "examples")
    masking_more_steps: int = param(100, "PGD steps of the 'more steps' check")
    masking_restarts: int = param(5, "restarts of the 'restarts' check")
    runs_root: str | None = param(None, "compare every metrics.json below this folder (None: the project's outputs/)", "path")
    run_dirs: list[str] = param([], "only these run folders / globs (empty: all of runs_root)", "paths")
    task_filter: list[str] | None = param(None, "only runs of these tasks, e.g. ['search'] (None: all)")
    group_by: list[str] = param(["model", "dataset", "train_attack", "task"], "runs differing only in these are one curve")
    sweep: str | None = param(None, "the sweep file whose run folders are read (its stages are the claims' runs)", "path")
    claims: list[str] | None = param(None, "only these claims, by key, e.g. ['rbrn-last-bn'] (None: all)")

    def validate(self, names: Iterable[str] | None = None) -> "NotebookParams":
        """Check the fields (those in ``names``) against their declaration, as
        :meth:`RunConfig.validate` does; eps values may be fractions ('8/255')."""
        check_fields(self, names)
        for value in self.eps_curve or []:
            parse_number("eps_curve", value)
        return self


# Where each group of RunConfig's fields begins, in the order of its declaration; a group
# runs to the next one's start ("name" comes before them all: notebooks show it first).
_SECTION_STARTS = {"run": "task", "data": "dataset", "model": "model", "optimization": "epochs",
                   "training attack": "train_attack", "evaluation": "eval_eps",
                   "monitoring": "collapse_patience"}


def _sections(cls, starts: dict[str, str]) -> dict[str, list[str]]:
    fields = [f.name for f in dataclasses.fields(cls)]
    bounds = [fields.index(first) for first in starts.values()] + [len(fields)]
    return {name: fields[a:b] for name, a, b in zip(starts, bounds, bounds[1:])}


RUN_SECTIONS = _sections(RunConfig, _SECTION_STARTS)
_MODEL = [n for n in RUN_SECTIONS["model"] if n not in ("granularity", "keep_rule", "keep_allocation", "keep_ratio_schedule",
          "keep_ratio_stages", "keep_ratio_warmup", "keep_ratio_steps", "discard", "discard_every",
          "discard_rate", "discard_progressive", "dense_first", "dense_last", "keep_scope",
          "keep_min_fraction", "rerand_freq", "rerand_rate", "rerand_lambda")]
_SEARCH = {"data": RUN_SECTIONS["data"], "model": _MODEL,
           "optimization": RUN_SECTIONS["optimization"],
           "training attack": RUN_SECTIONS["training attack"],
           "evaluation": RUN_SECTIONS["evaluation"], "monitoring": ["collapse_patience", "stop_on_collapse"]}
_HEAD = ["name", "run_dir", "progress"]
_NO_KEEP = {k: [n for n in v if n != "keep_ratio"] for k, v in _SEARCH.items()}

# Which parameters each notebook lists, by section (every name is declared above or in
# RunConfig; the cell shows each with the schema's default and help).
NOTEBOOK_PARAMETERS: dict[str, dict[str, list[str]]] = {
    "00_quickstart": {"run": _HEAD + ["seed", "device", "precision"], "data": ["dataset", "val_fraction",
                      "eval_examples", "final_examples"],
                      "model": ["model", "width", "keep_ratio", "end_with_bn"],
                      "optimization": ["epochs", "lr", "warmup_epochs"],
                      "training attack": ["train_attack", "eps", "eps_warmup_epochs", "alpha", "steps"],
                      "evaluation": ["eval_alpha", "eval_steps", "eval_early_stop", "autoattack", "autoattack_examples",
                                     "autoattack_precision", "eval_batch_size", "masking_checks", "masking_examples", "masking_more_steps",
                                     "masking_restarts"]},
    "01_search": {"run": _HEAD + ["resume"] + RUN_SECTIONS["run"], **{
        k: v for k, v in RUN_SECTIONS.items() if k != "run"},
        "checks": ["masking_checks", "masking_examples", "masking_more_steps", "masking_restarts"]},
    "02_finetune": {"run": _HEAD + ["resume", "ticket", "tasks", "finetune_init", "search_epochs",
                                    "search_lr", "seed", "device"], **_SEARCH},
    "03_transferability": {"run": _HEAD + ["resume", "tickets", "keep_ratios", "transfer_examples",
                                           "same_network", "seed", "device"], **_NO_KEEP},
    "04_r2s": {"run": _HEAD + ["resume", "tickets", "keep_ratios", "mode", "eot_samples", "eval_draws",
                               "r2s_examples", "r2s_batch_size", "r2s_autoattack", "seed", "device"],
               **_NO_KEEP},
    "05_mask_patterns": {"run": _HEAD + ["resume", "tickets", "keep_ratios", "interactive", "layer",
                                         "top_patterns", "seed", "device"], **_NO_KEEP},
    "06_evaluate": {"run": _HEAD + ["ticket", "eval_dataset", "pgd_steps", "eps_curve", "curve_steps",
                                    "curve_examples", "masking_checks", "masking_examples",
                                    "masking_more_steps", "masking_restarts", "seed", "device"],
                    **_SEARCH},
    "07_compare_runs": {"run": _HEAD + ["runs_root", "run_dirs", "task_filter", "group_by"]},
    "08_paper_claims": {"run": _HEAD + ["sweep", "runs_root", "claims"]},
}


def schema() -> dict[str, dataclasses.Field]:
    """Every parameter of the workbook: RunConfig's and the notebooks' own."""
    return {**RunConfig.__dataclass_fields__, **NotebookParams.__dataclass_fields__}


def _literal(value) -> str:
    if isinstance(value, (str, list, dict)):
        return json.dumps(value)
    return repr(value)


def render_parameters_cell(notebook: str) -> str:
    """The ``parameters`` cell of ``notebook`` (its stem) as the schema declares it."""
    fields = schema()
    lines = [f"# Parameters (papermill overrides them; `rst-workbook params {notebook}` explains each)"]
    sections = NOTEBOOK_PARAMETERS[notebook]
    width = min(28, max(len(f"{n} = {_literal(_default(fields[n]))}")
                        for names in sections.values() for n in names))
    for section, names in sections.items():
        if section != "run":
            lines.append(f"# --- {section}")
        for n in names:
            meta = fields[n].metadata
            unit = f" [{meta['unit']}]" if meta.get("unit") else ""
            text = f"{n} = {_literal(_default(fields[n]))}"
            lines.append(f"{text:<{width}}  # {meta['help']}{unit}")
    return "\n".join(lines)


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def write_parameters_cells(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """Rewrite the ``parameters`` cell of every ``notebooks/*.py`` twin from the schema
    (``make notebooks`` then syncs the .ipynb files)."""
    changed = []
    for nb in sorted(NOTEBOOK_PARAMETERS):
        path = notebooks_dir / f"{nb}.py"
        text = path.read_text()
        start = text.index(PARAMETERS_MARK) + len(PARAMETERS_MARK)
        end = text.index("\n# %%", start)
        new = text[:start] + render_parameters_cell(nb) + "\n" + text[end:]
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


PARAMETERS_MARK = '# %% tags=["parameters"]\n'


if __name__ == "__main__":  # python -m rst_lib.workbook.params: the cells from the schema
    for p in write_parameters_cells():
        print("rewrote the parameters cell of", p)
