"""Live curves (TensorBoard events, progress.json, the index's 'epoch k of n') read back
while a run is going, and a final evaluation killed (SIGKILL) in the middle of AutoAttack
that resumes to exactly the numbers of an uninterrupted run; last.pt keeps every random
generator the run draws from (CPU, each CUDA device, python, numpy) and resume restores them."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rst_lib import RunConfig, train
from rst_lib.workbook.index import run_progress
from tiny import TINY

# Tiny, deterministic; AutoAttack in batches of 8 so it has many units to be killed between.
CFG = TINY | dict(keep_ratio=0.3, eval_eps=0.02, eval_alpha=0.005, eval_steps=3, lr=0.1, epochs=2,
                 final_examples=160, autoattack="fast", autoattack_examples=160, eval_batch_size=8,
                 seed=3)

CHILD = """
import json, sys, torch
torch.set_num_threads(1)
from rst_lib import RunConfig, train
cfg = RunConfig.from_dict(json.loads(sys.argv[1]))
train(cfg, sys.argv[2], progress=True, resume=True)
"""


def _units(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "eval-state" / "final_evaluation.json").read_text())["units"]
    except (OSError, ValueError, KeyError):
        return {}


def _scalars(run_dir: Path) -> tuple[dict, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0,
                                                                         "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    return ({t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]},
            tags["histograms"])


@pytest.mark.slow  # three tiny trainings with AutoAttack, one in a subprocess (~1 min)
def test_autoattack_killed_mid_evaluation_resumes_to_the_same_numbers(tmp_path):
    cfg = RunConfig(**CFG).validate()
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg.to_dict()), str(killed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.time() + 300
    seen_live = None
    try:
        while time.time() < deadline and proc.poll() is None:
            units = _units(killed)
            if any(u.startswith("autoattack/apgd-ce/") for u in units):
                # the run is alive, in its final evaluation: its curves are readable now
                seen_live = (_scalars(killed), json.loads((killed / "progress.json").read_text()),
                             run_progress(killed))
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and seen_live is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert seen_live is not None, f"the child never reached AutoAttack: {err[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = _units(killed)
    aa_total = sum(u.startswith("autoattack/") for u in done_at_kill)
    assert not (killed / "metrics.json").exists() or json.loads(
        (killed / "metrics.json").read_text())["final"] is None  # killed before the end
    # progress bars in a batch log: per attack and per batch
    assert "final PGD-3" in err and "AutoAttack apgd-ce" in err

    (scalars, hists), progress, index_text = seen_live
    assert [s for s, _ in scalars["accuracy/val_pgd"]] == [1, 2]
    for tag in ("loss/train", "accuracy/val_clean", "schedule/lr", "schedule/eps", "mask/keep_ratio"):
        assert [s for s, _ in scalars[tag]] == [1, 2], tag
    kept = [t for t in scalars if t.startswith("kept_fraction/")]
    assert kept and all(0.25 < scalars[t][-1][1] < 0.35 for t in kept)
    assert any(h.startswith("scores/") for h in hists)
    metrics_live = json.loads((killed / "metrics.json").read_text())
    assert [v for _, v in scalars["accuracy/val_pgd"]] == pytest.approx(
        [h["pgd_acc"] for h in metrics_live["history"]])
    assert progress["epoch"] == 2 and progress["epochs"] == 2
    assert index_text == "final evaluation"

    # resume (the path a restarted notebook or a requeued sweep job takes)
    resumed = train(cfg, killed, progress=False, resume=True)
    straight = train(cfg, tmp_path / "straight", progress=False)
    assert resumed.final.pop("resumed_units") == len(done_at_kill)
    assert resumed.final == straight.final  # exactly the same numbers
    assert 0 < aa_total < sum(u.startswith("autoattack/") for u in _units(killed))
    assert _units(killed) == _units(tmp_path / "straight")  # per batch, per input
    # AutoAttack broke inputs PGD-3 (steps of 0.005 toward eps 0.02) left: its units count
    assert straight.final["autoattack_acc"] < straight.final["pgd_acc_on_autoattack_examples"]
    starts = json.loads((killed / "progress.json").read_text())["starts"]
    assert [s["epoch"] for s in starts] == [0, 2]  # started, then resumed after the epochs


def test_a_journal_of_another_model_is_not_reused(tmp_path, data):
    """A stale eval-state (other weights) must not leak into a new run's numbers."""
    from rst_lib.engine.evaluation import final_evaluation
    from rst_lib.engine.tasks import build_task
    cfg = RunConfig(**{**CFG, "autoattack": "none", "final_examples": 32}).validate()
    _, a = build_task(cfg, data)
    _, b = build_task(cfg.replace(seed=4), data)
    first = final_evaluation(a, cfg, data, progress=False, run_dir=tmp_path)
    other = final_evaluation(b, cfg, data, progress=False, run_dir=tmp_path)
    assert "resumed_units" not in other
    again = final_evaluation(b, cfg, data, progress=False, run_dir=tmp_path)
    assert again.pop("resumed_units") == 4  # 32 inputs in batches of 8, all read back
    assert again == other and first["examples"] == other["examples"] == 32


def test_index_shows_how_far_a_running_run_is(tmp_path):
    from rst_lib.utils.files import write_json
    from rst_lib.workbook.index import write_index
    run = tmp_path / "01_search" / "a-run"
    write_json(run / "run.json", {"notebook": "01_search.ipynb", "status": "running"})
    write_json(run / "keep-0.1" / "progress.json", {"epoch": 3, "epochs": 10, "phase": "training"})
    done = tmp_path / "01_search" / "b-run"
    write_json(done / "run.json", {"notebook": "01_search.ipynb", "status": "finished"})
    write_json(done / "progress.json", {"epoch": 10, "epochs": 10, "phase": "finished"})
    page = write_index(tmp_path).read_text()
    assert "keep-0.1: epoch 3 of 10" in page
    assert "epoch 10 of 10" not in page  # finished runs show no progress


# --- issue 26: last.pt carries every generator the run draws from ---------------------

def _draws(cuda_devices: int = 0) -> list:
    """A few draws from each global stream, cached Gaussian halves included."""
    import random
    import numpy as np
    out = [torch.rand(3).tolist(), random.random(), random.gauss(0, 1), float(np.random.rand()),
           float(np.random.randn()), float(np.random.randn())]
    for i in range(cuda_devices):
        out.append(torch.rand(3, device=f"cuda:{i}").tolist())
    return out


def _same_states(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_states(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_states(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def _save_draw_restore_draw(tmp_path, cuda_devices: int = 0) -> tuple[list, list]:
    import random
    import numpy as np
    from rst_lib.utils.devices import generator_states, seeded_rng, set_generator_states
    from rst_lib.utils.files import torch_save
    with seeded_rng(7):  # the test's own streams are left as they were
        random.gauss(0, 1), np.random.randn()  # a cached Gaussian half in each saved state
        torch_save({"rng": generator_states()}, tmp_path / "last.pt")
        first = _draws(cuda_devices)
        ck = torch.load(tmp_path / "last.pt", weights_only=True)  # as load_checkpoint reads it
        set_generator_states(ck["rng"])
        return first, _draws(cuda_devices)


def test_saved_generators_draw_the_same_numbers_again(tmp_path):
    first, again = _save_draw_restore_draw(tmp_path)
    assert again == first
    # the test sees a stream that is not restored: a checkpoint of the CPU state alone
    # (what last.pt kept before issue 26) leaves python and numpy where they were
    import random
    from rst_lib.utils.devices import seeded_rng, set_generator_states
    with seeded_rng(7):
        saved = torch.get_rng_state()
        before = _draws()
        set_generator_states(saved)
        after = _draws()
    assert after[0] == before[0] and after[1:] != before[1:]


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device here: the CUDA generators are checked where one exists")
def test_saved_cuda_generators_draw_the_same_numbers_again(tmp_path):
    n = torch.cuda.device_count()
    torch.rand(1, device="cuda")  # CUDA in use by this process, as in a run on a GPU
    first, again = _save_draw_restore_draw(tmp_path, cuda_devices=n)
    assert again == first
    from rst_lib.utils.devices import generator_states
    assert len(generator_states()["cuda"]) == n


def test_last_pt_carries_every_generator_and_resume_restores_them(tmp_path, data):
    import rst_lib.engine.training as T
    from rst_lib.engine.training import load_checkpoint
    from rst_lib.utils.devices import generator_states, seeded_rng
    cfg = RunConfig(**{**CFG, "epochs": 1, "autoattack": "none", "final_examples": 16,
                       "eval_batch_size": 64}).validate()
    run_dir = tmp_path / "run"
    train(cfg, run_dir, progress=False, data=data)
    ck = load_checkpoint(run_dir / "last.pt")
    expected = {"torch", "python", "numpy"} | (
        {"cuda"} if torch.cuda.is_available() and torch.cuda.is_initialized() else set())
    assert set(ck["rng"]) == expected
    run = T.prepare_run(cfg, run_dir, False, data, resume=True)
    with seeded_rng(cfg.seed):  # as train() seeds before restoring
        fresh = generator_states()
        T.restore(run, resume=True)
        restored = generator_states()
    assert _same_states(restored, ck["rng"]) and not _same_states(fresh, ck["rng"])
