"""JupyterLab as a user meets it, in headless Chromium driven by Playwright.

One JupyterLab server on 127.0.0.1 (a free port, a token) rooted at the project, as a user
starts it; the working-copy path of docs/jupyterlab.md: ``rst-workbook new`` makes
``work/<name>.ipynb``, the user opens it, runs it, changes the mask explorer, saves it.
Checks: the kernel "Python (rst-workbook)", widgets rendered (no raw ``HBox(...)`` text,
no "Error displaying widget"), figures and the final table, no error output, the
explorer redrawn after a change, a README-style relative ticket path resolved from a
kernel running in ``work/``, a tracked notebook opened read-only and unmodified, and the
project left as it was (``git status --porcelain``).

Skipped where Chromium or Playwright is missing, except in CI (``CI=true``), where
.ci/run installs Debian's chromium and the dev extra Playwright: missing there FAILS.
Playwright drives /usr/bin/chromium through ``executable_path`` (no browser download).
"""
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

from rst_lib.workbook.working_copy import new_working_copy, set_parameters

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
KERNEL = "Python (rst-workbook)"
JUPYTER = Path(sys.executable).parent / "jupyter"
RUN_TIMEOUT_MS = 300_000  # a busy 2-core machine; an idle one needs a fraction
T0 = time.time()


def _log(what: str) -> None:  # where the time goes (pytest -s shows it)
    print(f"[{time.time() - T0:6.1f} s] {what}", file=sys.stderr, flush=True)


def _missing(what: str) -> None:
    if os.environ.get("CI"):  # CI installs both (.ci/run, the dev extra): missing is a failure
        pytest.fail(f"{what} is missing in CI")
    pytest.skip(f"{what} is not installed (.ci/run installs chromium; pip install -e '.[dev]' "
                "installs playwright)")


def _git_status() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True,
                          text=True, check=True).stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """``(url, token)`` of a JupyterLab server rooted at the project (stopped afterwards)."""
    if not (Path(CHROMIUM).is_file() and shutil.which(CHROMIUM)):
        _missing(f"Debian's chromium ({CHROMIUM})")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("playwright (pip)")
    specs = json.loads(subprocess.run([str(JUPYTER), "kernelspec", "list", "--json"],
                                      capture_output=True, text=True, check=True).stdout)
    assert "rst-workbook" in specs["kernelspecs"], "make install registers the kernel rst-workbook"
    home = tmp_path_factory.mktemp("jupyter")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           # the user's own Jupyter settings and workspaces stay out of it
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    cmd = [str(JUPYTER), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT}",
           # what make install enables for the venv, given here for a venv set up otherwise
           "--ServerApp.jpserver_extensions={'rst_lib.workbook.jupyter_contents': True}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI run as root
    settings = home / "settings"
    # every cell in the page (no windowing: the checks read the whole notebook), no news popup
    for ext, values in (("notebook-extension/tracker", {"windowingMode": "none"}),
                        ("apputils-extension/notification", {"fetchNews": "false"})):
        f = settings / "@jupyterlab" / f"{ext}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    _log("starting JupyterLab")
    log = open(home / "lab.log", "w")
    server = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240  # a busy 2-core machine: minutes; idle: seconds
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + (home / "lab.log").read_text()[-3000:])
                time.sleep(0.5)
        _log("JupyterLab answers")
        yield url, token, home
    finally:
        server.terminate()  # the server shuts its kernels down
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_the_installed_venv_enables_the_read_only_templates_extension():
    """What `make install` set up: the venv's own server config lists the extension, enabled
    and valid (JupyterLab started as the README says loads it)."""
    from rst_lib.workbook.jupyter_contents import CONFIG_FILE, EXTENSION, extension_status
    config = json.loads((Path(sys.prefix) / CONFIG_FILE).read_text())
    assert config["ServerApp"]["jpserver_extensions"] == {EXTENSION: True}
    assert extension_status() == "enabled"


def test_the_install_check_sees_a_disabled_extension(tmp_path):
    """The install step's check can fail: a config dir of higher priority that disables the
    extension (JUPYTER_CONFIG_PATH comes first) is seen; enabling it there is seen too."""
    from rst_lib.workbook.jupyter_contents import CONFIG_FILE, EXTENSION, enable, extension_status
    env = {**os.environ, "JUPYTER_CONFIG_PATH": str(tmp_path / "etc" / "jupyter")}
    off = tmp_path / CONFIG_FILE
    off.parent.mkdir(parents=True)
    off.write_text(json.dumps({"ServerApp": {"jpserver_extensions": {EXTENSION: False}}}))
    status = extension_status(env=env)
    assert status.startswith("not enabled") and "False" in status, status
    assert enable(tmp_path) == off
    assert extension_status(env=env) == "enabled"


def _wait_idle(page, timeout=90_000):
    """Until the notebook shown has the project's kernel, started and idle."""
    page.wait_for_function(
        """(kernel) => { const p = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
                         const name = p && p.querySelector('.jp-Toolbar-kernelName');
                         const st = p && p.querySelector('.jp-Notebook-ExecutionIndicator');
                         return name && name.textContent.trim() === kernel && st
                                && st.getAttribute('data-status') === 'idle'; }""",
        arg=KERNEL, timeout=timeout)


def _open(page, path: str):
    """File > Open from Path..., as a user would; returns when its kernel is idle."""
    page.locator(".lm-MenuBar-itemLabel", has_text="File").click()
    page.locator(".lm-Menu-itemLabel", has_text="Open from Path").click()
    page.locator(".jp-Dialog input").fill(path)
    page.keyboard.press("Enter")
    page.wait_for_selector(f".lm-TabBar-tab.lm-mod-current >> text={Path(path).name}")
    _wait_idle(page)


def _run_all(page, shot: Path):
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").click()
    page.locator(".lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()
    try:
        _wait_all_ran(page)
    except Exception:
        page.screenshot(path=str(shot), full_page=True)  # what the user would have seen
        raise


def _wait_all_ran(page):
    # every code cell of the notebook shown has run: a number in its prompt, none queued
    page.wait_for_function(
        """() => { const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
                   const ps = [...nb.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                              .map(p => p.textContent.trim());
                   return ps.length > 0 && ps.every(t => /^\\[\\d+\\]:$/.test(t)); }""",
        timeout=RUN_TIMEOUT_MS)
    _log("all cells ran")
    _wait_idle(page)


def _current(page):
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")


def _check_outputs_clean(page, shot: Path):
    nb = _current(page)
    page.screenshot(path=str(shot), full_page=True)
    text = nb.locator(".jp-OutputArea").all_inner_texts()
    joined = "\n".join(text)
    assert "Error displaying widget" not in joined, shot
    assert not any(t.lstrip().startswith(("HBox(", "VBox(", "IntProgress(")) for t in text), shot
    assert nb.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                      ).filter(has_text="Traceback").count() == 0, shot
    assert "Traceback" not in joined and "Error" not in joined.replace("error bars", ""), joined[-2000:]


@pytest.mark.slow  # a JupyterLab server, Chromium and two notebook runs: ~2 min on an idle machine
def test_working_copy_in_jupyterlab_runs_draws_and_leaves_the_project_clean(lab, tmp_path):
    from playwright.sync_api import sync_playwright
    url, token, home = lab
    before = _git_status()
    tag = f"jltest-{uuid.uuid4().hex[:8]}"
    made: list[Path] = []
    work_existed = (ROOT / "work").exists()
    # the user's step 1: a working copy with smoke parameters (as `rst-workbook new` makes it)
    search = subprocess.run(
        [sys.executable, "-m", "rst_lib.workbook.cli", "new", "01_search", tag,
         "-p", str(ROOT / "params" / "01_search" / "smoke.yaml"), "-p", f"name={tag}",
         "-p", "progress=true", "-p", "autoattack=none", "-p", "train_examples=128",
         "-p", "final_examples=20"], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert search.returncode == 0, search.stderr
    made.append(ROOT / "work" / f"{tag}.ipynb")
    try:
        with sync_playwright() as pw:
            _log("working copy made")
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/work/{tag}.ipynb?token={token}")
            _log('page.goto')
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            _wait_idle(page)  # the kernel "Python (rst-workbook)" started by itself
            assert page.locator(".lm-TabBar-tab.jp-mod-dirty").count() == 0, "modified on opening"

            _run_all(page, tmp_path / "01_search-stuck.png")
            nb = _current(page)
            _check_outputs_clean(page, tmp_path / "01_search.png")
            _log('run 01')
            assert nb.locator(".jp-OutputArea-output img").count() >= 2  # learning curves, bars
            assert nb.locator(".widget-hprogress").count() >= 1  # tqdm bars as live widgets
            assert nb.locator("table").filter(has_text="clean").count() >= 1  # final table
            page.keyboard.press("Control+s")
            page.wait_for_selector(".lm-TabBar-tab.lm-mod-current:not(.jp-mod-dirty)")

            # a README-style path, relative to the project root, typed into a copy whose
            # kernel runs in work/
            runs = sorted((ROOT / "outputs" / "01_search").glob(f"{tag}-*"))
            assert len(runs) == 1 and (runs[0] / "ticket.pt").is_file(), runs
            made += runs
            patterns = new_working_copy("05_mask_patterns", f"{tag}-05")
            made.append(patterns)
            saved = nbformat.read(patterns, as_version=4)
            cell = next(c for c in saved.cells if "parameters" in c.metadata.get("tags", []))
            cell.source = set_parameters(cell.source, {
                "tickets": [str(runs[0].relative_to(ROOT))], "name": f"{tag}-05"})
            nbformat.write(saved, patterns)
            _open(page, f"work/{patterns.name}")
            _log('open 05')
            _run_all(page, tmp_path / "05_mask_patterns-stuck.png")
            nb = _current(page)
            _check_outputs_clean(page, tmp_path / "05_mask_patterns.png")
            _log('run 05')
            made += sorted((ROOT / "outputs" / "05_mask_patterns").glob(f"{tag}-05-*"))
            explorer = nb.locator(".widget-output").last
            explorer.locator("img").first.wait_for()
            first = explorer.locator("img").first.get_attribute("src")
            nb.locator(".widget-dropdown select").last.select_option(index=0)  # the first change
            page.wait_for_function(
                """(before) => { const o = [...document.querySelectorAll(
                       '.jp-NotebookPanel:not(.lm-mod-hidden) .widget-output')].pop();
                       const img = o && o.querySelector('img');
                       return img && img.getAttribute('src') !== before; }""",
                arg=first, timeout=30_000)
            explorer.scroll_into_view_if_needed()
            _log('explorer redrawn')
            page.screenshot(path=str(tmp_path / "explorer.png"))
            # nothing went to the log console instead (its status bar item shows a count once
            # a message arrives)
            assert page.locator(".jp-LogConsoleStatusItem").filter(
                has_text=re.compile(r"[1-9]")).count() == 0

            # a tracked notebook opens read-only and unmodified
            _open(page, "notebooks/05_mask_patterns.ipynb")
            page.wait_for_timeout(1000)
            page.screenshot(path=str(tmp_path / "template.png"))
            _log('template opened')
            tab = page.locator(".jp-mod-current .lm-TabBar-tab.lm-mod-current, "
                               "#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current")
            assert tab.filter(has_text="05_mask_patterns.ipynb").count() == 1
            assert tab.filter(has_text="05_mask_patterns.ipynb").first.evaluate(
                "t => !t.classList.contains('jp-mod-dirty')"), "a template is modified on opening"
            assert page.get_by_text("notebook is read-only").count() >= 1
            browser.close()
        assert not (ROOT / "work" / f"{tag}.py").exists(), "a working copy is not paired"
        ran = nbformat.read(made[0], as_version=4)
        assert not [o for c in ran.cells if c.cell_type == "code" for o in c.get("outputs", [])
                    if o.get("output_type") == "error"]
    finally:
        # also the run folders of a run that failed before they were recorded
        made += sorted((ROOT / "outputs").glob(f"*/{tag}-*"))
        for p in dict.fromkeys(made):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        for p in (ROOT / "work" / ".ipynb_checkpoints").glob(f"{tag}*"):
            p.unlink()
        if not work_existed and (ROOT / "work" / ".ipynb_checkpoints").is_dir() and not any(
                (ROOT / "work" / ".ipynb_checkpoints").iterdir()):
            (ROOT / "work" / ".ipynb_checkpoints").rmdir()
        if not work_existed and (ROOT / "work").is_dir() and not any((ROOT / "work").iterdir()):
            (ROOT / "work").rmdir()
    assert _git_status() == before
