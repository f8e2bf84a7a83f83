"""The terminal of a batch run: the run's progress lines, printed as its kernel writes them.

A kernel started by papermill has no terminal. The library appends its progress lines
(one per epoch, the final evaluation's stages with an estimate of what is left; see
:mod:`rst_lib.utils.progress_log`) to the run folder's ``log.txt``; while the notebook runs,
:func:`following` reads that file in a thread and prints each new whole line. The lines
never pass through the notebook, so it holds each of them never, and the log keeps them.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

POLL_SECONDS = 0.5  # how often the log is looked at (a line appears within this)


def _print(line: str) -> None:
    print(line, flush=True)


class LogFollower(threading.Thread):
    """Prints (``out``) each line appended to ``path`` after the follower was made (or
    after its first ``offset`` bytes)."""

    def __init__(self, path: str | os.PathLike, out: Callable[[str], None] = _print,
                 poll: float = POLL_SECONDS, offset: int | None = None):
        super().__init__(name=f"follow {path}", daemon=True)
        self.path, self.out, self.poll = Path(path), out, poll
        if offset is None:
            offset = self.path.stat().st_size if self.path.is_file() else 0
        self.offset = offset
        self.pending = b""  # a line not written to its end yet
        self.stopped = threading.Event()

    def read_new(self, final: bool = False) -> None:
        """Print the whole lines written since the last look (``final``: the rest too)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:  # not written yet
            return
        self.offset += len(data)
        *lines, self.pending = (self.pending + data).split(b"\n")
        if final and self.pending:
            lines.append(self.pending)
            self.pending = b""
        for line in lines:
            self.out(line.decode("utf-8", errors="replace").rstrip("\r"))

    def run(self) -> None:
        while not self.stopped.wait(self.poll):
            self.read_new()

    def stop(self) -> None:
        """Stop following, after printing what is left to print."""
        self.stopped.set()
        if self.is_alive():
            self.join()
        self.read_new(final=True)


@contextmanager
def following(path: str | os.PathLike, out: Callable[[str], None] = _print):
    """Inside the block, the lines appended to ``path`` are printed as they come."""
    follower = LogFollower(path, out)
    follower.start()
    try:
        yield follower
    finally:
        follower.stop()
        sys.stdout.flush()
