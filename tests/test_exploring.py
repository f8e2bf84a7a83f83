"""Exploring in JupyterLab without a browser: working copies, paths that mean the same in a
kernel as on the CLI, one-line errors before any run folder, masking checks that cannot
flag themselves, the explorer's redraw and the comparison chart's labels."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import nbformat
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rst_lib import save_ticket  # noqa: E402
from rst_lib.analysis.mask_plots import mask_explorer  # noqa: E402
from rst_lib.analysis.plots import plot_comparison  # noqa: E402
from rst_lib.engine.checks import check_masking_parameters, describe_checks  # noqa: E402
from rst_lib.errors import ConfigError  # noqa: E402
from rst_lib.workbook.jupyter_contents import with_kernel_language_info  # noqa: E402
from rst_lib.workbook.notebooks import checks_markdown, config_from  # noqa: E402
from rst_lib.workbook.params import PROJECT_ROOT, validate_notebook_params  # noqa: E402
from rst_lib.workbook.working_copy import is_template, new_working_copy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks"


def _parameters_cell(nb) -> str:
    return next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))


def test_working_copy_keeps_the_parameters_cell_unpaired_and_leaves_the_template(tmp_path):
    template = (NB / "01_search.ipynb").read_bytes()
    path = new_working_copy("01_search", "mine", {"epochs": 2, "eps": "8/255", "progress": True},
                            work_dir=tmp_path)
    assert path == tmp_path / "mine.ipynb" and (NB / "01_search.ipynb").read_bytes() == template
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["jupytext"] == {"formats": "ipynb"}  # saving writes no .py twin
    assert "notebooks/01_search.ipynb" in nb.cells[0].source and nb.cells[0].cell_type == "markdown"
    cell = _parameters_cell(nb)
    lines = {ln.split("=")[0].strip(): ln for ln in cell.splitlines() if "=" in ln}
    assert lines["epochs"].startswith("epochs = 2 ") and "# training epochs" in lines["epochs"]
    assert lines["eps"].startswith('eps = "8/255"') and lines["progress"].startswith("progress = True")
    assert lines["interactive" if "interactive" in lines else "resume"]  # defaults kept
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    with pytest.raises(ConfigError, match="exists"):
        new_working_copy("01_search", "mine", work_dir=tmp_path)
    with pytest.raises(ConfigError, match="epochs"):  # checked like a batch run
        new_working_copy("01_search", "bad", {"epochs": "many"}, work_dir=tmp_path)
    assert not (tmp_path / "bad.ipynb").exists()


def test_cli_new_and_templates(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "rst_lib.workbook.cli", "new", "no_such_nb"],
                         cwd=tmp_path, capture_output=True, text=True, env=env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "unknown notebook" in res.stderr
    assert is_template(NB / "05_mask_patterns.ipynb") and is_template(NB / "05_mask_patterns.py")
    assert not is_template(ROOT / "work" / "05_mask_patterns.ipynb")


def test_served_notebooks_carry_the_kernels_language_info():
    """JupyterLab writes the kernel's language_info on start: equal already, no change."""
    from ipykernel.ipkernel import IPythonKernel
    nb = json.loads((NB / "05_mask_patterns.ipynb").read_text())
    assert nb["metadata"]["language_info"] != IPythonKernel.language_info  # what dirtied the tab
    assert with_kernel_language_info(nb)["metadata"]["language_info"] == IPythonKernel.language_info
    other = {"metadata": {"kernelspec": {"name": "ir"}, "language_info": {"name": "R"}}}
    assert with_kernel_language_info(other)["metadata"]["language_info"] == {"name": "R"}


def _namespace(**kw):
    ns = {"name": None, "run_dir": None, "tickets": [], "masking_checks": False}
    ns.update(kw)
    return ns


def test_relative_paths_mean_the_project_root_in_a_kernel_inside_it(tmp_path, monkeypatch, tiny_model):
    # a ticket of its own under outputs/ (a fresh clone has no run folder yet)
    folder = PROJECT_ROOT / "outputs" / f".test-kernel-paths-{os.getpid()}"
    save_ticket(tiny_model(), folder / "ticket.pt")
    monkeypatch.delenv("RST_DATA_DIR", raising=False)
    try:
        for cwd in (NB, PROJECT_ROOT):
            monkeypatch.chdir(cwd)
            ns = _namespace(run_dir="outputs/x", data_cache_dir="cache")
            config_from(ns)
            assert ns["run_dir"] == str(PROJECT_ROOT / "outputs" / "x")
            assert os.environ["RST_DATA_DIR"] == str(PROJECT_ROOT / "data")
            ns = _namespace(tickets=[str(folder.relative_to(PROJECT_ROOT))])
            config_from(ns)
            assert ns["tickets"] == [str(folder)]
    finally:
        shutil.rmtree(folder)
    monkeypatch.chdir(tmp_path)  # outside the project: the kernel's own folder
    (tmp_path / "here").mkdir()
    ns = _namespace(runs_root="here")
    config_from(ns)
    assert ns["runs_root"] == str(tmp_path / "here")


def test_a_missing_path_is_one_line_before_any_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(NB)
    for ns, name in ((_namespace(tickets=["outputs/01_search/nothing-here"]), "tickets"),
                     (_namespace(tickets=["outputs/01_search/none-*"]), "tickets"),
                     (_namespace(ticket="nothing.pt"), "ticket"),
                     (_namespace(run_dirs=["outputs/none"]), "run_dirs")):
        with pytest.raises(ConfigError, match=f"^{name}: ") as e:
            config_from(ns)
        assert str(PROJECT_ROOT) in str(e.value) and "\n" not in str(e.value)
        assert e.value._render_traceback_() == [f"\x1b[31mConfigError\x1b[0m: {e.value}"]


@pytest.mark.slow
def test_the_notebook_stops_at_a_missing_ticket_with_one_line_and_no_run_folder(tmp_path):
    """The run a user gets: the README's relative ticket path in a notebook whose kernel
    starts in notebooks/ (as JupyterLab starts it there), executed cell by cell."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    work = tmp_path / "work"
    path = new_working_copy("05_mask_patterns", "missing", work_dir=work)
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += '\ntickets = ["outputs/01_search/not-a-run"]\nname = "missing-ticket-test"'
    before = set((PROJECT_ROOT / "outputs" / "05_mask_patterns").glob("missing-ticket-test*"))
    env_pp = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT)  # the kernel imports this checkout's rst_lib
    try:
        client = NotebookClient(nb, timeout=120, kernel_name="python3",
                                resources={"metadata": {"path": str(NB)}})
        with pytest.raises(CellExecutionError):
            client.execute()
    finally:
        os.environ.pop("PYTHONPATH") if env_pp is None else os.environ.__setitem__("PYTHONPATH", env_pp)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "ConfigError"
    assert len(errors[0].traceback) == 1 and "tickets: " in errors[0].traceback[0]
    assert str(PROJECT_ROOT / "outputs" / "01_search" / "not-a-run") in errors[0].traceback[0]
    after = set((PROJECT_ROOT / "outputs" / "05_mask_patterns").glob("missing-ticket-test*"))
    assert after == before  # no run folder made


def test_masking_checks_must_be_stronger_than_the_evaluation():
    check_masking_parameters(20, 0.0375, 40, 2)  # half the step, twice the steps: as far
    with pytest.raises(ConfigError, match=r"^masking_more_steps=10 is invalid.*at least 2 x eval_steps = 40"):
        check_masking_parameters(20, 0.0375, 10, 5)
    with pytest.raises(ConfigError, match=r"^masking_more_steps=39 "):
        check_masking_parameters(20, 0.0375, 39, 5)
    with pytest.raises(ConfigError, match=r"^masking_restarts=1 is invalid"):
        check_masking_parameters(20, 0.0375, 100, 1)
    with pytest.raises(ConfigError, match=r"^masking_restarts=3 is invalid.*evaluation \(3\)"):
        check_masking_parameters(20, 0.0375, 100, 3, eval_restarts=3)


def test_masking_parameters_checked_before_compute_in_batch_and_in_the_kernel(monkeypatch):
    with pytest.raises(ConfigError, match="^masking_more_steps=10 "):
        validate_notebook_params(NB / "01_search.ipynb", {"masking_more_steps": 10})
    validate_notebook_params(NB / "01_search.ipynb", {"masking_more_steps": 10,
                                                      "masking_checks": False})
    with pytest.raises(ConfigError, match="^masking_more_steps=10 "):
        validate_notebook_params(NB / "06_evaluate.ipynb", {"masking_more_steps": 10})
    monkeypatch.chdir(NB)
    with pytest.raises(ConfigError, match="^masking_more_steps=30 .*PGD-20 "):
        config_from(_namespace(masking_checks=True, masking_more_steps=30, masking_restarts=5,
                               eval_steps=20))


def test_check_rows_say_what_they_ran():
    ran = describe_checks(0.3, 0.0375, 20, 100, 5)
    assert ran["pgd_more_steps"] == "PGD-100, step 0.01875 (more steps)"
    assert ran["pgd_restarts"] == "PGD-20, step 0.0375, 5 restarts"
    report = {"accuracy": {"pgd": 0.5, "pgd_more_steps": 0.45}, "ran": ran, "eps_curve": [],
              "flags": [], "n_examples": 100}
    text = checks_markdown(report)
    assert "| PGD-100, step 0.01875 (more steps) |" in text
    assert "pgd_more_steps" not in text


def test_explorer_draws_at_creation_and_redraws_on_every_change(tiny_model):
    import ipywidgets  # noqa: F401  a dependency: missing, the test fails (never skips)
    tickets = {"keep 0.2": tiny_model(0.2), "keep 0.5": tiny_model(0.5)}
    box = mask_explorer(tickets)
    (layer, top), picks, out = box.children[0].children, box.children[1], box.children[2]
    images = [o["data"]["image/png"] for o in out.outputs]
    assert len(images) >= 2 and all(o["output_type"] == "display_data" for o in out.outputs)
    for change in (lambda: setattr(top, "value", 3), lambda: setattr(picks, "value", ("keep 0.5",)),
                   lambda: setattr(layer, "value", layer.options[0])):
        change()  # every change, the first one included, lands in the explorer's Output
        now = [o["data"]["image/png"] for o in out.outputs]
        assert now and now != images
        images = now
    assert plt.get_fignums() == []  # nothing left for pyplot to show under the next cell


def test_comparison_labels_sit_above_the_error_bars():
    rows = [{"model": f"m{i}", "clean_acc": a, "pgd_acc": b, "examples": 50, "pgd": "PGD-20"}
            for i, (a, b) in enumerate([(0.9, 0.4), (0.98, 0.02), (0.5, 0.5)])]
    fig = plot_comparison(rows)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    caps = [line for line in ax.lines if line.get_marker() not in (None, "None", "")]
    tops = {}
    for cap in caps:  # the upper cap of each error bar: (x, y) in display pixels
        for x, y in ax.transData.transform(list(zip(cap.get_xdata(), cap.get_ydata()))):
            tops[round(x)] = max(tops.get(round(x), -1e9), y)
    labels = [t for t in ax.texts if t.get_text().endswith("%")]
    assert len(labels) == 6 and tops
    for t in labels:
        box = t.get_window_extent(renderer)
        x = round((box.x0 + box.x1) / 2)
        top = next(v for k, v in tops.items() if abs(k - x) <= 2)
        assert box.y0 >= top, (t.get_text(), box.y0, top)  # the label starts above its cap
        assert box.y1 <= ax.get_window_extent(renderer).y1 + 1  # and inside the axes
    plt.close(fig)


def test_the_server_extension_serves_templates_read_only_and_refuses_writes(tmp_path):
    from jupyter_server.services.contents.filemanager import FileContentsManager
    from tornado.web import HTTPError
    from rst_lib.workbook.jupyter_contents import protect_templates
    cm = FileContentsManager(root_dir=str(PROJECT_ROOT))
    protect_templates(cm, PROJECT_ROOT)
    before = (NB / "05_mask_patterns.ipynb").read_bytes()
    model = cm.get("notebooks/05_mask_patterns.ipynb")
    assert model["writable"] is False
    for write in (lambda: cm.save(model, "notebooks/05_mask_patterns.ipynb"),
                  lambda: cm.save({"type": "file", "format": "text", "content": ""},
                                  path="notebooks/05_mask_patterns.py"),
                  lambda: cm.delete("notebooks/05_mask_patterns.ipynb"),
                  lambda: cm.rename("notebooks/05_mask_patterns.ipynb", "work/x.ipynb")):
        with pytest.raises(HTTPError, match="template of the project") as e:
            write()
        assert e.value.status_code == 403 and "rst-workbook new 05_mask_patterns" in e.value.log_message
    assert (NB / "05_mask_patterns.ipynb").read_bytes() == before
    work_existed = (PROJECT_ROOT / "work").exists()
    copy = new_working_copy("05_mask_patterns", f"test-{os.getpid()}")
    try:
        rel = str(copy.relative_to(PROJECT_ROOT))
        mine = cm.get(rel)
        assert mine["writable"] is True
        cm.save(mine, rel)  # a working copy saves
    finally:
        copy.unlink()
        (copy.parent / ".ipynb_checkpoints" / f"{copy.stem}-checkpoint.ipynb").unlink(missing_ok=True)
        if not work_existed:
            shutil.rmtree(PROJECT_ROOT / "work")
