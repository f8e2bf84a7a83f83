"""keep_scope: global — the scores of all masked layers compete for one budget, with an
optional per-layer floor. Checked against a reference written here from the definition (sort
all |scores| of the network, keep those above the K-th; with a floor, each layer first keeps
its own best ceil(f n_l), then the rest of the budget goes by the same sort), in numpy."""
import math

import numpy as np
import pytest
import torch

from rst_lib import RunConfig, create_model
from rst_lib.config import ConfigError
from rst_lib.engine.tasks import describe_model
from rst_lib.masks import masking
from rst_lib.models.tickets import load_ticket, save_ticket


def reference_global_masks(scores: dict[str, np.ndarray], budget: int,
                           min_fraction: float = 0.0) -> dict[str, np.ndarray]:
    """Sort-everything reference: no top-k helper, no torch."""
    names = list(scores)
    kept = {n: np.zeros(scores[n].size, dtype=bool) for n in names}
    for n in names:  # the floor: the layer's own best ceil(f n) |scores|
        floor = math.ceil(min_fraction * scores[n].size) if min_fraction > 0 else 0
        order = np.argsort(-np.abs(scores[n].ravel()), kind="stable")
        kept[n][order[:floor]] = True
    left = budget - sum(int(k.sum()) for k in kept.values())
    pool = [(abs(float(v)), n, i) for n in names for i, v in enumerate(scores[n].ravel())
            if not kept[n][i]]
    pool.sort(key=lambda t: -t[0])
    for _, n, i in pool[:left]:
        kept[n][i] = True
    return {n: kept[n].reshape(scores[n].shape) for n in names}


def scores_of(model) -> dict[str, np.ndarray]:
    return {n: masking.get_mask_param(m).scores.detach().numpy().copy()
            for n, m in masking.masked_layers(model)}


def budget_of(model) -> int:
    return sum(masking.get_mask_param(m).budget for _, m in masking.masked_layers(model))


def test_global_masks_match_the_sort_everything_reference(tiny_model):
    model = tiny_model(keep_ratio=0.2, keep_scope="global")
    got = masking.get_masks(model)
    want = reference_global_masks(scores_of(model), budget_of(model))
    assert {n: m.numpy().tolist() for n, m in got.items()} == \
        {n: m.tolist() for n, m in want.items()}
    # the same budget as the per-layer search it is compared with, spread differently
    per_layer = tiny_model(keep_ratio=0.2)
    counts = {n: int(m.sum()) for n, m in got.items()}
    layer_counts = {n: int(m.sum()) for n, m in masking.get_masks(per_layer).items()}
    assert sum(counts.values()) == sum(layer_counts.values())
    assert counts != layer_counts


def test_a_layer_that_would_be_emptied_keeps_its_floor(tiny_model):
    model = tiny_model(keep_ratio=0.2, keep_scope="global")
    names = [n for n, _ in masking.masked_layers(model)]
    weak = masking.get_mask_param(dict(masking.masked_layers(model))[names[1]])
    with torch.no_grad():
        weak.scores.mul_(1e-6)  # every score of this layer below every other layer's
    assert int(weak.mask().sum()) == 0  # without a floor the layer is emptied
    assert reference_global_masks(scores_of(model), budget_of(model))[names[1]].sum() == 0

    floored = tiny_model(keep_ratio=0.2, keep_scope="global", keep_min_fraction=0.05)
    for (_, a), (_, b) in zip(masking.masked_layers(model), masking.masked_layers(floored)):
        with torch.no_grad():
            masking.get_mask_param(b).scores.copy_(masking.get_mask_param(a).scores)
    got = masking.get_masks(floored)
    want = reference_global_masks(scores_of(floored), budget_of(floored), 0.05)
    n_weak = weak.scores.numel()
    assert int(got[names[1]].sum()) == math.ceil(0.05 * n_weak) > 0
    assert {n: m.numpy().tolist() for n, m in got.items()} == \
        {n: m.tolist() for n, m in want.items()}
    assert sum(int(m.sum()) for m in got.values()) == budget_of(floored)


def test_the_masks_follow_the_scores_after_an_optimizer_step(tiny_model, batch):
    model = tiny_model(keep_ratio=0.2, keep_scope="global")
    before = masking.get_masks(model)
    opt = torch.optim.SGD(masking.score_parameters(model), lr=5.0)
    x, y = batch
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    after = masking.get_masks(model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    want = reference_global_masks(scores_of(model), budget_of(model))
    assert all(np.array_equal(after[n].numpy(), want[n]) for n in after)


def test_a_global_ticket_reloads_with_identical_masks_and_logits(tiny_model, batch, tmp_path):
    model = tiny_model(keep_ratio=0.2, keep_scope="global")
    names = [n for n, _ in masking.masked_layers(model)]
    with torch.no_grad():  # a layer emptied: the ticket must carry a 0-weight mask
        masking.get_mask_param(dict(masking.masked_layers(model))[names[0]]).scores.mul_(1e-6)
    model.eval()
    x, _ = batch
    logits = model(x)
    save_ticket(model, tmp_path / "ticket.pt")
    loaded = load_ticket(tmp_path / "ticket.pt")
    assert loaded.config.keep_scope == "global"
    a, b = masking.get_masks(model), masking.get_masks(loaded)
    assert all(torch.equal(a[n], b[n]) for n in a) and int(b[names[0]].sum()) == 0
    assert torch.equal(loaded(x), logits)


@pytest.mark.parametrize("name", ["conv4", "resnet18", "vgg16", "mobilenet_v2", "mlp"])
def test_every_masked_architecture_ranks_globally(name):
    kw = {"image_size": 32, "width": 0.125}
    model = create_model(name, 10, 3, keep_ratio=0.1, keep_scope="global",
                         keep_min_fraction=0.01, **kw)
    layers = dict(masking.masked_layers(model))
    assert layers and all(masking.get_mask_param(m).ranking is not None for m in layers.values())
    summary = masking.mask_summary(model)
    assert summary["kept"] == budget_of(model)
    assert all(v["kept"] >= math.ceil(0.01 * v["total"]) for v in summary["layers"].values())
    model.eval()(torch.rand(2, 3, 32, 32))


def test_model_description_shows_the_initial_scores_counts_and_says_so():
    cfg = RunConfig(model="conv4", keep_ratio=0.1, keep_scope="global", keep_min_fraction=0.02)
    described = describe_model(cfg)
    assert "initial scores" in described["note"]
    model = create_model("conv4", 10, 1, image_size=28, width=cfg.width, keep_ratio=0.1,
                         keep_scope="global", keep_min_fraction=0.02,
                         mean=described["network"]["mean"], std=described["network"]["std"])
    real = {n: int(m.sum()) for n, m in masking.weight_masks(model).items()}
    assert {d["name"]: d["kept"] for d in described["layers"]} == real
    assert described["total_kept"] == sum(d["budget"] for d in described["layers"])
    assert "note" not in describe_model(RunConfig(model="conv4"))


def test_the_floor_is_checked_before_any_compute():
    with pytest.raises(ConfigError, match="keep_min_fraction"):
        RunConfig(keep_ratio=0.1, keep_scope="global", keep_min_fraction=0.2).validate()
    with pytest.raises(ConfigError, match="keep_scope='global'"):
        RunConfig(keep_ratio=0.1, keep_min_fraction=0.05).validate()
    with pytest.raises(ConfigError, match="keep_scope"):
        RunConfig(keep_scope="network").validate()


def test_a_floor_equal_to_the_keep_ratio_is_refused_by_the_rule_the_mask_applies():
    # ceil floors against a rounded budget: f == keep_ratio passes a check of f <= keep_ratio
    # and then fails at the first mask. check_run now applies the mask's own rule
    # (GlobalRanking.check_floors) to this data's network, before any compute.
    from rst_lib.engine.tasks import check_run
    from rst_lib.masks.ranking import GlobalRanking
    cfg = RunConfig(model="conv4", dataset="cifar10", keep_ratio=0.2, keep_scope="global",
                    keep_min_fraction=0.2)
    cfg.validate()  # the schema's range check alone lets it through
    with pytest.raises(ConfigError, match=r"keep_min_fraction=0.2 is too large.*at most 0.1999"):
        check_run(cfg)
    with pytest.raises(ConfigError, match="keep_min_fraction=0.2 is too large"):
        create_model("conv4", 10, 3, image_size=32, keep_ratio=0.2, keep_scope="global",
                     keep_min_fraction=0.2)  # the mask's rule, at build
    # what check_run accepts, the masks keep: the largest floor it names builds and ranks
    ok = cfg.replace(keep_min_fraction=0.1999)
    check_run(ok)
    model = create_model("conv4", 10, 3, image_size=32, keep_ratio=0.2, keep_scope="global",
                         keep_min_fraction=0.1999)
    ranking = masking.get_mask_param(next(iter(dict(masking.masked_layers(model)).values()))).ranking
    assert isinstance(ranking, GlobalRanking)
    assert masking.mask_summary(model)["kept"] == budget_of(model)


def test_biprop_ramp_is_its_main_py_formula_and_the_layers_shares_are_recorded(tmp_path):
    # biprop main.py: epoch e < P prunes s + (0.5 - s)(1 - e/P)^3 (s = 1 - keep); epoch P: keep
    from rst_lib import train
    from rst_lib.engine.schedules import at_target_sparsity, biprop_keep_ratio, keep_ratios_at
    from tiny import TINY
    cfg = RunConfig(**{**TINY, "keep_ratio": 0.1, "keep_scope": "global", "epochs": 3,
                       "keep_ratio_schedule": "biprop", "keep_ratio_steps": 2}).validate()
    assert biprop_keep_ratio(cfg, 0) == pytest.approx(0.5)
    assert biprop_keep_ratio(cfg, 1) == pytest.approx(1 - (0.9 + (0.5 - 0.9) * 0.5 ** 3))  # 0.15
    assert biprop_keep_ratio(cfg, 2) == 0.1
    assert [at_target_sparsity(cfg, e) for e in range(3)] == [False, False, True]
    final = {"a": 0.1, "b": 0.1}
    assert keep_ratios_at(cfg, final, {"a": 10, "b": 20}, 0) == {"a": 0.5, "b": 0.5}
    assert keep_ratios_at(cfg, final, {"a": 10, "b": 20}, 2) == final
    result = train(cfg, tmp_path, progress=False)
    kept = [row["keep_ratio"] for row in result.history]
    assert kept == pytest.approx([0.5, 0.15, 0.1], abs=2e-3)
    shares = [row["layer_keep_ratio"] for row in result.history]
    assert set(shares[0]) == {n for n, _ in masking.masked_layers(result.model)}
    assert "biprop's ramp: epoch 1 keeps 0.5" in describe_model(cfg)["note"]  # rst-workbook model
    for bad in ({"keep_scope": "layer"}, {"keep_ratio": 0.6}, {"keep_ratio_steps": 3},
                {"keep_ratio_steps": 0}):
        with pytest.raises(ConfigError, match="keep_ratio"):
            cfg.replace(**bad)
