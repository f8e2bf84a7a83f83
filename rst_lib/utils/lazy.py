"""Package faces that load on first use (PEP 562): ``import rst_lib`` or ``import
rst_lib.workbook`` costs milliseconds, and a name such as ``rst_lib.train`` imports its
module (and torch) the first time it is read. The CLI's light commands (``--help``,
``params``, ``index``, ...) start without torch, papermill or scipy this way (issue 27)."""
from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]) -> tuple[Callable, Callable, list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package``, whose public names come
    from its modules: ``exports`` maps each module (relative to the package, ``".engine"``)
    to the names it defines; a name that is the module's own name is the module itself. A
    name is imported when first read, then held in the package like an eager import."""
    namespace = importlib.import_module(package).__dict__
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(where[name], package)
        value = getattr(module, name) if hasattr(module, name) else module
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__, list(where)
