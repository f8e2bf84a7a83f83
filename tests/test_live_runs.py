"""A run made in a live kernel (a working copy in JupyterLab) leaves the records a batch
run leaves: run.json with its parameters and status, and on request the executed notebook
and report.html (`rst-workbook report RUN_DIR`); the index lists it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat

from rst_lib.utils.files import write_json
from rst_lib.workbook.index import run_rows
from rst_lib.workbook.live_runs import finish_run, record_start
from rst_lib.workbook.notebooks import ensure_run_dir
from rst_lib.workbook.params import PROJECT_ROOT, parameter_specs
from rst_lib.workbook.runs import run_status

ROOT = Path(__file__).resolve().parents[1]


def _working_copy(path: Path) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# a working copy"),
                                         nbformat.v4.new_code_cell("print('the ticket')", outputs=[
                                             nbformat.v4.new_output("stream", text="the ticket\n")])])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_a_live_run_records_itself_finishes_and_reports_like_a_batch_run(tmp_path, monkeypatch, capsys):
    copy = _working_copy(tmp_path / "01_search-work.ipynb")
    monkeypatch.setenv("JPY_SESSION_NAME", str(copy))  # what Jupyter server gives the kernel
    outputs = tmp_path / "outputs"
    namespace = {name: None for name in parameter_specs(PROJECT_ROOT / "notebooks" / "01_search.ipynb")}
    namespace.update(name="live", keep_ratio=0.2, data_dir=str(tmp_path), cfg=object())
    run_dir = ensure_run_dir(None, "01_search", "live", namespace, outputs=outputs)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "running" and run_status(run_dir) == "running"  # this process lives
    assert info["notebook"] == "notebooks/01_search.ipynb" and info["working_copy"] == str(copy)
    assert info["params"]["keep_ratio"] == 0.2 and info["params"]["run_dir"] == str(run_dir.resolve())
    assert "cfg" not in info["params"]  # only the notebook's parameters
    write_json(run_dir / "summary.json", {"headline": {"clean_acc": 0.5, "dataset": "mnist"}})
    finish_run(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["seconds"] >= 0 and "pid" not in info
    assert f"rst-workbook report {run_dir}" in capsys.readouterr().out
    rows = run_rows(outputs)
    assert [(r["notebook"], r["status"]) for r in rows] == [("01_search", "finished")]
    assert (outputs / "index.html").is_file()
    # on request: the executed notebook (the working copy as saved) and report.html
    res = subprocess.run([sys.executable, "-m", "rst_lib.workbook.cli", "report", str(run_dir)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert (run_dir / "01_search.ipynb").read_bytes() == copy.read_bytes()
    html = (run_dir / "report.html").read_text()
    assert "the ticket" in html and "keep_ratio" in html
    assert json.loads((run_dir / "run.json").read_text())["report"] == "report.html"
    assert run_rows(outputs)[0]["report"] == f"{run_dir.relative_to(outputs).as_posix()}/report.html"


def test_a_batch_runs_folder_is_left_to_the_batch_run(tmp_path):
    run_dir = tmp_path / "outputs" / "01_search" / "batch"
    run_dir.mkdir(parents=True)
    batch = {"notebook": "notebooks/01_search.ipynb", "status": "running", "params": {"name": "b"}}
    write_json(run_dir / "run.json", batch)
    assert ensure_run_dir(run_dir, "01_search", "b", {"name": "other"}) == run_dir
    assert not record_start(run_dir, "01_search", {"name": "other"})
    finish_run(run_dir)  # the notebook's last cell in a batch run: run_notebook finishes it
    assert json.loads((run_dir / "run.json").read_text()) == batch


def test_a_killed_live_kernel_reads_dead(tmp_path):
    run_dir = tmp_path / "outputs" / "01_search" / "x"
    run_dir.mkdir(parents=True)
    record_start(run_dir, "01_search", {"name": "x"})
    info = json.loads((run_dir / "run.json").read_text())
    info["pid"] = 2 ** 22 + 12345  # no such process
    write_json(run_dir / "run.json", info)
    assert run_status(run_dir) == "dead"
