"""Sweep files: a grid of parameters (or several notebooks' grids, ``stages:``) expanded into
cells, each with its run folder and checked parameters (:func:`load_sweep`).

:func:`rst_lib.workbook.sweeps.run_sweep` (``run_sweep("params/sweeps/keep-ratios-cpu.yaml")`` expands a grid of parameters into
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
    executor: slurm                           # optional: local (default) | slurm; --executor wins
    slurm: {partition: gpu, gpus_per_cell: 1, time: 600}   # job options (rst_lib.workbook.cluster)

With ``seeds``, each of ``cells`` runs once per seed too (a cell that sets its own seed once).
A study over several notebooks is one file with ``stages:``, a list of such specs (each
with its ``stage`` name and its own ``notebook``, ``params``, ``set``, ``grid``, ``seeds``, ``cells``; the top
level's ``set`` and ``seeds`` are their defaults). All cells of all stages form one sweep
(the same jobs pool, the same resume); a stage's cells go to
``outputs/<its notebook>/<sweep>/<stage>/<cell>/``. Stages do not feed each other: a notebook that
needs a ticket searches its own (``02_finetune`` with ``ticket: null``).
"""
from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_params, read_yaml_mapping
from ..errors import ConfigError
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
               validate: bool = True, base: str | os.PathLike | None = None) -> Sweep:
    """Read a sweep file (see the module docstring), expand it and check every cell.

    Every cell's parameters are validated before anything runs; ``overrides``
    (``key=value`` strings or a dict) apply to every cell. A relative output root (the
    default ``outputs`` too) is taken from ``base`` (None: the current folder, as typed).
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
    root = Path(base or ".") / Path(output_root or spec.get("output_root") or "outputs")
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
