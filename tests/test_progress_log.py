"""A run says how far it is: one line per epoch and the final evaluation's stages (with an
estimate of what is left) in the run folder's log.txt, printed by `rst-workbook run` as the
kernel writes them, and never into the notebook itself."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rst_lib import RunConfig, final_checks, train
from rst_lib.utils import progress_log
from rst_lib.workbook.follow import LogFollower
from tiny import TINY

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\d\d:\d\d:\d\d  ")  # a progress line starts with its time


def _lines(run_dir: Path) -> list[str]:
    return [STAMP.sub("", line) for line in (run_dir / "log.txt").read_text().splitlines()
            if STAMP.match(line)]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_stage_says_at_most_every_few_seconds_how_far_it_is_and_what_is_left(tmp_path):
    clock = Clock()
    progress_log.log_to(tmp_path)
    stage = progress_log.Stage("AutoAttack APGD-T", 1000, "images", every=15, clock=clock)
    for _ in range(5):  # 100 images every 10 s
        clock.now += 10
        stage.advance(100)
    stage.finish("420 still robust")
    # lines at 20 s and 40 s only (15 s apart at least); left = items left / rate so far
    assert _lines(tmp_path) == [
        "AutoAttack APGD-T: 200/1000 images, 20 s so far, about 80 s left",  # 800 / (200/20 s)
        "AutoAttack APGD-T: 400/1000 images, 40 s so far, about 60 s left",  # 600 / (400/40 s)
        "AutoAttack APGD-T: 500/1000 images in 50 s; 420 still robust"]


def test_work_read_back_from_a_journal_does_not_speed_up_the_estimate(tmp_path):
    clock = Clock()
    progress_log.log_to(tmp_path)
    stage = progress_log.Stage("final PGD-20", 1000, every=0, clock=clock)
    stage.advance(500, fresh=False)  # recorded before an interruption: no time spent
    clock.now += 100
    stage.advance(100)
    # 400 left at 1 image/s (100 in 100 s), not at 6 images/s (600 in 100 s)
    assert _lines(tmp_path) == ["final PGD-20: 600/1000 images, 1 min 40 s so far, about 7 min left"]


def test_times_are_written_as_a_person_reads_them():
    assert [progress_log.duration(s) for s in (42, 185, 4320)] == ["42 s", "3 min 5 s", "1 h 12 min"]
    assert [progress_log.estimate(s) for s in (3, 42, 130, 4300)] == [
        "a few seconds", "about 40 s", "about 2 min", "about 1 h 12 min"]


def test_without_a_log_nothing_is_written_and_a_nested_run_writes_into_the_outer_log(tmp_path):
    progress_log.write("nowhere")  # no log: no error, no file
    assert not list(tmp_path.iterdir())
    with progress_log.writing_to(tmp_path / "outer"):
        with progress_log.part("natural control"), progress_log.writing_to(tmp_path / "inner"):
            with progress_log.part("quickstart-natural"):
                progress_log.write("epoch 1/6")
    assert _lines(tmp_path / "outer") == ["natural control: epoch 1/6"]
    assert not (tmp_path / "inner").exists()
    assert progress_log.current() is None  # the block's log is closed after it


def test_the_follower_prints_each_whole_line_once_in_order(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("an earlier run's line\n")
    printed = []
    follower = LogFollower(log, printed.append)

    def append(text: str) -> None:
        with open(log, "a") as f:
            f.write(text)

    append("epoch 1/2 in 3 s\nepo")  # a line, and the start of the next one
    follower.read_new()
    assert printed == ["epoch 1/2 in 3 s"]  # not the earlier run's, not half a line
    append("ch 2/2 in 3 s\nfinal PGD-2: 2")
    follower.read_new()
    assert printed == ["epoch 1/2 in 3 s", "epoch 2/2 in 3 s"]
    follower.start()  # as a thread: it prints what comes, and at its stop what is left
    append("00/200 images\nAutoAttack")
    follower.stop()
    assert printed == ["epoch 1/2 in 3 s", "epoch 2/2 in 3 s", "final PGD-2: 200/200 images",
                       "AutoAttack"]


def test_a_run_writes_its_epochs_and_final_stages_into_its_log_in_order(tmp_path, data):
    cfg = RunConfig.from_dict({**TINY, "epochs": 2, "eps_warmup_epochs": 0, "name": "tiny",
                               "autoattack": "fast", "autoattack_examples": 16})
    result = train(cfg, tmp_path, progress=False, data=data)
    with progress_log.writing_to(tmp_path):
        final_checks(result.model, cfg, data, result.final, n_examples=30, more_steps=4,
                     restarts=2, progress=False)
    lines = _lines(tmp_path)
    expected = [r"tiny: epoch 1/2 in \d+ s: validation clean \d+\.\d%, PGD-2 \d+\.\d%; "
                r"(a few seconds|about \d+ s) left",
                r"tiny: epoch 2/2 in \d+ s: validation clean .*, PGD-2 [\d.]+%$",
                r"tiny: final PGD-2: 200/200 images in \d+ s; \d+ correct, \d+ robust",
                r"tiny: AutoAttack APGD-CE: (\d+)/\1 images in \d+ s; \d+ still robust",
                r"tiny: AutoAttack APGD-T: (\d+)/\1 images in \d+ s; \d+ still robust",
                r"masking checks: 100 % in \d+ s"]
    assert len(lines) == len(expected), lines
    for line, pattern in zip(lines, expected):
        assert re.fullmatch(pattern, line), (line, pattern)
    epochs = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert f"{epochs[1]['pgd_acc']:.1%}" in lines[1]  # the numbers the run recorded


@pytest.mark.slow  # a notebook run
def test_rst_workbook_run_prints_the_kernels_lines_once_and_the_notebook_holds_none(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "rst_lib.workbook.cli", "run", "00_quickstart", "-p",
         str(ROOT / "params" / "quickstart-smoke.yaml"), "-p", "epochs=2", "-o", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next((tmp_path / "00_quickstart").iterdir())
    log = [line for line in (run_dir / "log.txt").read_text().splitlines() if line.strip()]
    kernel_lines = [line for line in log if STAMP.match(line)]
    stages = [STAMP.sub("", line) for line in kernel_lines]
    for pattern in (r"smoke: epoch 1/2 in .*left", r"smoke: epoch 2/2 in ", r"smoke: final PGD-2: ",
                    r"smoke: AutoAttack APGD-CE: ", r"natural control: epoch 2/2 in ",
                    r"random mask: final PGD-2: ", r"masking checks: 100 % in "):
        assert any(re.match(pattern, s) for s in stages), (pattern, stages)
    # the terminal: every line of the log, once each, in the log's order
    terminal = done.stdout.splitlines()
    assert [line for line in terminal if line in log] == log, done.stdout
    # the notebook: none of them (its outputs are its own)
    nb = json.loads((run_dir / "00_quickstart.ipynb").read_text())
    outputs = json.dumps([c.get("outputs", []) for c in nb["cells"]])
    assert not [s for s in stages if s in outputs]


def test_a_sweep_says_each_running_cells_progress_lines_after_its_label(tmp_path):
    from rst_lib.workbook.sweeps import follow_progress
    log = tmp_path / "log.txt"
    log.write_text("earlier attempt\n\n=== 2026-12-08 03:00:00 start (slot 0) ===\n")
    said = []
    follower = follow_progress(tmp_path, "keep_ratio=0.1", said.append, skip=log.stat().st_size)
    with open(log, "a") as f:  # the kernel's lines and the cell's other output share the file
        f.write("=== 2026-12-08 03:00:02 01_search ===\n03:00:09  search: epoch 1/4 in 6 s\n"
                "Traceback (most recent call last): ...\n03:00:15  search: epoch 2/4 in 6 s\n")
    follower.stop()
    assert said == ["keep_ratio=0.1  03:00:09  search: epoch 1/4 in 6 s",
                    "keep_ratio=0.1  03:00:15  search: epoch 2/4 in 6 s"]
