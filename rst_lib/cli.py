"""``rst-workbook``: run notebooks in batch, run sweeps, index the runs.

    rst-workbook run notebooks/01_search.ipynb -p params/01_search/cpu-demo.yaml -p keep_ratio=0.05
    rst-workbook sweep params/sweeps/keep-ratios-cpu.yaml --jobs 2
    rst-workbook index                       # rewrite outputs/index.html
    rst-workbook params 01_search            # a notebook's parameters and defaults

Every run gets its own folder under outputs/ with the executed notebook, report.html
(self-contained) and run.json (status, failing cell); outputs/index.html lists them all.
Parameters are checked before any kernel starts. A sweep skips the cells that finished
before, so re-running an interrupted sweep finishes only what is missing.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .config import ConfigError


def _split_params(parser, values: list[str]):
    files = [p for p in values if "=" not in p or Path(p).is_file()]
    overrides = [p for p in values if p not in files]
    if len(files) > 1:
        parser.error("give at most one parameter file; use key=value for the rest")
    return (files[0] if files else None), overrides


def _notebook_path(name: str) -> str:
    p = Path(name)
    if p.is_file():
        return str(p)
    for cand in (Path(name + ".ipynb"), Path("notebooks") / name, Path("notebooks") / (name + ".ipynb")):
        if cand.is_file():
            return str(cand)
    return name  # run_notebook reports it missing


def _last_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[-1] if text else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rst-workbook", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute a notebook with papermill into outputs/")
    run.add_argument("notebook", help="a notebook path, or a name in notebooks/ (01_search)")
    run.add_argument("-p", "--param", action="append", default=[],
                     help="a YAML parameter file, or key=value (repeatable; later wins)")
    run.add_argument("-o", "--output-root", default="outputs")
    run.add_argument("--run-dir", default=None,
                     help="run into this folder instead of a new timestamped one (it must not "
                          "hold a finished run; an unfinished one with the same parameters "
                          "is continued)")
    run.add_argument("--no-progress", action="store_true")

    sw = sub.add_parser("sweep", help="run a grid of parameters (skips finished cells)")
    sw.add_argument("sweep", help="a sweep YAML file (see params/sweeps/)")
    sw.add_argument("-j", "--jobs", type=int, default=None,
                    help="cells at once (default: the file's jobs, else one per visible GPU, else 1)")
    sw.add_argument("-p", "--param", action="append", default=[],
                    help="key=value applied to every cell (repeatable)")
    sw.add_argument("-o", "--output-root", default=None, help="default: outputs")
    sw.add_argument("--skip-failed", action="store_true",
                    help="do not retry cells that failed before")
    sw.add_argument("--dry-run", action="store_true", help="list the cells and their status")
    sw.add_argument("--no-progress", action="store_true")

    ix = sub.add_parser("index", help="rewrite OUTPUT_ROOT/index.html from the runs there")
    ix.add_argument("-o", "--output-root", default="outputs")

    pa = sub.add_parser("params", help="list a notebook's parameters with their defaults")
    pa.add_argument("notebook")
    args = parser.parse_args(argv)
    from .runner import RunExists

    # SIGTERM (kill) behaves like Ctrl-C: the run records "interrupted" and stops its kernel.
    def _terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    previous = signal.signal(signal.SIGTERM, _terminate)

    try:
        if args.command == "run":
            from .runner import run_notebook
            params_file, overrides = _split_params(parser, args.param)
            try:
                run_dir = run_notebook(_notebook_path(args.notebook), params_file, overrides,
                                       args.output_root, progress=not args.no_progress,
                                       run_dir=args.run_dir)
            except ConfigError:
                raise
            except KeyboardInterrupt:
                raise
            except Exception as e:  # papermill failure: run.json and the report were written
                print(f"rst-workbook: the notebook failed: {type(e).__name__}: {_last_line(e)}",
                      file=sys.stderr)
                return 1
            print(f"run directory: {run_dir}")
            print(f"report:        {run_dir / 'report.html'}")
            return 0
        if args.command == "sweep":
            from .runner import run_sweep
            bad = [p for p in args.param if "=" not in p]
            if bad:
                parser.error(f"sweep takes key=value overrides only, got {bad}")
            result = run_sweep(args.sweep, args.jobs, args.param, args.output_root,
                               progress=not args.no_progress, retry_failed=not args.skip_failed,
                               dry_run=args.dry_run)
            if result.interrupted:
                return 130
            return 0 if result.ok else 1
        if args.command == "index":
            from .report import write_index
            print(write_index(args.output_root))
            return 0
        if args.command == "params":
            from .runner import parameter_specs
            specs = parameter_specs(_notebook_path(args.notebook))
            width = max(map(len, specs), default=0)
            for name, spec in specs.items():
                help_ = f"  # {spec['help']}" if spec["help"] else ""
                print(f"{name:<{width}} = {spec['default']}{help_}")
            return 0
    except RunExists as e:
        print(f"rst-workbook: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"rst-workbook: parameter error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rst-workbook: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
