"""Working copies: the notebooks in ``notebooks/`` are the project's templates; a user
explores in a copy under ``work/`` (ignored by git), made by ``rst-workbook new``.

A copy keeps the template's ``parameters`` cell (with the values given, checked first),
starts with a note saying where it came from, and is NOT paired with a py:percent twin:
saving it writes only that ``.ipynb``, never the tracked notebook or its ``.py``.
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from ..errors import ConfigError
from .params import (NOTEBOOKS_DIR, PROJECT_ROOT, find_notebook, normalize_params,
                     validate_notebook_params)

WORK_DIR = PROJECT_ROOT / "work"
# A working copy is unpaired even though the project's jupytext.toml pairs every notebook
# below it: the notebook's own jupytext metadata takes precedence over the config file.
UNPAIRED = {"formats": "ipynb"}


def _literal(value) -> str:
    """A parameter value as Python source (strings in double quotes, like the schema's)."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def set_parameters(source: str, params: dict) -> str:
    """The ``parameters`` cell ``source`` with the values of ``params`` put in place of the
    defaults (each line ``name = value  # help`` keeps its help comment)."""
    lines, seen = source.splitlines(), set()
    for i, line in enumerate(lines):
        m = re.match(r"^(\w+)(\s*=\s*)(.*?)(\s+#.*)?$", line)
        if m and m.group(1) in params:
            name = m.group(1)
            lines[i] = f"{name}{m.group(2)}{_literal(params[name])}{m.group(4) or ''}"
            seen.add(name)
    missing = [n for n in params if n not in seen]
    lines += [f"{n} = {_literal(params[n])}" for n in missing]  # run_dir: not in every cell
    return "\n".join(lines)


def new_working_copy(notebook: str | os.PathLike, name: str | None = None,
                     params: dict | None = None, work_dir: str | os.PathLike | None = None,
                     force: bool = False) -> Path:
    """``work/<name>.ipynb``: a working copy of a project notebook (by name or path);
    ``name`` None: ``<notebook>-work``, so its JupyterLab tab tells it from the template's.

    ``params`` (e.g. from ``-p`` files / ``key=value``) are checked like a batch run's
    (paths taken from the current folder and made absolute) and written into the copy's
    parameters cell; ``interactive`` and ``progress`` keep the notebook's defaults (a copy
    is for JupyterLab). An existing copy is refused unless ``force``.
    """
    template = find_notebook(notebook)
    params = dict(params or {})
    if params:
        keep = {k: params[k] for k in ("progress", "interactive") if k in params}
        normalized = normalize_params(template, params)
        normalized.update(keep)
        for k in ("progress", "interactive", "runs_root"):
            if k not in params:
                normalized.pop(k, None)
        params = normalized
        validate_notebook_params(template, params)
    work_dir = Path(work_dir) if work_dir else WORK_DIR
    stem = re.sub(r"[^\w.=-]+", "_", name or f"{template.stem}-work").removesuffix(".ipynb")
    target = work_dir / f"{stem}.ipynb"
    if target.exists() and not force:
        raise ConfigError(f"{str(target)!r} exists: open it, or give another name "
                          f"(rst-workbook new {template.stem} NAME), or --force to replace it")
    # the notebook's JSON as it is (nbformat would add 1.3 s of imports to `rst-workbook new`)
    nb = json.loads(template.read_text(encoding="utf-8"))
    nb.setdefault("metadata", {})["jupytext"] = dict(UNPAIRED)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        if "parameters" in cell.get("metadata", {}).get("tags", []) and params:
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            cell["source"] = set_parameters(source, params).splitlines(keepends=True)
    shown = os.path.relpath(template, PROJECT_ROOT) if template.is_relative_to(PROJECT_ROOT) \
        else str(template)
    # a provenance note, not notebook code (the cells themselves come from the template)
    note = {"cell_type": "markdown", "id": "working-copy", "metadata": {
        "tags": ["working-copy", "notebook-only"]}, "source": (
        f"**Working copy** of `{shown}`, made {time.strftime('%Y-%m-%d %H:%M')} by "
        f"`rst-workbook new {template.stem}`. Edit, run and save it freely: it is yours "
        f"(`work/` is ignored by git) and the project's notebook stays as it is. Relative "
        f"paths in the parameters are taken from the project root, as in the README.")}
    nb["cells"].insert(0, note)
    target.parent.mkdir(parents=True, exist_ok=True)
    # nbformat's own layout (what JupyterLab writes back): one-space indent, sorted keys
    target.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                      encoding="utf-8")
    return target


def is_template(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one of the project's tracked notebooks or their py:percent twins."""
    p = Path(path).resolve()
    return p.parent == NOTEBOOKS_DIR.resolve() and p.suffix in (".ipynb", ".py")
