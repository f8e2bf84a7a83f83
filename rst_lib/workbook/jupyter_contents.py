"""A Jupyter server extension for how JupyterLab opens the project's notebooks: the
templates (``notebooks/*.ipynb`` and their py:percent twins) read-only and never written,
and every notebook of the project's kernel unmodified.

Why: Jupytext pairing writes a notebook's outputs into the tracked ``.ipynb`` and its edits
into the ``.py`` twin, and autosave does so without asking; ``make test`` then fails and
``git status`` is dirty. Exploring happens in a working copy (``rst-workbook new``, see
:mod:`.working_copy`). The server reports the templates as not writable (JupyterLab shows
them read-only and does not autosave) and refuses a save, rename or delete of one with a
message saying what to do instead.

Why a notebook was marked modified as soon as it opened: when the kernel starts, JupyterLab
writes the kernel's ``language_info`` (version, mimetype, codemirror_mode, ...) into the
notebook's metadata; the project's notebooks store only ``{"name": "python"}`` (what
Jupytext writes from the .py twin), so that write changed the notebook. The server hands
out a project-kernel notebook with the ``language_info`` that kernel will report (the
kernel is this venv's ipykernel), so the write changes nothing.

``make install`` enables it for the project's venv: ``python -m
rst_lib.workbook.jupyter_contents`` writes ``etc/jupyter/jupyter_server_config.d/rst-workbook.json``
in the venv and fails unless a server started from the venv would then load it (enabled in the
server's merged config, module importable). Why not ``jupyter server extension enable``: jupyter_server (2.21) only toggles an
extension some config file already lists - for one no file lists it logs "Validation failed:
The module ... could not be found" and still exits 0 - and packages ship that file as data;
an editable install ships none. By hand, for one server:
``jupyter lab --ServerApp.jpserver_extensions="{'rst_lib.workbook.jupyter_contents': True}"``.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

from ipykernel.ipkernel import IPythonKernel
from tornado.web import HTTPError

from .runs import KERNEL_NAME
from .working_copy import is_template

EXTENSION = "rst_lib.workbook.jupyter_contents"  # this module's name, also when run as __main__
CONFIG_FILE = Path("etc", "jupyter", "jupyter_server_config.d", "rst-workbook.json")


def _refusal(path: str) -> HTTPError:
    stem = Path(path).stem
    return HTTPError(403, f"{path} is a template of the project and stays as it is: work in a copy "
                          f"(File > Save Notebook As... into work/, or in a terminal `rst-workbook "
                          f"new {stem}`)")


def protect_templates(cm, root: Path) -> None:
    """Wrap the contents manager ``cm`` (sync or async) in place."""
    def template(path: str) -> bool:
        return is_template(root / path.strip("/"))

    def refuse_writes(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            path = kwargs.get("path", args[-1] if args else "")
            if isinstance(path, str) and template(path):
                raise _refusal(path)
            return method(*args, **kwargs)
        return wrapper

    def refuse_move(method):
        @functools.wraps(method)
        def wrapper(old_path, new_path, *args, **kwargs):
            for p in (old_path, new_path):
                if template(p):
                    raise _refusal(p)
            return method(old_path, new_path, *args, **kwargs)
        return wrapper

    def mark(model: dict, path: str) -> dict:
        if model.get("type") in ("notebook", "file") and template(path):
            model["writable"] = False
        if model.get("type") == "notebook" and isinstance(model.get("content"), dict):
            with_kernel_language_info(model["content"])
            if template(path):
                with_template_banner(model["content"], Path(path).stem)
        return model

    save = cm.save

    @functools.wraps(save)
    def save_without_banner(model, path, *args, **kwargs):
        # a template saved as a working copy (File > Save Notebook As...) leaves the banner out
        if model.get("type") == "notebook" and isinstance(model.get("content"), dict):
            without_template_banner(model["content"])
        return save(model, path, *args, **kwargs)
    cm.save = save_without_banner

    get = cm.get
    if inspect.iscoroutinefunction(get):
        @functools.wraps(get)
        async def guarded_get(path, *args, **kwargs):
            return mark(await get(path, *args, **kwargs), path)
    else:
        @functools.wraps(get)
        def guarded_get(path, *args, **kwargs):
            return mark(get(path, *args, **kwargs), path)
    cm.get = guarded_get
    cm.save = refuse_writes(cm.save)  # the banner-stripping save, refused for templates
    cm.delete_file = refuse_writes(cm.delete_file)
    cm.rename_file = refuse_move(cm.rename_file)


BANNER_KEY = "rst_workbook_banner"  # cell metadata of the banner: never saved


def with_template_banner(notebook: dict, stem: str) -> dict:
    """``notebook`` with a first cell telling that it is a read-only template and how to get a
    copy to work in (JupyterLab's own read-only notice does not say); shown, never saved."""
    cells = notebook.setdefault("cells", [])
    if not (cells and cells[0].get("metadata", {}).get(BANNER_KEY)):
        cells.insert(0, {"cell_type": "markdown", "id": "rst-workbook-template-banner",
                         "metadata": {BANNER_KEY: True, "editable": False, "deletable": False},
                         "source": f"**A read-only template of the project.** Run it here as it "
                                   f"is, or explore in your own copy: in a terminal "
                                   f"`.venv/bin/rst-workbook new {stem}` (writes "
                                   f"`work/{stem}-work.ipynb`), or *File > Save Notebook As...* "
                                   f"into `work/`."})
    return notebook


def without_template_banner(notebook: dict) -> dict:
    """``notebook`` without the cell :func:`with_template_banner` added."""
    notebook["cells"] = [c for c in notebook.get("cells", [])
                         if not c.get("metadata", {}).get(BANNER_KEY)]
    return notebook


def with_kernel_language_info(notebook: dict) -> dict:
    """``notebook`` (nbformat JSON) with the ``language_info`` the project's kernel reports
    on start, when it runs on that kernel (keys already there are kept)."""
    meta = notebook.setdefault("metadata", {})
    if meta.get("kernelspec", {}).get("name") == KERNEL_NAME:
        info = meta.setdefault("language_info", {})
        for key, value in IPythonKernel.language_info.items():
            info.setdefault(key, value)
    return notebook


def _jupyter_server_extension_points():
    return [{"module": "rst_lib.workbook.jupyter_contents"}]


def _load_jupyter_server_extension(serverapp) -> None:
    # Loaded after jupyterlab_jupytext (extensions load in alphabetical order), which
    # replaces the contents manager: wrap the one the server ends up using.
    protect_templates(serverapp.contents_manager, Path(serverapp.root_dir).resolve())
    serverapp.log.info("rst-workbook: notebooks/ opens read-only (work in copies: rst-workbook new)")


def enable(prefix: str | os.PathLike = sys.prefix) -> Path:
    """Write the server config that enables the extension for the environment at ``prefix``
    (what ``jupyter server extension enable --sys-prefix`` writes for an extension it knows)."""
    path = Path(prefix) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"ServerApp": {"jpserver_extensions": {EXTENSION: True}}}, indent=2) + "\n")
    return path


LAB_OVERRIDES = Path("share", "jupyter", "lab", "settings", "overrides.json")
# JupyterLab asks on first start whether to fetch Jupyter's news from the internet (and checks
# for updates): a question about the network, unrelated to the workbook, on machines that are
# often offline. Answered "no" for this venv; a user can switch it on in Settings.
NO_NEWS = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false",
                                                            "checkForUpdates": False}}


def quiet_news(prefix: str | os.PathLike = sys.prefix) -> Path:
    """Merge :data:`NO_NEWS` into the venv's JupyterLab settings overrides (other plugins'
    overrides kept)."""
    path = Path(prefix) / LAB_OVERRIDES
    settings = json.loads(path.read_text()) if path.is_file() else {}
    for plugin, values in NO_NEWS.items():
        settings.setdefault(plugin, {}).update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return path


# Run in a fresh interpreter of the venv: the server's own merge of every config dir
# (jupyter_config_path, JUPYTER_CONFIG_PATH first) and its own import check of the module.
_PROBE = """
import sys
from jupyter_server.extension.manager import ExtensionPackage
from jupyter_server.serverapp import ServerApp
app = ServerApp()
app.find_server_extensions()
name = sys.argv[1]
if app.jpserver_extensions.get(name) is not True:
    sys.exit(f"not enabled in the server's config (jpserver_extensions: {app.jpserver_extensions.get(name)!r}; "
             f"config dirs: {', '.join(app.config_file_paths)})")
if not ExtensionPackage(name=name, enabled=True).validate():
    sys.exit(f"enabled, but the server cannot load {name}")
"""


def extension_status(python: str | os.PathLike = sys.executable, env: dict | None = None) -> str:
    """``enabled`` when a Jupyter server started with ``python``'s environment (and ``env``)
    loads the extension: enabled in its merged config and importable with its extension
    points; else why not."""
    out = subprocess.run([str(python), "-c", _PROBE, EXTENSION], capture_output=True, text=True,
                         env=env, timeout=180)
    if out.returncode == 0:
        return "enabled"
    return (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]


def main() -> int:
    """``make install``: enable the extension in this venv and check that it is active."""
    path = enable()
    quiet_news()
    status = extension_status()
    if status != "enabled":
        print(f"ERROR: wrote {path}, but the server extension {EXTENSION} is not active, so "
              f"JupyterLab would open the templates writable:\n{status}", file=sys.stderr)
        return 1
    print(f"JupyterLab server extension {EXTENSION}: enabled ({path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
