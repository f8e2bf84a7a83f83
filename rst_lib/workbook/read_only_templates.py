"""A Jupyter server extension: the project's notebooks (``notebooks/*.ipynb`` and their
py:percent twins) open read-only in JupyterLab and are never written by it.

Why: Jupytext pairing writes a notebook's outputs into the tracked ``.ipynb`` and its edits
into the ``.py`` twin, and autosave does so without asking; ``make test`` then fails and
``git status`` is dirty. Exploring happens in a working copy (``rst-workbook new``, see
:mod:`.working_copy`). The server reports the templates as not writable (JupyterLab shows
them read-only and does not autosave) and refuses a save, rename or delete of one with a
message saying what to do instead.

``make install`` enables it for the project's venv
(``etc/jupyter/jupyter_server_config.d/rst-workbook.json``); by hand:
``jupyter lab --ServerApp.jpserver_extensions="{'rst_lib.workbook.read_only_templates': True}"``.
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path

from tornado.web import HTTPError

from .working_copy import is_template


def _refusal(path: str) -> HTTPError:
    stem = Path(path).stem
    return HTTPError(403, f"{path} is a template of the project and stays as it is: work in a copy "
                          f"(File > Save Notebook As... into work/, or in a terminal `rst-workbook "
                          f"new {stem}`)")


def _guard(cm, root: Path) -> None:
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


def _jupyter_server_extension_points():
    return [{"module": "rst_lib.workbook.read_only_templates"}]


def _load_jupyter_server_extension(serverapp) -> None:
    # Loaded after jupyterlab_jupytext (extensions load in alphabetical order), which
    # replaces the contents manager: wrap the one the server ends up using.
    _guard(serverapp.contents_manager, Path(serverapp.root_dir).resolve())
    serverapp.log.info("rst-workbook: notebooks/ opens read-only (work in copies: rst-workbook new)")
