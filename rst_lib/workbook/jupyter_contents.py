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

``make install`` enables it for the project's venv
(``etc/jupyter/jupyter_server_config.d/rst-workbook.json``); by hand:
``jupyter lab --ServerApp.jpserver_extensions="{'rst_lib.workbook.jupyter_contents': True}"``.
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path

from ipykernel.ipkernel import IPythonKernel
from tornado.web import HTTPError

from .runs import KERNEL_NAME
from .working_copy import is_template


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
        return model

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
    cm.save = refuse_writes(cm.save)
    cm.delete_file = refuse_writes(cm.delete_file)
    cm.rename_file = refuse_move(cm.rename_file)


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
