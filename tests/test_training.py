"""engine.training: the search and its run folder, resume and kill, collapse, non-finite
losses, every training attack, distributed training."""
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

from rst_lib import RunConfig, load_ticket, train
from rst_lib.config import ConfigError
from rst_lib.masks import masking
from rst_lib.data.datasets import fixed_subset
from rst_lib.data.loaders import make_loader
from rst_lib.engine.evaluation import evaluate
from rst_lib.engine.training import is_collapsed
from rst_lib import create_model
from rst_lib.attacks.gradient import CarriedFGSM
from rst_lib.masks.masking import get_mask_param
from rst_lib.engine.tasks import build_task, make_train_attack
from rst_lib.engine.training import LossJumpWarning, load_checkpoint
from tiny import TINY, TINY_256, TINY_512, TINY_600


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data):
    cfg = RunConfig(**TINY_600, epochs=3).validate()
    run_dir = tmp_path_factory.mktemp("run")
    return cfg, run_dir, train(cfg, run_dir, progress=False, data=data)


def test_tiny_search_improves_over_first_epoch(tiny_run):
    _, _, result = tiny_run
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"] - 0.1
    assert last["clean_acc"] > first["clean_acc"]
    assert result.best["pgd_acc"] >= first["pgd_acc"]
    assert last["clean_acc"] > 0.5  # real digits are learned by scores alone


def test_search_changes_scores_only(data):
    cfg = RunConfig(**{**TINY_600, "train_examples": 128}, epochs=1).validate()
    from rst_lib.engine.tasks import build_task
    _, before = build_task(cfg, data)
    result = train(cfg, None, progress=False, data=data)
    for (_, a), (_, b) in zip(masking.masked_layers(before), masking.masked_layers(result.model)):
        assert torch.equal(masking.raw_weight(a), masking.raw_weight(b))
        assert not torch.equal(masking.get_mask_param(a).scores, masking.get_mask_param(b).scores)


def test_run_directory_metrics_and_best_ticket(tiny_run, data):
    cfg, run_dir, result = tiny_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["best"] == result.best
    assert abs(metrics["mask"]["keep_ratio"] - 0.2) < 0.01
    assert metrics["selection_split"] == "val" and result.best["split"] == "val"
    assert all(h["eval_split"] == "val" for h in metrics["history"])
    ticket = load_ticket(run_dir / "ticket.pt")
    _, val = data.validation_split(cfg.val_fraction, cfg.seed)
    loader = make_loader(fixed_subset(val, cfg.eval_examples), 100)
    a = evaluate(ticket, loader, torch.device("cpu"), progress=False)
    b = evaluate(result.model, loader, torch.device("cpu"), progress=False)
    assert a["clean_acc"] == b["clean_acc"] == result.best["clean_acc"]
    assert result.best["examples"] == len(val) == 80  # 2 % of the 4,000 training digits
    # the reported numbers are the test split's, of the same ticket
    assert metrics["final"] == result.final and result.final["split"] == "test"
    assert result.final["examples"] == len(data.test)
    test_loader = make_loader(data.test, 500)
    assert evaluate(ticket, test_loader, torch.device("cpu"), progress=False)["clean_acc"] \
        == result.final["clean_acc"]


def test_validation_split_is_fixed_per_seed_and_disjoint(data):
    train, val = data.validation_split(0.02, seed=0)
    train_again, val_again = data.validation_split(0.02, seed=0)
    _, val_other = data.validation_split(0.02, seed=1)
    assert len(val) == 80 and len(train) == 3920
    assert torch.equal(val.tensors[0], val_again.tensors[0])
    assert not torch.equal(val.tensors[0], val_other.tensors[0])
    seen = {t.numpy().tobytes() for t in train.tensors[0]}
    assert not any(v.numpy().tobytes() in seen for v in val.tensors[0])
    assert data.validation_split(0.0, seed=0) == (data.train, None)


def test_test_split_is_read_only_by_the_final_evaluation(data, monkeypatch):
    """Every read of a test example happens after the search loop hands over to
    final_evaluation: best epoch and early stop see only the validation split."""
    import dataclasses
    from torch.utils.data import Dataset
    import rst_lib.engine.training as train_mod
    events = []

    class Watched(Dataset):
        def __init__(self, ds):
            self.ds = ds

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            events.append("test read")
            return self.ds[i]

    real_final = train_mod.final_evaluation

    def final(*args, **kw):
        events.append("final evaluation")
        return real_final(*args, **kw)

    monkeypatch.setattr(train_mod, "final_evaluation", final)
    watched = dataclasses.replace(data, test=Watched(data.test))
    cfg = RunConfig(**{**TINY_600, "train_examples": 256, "final_examples": 50}, epochs=2).validate()
    result = train(cfg, None, progress=False, data=watched)
    assert events[0] == "final evaluation" and events.count("final evaluation") == 1
    assert events.count("test read") == 50 and result.final["examples"] == 50
    # with val_fraction=0 the per-epoch check reads the test split (and says so)
    events.clear()
    on_test = train(cfg.replace(val_fraction=0.0), None, progress=False, data=watched)
    assert events[0] == "test read" and on_test.best["split"] == "test"
    assert any("val_fraction=0" in w for w in on_test.warnings)


def test_same_seed_same_numbers(tiny_run, data):
    cfg, _, result = tiny_run
    again = train(cfg, None, progress=False, data=data)
    assert again.history[0]["train_loss"] == result.history[0]["train_loss"]
    assert [h["pgd_acc"] for h in again.history] == [h["pgd_acc"] for h in result.history]
    other = train(cfg.replace(seed=1), None, progress=False, data=data)
    assert other.history[0]["train_loss"] != result.history[0]["train_loss"]


def test_resume_finishes_like_an_uninterrupted_run(tmp_path, data, tiny_run):
    cfg, _, full = tiny_run
    short = cfg.replace(epochs=3)
    run_dir = tmp_path / "r"
    # run 2 epochs of the 3-epoch schedule by stopping after epoch 2 via a resumable checkpoint
    import rst_lib.engine.training as T
    calls = {"n": 0}
    original = T.evaluate

    def stop_after_two(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*a, **k)
    T.evaluate = stop_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            train(short, run_dir, progress=False, data=data)
    finally:
        T.evaluate = original
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "running"
    resumed = train(short, run_dir, progress=False, data=data, resume=True)
    assert [h["pgd_acc"] for h in resumed.history] == [h["pgd_acc"] for h in full.history]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_collapse_detection():
    # "not learning": loss ~ ln(C) and accuracy ~ 1/C, whatever the prediction histogram
    assert is_collapsed(math.log(10) + 0.01, 0.10, 10)
    assert is_collapsed(math.log(10) - 0.05, 0.13, 10)
    assert not is_collapsed(math.log(10), 0.30, 10)  # loss at ln(10) but learning
    assert not is_collapsed(1.0, 0.10, 10)  # loss far from ln(10)
    assert is_collapsed(math.log(100), 0.01, 100)


# Noise images, random labels: the training loss drifts down to ln(10) within a few epochs.
NOISE = {**TINY_600, "end_with_bn": False, "val_fraction": 0.5, "train_examples": None,
         "eval_examples": None, "weight_init": "signed_constant"}


def _noise_bundle(n_train=2000, n_test=200, size=12):
    """Random noise with random labels: nothing to learn; a model at chance spreads its
    argmax over several classes (a uniform-logit collapse, not a constant prediction)."""
    from torch.utils.data import TensorDataset
    from rst_lib.data.datasets import DataBundle
    g = torch.Generator().manual_seed(0)
    make = lambda n: TensorDataset(torch.rand(n, 1, size, size, generator=g),
                                   torch.randint(0, 10, (n,), generator=g))
    return DataBundle("noise", make(n_train), make(n_test), 10, 1, size, (0.0,), (1.0,),
                      list("0123456789"))


def test_uniform_logit_collapse_is_detected_and_stops_the_run(tmp_path):
    from rst_lib.engine.training import CollapseWarning
    data = _noise_bundle()
    cfg = RunConfig(**{**NOISE, "collapse_patience": 2, "train_attack": "none"},
                    epochs=12).validate()
    with pytest.warns(CollapseWarning, match="not learning"):
        result = train(cfg, tmp_path / "run", progress=False, data=data)
    n = len(result.history)
    assert 2 <= n < 12  # stopped early, after `patience` epochs at chance
    assert all(is_collapsed(h["train_loss"], h["clean_acc"], 10) for h in result.history[-2:])
    # spread predictions: the old histogram rule (> 90 % in one class) would not have fired
    assert max(h["top_class_fraction"] for h in result.history[-2:]) < 0.9
    assert result.stopped["epoch"] == n and result.stopped["reason"] == "collapse"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "collapsed" and metrics["stopped"]["epoch"] == n
    assert "eps_warmup_epochs" not in metrics["stopped"]["message"]  # natural search: no eps
    assert "warmup_epochs" in metrics["stopped"]["message"]  # remedies are named
    assert metrics["final"]["split"] == "test"  # the stopped run is still evaluated


def test_collapse_without_stopping_runs_all_epochs():
    data = _noise_bundle()
    cfg = RunConfig(**{**NOISE, "collapse_patience": 2, "train_attack": "none",
                       "stop_on_collapse": False}, epochs=12).validate()
    with pytest.warns(Warning, match="not learning"):
        result = train(cfg, None, progress=False, data=data)
    assert len(result.history) == 12 and result.stopped is None
    assert sum("collapsed" in w for w in result.warnings) == 1


def test_collapse_message_offers_the_remedies_that_are_off():
    from rst_lib.engine.training import collapse_message
    row = {"epoch": 3, "train_loss": 2.30, "clean_acc": 0.1, "eval_split": "val"}
    plain = RunConfig(train_attack="pgd", end_with_bn=False, eps_warmup_epochs=0).validate()
    msg = collapse_message(plain, row, 10, 2)
    for remedy in ("eps_warmup_epochs", "warmup_epochs: 2", "end_with_bn: true"):
        assert remedy in msg
    tried = plain.replace(eps_warmup_epochs=5, warmup_epochs=2, end_with_bn=True)
    msg = collapse_message(tried, row, 10, 2)
    assert "eps_warmup_epochs" not in msg and "end_with_bn" not in msg
    # no BatchNorm and no fan scaling: activations vanish; those remedies come first
    vanishing = plain.replace(norm="none", scale_fan=False)
    msg = collapse_message(vanishing, row, 10, 2)
    assert msg.index("norm: bn") < msg.index("scale_fan: true") < msg.index("eps_warmup_epochs")


def test_channels_last_search_matches_default_layout(tmp_path, data):
    cfg = RunConfig(**{**TINY_600, "train_examples": 128}, epochs=1).validate()
    plain = train(cfg, None, progress=False, data=data)
    nhwc = train(cfg.replace(channels_last=True), tmp_path / "run", progress=False, data=data)
    conv_scores = [masking.get_mask_param(m).scores for _, m in masking.masked_layers(nhwc.model)
                   if masking.get_mask_param(m).scores.dim() == 4]
    assert conv_scores and all(s.is_contiguous(memory_format=torch.channels_last)
                               for s in conv_scores)
    assert math.isclose(plain.history[0]["train_loss"], nhwc.history[0]["train_loss"],
                        rel_tol=1e-3)
    # the ticket of a channels-last run is an ordinary ticket
    ticket = load_ticket(tmp_path / "run" / "ticket.pt")
    loader = make_loader(fixed_subset(data.test, cfg.final_examples), 500)
    assert evaluate(ticket, loader, torch.device("cpu"), progress=False)["clean_acc"] == \
        nhwc.final["clean_acc"]


def test_best_epoch_ties_on_robust_accuracy_go_to_clean_accuracy(monkeypatch, data):
    """Early epochs often all sit at 0 % PGD accuracy: the kept ticket is then the one
    with the best clean accuracy, not simply the first epoch."""
    import rst_lib.engine.training as train_mod
    scripted = iter([(0.5, 0.0), (0.8, 0.0), (0.6, 0.0)])  # the 3 epochs' validation checks

    def fake_evaluate(*args, **kwargs):
        clean, pgd = next(scripted)
        return {"clean_acc": clean, "pgd_acc": pgd, "top_class_fraction": 0.2}

    monkeypatch.setattr(train_mod, "evaluate", fake_evaluate)
    cfg = RunConfig(**{**TINY_600, "train_examples": 64}, epochs=3).validate()
    result = train(cfg, None, progress=False, data=data)
    assert result.best == {"epoch": 2, "clean_acc": 0.8, "pgd_acc": 0.0, "split": "val",
                           "examples": 80}
    assert result.final["split"] == "test"  # the final numbers are measured, not scripted


def test_eps_warmup_reaches_the_training_attack(data):
    """The attack used in the first batches of a warm-up is smaller than eps."""
    from rst_lib.engine.tasks import build_task, make_optimizer, make_train_attack
    from rst_lib.engine.batch_steps import EpochContext
    from rst_lib.engine.training import train_epoch
    from rst_lib.data.loaders import make_loader
    cfg = RunConfig(model="conv2", width=0.125, train_attack="pgd", eps=0.3, alpha=0.1, steps=2,
                    eps_warmup_epochs=2, epochs=3, autoattack="none").validate()
    _, model = build_task(cfg, data)
    attack = make_train_attack(model, cfg, 256)
    seen = []
    original = attack.perturb

    def spy(x, y):
        seen.append((attack.eps, attack.alpha))
        out = original(x, y)
        assert (out - x).abs().max() <= attack.eps + 1e-6  # inside the warm-up ball
        return out
    attack.perturb = spy
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    loader = make_loader(torch.utils.data.TensorDataset(*[t[:256] for t in data.train.tensors]), 64)
    ctx = EpochContext.build(model, opt, cfg, torch.device("cpu"), 256, attack=attack,
                             progress=False)
    train_epoch(ctx, loader, 0)
    assert [round(e, 4) for e, _ in seen] == [0.0, 0.0375, 0.075, 0.1125]  # 0.3 * (i/4) / 2
    assert all(a == pytest.approx(e / 3) for e, a in seen)  # the step follows the radius
    seen.clear()
    train_epoch(ctx, loader, 2)
    assert all(e == pytest.approx(0.3) for e, _ in seen)  # after the warm-up: the full eps


@pytest.mark.parametrize("attack", ["pgd", "fgsm_rs", "free", "trades", "none"])
@pytest.mark.parametrize("threat_model", ["linf", "l2"])
def test_every_inner_attack_trains(data, attack, threat_model):
    eps = 0.1 if threat_model == "linf" else 1.0
    cfg = RunConfig(**{**TINY, "train_attack": attack, "threat_model": threat_model, "eps": eps,
                       "alpha": eps / 4, "steps": 2, "free_repeats": 2, "epochs": 2,
                       "train_examples": 512}).validate()
    result = train(cfg, None, progress=False, data=data)
    first, last = result.history
    assert math.isfinite(last["train_loss"]) and last["train_loss"] < first["train_loss"]
    assert last["clean_acc"] > 0.2


@pytest.fixture
def model():
    return create_model("conv2", 10, 1, width=0.25, keep_ratio=0.3, image_size=28).eval()


def test_fgsm_carried_search_keeps_one_buffer_across_epochs(data):
    cfg = RunConfig(**{**TINY_256, "train_attack": "fgsm_carried", "alpha": 0.05}, epochs=2).validate()
    _, model = build_task(cfg, data)
    attack = make_train_attack(model, cfg, 256)
    assert isinstance(attack, CarriedFGSM) and not attack.eval_mode  # train mode, as RBRN
    result = train(cfg, None, progress=False, data=data)
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    loader = make_loader(data.train, 64, with_index=True)
    x, y, i = next(iter(loader))
    assert torch.equal(i, torch.arange(64)) and torch.equal(data.train.tensors[0][:64], x)


def test_search_with_discard_runs_and_records_the_discarded_scores(data):
    cfg = RunConfig(**TINY_256, epochs=2, discard=True, discard_every=1, discard_rate=0.3).validate()
    result = train(cfg, None, progress=False, data=data)
    p = get_mask_param(next(m for _, m in masking.masked_layers(result.model)))
    assert int(p.discarded.sum()) == int(0.6 * p.scores.numel())  # 2 discards of 30 %


ROOT = Path(__file__).resolve().parents[1]


SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from rst_lib import RunConfig, train
    cfg = RunConfig(**{tiny!r}, epochs=6).validate()
    train(cfg, sys.argv[1], progress=False, resume=len(sys.argv) > 2)
""")


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from rst_lib import RunConfig, train
    cfg = RunConfig(**{cfg!r}).validate()
    train(cfg, sys.argv[1], progress=False)
""")


def test_run_directory_is_never_overwritten(tmp_path, data):
    cfg = RunConfig(**TINY_512, epochs=1).validate()
    train(cfg, tmp_path, progress=False, data=data)
    before = (tmp_path / "metrics.json").read_text()
    with pytest.raises(FileExistsError, match="never overwritten"):
        train(cfg, tmp_path, progress=False, data=data)
    assert (tmp_path / "metrics.json").read_text() == before


def test_nan_loss_stops_with_the_step_and_is_recorded(tmp_path, data):
    cfg = RunConfig(**{**TINY_512, "task": "dense", "lr": 1e30, "train_attack": "none", "epochs": 2}).validate()
    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf) at epoch \d+, batch \d+"):
        train(cfg, tmp_path, progress=False, data=data)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "batch" in metrics["warnings"][-1]


def test_loss_jump_debug_mode(data):
    cfg = RunConfig(**{**TINY_512, "task": "dense", "lr": 100.0, "train_attack": "none", "epochs": 1,
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


@pytest.mark.slow  # three searches in subprocesses, one killed mid-epoch
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tiny=TINY_512))
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


@pytest.mark.slow  # two training processes plus a single-process run
def test_two_process_ddp_equals_single_process_with_the_same_global_batch(tmp_path):
    # No BatchNorm (on CPU there is no SyncBatchNorm, so BN statistics would be per rank) and
    # a natural search (attack random starts come from each rank's own RNG).
    cfg = {**TINY_512, "norm": "none", "end_with_bn": False, "train_attack": "none", "epochs": 2,
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
    # one set of run files, written by rank 0 alone (no per-rank copies)
    assert sorted(p.name for p in double.iterdir()) == sorted(p.name for p in single.iterdir()) == [
        "eval-state", "last.pt", "log.txt", "metrics.json", "progress.json", "tensorboard",
        "ticket.pt"]
