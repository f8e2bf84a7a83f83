"""``rst-workbook``: run notebooks in batch, run sweeps, index the runs, train directly.

    rst-workbook run 01_search -p params/01_search/cpu-demo.yaml -p keep_ratio=0.05
    rst-workbook run 01_search -p params/01_search/cifar10-cpu.yaml --check   # check only
    rst-workbook new 01_search               # work/01_search-work.ipynb: a copy to explore in JupyterLab
    rst-workbook sweep params/sweeps/keep-ratios-cpu.yaml --jobs 2
    rst-workbook sweep params/sweeps/smoke.yaml --executor slurm --partition debug
    rst-workbook sweep params/sweeps/smoke.yaml --status
    rst-workbook index                       # rewrite outputs/index.html
    rst-workbook params 01_search            # a notebook's parameters and defaults
    rst-workbook model -p params/presets/rbrn-resnet34-cifar10.yaml   # the network it builds
    rst-workbook import ckpt/cResNet18_0.05.pth --source rst -o tickets/rst18   # a seed's checkpoint
    rst-workbook export outputs/01_search/RUN -o exported/RUN   # a ticket as a plain torch model
    torchrun --nproc_per_node=4 -m rst_lib.workbook.cli train -p params/presets/rbrn-resnet34-cifar10.yaml --run-dir DIR

Works from any folder: notebooks are found by name in the project; a relative path in a
parameter file is taken from the project root (the same in every folder, and in notebooks),
one typed as -p key=value or as an argument from the folder you typed the command in; runs
go to the project's outputs/ unless -o says otherwise. Every run gets its own folder with the executed notebook,
report.html (self-contained) and run.json; outputs/index.html lists them all.
Parameters, data and tickets are checked before any kernel starts (exit code 2).
"""
from __future__ import annotations

# Only what every command needs is imported here: the light commands (--help, params, model's
# parameter check, index, sweep --status, new, every refused parameter) start without torch,
# papermill, nbformat or scipy (issue 27; tests/test_cli_startup.py). Each command imports
# its machinery when it runs.
import argparse
import json
import os
import sys
from pathlib import Path

from ..config import RunConfig, load_params
from ..errors import ConfigError, did_you_mean
from ..interop.sources import PARAMS as IMPORT_PARAMS, SOURCES
from ..utils.files import sigterm_as_interrupt
from .cluster import EXECUTORS, SlurmOptions, add_arguments, cell_states, cli_options, status_lines
from .params import (PROJECT_ROOT, check_notebook_params, find_notebook, param_file,
                     parameter_specs, schema)
from .runs import RunExists
from .sweep_files import load_sweep


def _param_values(values: list[str], known: set[str]) -> tuple[list[str], list[str]]:
    """Split ``-p`` values into parameter files and ``key=value`` overrides."""
    files, overrides = [], []
    for v in values:
        if "=" in v and not Path(v).is_file():
            overrides.append(v)
        elif Path(v).is_file():
            files.append(v)
        elif v in known:
            raise ConfigError(f"-p {v}: give a value as -p {v}=VALUE (one argument, no space)")
        else:
            raise ConfigError(f"-p {v}: no parameter file at {str(Path(v).resolve())!r}, and not "
                              f"key=value{did_you_mean(v, known)}")
    return files, overrides


def _params(values: list[str], known: set[str]) -> dict:
    """Every ``-p`` in order: parameter files merged (their relative paths from the project
    root), then ``key=value`` overrides (their relative paths from the current folder)."""
    files, overrides = _param_values(values, known)
    params: dict = {}
    for f in files:
        params.update(param_file(f))
    params.update(load_params(None, overrides))
    return params


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rst-workbook", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    out_help = "the folder that holds the runs (default: the project's outputs/)"
    run = sub.add_parser("run", help="execute a notebook with papermill into outputs/")
    run.add_argument("notebook", help="a name in notebooks/ (01_search) or a notebook path")
    run.add_argument("-p", "--param", action="append", default=[],
                     help="a YAML parameter file, or key=value (repeatable; later wins)")
    run.add_argument("-o", "--output-root", default=None, help=out_help)
    run.add_argument("--run-dir", default=None,
                     help="run into this folder instead of a new timestamped one (it must not "
                          "hold a finished run; an unfinished one with the same parameters "
                          "is continued)")
    run.add_argument("--no-progress", action="store_true",
                     help="print no progress lines (one per epoch, the final evaluation's "
                          "stages); they still go to the run folder's log.txt")
    run.add_argument("--check", action="store_true",
                     help="check only: every check a run makes before its kernel starts, the "
                          "network built on the meta device, where the data is; nothing is "
                          "run or written")

    new = sub.add_parser("new", help="a working copy of a notebook in work/ (ignored by git) to "
                                     "open in JupyterLab; notebooks/ stays untouched")
    new.add_argument("notebook", help="a name in notebooks/ (01_search) or a notebook path")
    new.add_argument("name", nargs="?", default=None,
                     help="the copy's name: work/NAME.ipynb (default: NOTEBOOK-work)")
    new.add_argument("-p", "--param", action="append", default=[],
                     help="a YAML parameter file, or key=value, written into the copy's "
                          "parameters cell (repeatable; later wins)")
    new.add_argument("--force", action="store_true", help="replace an existing copy")

    sw = sub.add_parser("sweep", help="run a grid of parameters (skips finished cells)")
    sw.add_argument("sweep", help="a sweep YAML file (see params/sweeps/)")
    sw.add_argument("-j", "--jobs", type=int, default=None,
                    help="cells at once (default: the file's jobs, else one per visible GPU, else 1)")
    sw.add_argument("-p", "--param", action="append", default=[],
                    help="key=value applied to every cell (repeatable)")
    sw.add_argument("-o", "--output-root", default=None, help=out_help)
    sw.add_argument("--skip-failed", action="store_true",
                    help="do not retry cells that failed before")
    sw.add_argument("--dry-run", action="store_true", help="list the cells and their status")
    sw.add_argument("--max-cells", type=int, default=None, metavar="N",
                    help="start at most N cells, then stop (run a study cell by cell, e.g. under flock)")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    sw.add_argument("--executor", choices=EXECUTORS, default=None,
                    help="local: processes on this machine (default); slurm: one job per cell "
                         "through submitit; submitit-local: submitit's local executor (no Slurm)")
    sw.add_argument("--status", action="store_true",
                    help="list each cell's state (finished, running, queued, failed) and exit")
    add_arguments(sw)

    ix = sub.add_parser("index", help="rewrite index.html in the output root from its runs")
    ix.add_argument("-o", "--output-root", default=None, help=out_help)

    rp = sub.add_parser("report", help="a run made in JupyterLab: its executed notebook (the "
                        "working copy as saved) and report.html into its folder, as a batch run has")
    rp.add_argument("run_dir", help="the run folder (printed by the notebook)")
    rp.add_argument("notebook", nargs="?", default=None,
                    help="the notebook that made it (default: the working copy in its run.json)")

    pa = sub.add_parser("params", help="list a notebook's parameters with their defaults")
    pa.add_argument("notebook", help="a name in notebooks/ (01_search) or a notebook path")

    mo = sub.add_parser("model", help="the network a parameter set builds: its resolved "
                        "parameters and every masked layer's weights and kept weights (no data needed)")
    mo.add_argument("-p", "--param", action="append", default=[],
                    help="a YAML parameter file, or key=value (repeatable; later wins)")
    mo.add_argument("--json", action="store_true",
                    help='print {"config", "network", "layers", "total_weights", "total_kept"} as JSON')

    tr = sub.add_parser("train", help="train one run directly (no notebook; torchrun-able)")
    tr.add_argument("-p", "--param", action="append", default=[],
                    help="a YAML parameter file, or key=value (repeatable; later wins)")
    tr.add_argument("--run-dir", required=True,
                    help="the run folder (every torchrun rank gets the same; rank 0 writes)")
    tr.add_argument("--resume", action="store_true", help="continue from its last.pt")

    im = sub.add_parser("import", help="a checkpoint of the seeds' code (RST, RBRN) as a "
                                       "ticket folder (see docs/interop.md)")
    im.add_argument("checkpoint", help="the .pth the seed's trainer wrote")
    im.add_argument("--source", required=True, choices=SOURCES, help="the code that wrote it")
    im.add_argument("-p", "--param", action="append", default=[],
                    help="key=value: " + "; ".join(f"{k}: {v}" for k, v in IMPORT_PARAMS.items()))
    im.add_argument("-o", "--output", required=True, help="a new (or empty) ticket folder")

    ex = sub.add_parser("export", help="write a ticket as a model that loads without rst_lib "
                                       "(torch.export program, plain state_dict, ONNX, model card)")
    ex.add_argument("ticket", help="a ticket file or a run / ticket folder")
    ex.add_argument("-o", "--output", required=True, help="a new (or empty) folder")
    ex.add_argument("--images", type=int, default=64, help="test images of the logit check")
    ex.add_argument("--no-onnx", action="store_true", help="skip model.onnx")
    return parser


def _output_root(arg: str | None) -> Path:
    return Path(arg).resolve() if arg else PROJECT_ROOT / "outputs"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # the kernel runs elsewhere: the default data folder is the one the user stands in
    os.environ.setdefault("RST_DATA_DIR", str(Path("data").resolve()))
    try:
        with sigterm_as_interrupt():  # kill behaves like Ctrl-C: "interrupted", kernel stopped
            return _command(args)
    except (RunExists, ConfigError, FileNotFoundError, FileExistsError) as e:
        print(f"rst-workbook: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rst-workbook: interrupted", file=sys.stderr)
        return 130


def _sweep_executor(args) -> str:
    executor = load_sweep(args.sweep, args.param, _output_root(args.output_root),
                          validate=False).executor or "local"
    if executor not in EXECUTORS:
        raise ConfigError(f"{args.sweep}: executor={executor!r} is invalid: valid "
                          f"{', '.join(EXECUTORS)}")
    return executor


def _run(args) -> int:
    notebook = find_notebook(args.notebook)
    params = _params(args.param, set(parameter_specs(notebook)))
    check_notebook_params(notebook, params)  # a mistyped value is refused before torch loads
    if args.check:
        from .run_check import check_notebook_run
        found = check_notebook_run(notebook, None, params, _output_root(args.output_root),
                                   run_dir=args.run_dir)
        print(f"{notebook.name}: ready to run (nothing was run or written)")
        for line in found.lines:
            print(f"  {line}")
        return 0
    import papermill
    from .runs import run_notebook
    try:
        run_dir = run_notebook(notebook, None, params, _output_root(args.output_root),
                               progress=not args.no_progress, run_dir=args.run_dir)
    except papermill.PapermillExecutionError as e:  # run.json and the report say where
        print(f"rst-workbook: the notebook failed in cell {e.exec_count}: {e.ename}: "
              f"{e.evalue}", file=sys.stderr)
        return 1
    print(f"run directory: {run_dir}")
    print(f"report:        {run_dir / 'report.html'}")
    return 0


def _new(args) -> int:
    from .working_copy import new_working_copy
    notebook = find_notebook(args.notebook)
    params = _params(args.param, set(parameter_specs(notebook)))
    path = new_working_copy(notebook, args.name, params, force=args.force)
    print(f"working copy: {path}")
    print(f"open it in JupyterLab (`jupyter lab` in {PROJECT_ROOT}): "
          f"{path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path}")
    return 0


def _sweep(args) -> int:
    bad = [p for p in args.param if "=" not in p]
    if bad:
        raise ConfigError(f"sweep takes key=value overrides only, got {bad}")
    if args.status:  # the cells' states: no cell is checked again (nothing starts)
        sweep = load_sweep(args.sweep, args.param, _output_root(args.output_root), validate=False)
        for line in status_lines(cell_states(sweep)):
            print(line)
        return 0
    executor = args.executor or _sweep_executor(args)
    if executor != "local" and args.max_cells is not None:
        raise ConfigError("--max-cells runs cells here, one batch at a time: it needs the local "
                          f"executor (this sweep would go to {executor})")
    if executor != "local":  # submit what is missing as cluster jobs
        from .cluster import submit_sweep
        sweep = load_sweep(args.sweep, args.param, _output_root(args.output_root))
        options = SlurmOptions.from_mapping(sweep.slurm, f"{args.sweep}: slurm").merged(
            cli_options(args))
        submit_sweep(sweep, executor, options, dry_run=args.dry_run)
        if not args.dry_run:
            print(f"watch it: rst-workbook sweep {args.sweep} --status")
        return 0
    from .sweeps import run_sweep
    result = run_sweep(args.sweep, args.jobs, args.param, _output_root(args.output_root),
                       progress=not args.no_progress, retry_failed=not args.skip_failed,
                       dry_run=args.dry_run, max_cells=args.max_cells)
    if result.interrupted:
        return 130
    return 0 if result.ok else 1


def _index(args) -> int:
    from .index import write_index
    print(write_index(_output_root(args.output_root)))
    return 0


def _list_params(args) -> int:
    specs = parameter_specs(find_notebook(args.notebook))
    width = max(map(len, specs), default=0)
    for name, spec in specs.items():
        help_ = f"  # {spec['help']}" if spec["help"] else ""
        print(f"{name:<{width}} = {spec['default']}{help_}")
    return 0


def _model(args) -> int:
    # a notebook's parameter file works as given: its notebook-only names (masking_examples,
    # keep_ratios, ...) are known and do not shape the network; a misspelt name is refused
    known = set(schema())
    params = _params(args.param, known)
    for name in params:
        if name not in known:
            raise ConfigError(f"unknown parameter {name!r}{did_you_mean(name, known)}")
    run_fields = set(RunConfig.field_names())
    cfg = RunConfig.from_dict({k: v for k, v in params.items() if k in run_fields})
    from ..engine.tasks import describe_model  # torch: the network is built on the meta device
    description = describe_model(cfg)
    print(json.dumps(description, indent=1) if args.json else model_text(description))
    return 0


def _train(args) -> int:
    cfg = RunConfig.from_dict(_params(args.param, set(RunConfig.field_names())))
    from ..engine.training import train
    train(cfg, args.run_dir, progress=True, resume=args.resume)
    return 0


def _import(args) -> int:
    from ..interop import import_checkpoint
    params = _params(args.param, set(IMPORT_PARAMS))
    out = import_checkpoint(args.checkpoint, args.source, args.output, params)
    rec = json.loads((out / "import.json").read_text())
    print(f"imported {rec['params']['model']} ({rec['source']}) as {rec['model_config']['name']}: "
          f"{rec['total_kept']:,} of {rec['total_weights']:,} masked weights kept in "
          f"{len(rec['layers'])} layers")
    print(f"ticket folder: {out}")
    return 0


def _export(args) -> int:
    from ..interop import export_ticket
    out = export_ticket(args.ticket, args.output, images=args.images, onnx=not args.no_onnx)
    print((out / "export_log.txt").read_text())
    print(f"exported to {out}")
    return 0


def _report(args) -> int:
    from .live_runs import report_run
    print(report_run(args.run_dir, args.notebook))
    return 0


# one function per subcommand (a new subcommand: its parser above, its function here)
COMMANDS = {"run": _run, "new": _new, "sweep": _sweep, "index": _index, "params": _list_params,
            "model": _model, "report": _report, "train": _train, "import": _import, "export": _export}


def _command(args) -> int:
    return COMMANDS[args.command](args)


def model_text(description: dict) -> str:
    """``rst-workbook model``'s table: the resolved parameters, then one line per masked layer."""
    config = description["config"]
    width = max(map(len, config))
    lines = [f"{k:<{width}} = {v}" for k, v in config.items()]
    net = description["network"]
    lines += ["", f"{net['name']} for {net['num_classes']} classes of {net['in_channels']}x"
              f"{net['image_size']}x{net['image_size']}, normalized by mean {net['mean']} std {net['std']}"]
    rows = [(d["name"], "x".join(map(str, d["shape"])), f"{d['weights']:,}", f"{d['kept']:,}",
             f"{d['keep_ratio']:.6g}") for d in description["layers"]]
    rows.append(("total", "", f"{description['total_weights']:,}", f"{description['total_kept']:,}",
                 f"{description['total_kept'] / max(1, description['total_weights']):.6g}"))
    head = ("masked layer", "shape", "weights", "kept", "keep ratio")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(5)]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines += ["", fmt(head)] + [fmt(r) for r in rows]
    if description.get("note"):
        lines += ["", description["note"]]
    if description.get("precision"):
        lines += ["", f"precision on this machine: {description['precision']['summary']}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
