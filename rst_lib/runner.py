"""Run a workbook notebook in batch: papermill into a fresh run directory, then HTML.

``run_notebook("notebooks/00_quickstart.ipynb", "params/quickstart.yaml")`` validates the
parameters against the notebook's ``parameters`` cell and :class:`RunConfig` *before*
starting a kernel, creates ``outputs/<notebook>/<name>-<timestamp>/``, executes the
notebook there (it receives ``run_dir``), and renders ``report.html`` — also when a cell
fails, so the report shows where it stopped.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml

from .config import ConfigError, RunConfig, load_params
from .train import new_run_dir, write_json

KERNEL_NAME = "rst-workbook"  # installed into the venv by `make`; falls back to python3


def notebook_parameters(notebook: str | os.PathLike) -> dict:
    """Names and default values (as source text) of a notebook's ``parameters`` cell."""
    import papermill
    return {name: info["default"] for name, info in papermill.inspect_notebook(str(notebook)).items()}


def validate_notebook_params(notebook: str | os.PathLike, params: dict) -> None:
    """Unknown names or bad values fail here, before any kernel starts."""
    allowed = notebook_parameters(notebook)
    if not allowed:
        raise ConfigError(f"{notebook} has no cell tagged 'parameters'")
    unknown = sorted(set(params) - set(allowed) - {"run_dir"})
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for {Path(notebook).name}; "
                          f"valid parameters: {', '.join(sorted(allowed))}")
    fields = set(RunConfig.field_names())
    RunConfig.from_dict({k: v for k, v in params.items() if k in fields})


def _kernel_name() -> str:
    from jupyter_client.kernelspec import KernelSpecManager
    return KERNEL_NAME if KERNEL_NAME in KernelSpecManager().find_kernel_specs() else "python3"


def render_html(notebook_path: str | os.PathLike, html_path: str | os.PathLike | None = None) -> Path:
    """Render an executed notebook to one self-contained HTML file (figures embedded)."""
    import nbformat
    from nbconvert import HTMLExporter
    notebook_path = Path(notebook_path)
    html_path = Path(html_path) if html_path else notebook_path.with_suffix(".html")
    nb = nbformat.read(notebook_path, as_version=4)
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    body, _ = exporter.from_notebook_node(nb)
    html_path.write_text(body, encoding="utf-8")
    return html_path


def run_notebook(notebook: str | os.PathLike, params_file: str | os.PathLike | None = None,
                 overrides=(), output_root: str | os.PathLike = "outputs",
                 progress: bool = True) -> Path:
    """Execute ``notebook`` with parameters into a new run directory; returns that directory."""
    import papermill
    notebook = Path(notebook)
    if not notebook.is_file():
        raise ConfigError(f"notebook {str(notebook)!r} does not exist")
    params = load_params(params_file, overrides)
    validate_notebook_params(notebook, params)
    name = str(params.get("name") or notebook.stem)
    run_dir = new_run_dir(Path(output_root) / notebook.stem, name)
    params["run_dir"] = str(run_dir.resolve())
    (run_dir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out_nb = run_dir / f"{notebook.stem}.ipynb"
    t0 = time.time()
    status = {"notebook": str(notebook), "params_file": str(params_file) if params_file else None,
              "status": "running"}
    write_json(run_dir / "run.json", status)
    try:
        papermill.execute_notebook(str(notebook), str(out_nb), parameters=params,
                                   kernel_name=_kernel_name(), progress_bar=progress,
                                   cwd=str(notebook.parent.resolve()))
        status["status"] = "finished"
    except papermill.PapermillExecutionError as e:
        status.update(status="failed", failed_cell=e.exec_count, error=f"{e.ename}: {e.evalue}")
        raise
    except BaseException as e:  # interrupted: keep what ran
        status.update(status="interrupted", error=repr(e))
        raise
    finally:
        status["seconds"] = round(time.time() - t0, 1)
        if out_nb.exists():
            status["report"] = str(render_html(out_nb, run_dir / "report.html").name)
        write_json(run_dir / "run.json", status)
    return run_dir


def read_run(run_dir: str | os.PathLike) -> dict:
    run_dir = Path(run_dir)
    out = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    if (run_dir / "metrics.json").exists():
        out["metrics"] = json.loads((run_dir / "metrics.json").read_text())
    return out
