"""Reports: self-contained HTML (checked in headless Chromium), the run index, run tables."""
import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from rst_lib.workbook.index import collect_metrics, run_rows, write_index

from rst_lib.models.tickets import TicketError
from rst_lib.workbook.notebooks import (load_any, resolve_checkpoint, resolve_tickets,
                                        search_tickets, ticket_label)
from rst_lib.workbook.params import normalize_params, validate_notebook_params

from rst_lib.workbook.report import render_html
from rst_lib.workbook.runs import run_notebook

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def _png() -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _executed_notebook(path: Path) -> Path:
    cell = new_code_cell("plot()", execution_count=1)
    cell.outputs = [new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"})]
    params = new_code_cell("x = 1", execution_count=0)
    params.metadata["tags"] = ["parameters"]
    note = new_markdown_cell("Edit, run and save it freely")
    note.metadata["tags"] = ["notebook-only"]
    setup = new_code_cell("print(run_dir)", execution_count=2)
    setup.metadata["tags"] = ["notebook-only"]
    setup.outputs = [new_output("stream", name="stdout", text="run directory: /somewhere\n"),
                     new_output("stream", name="stderr", text="warning: few epochs\n")]
    table = new_code_cell("show()", execution_count=3)
    table.metadata["tags"] = ["headline"]
    table.outputs = [new_output("display_data", data={"text/markdown": "| model | clean |\n|---|---|\n"
                                                      "| ticket | 90.0% [80.0%, 95.0%] |"})]
    nb = new_notebook(cells=[new_markdown_cell("# A report\n\nwith $x^2$ math"), note, params, setup,
                             cell, new_markdown_cell("## Results"), table])
    nbformat.write(nb, path)
    return path


def test_report_is_self_contained_and_leads_with_results(tmp_path):
    html_path = render_html(_executed_notebook(tmp_path / "nb.ipynb"), tmp_path / "report.html",
                            title="01_search", status="finished", items=["run x", "50 test examples"],
                            index_href="../../index.html", params={"x": 2}, status_line="took 3 s")
    html = html_path.read_text()
    assert html.count('src="data:image/png;base64') == 1
    # nothing is fetched from the network: no external scripts, stylesheets or fonts
    assert not re.search(r"<script[^>]+src=", html)
    assert not re.search(r"<link[^>]+href=[\"']https?:", html)
    assert not re.search(r"@import\s+url\([\"']?https?:", html)
    assert "<title>A report</title>" in html and "<h1>A report</h1>" in html
    assert 'id="rst-toggle-code"' in html and "50 test examples" in html and "took 3 s" in html
    assert 'href="../../index.html"' in html and '<details id="rst-params">' in html
    # what the notebook says to whoever runs it is not in the report; its warnings are
    assert "Edit, run and save" not in html and "run directory" not in html and "few epochs" in html
    assert "celltag_parameters" not in html  # the run's parameters are the folded table
    # the headline table comes first, before the first figure, and only once
    assert html.count("90.0% [80.0%, 95.0%]") == 1
    assert html.index("90.0% [80.0%, 95.0%]") < html.index('src="data:image/png') < html.index('id="Results"')
    assert '<details id="rst-about">' in html  # what the notebook does: folded


def _fake_run(root: Path, rel: str, status: str, **extra) -> Path:
    d = root / rel
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"notebook": f"notebooks/{rel.split('/')[0]}.ipynb",
                                            "status": status, "started": "2026-01-01 10:00:00",
                                            "seconds": 12.5, "report": "report.html", **extra}))
    (d / "report.html").write_text("<html></html>")
    return d


def test_index_lists_runs_with_metrics_status_and_links(tmp_path):
    a = _fake_run(tmp_path, "01_search/a", "finished", params={"dataset": "mnist5k"})
    (a / "metrics.json").write_text(json.dumps({
        "status": "finished", "config": {"task": "search", "model": "conv4", "dataset": "mnist5k",
                                         "keep_ratio": 0.1, "seed": 0, "width": 0.25},
        "best": {"clean_acc": 0.95, "pgd_acc": 0.5, "split": "val", "examples": 80},
        "final": {"split": "test", "examples": 1000, "clean_acc": 0.942, "pgd_acc": 0.409,
                  "autoattack_acc": 0.196, "robust_acc": 0.196},
        "selection_split": "val", "mask": {"keep_ratio": 0.1}, "history": [{}] * 5}))
    (a / "natural").mkdir()
    (a / "natural" / "metrics.json").write_text(json.dumps({
        "status": "running", "config": {"task": "search"}, "best": {}}))
    b = _fake_run(tmp_path, "03_transferability/b", "failed", failed_cell=4,
                  error="ValueError: boom <script>")
    (b / "summary.json").write_text(json.dumps({"headline": {"clean_acc": 0.5, "pgd_acc": 0.25}}))
    rows = {r["run"]: r for r in run_rows(tmp_path)}
    # the index shows the final test numbers (not the validation split's best epoch)
    assert rows["01_search/a"]["pgd_acc"] == 0.409 and rows["01_search/a"]["model"] == "conv4"
    assert rows["01_search/a"]["autoattack_acc"] == 0.196 and rows["01_search/a"]["examples"] == 1000
    assert rows["03_transferability/b"]["status"] == "failed"
    html = write_index(tmp_path).read_text()
    assert '<a href="01_search/a/report.html">' in html and "40.9%" in html and "94.2%" in html
    assert "cell 4: ValueError: boom &lt;script&gt;" in html  # escaped
    assert "2 runs" in html and "1 failed" in html
    # collect_metrics: finished searches only, with the enclosing run
    found = collect_metrics(tmp_path)
    assert len(found) == 1 and found[0]["run"] == str(a.resolve()) and found[0]["epochs"] == 5
    assert found[0]["notebook"] == "01_search" and found[0]["keep_ratio"] == 0.1
    assert (found[0]["split"], found[0]["robust_acc"], found[0]["select_split"],
            found[0]["select_pgd_acc"]) == ("test", 0.196, "val", 0.5)


def test_resolve_tickets_accepts_files_run_dirs_globs_and_sweep_folders(tmp_path):
    for name in ("keep=0.1", "keep=0.3"):
        (tmp_path / "sweep" / name).mkdir(parents=True)
        (tmp_path / "sweep" / name / "ticket.pt").write_bytes(b"x")
    t1, t3 = (tmp_path / "sweep" / n / "ticket.pt" for n in ("keep=0.1", "keep=0.3"))
    assert resolve_tickets(None) == [] and resolve_tickets([]) == []
    assert resolve_tickets([str(t1)]) == [t1]
    assert resolve_tickets(str(t1.parent)) == [t1]                 # a run directory
    assert resolve_tickets([str(tmp_path / "sweep" / "*")]) == [t1, t3]  # a glob
    assert resolve_tickets([str(tmp_path / "sweep"), str(t1)]) == [t1, t3]  # a sweep folder, dedup
    with pytest.raises(FileNotFoundError):
        resolve_tickets([str(tmp_path / "nothing" / "*")])


def _chromium_ok() -> bool:
    return Path(CHROMIUM).is_file() and shutil.which(CHROMIUM) is not None


@pytest.mark.slow
def test_rendered_report_loads_in_headless_chromium_and_shows_figures(tmp_path, monkeypatch):
    if not _chromium_ok():
        if os.environ.get("CI"):  # CI installs it (.ci/run): missing there is a failure
            pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run could not install Debian's chromium")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_dir = run_notebook(ROOT / "notebooks" / "01_search.ipynb",
                           ROOT / "params" / "01_search" / "smoke.yaml",
                           overrides={"autoattack": "none", "train_examples": 128, "final_examples": 20},
                           output_root=tmp_path / "outputs", progress=False)
    report = run_dir / "report.html"
    shot = tmp_path / "report.png"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0"]
    shooting = subprocess.run(flags + [f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                                       "--window-size=1200,2000", report.as_uri()],
                              capture_output=True, text=True, timeout=120)
    assert shot.is_file(), shooting.stderr[-2000:]
    assert shot.stat().st_size > 20_000  # not a blank page
    from PIL import Image
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2000)
    colors = img.resize((300, 500)).getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 50  # text, code and figures, not an empty canvas
    dom = subprocess.run(flags + [f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom",
                                  "--virtual-time-budget=3000", report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    html = dom.stdout
    assert "01 · Search a robust ticket" in html and 'id="rst-toggle-code"' in html
    images = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 3  # learning curves, keep ratios per layer, final table
    for data in images:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()  # each figure is a valid PNG
    assert "Traceback" not in html and "An Exception was encountered" not in html  # no failed cell
    console = [line for line in (shooting.stderr + dom.stderr).splitlines() if "CONSOLE" in line]
    assert not [c for c in console if "Uncaught" in c or "Failed to load" in c or "ERR_" in c], console
    # the index next to it loads too, and links to this report
    index = tmp_path / "outputs" / "index.html"
    dom = subprocess.run(flags + [f"--user-data-dir={tmp_path / 'profile3'}", "--dump-dom", index.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert f'href="01_search/{run_dir.name}/report.html"' in dom.stdout


def test_search_tickets_share_one_network_and_load_any_reads_tickets_and_checkpoints(tmp_path):
    import torch

    from rst_lib import RunConfig
    from rst_lib.analysis.transfer import check_same_network
    cfg = RunConfig(model="conv2", width=0.125, epochs=1, train_examples=64, eval_examples=20,
                    train_attack="none", eval_steps=1, end_with_bn=True, autoattack="none",
                    final_examples=50)
    from rst_lib.data.datasets import load_dataset
    data = load_dataset("mnist5k")
    paths = search_tickets(cfg, [0.1, 0.3], tmp_path, progress=False, data=data)
    assert paths == [tmp_path / "keep-0.1" / "ticket.pt", tmp_path / "keep-0.3" / "ticket.pt"]
    assert [ticket_label(p) for p in paths] == ["keep 0.1", "keep 0.3"]
    models = [load_any(p)[0] for p in paths]
    check_same_network(models)  # one seed: the same random weights
    again = search_tickets(cfg, [0.1], tmp_path, progress=False, data=data)  # resumed: nothing re-run
    assert again == paths[:1]
    x = torch.rand(4, 1, 28, 28)
    ticket, info = load_any(tmp_path / "keep-0.1")  # a run directory
    assert info["kind"] == "ticket" and info["config"]["keep_ratio"] == 0.1
    last, info = load_any(tmp_path / "keep-0.1" / "last.pt", data=data)  # the checkpoint (last epoch = best here)
    assert info["kind"] == "checkpoint" and info["config"]["dataset"] == "mnist5k"
    with torch.no_grad():
        assert torch.allclose(ticket(x), last(x), atol=1e-5)
    # A run killed before it wrote a ticket holds only last.pt: its folder resolves to it,
    # loads, and passes the batch runner's checks (a folder with neither is one clear error).
    killed = tmp_path / "keep-0.3"
    (killed / "ticket.pt").unlink()
    assert resolve_checkpoint(killed) == killed / "last.pt"
    model, info = load_any(killed, data=data)
    assert info["kind"] == "checkpoint" and info["path"] == str(killed / "last.pt")
    with torch.no_grad():
        assert torch.allclose(model(x), models[1](x), atol=1e-5)  # one epoch: last = best
    nb = Path(__file__).resolve().parents[1] / "notebooks" / "06_evaluate.ipynb"
    params = normalize_params(nb, {"ticket": str(killed)})
    assert params["ticket"] == str(killed / "last.pt")
    validate_notebook_params(nb, params)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TicketError, match="folder without a ticket.pt or last.pt"):
        resolve_checkpoint(tmp_path / "empty")


def _browser(pw):
    if not _chromium_ok():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run could not install Debian's chromium")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    return pw.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])


def _in_view(page, locator) -> bool:
    """Whether the element lies wholly inside the viewport as the page opens (not scrolled)."""
    box = locator.bounding_box()
    view = page.viewport_size
    return (box is not None and box["y"] >= 0 and box["y"] + box["height"] <= view["height"]
            and box["x"] >= 0 and box["x"] + box["width"] <= view["width"])


@pytest.mark.slow  # the quickstart's smoke run (~1 min on an idle machine) and Chromium
def test_quickstart_report_first_screen_holds_results_and_index_fits(tmp_path, monkeypatch):
    """What a reader of a shared report sees first (1280x800): the run's title, its status,
    the headline table with intervals and the first figure; parameters, code and the notes
    for whoever runs the notebook are not in the way. The index fits a 1,280 px window."""
    from playwright.sync_api import sync_playwright  # the dev extra: fails, never skips, when missing
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_dir = run_notebook(ROOT / "notebooks" / "00_quickstart.ipynb",
                           ROOT / "params" / "quickstart-smoke.yaml",
                           output_root=tmp_path / "outputs", progress=False)
    with sync_playwright() as pw:
        browser = _browser(pw)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((run_dir / "report.html").as_uri())
        page.screenshot(path=str(tmp_path / "first-screen.png"))
        assert page.title().startswith("Quickstart: a robust scratch ticket")
        header = page.locator("#rst-header")
        assert _in_view(page, header.locator("h1")) and "finished" in header.inner_text()
        headline = page.locator(".celltag_rst-headline table").first
        assert _in_view(page, headline), "the headline table is not on the first screen"
        text = headline.inner_text()
        assert "robust ticket" in text and re.search(r"\d+\.\d%\s*\[\d+\.\d%, \d+\.\d%\]", text), text
        figures = page.locator(".jp-OutputArea-output img")
        assert figures.count() >= 3 and _in_view(page, figures.first), \
            "the first figure is not on the first screen"
        # parameters, code and the notebook's own description: one click away, not shown
        for fold in ("#rst-params", "#rst-about"):
            assert page.locator(fold).count() == 1 and page.locator(fold).get_attribute("open") is None
        body = page.locator("body").inner_text()  # the code hidden: what a reader sees
        assert "Parameters are in the next cell" not in body and "run directory:" not in body
        assert "4. Summary" in body and "Robust ticket:" in body  # the summary, at the end
        code = page.locator(".jp-CodeCell:not(.celltag_rst-headline) .jp-InputArea").first
        assert not code.is_visible()
        page.locator("#rst-toggle-code").click()
        assert code.is_visible()
        assert not errors, errors
        index = browser.new_page(viewport={"width": 1280, "height": 800})
        index.goto((tmp_path / "outputs" / "index.html").as_uri())
        assert index.evaluate("document.documentElement.scrollWidth") <= 1280
        browser.close()
