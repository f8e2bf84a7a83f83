"""Finished progress bars leave plain text in the notebook, not a widget reference that
reads "Error displaying widget: model not found" once the notebook is saved and reopened."""
import nbformat
import pytest
from nbclient import NotebookClient

WIDGET = "application/vnd.jupyter.widget-view+json"
CODE = """
import time
from {module} import tqdm
for _ in tqdm(range(5), desc="kept", leave=True):
    pass
for _ in tqdm(range(5), desc="dropped", leave=False):
    pass
bar = tqdm(total=4, desc="manual")
bar.update(4)
bar.close()
print("done")
"""


def _outputs(module: str, tmp_path) -> list[dict]:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CODE.format(module=module))])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert not [o for o in nb.cells[0].outputs if o.output_type == "error"], nb.cells[0].outputs
    return nb.cells[0].outputs


@pytest.mark.slow  # two kernels
def test_closed_notebook_bars_are_text_in_the_saved_notebook(tmp_path):
    outs = _outputs("rst_lib.utils.progress", tmp_path)
    assert not [o for o in outs if WIDGET in o.get("data", {})], outs
    texts = [o["data"]["text/plain"] for o in outs if "text/plain" in o.get("data", {})]
    assert any(t.startswith("kept: 100%") and "5/5" in t for t in texts), texts
    assert any(t.startswith("manual: 100%") and "4/4" in t for t in texts), texts
    assert not any("dropped" in t for t in texts), texts  # leave=False leaves nothing
    # the case the project's bars fix: tqdm.auto's bars stay widget references
    plain = _outputs("tqdm.auto", tmp_path)
    assert len([o for o in plain if WIDGET in o.get("data", {})]) == 3
