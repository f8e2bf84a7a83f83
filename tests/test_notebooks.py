"""Notebooks execute end to end through papermill (as batch runs do), and stay clean."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest

from rst_lib.config import ConfigError
from rst_lib.workbook.runs import run_notebook

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
STUDY = [p for p in NOTEBOOKS if p.stem != "00_quickstart"]
# figures each smoke report must show at least (embedded PNGs)
MIN_FIGURES = {"01_search": 3, "02_finetune": 2, "03_transferability": 1, "04_r2s": 1,
               "05_mask_patterns": 5, "06_evaluate": 2, "07_compare_runs": 2,
               "08_paper_claims": 0}  # 08 alone has no runs: every claim is "not run yet", no figure
RUNS: dict = {}  # notebook -> run directory of its smoke run (shared by the tests below)


@pytest.fixture(autouse=True, scope="module")
def _one_thread_kernels():
    # papermill kernels are separate processes: on this 2-core machine one thread is much
    # faster for the tiny smoke models (and leaves a core to others)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("MKL_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs")


def test_notebook_suite_is_complete():
    assert [p.stem for p in NOTEBOOKS] == [
        "00_quickstart", "01_search", "02_finetune", "03_transferability", "04_r2s",
        "05_mask_patterns", "06_evaluate", "07_compare_runs", "08_paper_claims"]
    for nb in STUDY:
        for name in ("smoke.yaml", "cpu-demo.yaml"):
            assert (ROOT / "params" / nb.stem / name).is_file(), f"params/{nb.stem}/{name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_and_its_py_percent_twin_are_in_sync(path):
    """The py:percent twin is the reviewed source (jupytext.toml pairs them): both hold the
    same cells, and the notebook names the project's kernel."""
    import jupytext
    twin = path.with_suffix(".py")
    assert twin.is_file(), f"{twin.name} missing: run `make notebooks` (jupytext --sync)"
    a, b = nbformat.read(path, as_version=4), jupytext.read(twin)
    assert [(c.cell_type, c.source) for c in a.cells] == [(c.cell_type, c.source) for c in b.cells]
    assert [c.metadata.get("tags", []) for c in a.cells] == \
        [c.metadata.get("tags", []) for c in b.cells]
    assert a.metadata["kernelspec"]["name"] == b.metadata["kernelspec"]["name"] == "rst-workbook"
    assert "# %%" in twin.read_text()


def _check_parameters_cell(path: Path) -> None:
    """The parameters cell of the notebook at ``path`` is the schema's rendering, and every
    name papermill sees in it is declared in the schema."""
    from rst_lib.workbook.params import render_parameters_cell, schema
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    stem = path.stem.split(".")[0]
    assert cell.source.strip() == render_parameters_cell(stem).strip(), \
        f"{path.name}: run `make notebooks` (python -m rst_lib.workbook.params) after changing the schema"
    fields = schema()
    for name in papermill.inspect_notebook(str(path)):
        assert name in fields, f"{path.name}: {name} is not declared in the schema"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_is_rendered_from_the_schema(path):
    """Each parameter of a notebook is declared once (RunConfig or NotebookParams): the cell
    lists it with the schema's default and help; `make notebooks` rewrites it."""
    _check_parameters_cell(path)


def test_schema_check_fails_on_a_drifted_default(tmp_path):
    """The check above can fail: the same check on a copy of 01_search whose parameters cell
    has a default that differs from the schema's."""
    import re
    nb = nbformat.read(NB_DIR / "01_search.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    drifted = re.sub(r"^epochs = \d+", "epochs = 999", cell.source, flags=re.M)
    assert drifted != cell.source
    cell.source = drifted
    copy = tmp_path / "01_search.ipynb"
    nbformat.write(nb, copy)
    with pytest.raises(AssertionError, match="run `make notebooks`"):
        _check_parameters_cell(copy)
    _check_parameters_cell(NB_DIR / "01_search.ipynb")  # the untouched notebook passes


def test_no_notebook_code_outside_the_notebooks():
    """Notebook cells live in notebooks/*.py (and their .ipynb pairs), not in generators."""
    for py in ROOT.rglob("*.py"):
        if any(part in (".venv", ".git", "notebooks", "tests") for part in py.relative_to(ROOT).parts):
            continue
        text = py.read_text()
        assert "new_code_cell" not in text and "nbformat.v4" not in text, py


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_committed_without_outputs_with_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None
    # papermill sees every assignment of the parameters cell (a second '=' on a line hides it)
    assigned = {line.split("=")[0].strip() for line in cells[0].source.splitlines()
                if "=" in line and not line.lstrip().startswith("#")}
    assert assigned == set(papermill.inspect_notebook(str(path)))
    if path.stem != "00_quickstart":
        assert {"name", "run_dir", "progress"} <= assigned
        assert nb.cells[0].cell_type == "markdown" and nb.cells[-1].cell_type == "code"


@pytest.mark.slow
def test_quickstart_executes_with_tiny_params(tmp_path):
    run_dir = run_notebook(ROOT / "notebooks" / "00_quickstart.ipynb",
                           ROOT / "params" / "quickstart-smoke.yaml", output_root=tmp_path,
                           progress=False)
    assert run_dir.parent == tmp_path / "00_quickstart"
    for name in ("00_quickstart.ipynb", "report.html", "metrics.json", "ticket.pt",
                 "summary.json", "params.yaml", "run.json"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {r["model"] for r in summary["final"]} == {"robust ticket", "natural ticket", "random mask"}
    html = (run_dir / "report.html").read_text()
    assert html.count('src="data:image/png;base64') >= 3  # the figures are embedded
    assert (tmp_path / "index.html").is_file()
    # a second run gets its own directory
    again = run_notebook(ROOT / "notebooks" / "00_quickstart.ipynb",
                         ROOT / "params" / "quickstart-smoke.yaml", output_root=tmp_path,
                         progress=False, overrides=["epochs=1"])
    assert again != run_dir and run_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("path", STUDY, ids=lambda p: p.stem)
def test_study_notebook_executes_with_smoke_params(path, smoke_root):
    """Every study notebook runs standalone with params/<notebook>/smoke.yaml (seconds)."""
    if path.stem == "07_compare_runs":
        _search_run(smoke_root)  # something to compare, also when it runs alone (-k)
    run_dir = run_notebook(path, ROOT / "params" / path.stem / "smoke.yaml",
                           output_root=smoke_root, progress=False)
    RUNS[path.stem] = run_dir
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished", info
    for name in (f"{path.stem}.ipynb", "report.html", "summary.json", "params.yaml"):
        assert (run_dir / name).is_file(), name
    html = (run_dir / "report.html").read_text()
    assert html.count('src="data:image/png;base64') >= MIN_FIGURES[path.stem]
    if path.stem == "08_paper_claims":  # nothing ran: said so, never judged
        assert "not run yet" in html
    assert "Traceback" not in html
    summary = json.loads((run_dir / "summary.json").read_text())
    assert isinstance(summary["headline"], dict)
    if path.stem == "01_search":
        assert (run_dir / "ticket.pt").is_file() and (run_dir / "metrics.json").is_file()
        head = summary["headline"]
        for key in ("clean_acc", "pgd_acc", "autoattack_acc", "robust_acc"):
            assert isinstance(head[key], float), key  # measured, not just present
        assert head["robust_acc"] == head["autoattack_acc"] and head["examples"] == 50
    index = (smoke_root / "index.html").read_text()
    assert f"{path.stem}/{run_dir.name}/report.html" in index


def _search_run(smoke_root) -> Path:
    """The 01_search smoke run of this module, made here when no earlier test made it."""
    if "01_search" not in RUNS:
        RUNS["01_search"] = run_notebook(NB_DIR / "01_search.ipynb",
                                         ROOT / "params" / "01_search" / "smoke.yaml",
                                         output_root=smoke_root, progress=False)
    return RUNS["01_search"]


@pytest.mark.slow
def test_notebooks_chain_from_an_earlier_run(smoke_root):
    """06_evaluate takes the run folder of 01_search as its ticket (search -> evaluate)."""
    search_dir = _search_run(smoke_root)
    run_dir = run_notebook(ROOT / "notebooks" / "06_evaluate.ipynb",
                           ROOT / "params" / "06_evaluate" / "smoke.yaml",
                           overrides={"ticket": str(search_dir), "autoattack": "none", "name": "chained"},
                           output_root=smoke_root, progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["headline"]["ticket"] == str(search_dir / "ticket.pt")
    assert not (run_dir / "ticket").exists()  # nothing searched: the given ticket was used
    # the same ticket and test inputs give the clean accuracy 01_search reported
    first = json.loads((search_dir / "summary.json").read_text())["headline"]
    assert summary["headline"]["clean_acc"] == first["clean_acc"]


def test_bad_parameter_fails_before_any_kernel(tmp_path):
    with pytest.raises(ConfigError, match="unknown parameter\\(s\\) keepratio"):
        run_notebook(ROOT / "notebooks" / "00_quickstart.ipynb", overrides=["keepratio=0.1"],
                     output_root=tmp_path)
    with pytest.raises(ConfigError, match="keep_ratio=2"):
        run_notebook(ROOT / "notebooks" / "00_quickstart.ipynb", overrides=["keep_ratio=2"],
                     output_root=tmp_path)
    assert not any(tmp_path.iterdir())  # no run directory was created
