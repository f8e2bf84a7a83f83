"""What the seeds' code does, and what our options must do to follow it (issue: faithful
presets). Each test names the upstream file whose behaviour it pins down."""
import math

import pytest
import torch
import torch.nn.functional as F

from rst_lib import RunConfig, create_model, train
from rst_lib.masks import masking
from rst_lib.attacks.gradient import PGD, CarriedFGSM, project
from rst_lib.data.loaders import make_loader
from rst_lib.masks.masking import get_mask_param
from rst_lib.engine.schedules import (at_target_sparsity, discard_fraction, keep_ratios_at, lr_factor, staged_keep_ratios)
from rst_lib.engine.tasks import build_task, make_optimizer, make_train_attack
from rst_lib.engine.batch_steps import EpochContext
from rst_lib.engine.training import train_epoch

TINY = dict(dataset="mnist5k", model="conv2", width=0.125, keep_ratio=0.2, end_with_bn=True,
            train_examples=256, eval_examples=64, batch_size=64, train_attack="fgsm_rs",
            eps=0.1, alpha=0.125, eval_alpha=0.025, eval_steps=3, lr=0.1, final_examples=64, autoattack="none")


@pytest.fixture
def model():
    return create_model("conv2", 10, 1, width=0.25, keep_ratio=0.3, image_size=28).eval()


@pytest.fixture
def batch(data):
    return data.test.tensors[0][:32], data.test.tensors[1][:32]


# ------------------------------------------------------------------ PGD early stop (RST)

def test_early_stop_keeps_the_random_start_of_examples_fooled_there(model, batch):
    """RST trainers/default.py attack_pgd: an example misclassified at the current iterate is
    not updated any more, so one fooled at the random start keeps that start."""
    x, y = batch
    attack = PGD(model, 0.3, 0.05, steps=10, early_stop=True)
    torch.manual_seed(0)
    start = attack._random_delta(x)
    torch.manual_seed(0)
    x_adv = attack(x, y)
    with torch.no_grad():
        fooled_at_start = model(x + start).argmax(1) != y
        wrong_at_end = model(x_adv).argmax(1) != y
    assert fooled_at_start.any() and (~fooled_at_start).any()
    assert torch.equal(x_adv[fooled_at_start], (x + start)[fooled_at_start])
    torch.manual_seed(0)
    full = PGD(model, 0.3, 0.05, steps=10)(x, y)
    assert not torch.equal(full[fooled_at_start], x_adv[fooled_at_start])  # full-step moves on
    assert wrong_at_end[fooled_at_start].all()


def test_early_stop_attacks_only_the_unfooled_and_matches_the_whole_batch_loop(model, batch):
    """In eval mode early-stop PGD takes gradients of the still-correct examples only; the
    adversarial examples are those of the whole-batch loop (what a stochastic model gets),
    and the forward passes shrink with the survivors."""
    x, y = batch
    sizes = []
    hook = model.register_forward_hook(lambda m, i, o: sizes.append(len(i[0])))
    torch.manual_seed(0)
    compact = PGD(model, 0.3, 0.05, steps=10, early_stop=True)(x, y)
    hook.remove()
    model.stochastic = True  # R2S-style: no shortcut, every step takes the whole batch
    try:
        torch.manual_seed(0)
        whole = PGD(model, 0.3, 0.05, steps=10, early_stop=True)(x, y)
    finally:
        del model.stochastic
    assert torch.allclose(compact, whole, atol=1e-6)
    assert sizes[0] == len(x) and sizes[-1] < len(x)  # later steps saw fewer inputs
    assert sizes == sorted(sizes, reverse=True)


def test_early_stop_ends_when_every_example_is_fooled(model, batch):
    x, y = batch
    wrong = (model(x).argmax(1) + 1) % 10  # labels the model never predicts at x ...
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    PGD(model, 1e-6, 1e-7, steps=20, early_stop=True)(x, wrong)  # ... nor at x +- 1e-6
    hook.remove()
    assert len(calls) == 1  # one check, then the loop stops


# ------------------------------------------------------ carried FGSM (RBRN util/attack.py)

def test_carried_fgsm_continues_from_each_examples_stored_perturbation(model, batch):
    x, y = batch
    idx = torch.arange(len(x)) + 100
    attack = CarriedFGSM(model, eps=0.1, alpha=0.05, n_examples=1000, eval_mode=True)
    first = attack(x, y, idx) - x
    assert first.abs().max() <= 0.1 + 1e-6 and attack.seen[idx].all() and attack.seen.sum() == 32
    # the next visit starts from the stored perturbation, not from fresh noise
    delta = first.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, delta)
    expected = project(x, first + 0.05 * grad.sign(), 0.1, "linf")
    second = attack(x, y, idx) - x
    assert torch.allclose(second, expected, atol=1e-6)
    # other examples start fresh, and the stored ones are untouched by their visit
    stored = attack.buffer[idx].clone()
    attack(x, y, torch.arange(len(x)))
    assert torch.equal(attack.buffer[idx], stored)
    with pytest.raises(ValueError, match="index"):
        attack(x, y)


def test_fgsm_carried_search_keeps_one_buffer_across_epochs(data):
    cfg = RunConfig(**{**TINY, "train_attack": "fgsm_carried", "alpha": 0.05}, epochs=2).validate()
    _, model = build_task(cfg, data)
    attack = make_train_attack(model, cfg, 256)
    assert isinstance(attack, CarriedFGSM) and not attack.eval_mode  # train mode, as RBRN
    result = train(cfg, None, progress=False, data=data)
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    loader = make_loader(data.train, 64, with_index=True)
    x, y, i = next(iter(loader))
    assert torch.equal(i, torch.arange(64)) and torch.equal(data.train.tensors[0][:64], x)


# ---------------------------------------------------------------- TRADES in eval mode

def test_trades_attack_runs_the_model_in_eval_mode(data, batch):
    cfg = RunConfig(**{**TINY, "train_attack": "trades"}).validate()
    _, model = build_task(cfg, data)
    attack = make_train_attack(model, cfg, 256)
    modes = []
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.register_forward_pre_hook(lambda m, _: modes.append(m.training))
    model.train()
    attack(*batch)
    assert modes and not any(modes) and model.training  # eval inside, train again after
    assert make_train_attack(model, cfg.replace(train_attack="pgd"), 256).eval_mode is False
    forced = make_train_attack(model, cfg.replace(attack_train_mode=True), 256)
    assert forced.eval_mode is False


# ------------------------------------------------------------------ discard (RST)

def test_discard_stops_the_gradient_of_the_lowest_scores_per_layer(data):
    """RST utils/conv_type.py discard_low_score / clear_low_score_grad: the lowest fraction
    of |scores| of each layer stops receiving gradient; they still compete for the mask."""
    cfg = RunConfig(**{**TINY, "discard": True, "weight_decay": 0.0, "momentum": 0.0}).validate()
    _, model = build_task(cfg, data)
    masks_before = masking.get_masks(model)
    masking.discard_low_scores(model, 0.5)
    assert all(torch.equal(masks_before[k], v) for k, v in masking.get_masks(model).items())
    for _, layer in masking.masked_layers(model):
        p = get_mask_param(layer)
        n = p.scores.numel()
        assert int(p.discarded.sum()) == int(0.5 * n)
        assert p.scores.abs()[p.discarded].max() <= p.scores.abs()[~p.discarded].min()
    before = {n: get_mask_param(m).scores.detach().clone() for n, m in masking.masked_layers(model)}
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    ctx = EpochContext.build(model, optimizer, cfg, torch.device("cpu"), len(data.train),
                             progress=False)
    train_epoch(ctx, make_loader(data.train, 64), 0)
    for name, layer in masking.masked_layers(model):
        p = get_mask_param(layer)
        assert torch.equal(p.scores[p.discarded], before[name][p.discarded])
        assert not torch.equal(p.scores[~p.discarded], before[name][~p.discarded])


def test_discard_schedule_and_progressive_keep_ratios():
    cfg = RunConfig(discard=True, discard_progressive=True, keep_ratio=0.05, epochs=160).validate()
    assert [discard_fraction(cfg, e) for e in (0, 9, 10, 19, 20, 95, 200)] == \
        pytest.approx([0, 0, 0.1, 0.1, 0.2, 0.9, 1.0])
    final = {"a": 0.05, "b": 0.2}
    assert keep_ratios_at(cfg, final, {}, 0) == pytest.approx({"a": 0.9, "b": 0.9})
    assert keep_ratios_at(cfg, final, {}, 10) == pytest.approx({"a": 0.8, "b": 0.8})
    assert keep_ratios_at(cfg, final, {}, 80) == pytest.approx({"a": 0.1, "b": 0.2})
    assert keep_ratios_at(cfg, final, {}, 150) == pytest.approx(final)  # never below the target
    assert not at_target_sparsity(cfg, 80) and at_target_sparsity(cfg, 90)
    assert keep_ratios_at(cfg.replace(discard_progressive=False), final, {}, 50) is None


def test_search_with_discard_runs_and_records_the_discarded_scores(data):
    cfg = RunConfig(**TINY, epochs=2, discard=True, discard_every=1, discard_rate=0.3).validate()
    result = train(cfg, None, progress=False, data=data)
    p = get_mask_param(next(m for _, m in masking.masked_layers(result.model)))
    assert int(p.discarded.sum()) == int(0.6 * p.scores.numel())  # 2 discards of 30 %


# ------------------------------------------------ staged keep-ratio schedule (RBRN pr_scheduler)

def test_staged_schedule_stages_ratios_and_restarts_the_cosine(data):
    cfg = RunConfig(keep_ratio=0.01, adaptive_p=0.1, epochs=6, keep_ratio_schedule="staged",
                    keep_ratio_stages=3).validate()
    sizes = {"small": 1_000, "big": 100_000}
    totals = []
    for epoch in range(6):
        r = staged_keep_ratios(cfg, sizes, epoch)
        totals.append(sum(r[k] * sizes[k] for k in sizes) / sum(sizes.values()))
        assert r["small"] > r["big"]  # re-allocated with p at every stage
    assert totals == pytest.approx([0.01 ** (1 / 3)] * 2 + [0.01 ** (2 / 3)] * 2 + [0.01] * 2)
    assert [lr_factor(cfg, e) for e in (0, 2, 4)] == [1.0, 1.0, 1.0]  # a new cosine per stage
    assert lr_factor(cfg, 1) == pytest.approx(0.5) and lr_factor(cfg, 5) == pytest.approx(0.5)
    assert [at_target_sparsity(cfg, e) for e in range(6)] == [False] * 4 + [True] * 2
    one = cfg.replace(keep_ratio_stages=1)
    assert keep_ratios_at(one, {}, sizes, 0) is None  # one stage: the target from the start
    assert lr_factor(one, 3) == pytest.approx(0.5)

    tiny = RunConfig(**TINY, epochs=3, keep_ratio_schedule="staged", keep_ratio_stages=3).validate()
    result = train(tiny, None, progress=False, data=data)
    kept = [h["keep_ratio"] for h in result.history]
    assert kept == pytest.approx([0.2 ** (1 / 3), 0.2 ** (2 / 3), 0.2], abs=0.01)
    assert result.best["epoch"] == 3  # only the last stage competes for the best ticket


def test_adaptive_allocation_matches_rbrn_on_resnet34():
    """code/arch/net_utils.py set_model_prune_rate at --prune-rate 0.01 --pr-scale 0.1 on the
    CIFAR ResNet34: the stem is capped at 1, the classifier keeps ~77.5 %."""
    model = create_model("resnet34", 10, 3, width=1.0, keep_ratio=0.01, adaptive_p=0.1)
    ratios = masking.keep_ratios(model)
    first, last = list(ratios)[0], list(ratios)[-1]
    assert ratios[first] == 1.0
    assert ratios[last] == pytest.approx(0.7746, abs=2e-3)
    big = [r for n, r in ratios.items() if masking.raw_weight(
        dict(masking.masked_layers(model))[n]).numel() == 512 * 512 * 9]
    assert big and all(r == pytest.approx(0.003105, abs=5e-5) for r in big)


# ------------------------------------------------------- finetune_reinit (RST --ft_init)

def test_finetune_reinit_draws_kaiming_normal_by_default(tmp_path, data):
    rst = {**TINY, "scale_fan": False}  # RST's configs leave --scale-fan off
    ticket = train(RunConfig(**rst, epochs=1).validate(), tmp_path / "t", progress=False,
                    data=data).ticket_path
    cfg = RunConfig(**{**rst, "task": "finetune_reinit", "ticket": str(ticket)}).validate()
    assert cfg.finetune_init == "kaiming_normal"
    _, reinit = build_task(cfg, data)
    _, same = build_task(cfg.replace(finetune_init="same"), data)
    for (name, a), (_, b) in zip(masking.masked_layers(reinit), masking.masked_layers(same)):
        w, w_same = masking.raw_weight(a), masking.raw_weight(b)
        fan = w[0].numel()
        assert w.unique().numel() >= 0.99 * w.numel()  # Gaussian draws, not +-constant
        if w.numel() >= 500:
            assert w.std().item() == pytest.approx(math.sqrt(2 / fan), rel=0.2)  # N(0, 2/fan_in)
        assert w_same.abs().unique().numel() == 1  # the ticket's signed constant scheme
    with pytest.raises(Exception, match="finetune_init"):
        cfg.replace(finetune_init="orthogonal")
