"""``rst-workbook`` command line: run a notebook in batch with a parameter file.

    rst-workbook run notebooks/00_quickstart.ipynb -p params/quickstart.yaml -p epochs=2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rst-workbook", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute a notebook with papermill into outputs/")
    run.add_argument("notebook")
    run.add_argument("-p", "--param", action="append", default=[],
                     help="a YAML parameter file, or key=value (repeatable; later wins)")
    run.add_argument("-o", "--output-root", default="outputs")
    run.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from .runner import run_notebook
    files = [p for p in args.param if "=" not in p or Path(p).is_file()]
    overrides = [p for p in args.param if p not in files]
    if len(files) > 1:
        parser.error("give at most one parameter file; use key=value for the rest")
    try:
        run_dir = run_notebook(args.notebook, files[0] if files else None, overrides,
                               args.output_root, progress=not args.no_progress)
    except ConfigError as e:
        print(f"rst-workbook: parameter error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # papermill failure: the report was still written
        print(f"rst-workbook: the notebook failed: {type(e).__name__}: "
              f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}", file=sys.stderr)
        return 1
    print(f"run directory: {run_dir}")
    print(f"report:        {run_dir / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
