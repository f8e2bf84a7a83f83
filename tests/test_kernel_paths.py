"""A notebook's path parameters mean the same from a kernel started anywhere in the project
(``notebooks/``, a working copy in ``work/``, a subfolder of it): relative paths and the
"None: the project's ..." defaults are the project's, as in ``rst-workbook run`` typed in
the project root. Checked for every notebook's path parameters, 08_paper_claims included."""
import shutil
import tempfile
from pathlib import Path

import nbformat
import pytest

from rst_lib.workbook import notebooks
from rst_lib.workbook.notebooks import resolve_path_parameters, sweep_run_dirs
from rst_lib.workbook.params import (NOTEBOOKS_DIR, PATH_LIST_PARAMS, PATH_PARAMS, PROJECT_ROOT,
                                     parameter_specs)

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
SWEEP = "params/sweeps/claims-smoke.yaml"  # a shipped file: the relative value of inputs
WRITES = ("run_dir", "data_cache_dir")     # path parameters naming where to write


def _path_parameters(notebook: Path) -> dict[str, str]:
    """``{name: "path" | "paths"}`` of the parameters whose help declares a path."""
    out = {}
    for name, spec in parameter_specs(notebook).items():
        for kind in ("path", "paths"):
            if spec["help"].rstrip().endswith(f"[{kind}]"):
                out[name] = kind
    return out


@pytest.fixture
def kernel_folders():
    """notebooks/, a folder in work/ and a subfolder of it (removed afterwards)."""
    work = PROJECT_ROOT / "work"
    work_existed = work.exists()
    work.mkdir(exist_ok=True)
    mine = Path(tempfile.mkdtemp(prefix="kernel-paths-", dir=work))
    (mine / "sub").mkdir()
    yield [NOTEBOOKS_DIR, mine, mine / "sub"]
    shutil.rmtree(mine)
    if not work_existed and not any(work.iterdir()):
        work.rmdir()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_path_parameter_is_made_absolute_before_the_notebook_uses_it(notebook):
    """Each declared path parameter is one the resolver handles, and the notebook's first
    code cell after its parameters calls the resolver (config_from does) on its globals."""
    paths = _path_parameters(notebook)
    assert paths, "every notebook has at least run_dir"
    handled = set(PATH_PARAMS) | set(PATH_LIST_PARAMS) | set(WRITES)
    assert set(paths) <= handled, sorted(set(paths) - handled)
    cells = [c for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]
    first = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    setup = cells[first + 1].source
    assert "config_from(globals())" in setup or "resolve_path_parameters(globals())" in setup, (
        f"{notebook.name}: its path parameters stay relative to the kernel's folder")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_relative_path_parameters_are_the_projects_from_any_kernel_folder(
        notebook, kernel_folders, monkeypatch):
    monkeypatch.setattr(notebooks, "check_model_file", lambda path: None)  # paths, not tickets
    paths = _path_parameters(notebook)
    for cwd in kernel_folders:
        monkeypatch.chdir(cwd)
        ns = {name: ([SWEEP] if kind == "paths" else f"outputs/{name}" if name in WRITES else SWEEP)
              for name, kind in paths.items()}
        resolve_path_parameters(ns)
        for name, kind in paths.items():
            want = str(PROJECT_ROOT / (f"outputs/{name}" if name in WRITES else SWEEP))
            assert ns[name] == ([want] if kind == "paths" else want), (cwd, name)


def test_08_reads_the_sweeps_runs_in_the_projects_outputs_from_any_kernel_folder(kernel_folders,
                                                                                 monkeypatch):
    """08_paper_claims with runs_root=None (its help: "None: the project's outputs/") and a
    sweep file given relative to the project: the cells' run folders are the project's, also
    from a working copy in work/ (where a relative ``outputs`` found no run: issue 28)."""
    assert "None: the project's outputs/" in parameter_specs(
        NOTEBOOKS_DIR / "08_paper_claims.ipynb")["runs_root"]["help"]
    monkeypatch.chdir(PROJECT_ROOT)
    expected = sweep_run_dirs(SWEEP, None)
    assert expected and all(p.is_relative_to(PROJECT_ROOT / "outputs") for p in expected)
    for cwd in kernel_folders:
        monkeypatch.chdir(cwd)
        assert sweep_run_dirs(SWEEP, None) == expected, cwd
        ns = {"sweep": SWEEP, "runs_root": None}
        resolve_path_parameters(ns)
        assert sweep_run_dirs(ns["sweep"], ns["runs_root"]) == expected, cwd
