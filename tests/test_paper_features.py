"""Issue 3: every knob of the two papers, each on tiny models and data."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rst_lib import RunConfig, create_model, load_ticket, save_ticket, train
from rst_lib.masks import masking
from rst_lib.masks import inits, topk
from rst_lib.attacks.gradient import FGSM, PGD, TradesPGD
from rst_lib.config import ConfigError, load_config
from rst_lib.data.datasets import load_dataset
from rst_lib.masks.masking import allocate_keep_ratios, add_mask, get_mask_param, score_shape
from rst_lib.engine.tasks import build_task
from rst_lib.engine.schedules import lr_factor, scheduled_keep_ratios

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="mnist5k", model="conv2", width=0.125, keep_ratio=0.2, end_with_bn=True,
            train_examples=256, eval_examples=64, batch_size=64, train_attack="fgsm_rs",
            eps=0.1, alpha=0.125, eval_alpha=0.025, eval_steps=2, epochs=1, autoattack="none", final_examples=200)


# ------------------------------------------------------------------------ masking options

@pytest.mark.parametrize("granularity, scores, block", [
    ("weight", (8, 4, 3, 3), 1), ("kernel", (8, 4, 1, 1), 9), ("filter", (8, 1, 1, 1), 36),
    ("row", (8, 4, 3, 1), 3)])
def test_granularity_mask_shapes(granularity, scores, block):
    layer = nn.Conv2d(4, 8, 3, bias=False)
    add_mask(layer, 0.25, granularity)
    p = get_mask_param(layer)
    nn.init.normal_(p.scores)
    assert tuple(p.scores.shape) == scores
    w = layer.weight
    kept_weights = int((w != 0).sum())
    assert kept_weights == p.k * block  # whole blocks are kept or dropped
    assert p.k == round(0.25 * math.prod(scores))
    if granularity == "filter":
        kept_filters = (w.flatten(1) != 0).any(1)
        assert int(kept_filters.sum()) == 2 and ((w.flatten(1) != 0).all(1) == kept_filters).all()


def test_granularity_gradients_reach_block_scores():
    layer = nn.Conv2d(4, 8, 3, bias=False)
    add_mask(layer, 0.5, "kernel")
    layer(torch.randn(2, 4, 6, 6)).sum().backward()
    assert get_mask_param(layer).scores.grad.shape == (8, 4, 1, 1)
    assert score_shape((10, 20), "row") == (10, 20) and score_shape((10, 20), "filter") == (10, 1)


def test_granularity_in_models_and_tickets(tmp_path):
    model = create_model("conv2", 10, 1, image_size=12, width=0.125, keep_ratio=0.3,
                         granularity="filter")
    loaded = load_ticket(save_ticket(model.eval(), tmp_path / "t.pt"))
    x = torch.rand(4, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("kind", inits.WEIGHT_INITS)
def test_every_weight_init_builds_and_is_seeded(kind):
    a = create_model("conv2", 10, 1, image_size=12, width=0.125, weight_init=kind, seed=5)
    b = create_model("conv2", 10, 1, image_size=12, width=0.125, weight_init=kind, seed=5)
    wa = [masking.raw_weight(m) for _, m in masking.masked_layers(a)]
    assert all(torch.equal(x, masking.raw_weight(m)) for x, (_, m) in zip(wa, masking.masked_layers(b)))
    w = wa[1]
    if kind == "unsigned_constant":
        assert (w > 0).all() and len(w.unique()) == 1
    if kind in ("binary", "signed_constant", "xavier_constant"):
        assert len(w.abs().unique()) == 1 and (w < 0).any()
    if kind == "uniform":
        assert w.abs().max() <= 1


def test_scale_fan_multiplies_the_fan_by_the_keep_ratio():
    g = torch.Generator().manual_seed(0)
    w = torch.empty(16, 8, 3, 3)
    inits.init_weight_(w, "kaiming_normal", g, keep_ratio=0.04, scale_fan=True)
    assert abs(w.std().item() - math.sqrt(2 / (72 * 0.04))) < 0.1 * math.sqrt(2 / (72 * 0.04))


@pytest.mark.parametrize("mode, scaled", [("none", [False, False, False, False, False]),
                                          ("all", [True] * 5),
                                          ("except_last", [True, True, True, True, False]),
                                          ("only_last", [False, False, False, False, True])])
def test_score_fan_modes(mode, scaled):
    a = 0.01
    model = create_model("conv2", 10, 1, image_size=12, width=0.125, score_init="uniform",
                         score_init_scale=a, score_fan_mode=mode)
    for (_, layer), s in zip(masking.masked_layers(model), scaled):
        scores = get_mask_param(layer).scores
        bound = a / math.sqrt(scores[0].numel()) if s else a
        assert scores.abs().max() <= bound and scores.abs().max() > 0.8 * bound


def test_adaptive_allocation_hand_example():
    # sizes 100 and 10,000, keep 10 %, p = 0.5: c (10 + 100) = 1010 -> c = 9.1818...
    r = allocate_keep_ratios([100, 10_000], 0.1, 0.5)
    assert r[0] == pytest.approx(1010 / 110 / 10) and r[1] == pytest.approx(1010 / 110 / 100)
    # p = 0 would give the small layer 505 % -> capped at 1, the rest re-solved: 910 / 10,000
    assert allocate_keep_ratios([100, 10_000], 0.1, 0.0) == pytest.approx([1.0, 0.091])
    assert allocate_keep_ratios([100, 10_000], 0.1, 1.0) == pytest.approx([0.1, 0.1])
    with pytest.raises(ValueError, match="p=1.5"):
        allocate_keep_ratios([10], 0.1, 1.5)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_adaptive_allocation_hits_the_total_in_a_real_model(p):
    model = create_model("resnet18", 10, 3, width=0.25, keep_ratio=0.01, adaptive_p=p)
    summary = masking.mask_summary(model)
    layers = summary["layers"]
    assert abs(summary["kept"] - 0.01 * summary["total"]) <= len(layers)  # within 1 per layer
    ratios = {n: v["keep_ratio"] for n, v in layers.items()}
    sizes = {n: v["total"] for n, v in layers.items()}
    small, big = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
    if p < 1:
        assert ratios[small] > ratios[big]  # smaller layers keep a larger fraction
    else:
        assert abs(ratios[small] - ratios[big]) < 0.01


def test_geometric_keep_ratio_schedule(data):
    final = {"a": 0.01, "b": 0.1}
    assert scheduled_keep_ratios(final, 0, warmup=1, steps=2) == {"a": 1.0, "b": 1.0}
    assert scheduled_keep_ratios(final, 1, 1, 2) == pytest.approx({"a": 0.1, "b": 0.1 ** 0.5})
    assert scheduled_keep_ratios(final, 5, 1, 2) == pytest.approx(final)
    cfg = RunConfig(**{**TINY, "epochs": 3, "keep_ratio_schedule": "geometric",
                       "keep_ratio_steps": 2}).validate()
    result = train(cfg, None, progress=False, data=data)
    kept = [h["keep_ratio"] for h in result.history]
    assert kept[0] > kept[1] > 0 and abs(kept[2] - 0.2) < 0.01 and abs(kept[1] - 0.2) < 0.01
    assert kept[0] == pytest.approx(0.2 ** 0.5, abs=0.01)
    assert result.best["epoch"] >= 2  # only the final sparsity competes for "best"
    with pytest.raises(ConfigError, match="keep_ratio_steps"):
        RunConfig(keep_ratio_steps=2).validate()  # steps without the geometric schedule


# ------------------------------------------------------------------ attacks and schedules

def test_l2_attacks_stay_in_the_ball(tiny_model, batch):
    model = tiny_model().eval()
    x, y = batch
    for attack in (PGD(model, 0.5, 0.1, 5, norm="l2"), FGSM(model, 0.5, True, norm="l2"),
                   TradesPGD(model, 0.5, 0.1, 3, norm="l2")):
        d = attack(x, y) - x
        assert d.flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
        assert (x + d).min() >= 0 and (x + d).max() <= 1
    x_adv = PGD(model, 0.5, 0.1, 10, norm="l2")(x, y)
    assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


def test_trades_attack_increases_the_kl(tiny_model, batch):
    model = tiny_model().eval()
    x, y = batch
    x_adv = TradesPGD(model, 0.1, 0.03, 5)(x, y)
    with torch.no_grad():
        kl = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1), reduction="sum")
    assert kl > 1e-3 and (x_adv - x).abs().max() <= 0.1 + 1e-6


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


def test_lr_policies():
    base = dict(epochs=8)
    piece = RunConfig(**base, lr_schedule="cifar_piecewise").validate()
    assert [lr_factor(piece, e) for e in (0, 3.9, 4, 6)] == pytest.approx([1, 1, 0.1, 0.01])
    multi = RunConfig(**base, lr_schedule="multistep", lr_milestones=[2, 5], lr_gamma=0.5).validate()
    assert [lr_factor(multi, e) for e in (1, 2, 5)] == pytest.approx([1, 0.5, 0.25])
    warm = RunConfig(**base, lr_schedule="constant", warmup_epochs=2).validate()
    assert [lr_factor(warm, e) for e in (0, 1, 2, 7)] == pytest.approx([0, 0.5, 1, 1])


# ------------------------------------------------------------------------------ trainers

def _raw(model):
    return {n: masking.raw_weight(m).detach().clone() for n, m in masking.masked_layers(model)}


@pytest.fixture(scope="module")
def ticket(tmp_path_factory, data):
    run_dir = tmp_path_factory.mktemp("search")
    train(RunConfig(**TINY).validate(), run_dir, progress=False, data=data)
    return run_dir / "ticket.pt"


def test_finetune_inherited_changes_weights_only(ticket, data):
    before = load_ticket(ticket)
    cfg = RunConfig(**{**TINY, "task": "finetune", "ticket": str(ticket), "lr": 0.01}).validate()
    after = train(cfg, None, progress=False, data=data).model
    masks_before, masks_after = masking.get_masks(before), masking.get_masks(after)
    assert all(torch.equal(masks_before[k], masks_after[k]) for k in masks_before)  # mask fixed
    w0, w1 = _raw(before), _raw(after)
    for name, mask in masks_before.items():
        assert (w0[name] != w1[name])[mask].any()  # kept weights trained
    assert all(not get_mask_param(m).scores.requires_grad for _, m in masking.masked_layers(after))
    x = data.test.tensors[0][:8]
    with torch.no_grad():
        assert not torch.equal(before(x), after.eval()(x))


def test_finetune_reinit_redraws_weights(ticket, data):
    original = load_ticket(ticket)
    cfg = RunConfig(**{**TINY, "task": "finetune_reinit", "ticket": str(ticket)}).validate()
    _, reinit = build_task(cfg, data)
    assert all(torch.equal(a, b) for a, b in zip(masking.get_masks(original).values(),
                                                  masking.get_masks(reinit).values()))
    w0, w1 = _raw(original), _raw(reinit)
    assert all(not torch.equal(w0[k], w1[k]) for k in w0)  # weights re-drawn
    assert all(masking.raw_weight(m).requires_grad and
               not get_mask_param(m).scores.requires_grad for _, m in masking.masked_layers(reinit))


def test_finetune_full_starts_from_the_ticket(ticket, data):
    original = load_ticket(ticket)
    cfg = RunConfig(**{**TINY, "task": "finetune_full", "ticket": str(ticket)}).validate()
    _, full = build_task(cfg, data)
    assert not list(masking.masked_layers(full))
    x = data.test.tensors[0][:16]
    with torch.no_grad():
        assert torch.allclose(original(x), full.eval()(x), atol=1e-5)  # same function at start
    assert all(p.requires_grad for p in full.parameters())


def test_dense_and_bnn_baselines(data):
    # BNN latent weights must be able to cross zero: a signed-constant start with a small lr
    # never flips a sign (the loss stayed flat), kaiming-normal latents at lr 0.1 do.
    for task, lr, init in (("dense", 0.01, "signed_constant"), ("bnn", 0.1, "kaiming_normal")):
        cfg = RunConfig(**{**TINY, "task": task, "lr": lr, "epochs": 3, "weight_init": init,
                           "train_examples": 512}).validate()
        _, start = build_task(cfg, data)
        w0 = [p.detach().clone() for p in start.parameters()]
        result = train(cfg, None, progress=False, data=data)
        assert not list(masking.masked_layers(result.model))
        assert all(not torch.equal(a, b) for a, b in zip(w0, result.model.parameters()))
        first, last = result.history[0], result.history[-1]
        assert last["train_loss"] < first["train_loss"] - 0.2
    layer = result.model.body.features[0]
    assert set(layer.weight.unique().tolist()) == {-1.0, 1.0}  # binary weights in the forward
    assert not set(layer.parametrizations.weight.original.unique().tolist()) <= {-1.0, 1.0}


def test_robust_trained_ticket_searches_inside_trained_weights(tmp_path, data):
    dense_dir = tmp_path / "dense"
    train(RunConfig(**{**TINY, "task": "dense", "lr": 0.01}).validate(), dense_dir,
           progress=False, data=data)
    cfg = RunConfig(**{**TINY, "pretrained": str(dense_dir / "ticket.pt")}).validate()
    _, model = build_task(cfg, data)
    trained = load_ticket(dense_dir / "ticket.pt")
    first = next(m for _, m in masking.masked_layers(model))
    assert torch.equal(masking.raw_weight(first), trained.body.features[0].weight)
    found = train(cfg, None, progress=False, data=data).model
    for (_, a), (_, b) in zip(masking.masked_layers(model), masking.masked_layers(found)):
        assert torch.equal(masking.raw_weight(a), masking.raw_weight(b))  # trained weights frozen
        assert not torch.equal(get_mask_param(a).scores, get_mask_param(b).scores)


def test_trainer_parameter_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs ticket"):
        RunConfig(task="finetune").validate()
    with pytest.raises(ConfigError, match="ticket='nope.pt' does not exist"):
        RunConfig(task="finetune", ticket="nope.pt").validate()
    with pytest.raises(ConfigError, match="adaptive_p=2"):
        RunConfig(adaptive_p=2).validate()


# ----------------------------------------------------------------------------- AutoAttack

def test_autoattack_is_at_most_pgd(data):
    from rst_lib.engine.evaluation import robustness_report
    cfg = RunConfig(**{**TINY, "train_examples": 1000, "train_attack": "none", "epochs": 2}).validate()
    model = train(cfg, None, progress=False, data=data).model
    report = robustness_report(model, data.test, eps=0.1, alpha=0.025, pgd_steps=(10,),
                               autoattack="fast", n_examples=64, progress=False)
    assert report["autoattack_acc"] <= report["pgd10_acc"] <= report["clean_acc"]
    assert report["fgsm_acc"] <= report["clean_acc"]


# ------------------------------------------------------------------------------- presets



def test_mask_statistics_see_block_masks_per_weight():
    from rst_lib.analysis.mask_stats import layer_density, pruned_units
    model = create_model("conv2", 10, 1, image_size=12, width=0.25, keep_ratio=0.25,
                         granularity="filter")
    dens = layer_density(model)
    pruned = pruned_units(model)
    name = next(iter(dens))
    assert dens[name]["density"] == pytest.approx(0.25)
    assert dens[name]["shape"] == list(masking.raw_weight(dict(masking.masked_layers(model))[name]).shape)
    # filter granularity: three quarters of the filters are pruned whole
    out = pruned[name]["out_units"]
    assert pruned[name]["pruned_out"] == out - round(0.25 * out)
