"""Paths that travel with the project: one meaning for a relative path everywhere.

* A relative path in a parameter file, a sweep file or a record means a path from the
  project root (the checkout this package belongs to), wherever the command is run - the
  same rule as in a notebook's kernel (:func:`rst_lib.workbook.params.path_base`).
* A record (``run.json``, ``params.yaml``, ``metrics.json``, ``summary.json``, a study's
  copies of them) names a path inside the project relative to the project root
  (:func:`record_paths`); readers resolve it against their own root (:func:`resolve_path`),
  so a record copied to a clone in another folder, or on another machine, still names its
  tickets and run folders.
* A path outside the project (shared data, ``../shared/data/...``, ``/datasets/...``) is
  recorded absolute: it says where the machine that ran the record kept it. Nothing that
  reads or re-renders a record opens it, and a clone elsewhere re-runs from its own
  parameter files, whose relative paths resolve against its own root (so ``../shared``
  there is that clone's neighbour).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

# The checkout this package belongs to (an editable install): notebooks/, outputs/, studies/.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def resolve_path(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """``path`` as an absolute path: ``~`` expanded; a relative path is taken from ``base``
    (None: the project root), ``..`` folded."""
    p = Path(os.fspath(path)).expanduser()
    return os.path.normpath(p if p.is_absolute() else Path(base or PROJECT_ROOT) / p)


def record_path(path: str | os.PathLike) -> str:
    """The text a record stores for ``path``: relative to the project root (POSIX
    separators) when it is an absolute path inside the project, else unchanged."""
    text = os.fspath(path)
    p = Path(text)
    if not p.is_absolute():
        return text
    for candidate in (Path(os.path.normpath(p)), Path(os.path.realpath(p))):
        if candidate.is_relative_to(PROJECT_ROOT):
            return candidate.relative_to(PROJECT_ROOT).as_posix() or "."
    return text


def record_paths(obj):
    """``obj`` (a record: mappings, lists, values) with every absolute path inside the
    project written relative to the project root (:func:`record_path`); other values as
    they are."""
    if isinstance(obj, dict):
        return {k: record_paths(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [record_paths(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return record_path(obj)
    if isinstance(obj, str) and obj.startswith(os.sep) and "\n" not in obj:
        return record_path(obj)
    return obj


def resolve_paths(params: dict, names: Iterable[str], base: str | os.PathLike | None = None) -> dict:
    """A copy of ``params`` whose path parameters (``names``: a string, or a list of them)
    are absolute, relative ones taken from ``base`` (None: the project root). Other values
    (None, a sweep's ``{from_stage: ...}`` references) are left as they are."""
    out = dict(params)
    for name in names:
        value = out.get(name)
        if isinstance(value, (str, os.PathLike)) and os.fspath(value):
            out[name] = resolve_path(value, base)
        elif isinstance(value, list):
            out[name] = [resolve_path(v, base) if isinstance(v, (str, os.PathLike)) and os.fspath(v)
                         else v for v in value]
    return out
