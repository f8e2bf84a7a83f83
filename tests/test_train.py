import json
import math

import pytest
import torch

from rst_lib import RunConfig, load_ticket, masking, search
from rst_lib.data import load_dataset, make_loader, fixed_subset
from rst_lib.train import evaluate, is_collapsed, lr_factor, resolve_device

TINY = dict(dataset="mnist5k", model="conv2", width=0.125, keep_ratio=0.2, end_with_bn=True,
            train_examples=600, eval_examples=100, batch_size=64, train_attack="fgsm_rs",
            eps=0.1, alpha=0.125, eval_alpha=0.025, eval_steps=3, lr=0.1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data):
    cfg = RunConfig(**TINY, epochs=3).validate()
    run_dir = tmp_path_factory.mktemp("run")
    return cfg, run_dir, search(cfg, run_dir, progress=False, data=data)


def test_tiny_search_improves_over_first_epoch(tiny_run):
    _, _, result = tiny_run
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"] - 0.1
    assert last["clean_acc"] > first["clean_acc"]
    assert result.best["pgd_acc"] >= first["pgd_acc"]
    assert last["clean_acc"] > 0.5  # real digits are learned by scores alone


def test_search_changes_scores_only(data):
    cfg = RunConfig(**{**TINY, "train_examples": 128}, epochs=1).validate()
    from rst_lib.train import build_search
    _, before = build_search(cfg, data)
    result = search(cfg, None, progress=False, data=data)
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
    ticket = load_ticket(run_dir / "ticket.pt")
    loader = make_loader(fixed_subset(data.test, cfg.eval_examples), 100)
    a = evaluate(ticket, loader, torch.device("cpu"), progress=False)
    b = evaluate(result.model, loader, torch.device("cpu"), progress=False)
    assert a["clean_acc"] == b["clean_acc"] == result.best["clean_acc"]


def test_same_seed_same_numbers(tiny_run, data):
    cfg, _, result = tiny_run
    again = search(cfg, None, progress=False, data=data)
    assert again.history[0]["train_loss"] == result.history[0]["train_loss"]
    assert [h["pgd_acc"] for h in again.history] == [h["pgd_acc"] for h in result.history]
    other = search(cfg.replace(seed=1), None, progress=False, data=data)
    assert other.history[0]["train_loss"] != result.history[0]["train_loss"]


def test_resume_finishes_like_an_uninterrupted_run(tmp_path, data, tiny_run):
    cfg, _, full = tiny_run
    short = cfg.replace(epochs=3)
    run_dir = tmp_path / "r"
    # run 2 epochs of the 3-epoch schedule by stopping after epoch 2 via a resumable checkpoint
    import rst_lib.train as T
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
            search(short, run_dir, progress=False, data=data)
    finally:
        T.evaluate = original
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "running"
    resumed = search(short, run_dir, progress=False, data=data, resume=True)
    assert [h["pgd_acc"] for h in resumed.history] == [h["pgd_acc"] for h in full.history]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_collapse_detection():
    assert is_collapsed(math.log(10) + 0.01, 0.97, 10)
    assert not is_collapsed(math.log(10), 0.3, 10)  # loss at chance but diverse predictions
    assert not is_collapsed(1.0, 0.99, 10)


def test_collapse_warning_is_raised():
    # Blank images with random labels: nothing to learn, every input gets the same class and
    # the loss sits at ln(10) -- the constant-prediction collapse the search must report.
    from torch.utils.data import TensorDataset
    from rst_lib.data import DataBundle
    from rst_lib.train import CollapseWarning
    g = torch.Generator().manual_seed(0)
    blank = lambda n: TensorDataset(torch.zeros(n, 1, 12, 12), torch.randint(0, 10, (n,), generator=g))
    data = DataBundle("blank", blank(256), blank(64), 10, 1, 12, (0.0,), (1.0,), list("0123456789"))
    cfg = RunConfig(**{**TINY, "collapse_patience": 2, "train_attack": "none"}, epochs=3).validate()
    with pytest.warns(CollapseWarning, match="collapsed at epoch 2"):
        result = search(cfg, None, progress=False, data=data)
    assert len(result.warnings) == 1 and "ln(10)" in result.warnings[0]


def test_lr_schedules():
    cfg = RunConfig(epochs=10, lr_schedule="cosine").validate()
    assert lr_factor(cfg, 0) == 1.0 and abs(lr_factor(cfg, 10)) < 1e-12
    assert abs(lr_factor(cfg, 5) - 0.5) < 1e-12
    step = RunConfig(epochs=10, lr_schedule="step", lr_milestones=[3, 6], lr_gamma=0.1).validate()
    assert [round(lr_factor(step, e), 6) for e in (0, 3, 5.9, 6)] == [1, 0.1, 0.1, 0.01]


def test_building_a_model_leaves_the_global_rng_alone():
    from rst_lib import create_model
    state = torch.get_rng_state()
    create_model("resnet18", 10, 3, width=0.125, keep_ratio=0.1)
    assert torch.equal(state, torch.get_rng_state())


def test_device_auto_resolves_on_cpu_machine():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_channels_last_search_matches_default_layout(tmp_path, data):
    cfg = RunConfig(**{**TINY, "train_examples": 128}, epochs=1).validate()
    plain = search(cfg, None, progress=False, data=data)
    nhwc = search(cfg.replace(channels_last=True), tmp_path / "run", progress=False, data=data)
    conv_scores = [masking.get_mask_param(m).scores for _, m in masking.masked_layers(nhwc.model)
                   if masking.get_mask_param(m).scores.dim() == 4]
    assert conv_scores and all(s.is_contiguous(memory_format=torch.channels_last)
                               for s in conv_scores)
    assert math.isclose(plain.history[0]["train_loss"], nhwc.history[0]["train_loss"],
                        rel_tol=1e-3)
    # the ticket of a channels-last run is an ordinary ticket
    ticket = load_ticket(tmp_path / "run" / "ticket.pt")
    loader = make_loader(fixed_subset(data.test, cfg.eval_examples), 100)
    assert evaluate(ticket, loader, torch.device("cpu"), progress=False)["clean_acc"] == \
        nhwc.best["clean_acc"]


def test_best_epoch_ties_on_robust_accuracy_go_to_clean_accuracy(monkeypatch, data):
    """Early epochs often all sit at 0 % PGD accuracy: the kept ticket is then the one
    with the best clean accuracy, not simply the first epoch."""
    import rst_lib.train as train_mod
    scripted = iter([(0.5, 0.0), (0.8, 0.0), (0.6, 0.0)])

    def fake_evaluate(*args, **kwargs):
        clean, pgd = next(scripted)
        return {"clean_acc": clean, "pgd_acc": pgd, "top_class_fraction": 0.2}

    monkeypatch.setattr(train_mod, "evaluate", fake_evaluate)
    cfg = RunConfig(**{**TINY, "train_examples": 64}, epochs=3).validate()
    result = search(cfg, None, progress=False, data=data)
    assert result.best == {"epoch": 2, "clean_acc": 0.8, "pgd_acc": 0.0}
