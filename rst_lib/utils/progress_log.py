"""Progress lines in the run folder's ``log.txt``: one line per epoch, and each long stage
of the work (the final evaluation's attacks, the masking checks) with an estimate of what
is left.

Why a file: the kernel of a batch run has no terminal. ``rst-workbook run`` follows this file
while the notebook runs and prints its new lines (:mod:`rst_lib.workbook.follow`), so the
terminal shows what the kernel does, and the notebook itself shows each line never (its
own progress bars stay as they are). A sweep cell's ``log.txt`` gets the same lines.

Where the lines go: the log a notebook names for its kernel (:func:`log_to`, called by
``ensure_run_dir``), else the one a :func:`writing_to` block opens (``train(cfg, run_dir)``
from Python: ``run_dir/log.txt``); the outermost wins, so a control trained into a
subfolder writes into the notebook's log. Without either, nothing is written.

Lines are few: a :class:`Stage` says where it is at most every :data:`STAGE_EVERY` seconds
and once when it ends; its estimate is the rate so far times the items left.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Callable

LOG_FILE = "log.txt"
STAGE_EVERY = 15.0  # seconds between two lines of a stage (a newcomer tells slow from stuck)
EPOCH_EVERY = 30.0  # seconds between the lines of a slow epoch (a fast one has its end line only)

_log: Path | None = None      # the file lines are appended to (None: no log)
_parts: list[str] = []        # what the work is for ("natural control"); the outermost names it


def log_to(run_dir: str | os.PathLike | None, heading: str | None = None) -> Path | None:
    """From now on (in this process), lines go to ``run_dir/log.txt``; ``heading`` starts
    them with a dated line. None: no log. Returns the log file."""
    global _log
    _log = Path(run_dir) / LOG_FILE if run_dir is not None else None
    if heading is not None:
        write(f"=== {datetime.now():%Y-%m-%d %H:%M:%S} {heading} ===", stamp=False)
    return _log


def is_progress_line(line: str) -> bool:
    """A line :func:`write` wrote (``HH:MM:SS  ...``), not other output sharing the file."""
    return len(line) > 10 and line[2] == line[5] == ":" and line[8:10] == "  " and \
        line[:8].replace(":", "").isdigit()


def current() -> Path | None:
    """The log file lines go to now (None: none)."""
    return _log


@contextmanager
def writing_to(run_dir: str | os.PathLike | None):
    """Inside the block, lines go to ``run_dir/log.txt`` unless a log is already open (then
    they go there: the outermost run's log holds all of its lines)."""
    global _log
    if _log is not None or run_dir is None:
        yield
        return
    _log = Path(run_dir) / LOG_FILE
    try:
        yield
    finally:
        _log = None


@contextmanager
def part(name: str | None):
    """Lines inside the block start with ``name:`` (an enclosing part keeps its name)."""
    _parts.append(name or "")
    try:
        yield
    finally:
        _parts.pop()


def write(text: str, stamp: bool = True) -> None:
    """Append one line (``HH:MM:SS  part: text``) to the current log, if there is one."""
    if _log is None:
        return
    name = next((p for p in _parts if p), "")
    line = (f"{datetime.now():%H:%M:%S}  " if stamp else "") + (f"{name}: " if name and stamp else "") + text
    try:
        _log.parent.mkdir(parents=True, exist_ok=True)
        with open(_log, "a", encoding="utf-8") as f:  # one append per line: readers see whole lines
            f.write(line + "\n")
    except OSError:  # a log that cannot be written never stops the work
        pass


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``1 h 12 min``: a time taken."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s // 60 % 60} min"


def estimate(seconds: float) -> str:
    """``a few seconds``, ``about 40 s``, ``about 3 min``, ``about 1 h 10 min``: a time left,
    as round as it is rough."""
    if seconds < 10:
        return "a few seconds"
    if seconds < 90:
        return f"about {5 * round(seconds / 5)} s"
    if seconds < 3600:
        return f"about {round(seconds / 60)} min"
    return f"about {int(seconds // 3600)} h {round(seconds % 3600 / 60)} min"


def time_left(done: float, total: float, elapsed: float) -> float | None:
    """Seconds left at the rate so far (``done`` items in ``elapsed`` seconds); None before
    anything was done."""
    if done <= 0 or elapsed <= 0:
        return None
    return (total - done) * elapsed / done


def each(items, what: str, unit: str = "batches", every: float | None = None):
    """``items`` one by one, as a :class:`Stage` of ``len(items)`` (an item is done when the
    next one is asked for): a slow loop, e.g. an epoch's batches, says how far it is, at
    most every ``every`` seconds (None: :data:`EPOCH_EVERY`)."""
    stage = Stage(what, len(items), unit, EPOCH_EVERY if every is None else every)
    for item in items:
        yield item
        stage.advance(1)


class Stage:
    """A long piece of work of ``total`` items (``unit``; None: shown as a percentage of
    work units) named ``what``: a line at most every ``every`` seconds (None:
    :data:`STAGE_EVERY`) while it runs
    (``done/total``, time so far, the estimate), and one when :meth:`finish` is called.
    Items done without work (read back from a journal) are marked ``fresh=False``: they
    count as done but not into the rate. Without a log it does nothing."""

    def __init__(self, what: str, total: float, unit: str | None = "images",
                 every: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.unit, self.clock = what, total, unit, clock
        self.every = STAGE_EVERY if every is None else every
        self.active = _log is not None
        self.done = self.skipped = 0.0
        self.started = self.last_line = clock()

    def advance(self, n: float, fresh: bool = True) -> None:
        self.done += n
        if not fresh:
            self.skipped += n
            return
        now = self.clock()
        if self.active and now - self.last_line >= self.every and self.done < self.total:
            self.last_line = now
            left = time_left(self.done - self.skipped, self.total - self.skipped, now - self.started)
            write(f"{self.what}: {self.amount()}, {duration(now - self.started)} so far"
                  + (f", {estimate(left)} left" if left is not None else ""))

    def amount(self) -> str:
        if self.unit is None:
            return f"{100 * self.done / self.total:.0f} %" if self.total else "0 %"
        return f"{self.done:.0f}/{self.total:.0f} {self.unit}"

    def finish(self, result: str = "") -> None:
        """The stage's last line: what was done in how long, and ``result``."""
        if self.active:
            took = duration(self.clock() - self.started)
            write(f"{self.what}: {self.amount()} in {took}" + (f"; {result}" if result else ""))
