import json
import math

import pytest
import torch

from rst_lib import RunConfig, load_ticket, train
from rst_lib.config import ConfigError
from rst_lib.masks import masking
from rst_lib.data.datasets import load_dataset, fixed_subset
from rst_lib.data.loaders import make_loader
from rst_lib.engine.evaluation import evaluate
from rst_lib.engine.training import is_collapsed
from rst_lib.engine.schedules import lr_factor
from rst_lib.utils.devices import resolve_device

TINY = dict(dataset="mnist5k", model="conv2", width=0.125, keep_ratio=0.2, end_with_bn=True,
            train_examples=600, eval_examples=100, batch_size=64, train_attack="fgsm_rs",
            eps=0.1, alpha=0.125, eval_alpha=0.025, eval_steps=3, lr=0.1, autoattack="none")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data):
    cfg = RunConfig(**TINY, epochs=3).validate()
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
    cfg = RunConfig(**{**TINY, "train_examples": 128}, epochs=1).validate()
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
    cfg = RunConfig(**{**TINY, "train_examples": 256, "final_examples": 50}, epochs=2).validate()
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
NOISE = {**TINY, "end_with_bn": False, "val_fraction": 0.5, "train_examples": None,
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


def test_lr_schedules():
    cfg = RunConfig(epochs=10, lr_schedule="cosine").validate()
    assert lr_factor(cfg, 0) == 1.0 and abs(lr_factor(cfg, 10)) < 1e-12
    assert abs(lr_factor(cfg, 5) - 0.5) < 1e-12
    step = RunConfig(epochs=10, lr_schedule="step", lr_milestones=[3, 6], lr_gamma=0.1).validate()
    assert [round(lr_factor(step, e), 6) for e in (0, 3, 5.9, 6)] == [1, 0.1, 0.1, 0.01]


def test_lr_stepped_per_epoch_and_piecewise_milestones():
    # lr_step: epoch holds the LR of the epoch's start (the seeds' schedulers run once per
    # epoch); batch (the default) moves it every batch
    per_epoch = RunConfig(epochs=10, lr_schedule="cosine", lr_step="epoch").validate()
    per_batch = RunConfig(epochs=10, lr_schedule="cosine").validate()
    assert lr_factor(per_epoch, 2.7) == lr_factor(per_epoch, 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert lr_factor(per_batch, 2.7) < lr_factor(per_batch, 2)
    # warm-up per epoch: epoch e trains at (e + 1) / W of the LR, as RST's and RBRN's schedulers
    warm = per_epoch.replace(lr_schedule="constant", warmup_epochs=4)
    assert [lr_factor(warm, e + 0.5) for e in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1, 1])
    # cifar_piecewise: x0.1 at lr_milestones (RST: 80 and 120, whatever the epochs), else 50 %/75 %
    fixed = RunConfig(epochs=200, lr_schedule="cifar_piecewise", lr_milestones=[80, 120]).validate()
    assert [lr_factor(fixed, e) for e in (79.9, 80, 119, 120, 199)] == pytest.approx([1, 0.1, 0.1, 0.01, 0.01])
    relative = fixed.replace(lr_milestones=[])
    assert [lr_factor(relative, e) for e in (99, 100, 150)] == pytest.approx([1, 0.1, 0.01])
    with pytest.raises(ConfigError, match="lr_step='iteration' is invalid"):
        RunConfig(lr_step="iteration").validate()


def test_building_a_model_leaves_the_global_rng_alone():
    from rst_lib import create_model
    state = torch.get_rng_state()
    create_model("resnet18", 10, 3, width=0.125, keep_ratio=0.1)
    assert torch.equal(state, torch.get_rng_state())


def test_device_auto_resolves_on_cpu_machine():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_channels_last_search_matches_default_layout(tmp_path, data):
    cfg = RunConfig(**{**TINY, "train_examples": 128}, epochs=1).validate()
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
    cfg = RunConfig(**{**TINY, "train_examples": 64}, epochs=3).validate()
    result = train(cfg, None, progress=False, data=data)
    assert result.best == {"epoch": 2, "clean_acc": 0.8, "pgd_acc": 0.0, "split": "val",
                           "examples": 80}
    assert result.final["split"] == "test"  # the final numbers are measured, not scripted
