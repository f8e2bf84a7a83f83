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
``outputs/<its notebook>/<sweep>/<stage>/<cell>/``.

**Stages feed later stages** through references in ``set`` or ``cells`` (resolved per cell,
the referenced cell having the same seed; the sweep runs a cell only once the cells it reads
have finished, and fails it when one of them failed; the local executor does this, the Slurm
executor does not order cells yet)::

    ticket: {from_stage: search, keep_ratio: 0.5}      # that cell's ticket.pt
    tickets: [{from_stage: search, keep_ratio: 0.3},    # a list of them
              {from_stage: search, keep_ratio: 0.5, seed: next}]  # the next seed's network
    tickets: [{from_stage: partner},                    # ... or the cell of seed + 100 of a
              {from_stage: control, seed_offset: 100}]  # stage of its own (no ticket shared)
    pretrained: {from_stage: dense-rtt}                  # a trained dense network's weights
    lr: {chosen_in: dense-lr, by: robust}                # the value of the pilot stage's cell
                                                         # with the best validation accuracy

``chosen_in`` picks, among a pilot stage's finished cells, the value of the parameter in the
cell whose best epoch (chosen on the validation split, ``metrics.json`` ``best``) has the
highest ``by`` accuracy (``robust``: PGD on the validation split, or ``clean``).

**A committed study** (``study: studies/<name>``, relative to the project root): each finished
cell's compact record (:data:`RECORD_FILES`: ``run.json``, ``metrics.json``, ``summary.json``,
the notebooks' result files, ``params.yaml`` and the ~0.1 MB ``ticket.pt``, and the
``metrics.json`` of each sub-run) is copied to ``<study>/<stage>/<cell>/``. A cell whose record
says finished is not run again (on a fresh clone too), references read the records' tickets,
and notebook 08 reads the records: a study can run over several sessions and machines.
"""
from __future__ import annotations

import itertools
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_params, read_yaml_mapping
from ..utils.files import read_json
from ..errors import ConfigError
from ..utils.project import resolve_paths
from .params import (ALL_PATH_PARAMS, PROJECT_ROOT, absolute_path, normalize_params, param_file,
                     validate_notebook_params)


@dataclass
class SweepCell:
    name: str
    params: dict
    run_dir: Path
    notebook: Path | None = None      # a stage's notebook (None: the sweep's)
    params_file: Path | None = None   # a stage's parameter file (None: the sweep's)
    stage: str | None = None
    record_dir: Path | None = None    # its committed record (a sweep with study:), else None
    depends_on: list = field(default_factory=list)  # labels of the cells it reads
    choices: dict = field(default_factory=dict)     # parameter -> (pilot cells, by): chosen_in

    @property
    def committed(self) -> bool:
        """Its record in the study folder says finished."""
        return self.record_dir is not None and \
            read_json(self.record_dir / "run.json").get("status") == "finished"

    @property
    def read_dir(self) -> Path:
        """Where its results are read: the committed record if there is one, else the run folder."""
        return self.record_dir if self.committed else self.run_dir

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
    study: Path | None = None         # the committed records' folder (study:), else None


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
    """``path`` relative to the current directory, else to the sweep file's folders, else
    to the project (a sweep file kept elsewhere, read from a run folder, still finds
    ``01_search`` and ``params/...``)."""
    bases = [Path.cwd()] + ([near.parent, *near.parent.parents] if near else []) + [PROJECT_ROOT]
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
              "stages", "executor", "slurm", "study")
# what a study keeps of a finished cell (and of each sub-run folder: its metrics.json)
RECORD_FILES = ("run.json", "metrics.json", "summary.json", "params.yaml", "ticket.pt",
                "r2s.json", "transfer.json")
# a referenced parameter's value while the cells are checked before the referenced cell ran
UNRESOLVED = {"ticket": None, "tickets": [], "pretrained": None}
STAGE_KEYS = ("stage", "notebook", "params", "set", "grid", "seeds", "cells")


def checkable_params(params: dict, depends_on: list) -> dict:
    """A cell's parameters as they can be checked before the sweep runs: a ticket, tickets or
    weights that earlier cells make (``depends_on`` not empty) do not exist yet, so they are
    left out (checked when the cell starts)."""
    if not depends_on:
        return params
    return {**params, **{k: v for k, v in UNRESOLVED.items() if k in params}}


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
    study = None
    if spec.get("study"):
        study = Path(str(spec["study"]))
        if not study.is_absolute():  # relative to the project (params/sweeps/x.yaml: two up)
            folder = path.resolve().parent
            study = (folder.parent.parent if folder.name == "sweeps" and folder.parent.name == "params"
                     else folder) / study
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
        for cell in _stage_cells(stage, path, where, name, root, overrides, validate, cells, study):
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
                 spec.get("executor"), slurm, study.resolve() if study else None)


def _stage_cells(spec: dict, path: Path, where: str, name: str, root: Path, overrides,
                 validate: bool, earlier: list, study: Path | None) -> list[SweepCell]:
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
    # relative paths written in the parameter file or the sweep file are from the project root
    base = param_file(params_file) if params_file else {}
    base.update(resolve_paths(fixed, ALL_PATH_PARAMS))
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
        params = {**base, **resolve_paths(values, ALL_PATH_PARAMS)}
        if "name" not in values:
            params["name"] = f"{name}-{stage}-{cname}" if stage else f"{name}-{cname}"
        try:
            params, depends, choices = resolve_references(params, earlier, f"{where}, cell {cname}")
            params = normalize_params(notebook, params, absolute_path(root))
            if validate:  # a referenced ticket does not exist yet: checked when the cell starts
                validate_notebook_params(notebook, checkable_params(params, depends))
        except ConfigError as e:
            raise ConfigError(f"sweep {name}, cell {cname}: {e}") from None
        record = (study / str(stage) / cname) if study and stage else (study / cname if study else None)
        cells.append(SweepCell(cname, params, (directory / cname).resolve(), notebook,
                               params_file, stage, record.resolve() if record else None,
                               depends, choices))
    return cells


def _is_reference(v) -> bool:
    return isinstance(v, dict) and ("from_stage" in v or "chosen_in" in v)


def resolve_references(params: dict, earlier: list, where: str) -> tuple[dict, list, dict]:
    """A cell's parameters with ``from_stage`` references replaced by the referenced cells'
    ``ticket.pt`` paths (their records' when the sweep has a study), the labels of the cells
    it reads, and its ``chosen_in`` parameters (``{param: ([pilot cells], by)}``, resolved when
    the cell starts: :func:`choose_from_pilot`; until then the first pilot cell's value)."""
    out, depends, choices = dict(params), [], {}
    seed = params.get("seed")
    for key, value in params.items():
        refs = value if isinstance(value, list) and value and all(_is_reference(v) for v in value) else \
            [value] if _is_reference(value) else None
        if refs is None:
            continue
        if any("chosen_in" in r for r in refs):
            ref = refs[0]
            pilot = [c for c in earlier if c.stage == ref["chosen_in"]]
            if len(refs) > 1 or not pilot or key not in pilot[0].params:
                raise ConfigError(f"{where}: {key}: chosen_in needs one earlier stage whose cells "
                                  f"set {key}; got {ref}")
            by = ref.get("by", "robust")
            if by not in ("robust", "clean"):
                raise ConfigError(f"{where}: {key}: by={by!r}; expected robust or clean")
            choices[key] = ([c.label for c in pilot], by)
            depends += [c.label for c in pilot]
            out[key] = pilot[0].params[key]
            continue
        paths = []
        for ref in refs:
            stage = ref["from_stage"]
            candidates = [c for c in earlier if c.stage == stage]
            if not candidates:
                raise ConfigError(f"{where}: {key} refers to stage {stage!r}, which is not an "
                                  "earlier stage of this sweep")
            want = seed
            if ref.get("seed") == "next":  # the next seed of that stage: another random network
                seeds = sorted({c.params.get("seed") for c in candidates})
                want = seeds[(seeds.index(seed) + 1) % len(seeds)] if seed in seeds else None
            elif "seed" in ref:
                want = ref["seed"]
            if "seed_offset" in ref:  # a seed paired with this cell's, in a stage of its own
                if not isinstance(ref["seed_offset"], int) or "seed" in ref or seed is None:
                    raise ConfigError(f"{where}: {key}: seed_offset must be an integer, without "
                                      f"seed:, in a cell that has a seed; got {ref}")
                want = seed + ref["seed_offset"]
            match = [c for c in candidates if c.params.get("seed") == want and all(
                c.params.get(k) == v for k, v in ref.items()
                if k not in ("from_stage", "seed", "seed_offset"))]
            if len(match) != 1:
                raise ConfigError(f"{where}: {key}: {ref} with seed {want} matches {len(match)} "
                                  f"cells of stage {stage!r}; it must match exactly one")
            paths.append(str((match[0].record_dir or match[0].run_dir) / "ticket.pt"))
            depends.append(match[0].label)
        out[key] = paths if isinstance(value, list) else paths[0]
    return out, list(dict.fromkeys(depends)), choices


def choose_from_pilot(cell: SweepCell, cells: list) -> dict:
    """``{param: value}`` of the cell's ``chosen_in`` parameters: each from the pilot cell
    whose best epoch has the highest validation accuracy (``robust``: ``best.pgd_acc``;
    ``clean``: ``best.clean_acc``)."""
    by_label = {c.label: c for c in cells}
    out = {}
    for key, (labels, by) in cell.choices.items():
        scored = []
        for label in labels:
            pilot = by_label[label]
            best = read_json(pilot.read_dir / "metrics.json").get("best") or {}
            score = best.get("pgd_acc" if by == "robust" else "clean_acc")
            if isinstance(score, (int, float)):
                scored.append((score, pilot.params[key]))
        if not scored:
            raise ConfigError(f"cell {cell.label}: {key}: no pilot cell of {labels} has a "
                              "validation accuracy (metrics.json best)")
        out[key] = max(scored, key=lambda t: t[0])[1]
    return out


def save_record(cell: SweepCell, referenced: bool = False) -> None:
    """Copy a finished cell's compact record (:data:`RECORD_FILES`, and each sub-run's
    metrics.json) from its run folder to its study folder. A dense network's ``ticket.pt``
    holds all its trained weights (MBs): kept only when a later cell reads it (``referenced``,
    e.g. the RTT's trained network)."""
    if cell.record_dir is None:
        return
    dense = cell.params.get("task") in ("dense", "bnn")
    tmp = cell.record_dir.with_name(cell.record_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in RECORD_FILES:
        if name == "ticket.pt" and dense and not referenced:
            continue
        if (cell.run_dir / name).is_file():
            shutil.copy2(cell.run_dir / name, tmp / name)
    for sub in sorted(p for p in cell.run_dir.iterdir() if p.is_dir() and (p / "metrics.json").is_file()):
        (tmp / sub.name).mkdir()
        shutil.copy2(sub / "metrics.json", tmp / sub.name / "metrics.json")
    shutil.rmtree(cell.record_dir, ignore_errors=True)  # all or nothing: then moved in place
    tmp.rename(cell.record_dir)
