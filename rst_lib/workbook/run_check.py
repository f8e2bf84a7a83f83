"""``rst-workbook run --check``: every check a batch run makes before its kernel starts, and
what it would build, with nothing run and nothing written (no run folder, no data cache).

The same functions as :func:`~rst_lib.workbook.runs.run_notebook` (:func:`batch_params`,
:func:`validate_notebook_params`, :func:`run_dir_mode`), plus the network built on the
``meta`` device (shapes and kept counts, no value drawn) and one line on where the data is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..data.locations import data_status
from ..errors import ConfigError
from .params import parameter_specs, validate_notebook_params
from .runs import batch_params, run_dir_mode, run_name


RUN_DIR_MODES = {"new": "new", "resume": "its unfinished run is continued",
                 "restart": "its unfinished run, with other parameters, is replaced"}


@dataclass
class RunCheck:
    """What ``run --check`` found: the parameters as the kernel would get them, the run
    folder (None: a new one) and one line per thing checked."""
    notebook: Path
    params: dict
    run_dir: Path | None
    lines: list[str]


def check_notebook_run(notebook: str | os.PathLike, params_file: str | os.PathLike | None = None,
                       overrides=(), output_root: str | os.PathLike = "outputs",
                       run_dir: str | os.PathLike | None = None) -> RunCheck:
    """Everything ``run_notebook`` with these arguments checks before a kernel starts; raises
    what it would raise (:class:`ConfigError`, ``DatasetUnavailable``, ``TicketError``, one
    line each) and writes nothing."""
    notebook = Path(notebook)
    if not notebook.is_file():
        raise ConfigError(f"notebook {str(notebook)!r} does not exist")
    output_root = Path(output_root)
    params, run_dir = batch_params(notebook, params_file, overrides, output_root, run_dir)
    lines = check_params(notebook, params)
    if run_dir is None:
        lines.append(f"run folder: a new one, {output_root.resolve() / notebook.stem}/"
                     f"{run_name(notebook, params)}-<date>-<time>")
    else:
        run_dir = Path(run_dir).resolve()
        mode = run_dir_mode(run_dir, {**params, "run_dir": str(run_dir)})
        lines.append(f"run folder: {run_dir} ({RUN_DIR_MODES[mode]})")
    return RunCheck(notebook, params, run_dir, lines)


def check_params(notebook: str | os.PathLike, params: dict) -> list[str]:
    """The checks of one set of resolved parameters (a run's or a sweep cell's): validation
    as a batch run does it, the network on the meta device, the data's place. One line per
    thing checked."""
    cfg = validate_notebook_params(notebook, params)
    specs = parameter_specs(notebook)
    lines = [f"parameters: {len(params)} given, valid for {Path(notebook).name} "
             f"({len(specs)} parameters)"]
    if "dataset" in specs:
        lines.append("data: " + data_status(cfg.dataset, cfg.data_dir, cfg.download))
    if "model" in specs:
        from ..engine.tasks import describe_model  # torch: the network is built on meta
        d = describe_model(cfg)
        net = d["network"]
        kept = (f"{d['total_kept']:,} kept at keep_ratio {cfg.keep_ratio:g}" if "keep_ratio" in specs
                else f"tickets searched at keep ratios {params.get('keep_ratios', specs.get('keep_ratios', {}).get('value'))}")
        lines.append(f"network: {net['name']} (width {net['width']:g}) for {net['num_classes']} "
                     f"classes of {net['in_channels']}x{net['image_size']}x{net['image_size']}: "
                     f"{d['total_weights']:,} masked weights in {len(d['layers'])} layers, {kept} "
                     f"(built on the meta device)")
        lines.append(f"precision: {d['precision']['summary']}")
    tickets = ([params["ticket"]] if params.get("ticket") else []) + list(params.get("tickets") or [])
    if tickets:
        lines.append(f"tickets: {len(tickets)} given, each loads: {', '.join(map(str, tickets))}")
    if "model" not in specs and "dataset" not in specs:
        lines.append("no data and no network: this notebook reads finished runs")
    return lines


def check_sweep_cell(cell) -> list[str]:
    """The checks of one sweep cell (:class:`~rst_lib.workbook.sweep_files.SweepCell`), as
    the sweep makes them before it starts: a ticket, tickets or weights that an earlier
    stage's cells make (``from_stage``) do not exist yet and are checked when the cell
    starts, after those cells; everything else is checked now."""
    from .sweep_files import checkable_params
    lines = check_params(cell.notebook, checkable_params(cell.params, cell.depends_on))
    if cell.depends_on:
        lines.append(f"reads: {', '.join(cell.depends_on)} (made by this sweep first; "
                     "checked when the cell starts)")
    return lines
