"""Issue 5: bad input fails early and clearly, interrupted runs lose nothing, files are safe."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from rst_lib import RunConfig, create_model, load_dataset, train
from rst_lib.config import ConfigError
from rst_lib.engine.tasks import check_run
from rst_lib.engine.training import LossJumpWarning, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="mnist5k", model="conv2", width=0.125, keep_ratio=0.2, end_with_bn=True,
            train_examples=512, eval_examples=64, batch_size=64, train_attack="fgsm_rs",
            eps=0.1, alpha=0.125, eval_alpha=0.025, eval_steps=2, autoattack="none", final_examples=200)


def test_unknown_dataset_name_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid choices are .*cifar10"):
        load_dataset("imagenet22k")


def test_finetune_ticket_of_another_architecture_is_refused_before_compute(tmp_path, data):
    run = tmp_path / "run"
    train(RunConfig(**TINY, epochs=1).validate(), run, progress=False, data=data)
    with pytest.raises(ConfigError, match="does not match the model .*ticket has 'conv2', "
                                          "parameters say 'resnet18'"):
        check_run(RunConfig(**{**TINY, "model": "resnet18", "task": "finetune",
                               "ticket": str(run / "ticket.pt")}))  # train's first step


def test_run_directory_is_never_overwritten(tmp_path, data):
    cfg = RunConfig(**TINY, epochs=1).validate()
    train(cfg, tmp_path, progress=False, data=data)
    before = (tmp_path / "metrics.json").read_text()
    with pytest.raises(FileExistsError, match="never overwritten"):
        train(cfg, tmp_path, progress=False, data=data)
    assert (tmp_path / "metrics.json").read_text() == before


def test_nan_loss_stops_with_the_step_and_is_recorded(tmp_path, data):
    cfg = RunConfig(**{**TINY, "task": "dense", "lr": 1e30, "train_attack": "none", "epochs": 2}).validate()
    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf) at epoch \d+, batch \d+"):
        train(cfg, tmp_path, progress=False, data=data)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "batch" in metrics["warnings"][-1]


def test_loss_jump_debug_mode(data):
    cfg = RunConfig(**{**TINY, "task": "dense", "lr": 100.0, "train_attack": "none", "epochs": 1,
                       "end_with_bn": False, "batch_size": 32,
                       "loss_jump_factor": 1.5, "optimizer": "sgd", "momentum": 0.0}).validate()
    with pytest.warns(LossJumpWarning, match="loss jump at epoch 1, batch"):
        result = train(cfg, None, progress=False, data=data)
    assert any("loss jump" in w for w in result.warnings)
    with pytest.raises(ConfigError, match="loss_jump_factor=0.5"):
        RunConfig(loss_jump_factor=0.5).validate()


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_checkpoint(bad)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    torch.save({"model": Evil()}, bad)
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(bad)
    assert not (tmp_path / "pwned").exists()


SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from rst_lib import RunConfig, train
    cfg = RunConfig(**{tiny!r}, epochs=6).validate()
    train(cfg, sys.argv[1], progress=False, resume=len(sys.argv) > 2)
""")


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tiny=TINY))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full = tmp_path / "full"
    subprocess.run([sys.executable, str(script), str(full)], check=True, env=env, timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(killed)], env=env)
    deadline = time.time() + 600
    while time.time() < deadline:  # wait until epoch 2 has been checkpointed, then kill mid-epoch 3
        if (killed / "metrics.json").exists() and \
                len(json.loads((killed / "metrics.json").read_text())["history"]) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # epoch 2 is checkpointed; epoch 3 is under way
    proc.wait()
    interrupted = json.loads((killed / "metrics.json").read_text())
    assert interrupted["status"] == "running" and len(interrupted["history"]) < 6
    subprocess.run([sys.executable, str(script), str(killed), "resume"], check=True, env=env,
                   timeout=600)
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert b["status"] == "finished"
    strip = lambda h: [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in h]
    assert strip(a["history"]) == strip(b["history"])
    assert a["best"] == b["best"]
    assert not list(killed.glob("*.tmp"))  # atomic writes leave no half-written files


class _Quantized(nn.Module):
    """Rounds its input: zero gradients everywhere, the textbook gradient-masking defense."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


def test_gradient_masking_checks(data):
    from rst_lib.engine.checks import gradient_masking_report
    cfg = RunConfig(**{**TINY, "train_attack": "none", "epochs": 2, "train_examples": 1000}).validate()
    model = train(cfg, None, progress=False, data=data).model
    honest = gradient_masking_report(model, data.test, 0.1, 0.025, n_examples=100, steps=5,
                                     more_steps=10, restarts=2, progress=False)
    masked = gradient_masking_report(_Quantized(model), data.test, 0.1, 0.025, n_examples=100,
                                     steps=5, more_steps=10, restarts=2, progress=False)
    assert honest["eps_curve"][-1][1] <= 0.1
    assert any("eps=1" in f for f in masked["flags"])  # cannot reach 0 with the whole image
    assert any("random noise" in f for f in masked["flags"]) or \
        masked["accuracy"]["pgd"] >= masked["accuracy"]["noise"] - 0.02
    assert len(masked["flags"]) > len(honest["flags"])


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from rst_lib import RunConfig, train
    cfg = RunConfig(**{cfg!r}).validate()
    train(cfg, sys.argv[1], progress=False)
""")


def test_two_process_ddp_equals_single_process_with_the_same_global_batch(tmp_path):
    # No BatchNorm (on CPU there is no SyncBatchNorm, so BN statistics would be per rank) and
    # a natural search (attack random starts come from each rank's own RNG).
    cfg = {**TINY, "norm": "none", "end_with_bn": False, "train_attack": "none", "epochs": 2,
           "batch_size": 64, "eval_batch_size": 32, "lr": 0.05}
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(cfg=cfg))  # same as `torchrun -m rst_lib.engine.training`
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    single, double = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([sys.executable, str(script), str(single)], check=True, env=env, timeout=600)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=2", str(script), str(double)],  # standalone: a free port
                   check=True, env=env, timeout=600)
    a = json.loads((single / "metrics.json").read_text())
    b = json.loads((double / "metrics.json").read_text())
    assert b["status"] == "finished"
    for ra, rb in zip(a["history"], b["history"]):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4)
        assert rb["train_acc"] == pytest.approx(ra["train_acc"], abs=2 / 512)
        assert rb["clean_acc"] == pytest.approx(ra["clean_acc"], abs=2 / 64)
    from rst_lib.models.tickets import load_ticket
    from rst_lib.masks import masking
    ma = masking.get_masks(load_ticket(single / "ticket.pt"))
    mb = masking.get_masks(load_ticket(double / "ticket.pt"))
    same = sum(int((ma[k] == mb[k]).sum()) for k in ma) / sum(m.numel() for m in ma.values())
    assert same > 0.999
    assert sorted(p.name for p in double.iterdir()) == ["last.pt", "metrics.json", "ticket.pt"]
