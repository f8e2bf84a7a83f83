"""Run files: one atomic writer, one JSON reader, fresh run folders, SIGTERM as Ctrl-C.

Every file a run writes goes through :func:`atomic_write` (a temporary file in the same
folder, then a rename: a reader never sees half a file, a killed run never leaves one)
and gets the user's normal permissions (``0666 & ~umask``, like ``open()``), so
colleagues on a shared cluster can read ``metrics.json`` or ``ticket.pt``.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import struct
import tempfile
import zipfile
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator



def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it to
    ``path`` with the permissions a plain ``open(path, "w")`` would give."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2))


def read_json(path: str | os.PathLike) -> dict:
    """A JSON file's mapping, or ``{}`` when it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# A run's live progress: the training loop writes it (engine.live), the index reads it.
PROGRESS_FILE = "progress.json"

# What torch.load raises on a file that is not a loadable archive: refused pickles, cut
# archives, a folder or an unreadable file; random bytes that are not a zip archive reach
# the (weights-only) unpickler, which can fail with almost anything (struct.error, ...).
TORCH_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile,
                     OSError, ValueError, struct.error, LookupError, TypeError, AttributeError,
                     OverflowError, MemoryError)


def torch_save(obj, path: str | os.PathLike) -> Path:
    import torch  # here, not at the top: reading run files must not load torch (CLI start-up)
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def new_run_dir(root: str | os.PathLike, name: str) -> Path:
    """A fresh directory ``root/<name>-<timestamp>[-N]``; an old run is never reused."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = root / (f"{name}-{stamp}" + (f"-{i}" if i else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run directory under {root}")


@contextmanager
def sigterm_as_interrupt():
    """Inside the block SIGTERM (a plain ``kill``) raises KeyboardInterrupt, so a run
    records "interrupted" and stops its kernel or children as on Ctrl-C."""
    def _terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# What a run folder holds that a model loads from: the best ticket, else the resumable
# checkpoint (a run killed before its first best epoch was saved holds only last.pt).
RUN_MODEL_FILES = ("ticket.pt", "last.pt")


def model_file(path: str | os.PathLike, names: tuple[str, ...] = RUN_MODEL_FILES) -> Path:
    """THE resolver from a path to a model file: a file is itself; a run folder gives the
    first of ``names`` it holds. FileNotFoundError says what is missing where."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in names:
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"{str(p.resolve())!r} is a folder without a "
                                f"{' or '.join(names)}")
    if not p.is_file():
        raise FileNotFoundError(f"no file at {str(p.resolve())!r}")
    return p


@contextmanager
def staged_folder(out_dir: str | os.PathLike, prefix: str = "rst-") -> Iterator[Path]:
    """A temporary folder to write into; its files move into ``out_dir`` only when the block
    ends without an error, so a failed import or export leaves nothing behind."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            shutil.move(str(f), out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
