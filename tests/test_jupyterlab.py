"""JupyterLab as a user meets it, in headless Chromium driven by Playwright.

In a copy of the project (its tracked files, as a fresh clone has them), ``jupyter lab`` is
started as the README says: in the project folder, no flag - the venv's configuration as
``make install`` set it up (the read-only templates' server extension); where it listens
and its token come from a temporary user config. The working-copy path of
docs/jupyterlab.md: ``rst-workbook new`` makes ``work/<name>.ipynb``, the user opens it,
runs it, saves and reloads it, changes the mask explorer. Checks: the kernel "Python
(rst-workbook)", widgets rendered (no raw ``HBox(...)`` text, no "Error displaying
widget"), finished progress bars left as text (also after a reload), figures and the final
table, no error output, the run folder's records (run.json finished with its parameters,
the index, ``rst-workbook report``), the explorer redrawn after a change, a README-style
relative ticket path resolved from a kernel running in ``work/``, a tracked notebook opened
read-only and unmodified and not written by Ctrl+S, and the project left as it was (every
file's hash before and after, ignored folders included; new files only the copies, the runs
and the index).

Skipped where Chromium or Playwright is missing, except in CI (``CI=true``), where
.ci/run installs Debian's chromium and the dev extra Playwright: missing there FAILS.
Playwright drives /usr/bin/chromium through ``executable_path`` (no browser download).
"""
import hashlib
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

from rst_lib.workbook.working_copy import set_parameters

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_project(dest: Path) -> Path:
    """The project's files as a fresh clone has them (tracked, plus new files not ignored),
    copied to ``dest``: the test works there, never in the real tree."""
    names = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, names):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _listing(root: Path) -> dict[str, str]:
    """Every file below ``root`` (ignored ones too) with its hash: what the test wrote shows."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """``(url, token, home, project)``: ``jupyter lab`` started as the README says (in the
    project folder, no flag: the installed configuration) in a copy of the project."""
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
    project = _copy_project(tmp_path_factory.mktemp("clone") / "rst-workbook")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": str(project),  # the copy's rst_lib, in the server and its kernels
           # the user's own Jupyter settings and workspaces stay out of it
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces")}
    # where the server listens and its token: the (temporary) user config, not flags, so the
    # command is the README's; the venv's config (make install) enables the extension
    server_config = {"ServerApp": {"ip": "127.0.0.1", "port": port, "port_retries": 0,
                                   "open_browser": False},
                     "IdentityProvider": {"token": token}}
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        server_config["ServerApp"]["allow_root"] = True  # containers and CI run as root
    (home / "config").mkdir()
    (home / "config" / "jupyter_server_config.json").write_text(json.dumps(server_config))
    settings = home / "settings"
    # every cell in the page (no windowing: the checks read the whole notebook); the news
    # question is left to the installed configuration (make install answers it)
    for ext, values in (("notebook-extension/tracker", {"windowingMode": "none"}),):
        f = settings / "@jupyterlab" / f"{ext}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    _log("starting JupyterLab")
    log = open(home / "lab.log", "w")
    server = subprocess.Popen([str(JUPYTER), "lab"], env=env, cwd=project, stdout=log,
                              stderr=subprocess.STDOUT)
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
        yield url, token, home, project, env
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


def test_jupyterlab_as_installed_asks_no_news_question(lab):
    """JupyterLab's first start asks whether to fetch Jupyter's news unless fetchNews is
    decided: the venv's overrides (make install) decide it, the user's settings are empty."""
    url, token = lab[0], lab[1]
    got = json.loads(urllib.request.urlopen(
        f"{url}/lab/api/settings/@jupyterlab/apputils-extension:notification?token={token}",
        timeout=30).read())
    # overrides become the schema's defaults; the user's own settings stay empty
    defaults = {k: v.get("default") for k, v in got["schema"]["properties"].items()}
    assert defaults["fetchNews"] == "false" and defaults["checkForUpdates"] is False, defaults
    assert got["settings"] == {}


def test_quiet_news_keeps_other_overrides(tmp_path):
    from rst_lib.workbook.jupyter_contents import LAB_OVERRIDES, quiet_news
    (tmp_path / LAB_OVERRIDES).parent.mkdir(parents=True)
    (tmp_path / LAB_OVERRIDES).write_text(json.dumps({"x:y": {"a": 1}}))
    settings = json.loads(quiet_news(tmp_path).read_text())
    assert settings["x:y"] == {"a": 1}
    assert settings["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"


def test_a_template_opens_with_a_banner_that_a_saved_copy_leaves_out():
    """JupyterLab's read-only notice does not say how to get a copy: the template is handed
    out with a first cell that does; a copy saved from it (Save As) is written without it."""
    from rst_lib.workbook.jupyter_contents import BANNER_KEY, protect_templates

    class Contents:  # the contents manager's two calls, in memory
        saved = {}

        def get(self, path, content=True):
            return {"type": "notebook", "content": nbformat.v4.new_notebook(
                cells=[nbformat.v4.new_code_cell("x = 1")]), "path": path}

        def save(self, model, path):
            self.saved[path] = json.loads(json.dumps(model["content"]))
            return model

        def delete_file(self, path):
            pass

        def rename_file(self, old, new):
            pass

    cm = Contents()
    protect_templates(cm, ROOT)
    opened = cm.get("notebooks/05_mask_patterns.ipynb")
    first = opened["content"]["cells"][0]
    assert opened["writable"] is False and first["metadata"][BANNER_KEY]
    assert "rst-workbook new 05_mask_patterns" in first["source"]
    assert cm.get("work/05-copy.ipynb")["content"]["cells"][0]["source"] == "x = 1"  # copies: none
    cm.save(opened, "work/05-copy.ipynb")
    assert [c["source"] for c in cm.saved["work/05-copy.ipynb"]["cells"]] == ["x = 1"]


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


def test_a_working_copys_tab_is_not_named_like_its_template(tmp_path):
    from rst_lib.workbook.working_copy import new_working_copy
    copy = new_working_copy("01_search", work_dir=tmp_path)
    assert copy.name == "01_search-work.ipynb" != "01_search.ipynb"


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
    url, token, home, project, env = lab
    before = _listing(project)
    tag = f"jltest-{uuid.uuid4().hex[:8]}"

    def cli(*args):
        res = subprocess.run([sys.executable, "-m", "rst_lib.workbook.cli", *args], cwd=project,
                             capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stderr
        return res.stdout

    # the user's step 1: a working copy with smoke parameters (as `rst-workbook new` makes it)
    cli("new", "01_search", tag, "-p", "params/01_search/smoke.yaml", "-p", f"name={tag}",
        "-p", "progress=true", "-p", "autoattack=none", "-p", "train_examples=128",
        "-p", "final_examples=20")
    with sync_playwright() as pw:
        _log("working copy made")
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/lab/tree/work/{tag}.ipynb?token={token}")
        page.wait_for_selector(".jp-Notebook", timeout=120_000)
        _wait_idle(page)  # the kernel "Python (rst-workbook)" started by itself
        assert page.locator(".lm-TabBar-tab.jp-mod-dirty").count() == 0, "modified on opening"

        _run_all(page, tmp_path / "01_search-stuck.png")
        nb = _current(page)
        _check_outputs_clean(page, tmp_path / "01_search.png")
        _log('run 01')
        assert nb.locator(".jp-OutputArea-output img").count() >= 2  # learning curves, bars
        assert nb.locator("table").filter(has_text="clean").count() >= 1  # final table
        # the progress bars ran as widgets and, closed, left their last line as text
        text = "\n".join(nb.locator(".jp-OutputArea").all_inner_texts())
        assert re.search(rf"{tag}: 100%.*1/1", text), text[-3000:]
        assert nb.locator(".widget-hprogress").count() == 0, "a finished bar is still a widget"
        page.keyboard.press("Control+s")
        page.wait_for_selector(".lm-TabBar-tab.lm-mod-current:not(.jp-mod-dirty)")
        # saved and reloaded: plain text where the bars were, no "model not found"
        page.reload()
        page.wait_for_selector(".jp-Notebook", timeout=120_000)
        _wait_idle(page)
        reloaded = "\n".join(_current(page).locator(".jp-OutputArea").all_inner_texts())
        assert "Error displaying widget" not in reloaded and re.search(rf"{tag}: 100%", reloaded)
        _log('reloaded')

        # its run folder holds a batch run's records: run.json (parameters, finished), and
        # on request the executed notebook and report.html; the index lists it
        runs = sorted((project / "outputs" / "01_search").glob(f"{tag}-*"))
        assert len(runs) == 1 and (runs[0] / "ticket.pt").is_file(), runs
        record = json.loads((runs[0] / "run.json").read_text())
        assert record["status"] == "finished" and record["params"]["name"] == tag, record
        assert record["working_copy"] == f"work/{tag}.ipynb"  # in the project: from its root
        assert tag in (project / "outputs" / "index.html").read_text()
        cli("report", str(runs[0]))
        assert (runs[0] / "01_search.ipynb").is_file() and (runs[0] / "report.html").is_file()
        assert "Error displaying widget" not in (runs[0] / "report.html").read_text()

        # a README-style path, relative to the project root, typed into a copy whose
        # kernel runs in work/
        cli("new", "05_mask_patterns", f"{tag}-05")
        patterns = project / "work" / f"{tag}-05.ipynb"
        saved = nbformat.read(patterns, as_version=4)
        cell = next(c for c in saved.cells if "parameters" in c.metadata.get("tags", []))
        cell.source = set_parameters(cell.source, {
            "tickets": [str(runs[0].relative_to(project))], "name": f"{tag}-05"})
        nbformat.write(saved, patterns)
        _open(page, f"work/{patterns.name}")
        _log('open 05')
        _run_all(page, tmp_path / "05_mask_patterns-stuck.png")
        nb = _current(page)
        _check_outputs_clean(page, tmp_path / "05_mask_patterns.png")
        _log('run 05')
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

        # a tracked notebook opens read-only and unmodified, and Ctrl+S does not write it
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
        assert page.get_by_text("rst-workbook new 05_mask_patterns").count() >= 1  # the banner
        page.keyboard.press("Control+s")
        page.wait_for_timeout(2000)
        browser.close()
    assert not (project / "work" / f"{tag}.py").exists(), "a working copy is not paired"
    ran = nbformat.read(project / "work" / f"{tag}.ipynb", as_version=4)
    assert not [o for c in ran.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if o.get("output_type") == "error"]
    # the project as it was: no file changed; new files only the copies, the two runs and the
    # index (the full listing, ignored folders included)
    after = _listing(project)
    assert {f: h for f, h in after.items() if f in before and before[f] != h} == {}
    assert sorted(set(before) - set(after)) == []
    made = sorted(set(after) - set(before))
    expected = (f"work/{tag}", "work/.ipynb_checkpoints/", f"outputs/01_search/{tag}-",
                f"outputs/05_mask_patterns/{tag}-05-", "outputs/index.html")
    assert [f for f in made if not f.startswith(expected)] == [], made
