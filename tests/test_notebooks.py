"""Notebooks execute end to end through papermill (as `make quickstart` does), and stay clean."""
import json
from pathlib import Path

import nbformat
import pytest

from rst_lib.config import ConfigError
from rst_lib.runner import run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_committed_without_outputs_with_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None


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
    assert html.count("data:image/png;base64") >= 3  # the figures are embedded
    # a second run gets its own directory
    again = run_notebook(ROOT / "notebooks" / "00_quickstart.ipynb",
                         ROOT / "params" / "quickstart-smoke.yaml", output_root=tmp_path,
                         progress=False, overrides=["epochs=1"])
    assert again != run_dir and run_dir.exists()


def test_bad_parameter_fails_before_any_kernel(tmp_path):
    with pytest.raises(ConfigError, match="unknown parameter\\(s\\) keepratio"):
        run_notebook(ROOT / "notebooks" / "00_quickstart.ipynb", overrides=["keepratio=0.1"],
                     output_root=tmp_path)
    with pytest.raises(ConfigError, match="keep_ratio=2"):
        run_notebook(ROOT / "notebooks" / "00_quickstart.ipynb", overrides=["keep_ratio=2"],
                     output_root=tmp_path)
    assert not any(tmp_path.iterdir())  # no run directory was created
