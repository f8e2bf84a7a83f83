"""rst_lib.masks: exact top-k masks and their gradients, granularities, weight and score
inits, RBRN's adaptive keep ratios, RST's discard buffer."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rst_lib.masks import masking
from rst_lib.attacks.gradient import PGD
from rst_lib.masks.inits import init_scores_, init_weight_
from rst_lib.masks.masking import TopKMask, add_mask, frozen_masks, get_mask_param, keep_count, masked_layers
from rst_lib import create_model
from rst_lib.masks import inits
from rst_lib.masks.masking import allocate_keep_ratios, score_shape
from rst_lib import RunConfig
from rst_lib.data.loaders import make_loader
from rst_lib.engine.tasks import build_task, make_optimizer
from rst_lib.engine.batch_steps import EpochContext
from rst_lib.engine.training import train_epoch
from tiny import TINY_256


def full_sort_mask(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Reference: the seeds' rule, a full sort of |scores| and the top k set to 1."""
    flat = scores.abs().flatten()
    order = torch.sort(flat, descending=True, stable=True).indices
    k = int(round(keep_ratio * flat.numel()))
    out = torch.zeros_like(flat)
    out[order[:k]] = 1
    return out.view_as(scores)


@pytest.mark.parametrize("make_layer", [lambda: nn.Conv2d(8, 16, 3, bias=False),
                                        lambda: nn.Linear(50, 30, bias=False)], ids=["conv", "linear"])
@pytest.mark.parametrize("keep_ratio", [0.01, 0.05, 0.1, 0.37, 0.5, 1.0])
def test_exact_k_and_equal_to_full_sort(make_layer, keep_ratio):
    layer = make_layer()
    add_mask(layer, keep_ratio)
    p = get_mask_param(layer)
    nn.init.normal_(p.scores)
    mask = p.mask()
    n = p.scores.numel()
    assert int(mask.sum()) == max(1, round(keep_ratio * n)) == p.k
    assert torch.equal(mask, full_sort_mask(p.scores.detach(), keep_ratio))
    assert torch.equal(layer.weight, layer.parametrizations.weight.original * mask)


def test_keep_count_rounding_and_minimum():
    assert keep_count(0.05, 100) == 5
    assert keep_count(0.001, 100) == 1  # never an empty layer
    assert keep_count(1.0, 7) == 7
    assert keep_count(0.5, 3) == 2  # round half to even: round(1.5) == 2


def test_getsubnet_rule_keeps_what_the_seeds_getsubnet_keeps():
    # GetSubnet (RST utils/conv_type.py, RBRN code/arch/conv_type.py) zeroes int((1 - k) * n)
    # of n scores: 1641 of 1728 at k = 0.05 (1641.6 truncated), so 87 stay, where round gives 86
    assert keep_count(0.05, 1728, "getsubnet") == 1728 - 1641 == 87
    assert keep_count(0.05, 1728) == 86
    assert keep_count(1.0, 7, "getsubnet") == 7
    layer = nn.Conv2d(3, 64, 3, bias=False)
    add_mask(layer, 0.05, keep_rule="getsubnet")
    p = get_mask_param(layer)
    nn.init.normal_(p.scores)
    assert int(p.mask().sum()) == 87
    with pytest.raises(ValueError, match="keep_rule 'ceil' is invalid"):
        TopKMask(torch.empty(3, 3), 0.5, keep_rule="ceil")


def test_rbrn_allocation_walks_from_the_smallest_layer_and_truncates():
    # hand-computed with RBRN's net_utils.set_model_prune_rate at keep 0.1, p 0: budget
    # int(0.1 * 1110) = 111; c = 111 / 3 = 37 -> 10 weights: r = 3.7 capped to 1 (keeps 10),
    # budget 101, c = 101 / 2 = 50.5 -> 100 weights: r = 0.505 (int 50), budget 51,
    # c = 51 / 1 -> 1000 weights: r = 0.051
    r = masking.allocate_keep_ratios([1000, 10, 100], 0.1, 0.0, allocation="rbrn")
    assert r == pytest.approx([0.051, 1.0, 0.505], rel=1e-12)
    # the closed form does not truncate: 10 capped, the other two share 101 weights equally
    assert masking.allocate_keep_ratios([1000, 10, 100], 0.1, 0.0) == pytest.approx([0.0505, 1.0, 0.505])
    # at p = 1 the closed form is exactly the global ratio everywhere (RST), RBRN's walk drifts
    assert masking.allocate_keep_ratios([7, 13, 1000], 0.3, 1.0) == [0.3, 0.3, 0.3]
    with pytest.raises(ValueError, match="allocation 'greedy' is invalid"):
        masking.allocate_keep_ratios([10], 0.1, 1.0, allocation="greedy")


def test_ties_still_keep_exactly_k():
    layer = nn.Linear(10, 10, bias=False)
    add_mask(layer, 0.25)
    with torch.no_grad():
        get_mask_param(layer).scores.fill_(1.0)  # every score tied
    assert int(get_mask_param(layer).mask().sum()) == 25


def test_gradients_reach_scores_not_weights(tiny_model, batch):
    model = tiny_model()
    x, y = batch
    F.cross_entropy(model(x), y).backward()
    for _, layer in masked_layers(model):
        w = layer.parametrizations.weight.original
        s = get_mask_param(layer).scores
        assert not w.requires_grad and w.grad is None
        assert s.grad is not None and s.grad.abs().sum() > 0


def test_straight_through_gradient_matches_formula():
    layer = nn.Linear(6, 4, bias=False)
    add_mask(layer, 0.5)
    p = get_mask_param(layer)
    with torch.no_grad():
        p.scores.copy_(torch.randn(4, 6))
    x = torch.randn(3, 6)
    out = layer(x)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    grad_w = upstream.t() @ x  # d loss / d (masked weight)
    expected = grad_w * layer.parametrizations.weight.original * torch.sign(p.scores.detach())
    assert torch.allclose(p.scores.grad, expected, atol=1e-6)


def test_mask_computed_once_per_optimizer_step(tiny_model, batch):
    model = tiny_model(keep_ratio=0.3)
    x, y = batch
    opt = torch.optim.SGD(masking.score_parameters(model), lr=50.0)
    params = [get_mask_param(m) for _, m in masked_layers(model)]
    before = [p.mask_computations for p in params]
    old_masks = {k: v.clone() for k, v in masking.get_masks(model).items()}
    counts_after_get = [p.mask_computations for p in params]
    assert [a - b for a, b in zip(counts_after_get, before)] == [1] * len(params)

    x_adv = PGD(model, eps=0.1, alpha=0.02, steps=7, eval_mode=False)(x, y)  # 7 forward passes
    loss = F.cross_entropy(model(x_adv), y)
    # attack steps and the training forward reused the same masks: no new top-k
    assert [p.mask_computations for p in params] == counts_after_get
    opt.zero_grad()
    loss.backward()
    opt.step()
    model(x)  # the first forward after the step recomputes each mask exactly once
    model(x)
    assert [p.mask_computations - c for p, c in zip(params, counts_after_get)] == [1] * len(params)
    new_masks = masking.get_masks(model)
    assert any(not torch.equal(old_masks[k], new_masks[k]) for k in old_masks), \
        "a large step on the scores should change some mask"


def test_frozen_masks_reuses_one_weight_tensor_without_score_graph(tiny_model):
    model = tiny_model()
    _, layer = next(iter(masked_layers(model)))
    with frozen_masks(model), torch.enable_grad():
        w1, w2 = layer.weight, layer.weight
        assert w1 is w2
        assert not w1.requires_grad  # no autograd graph to the scores during attacks
    assert layer.weight.requires_grad  # outside: the training forward has the STE graph


def test_mask_follows_device_and_load_state_dict(tiny_model):
    a, b = tiny_model(seed=0), tiny_model(seed=1)
    b.load_state_dict(a.state_dict())
    for (_, la), (_, lb) in zip(masked_layers(a), masked_layers(b)):
        assert torch.equal(get_mask_param(la).mask(), get_mask_param(lb).mask())


def test_set_mask_round_trip():
    layer = nn.Conv2d(4, 5, 3, bias=False)
    add_mask(layer, 0.1)
    target = torch.rand(5, 4, 3, 3) < 0.23
    get_mask_param(layer).set_mask(target)
    assert torch.equal(get_mask_param(layer).mask().bool(), target)


def test_weight_inits():
    g = torch.Generator().manual_seed(0)
    w = torch.empty(64, 32, 3, 3)
    fan = 32 * 9
    init_weight_(w, "binary", g)
    assert set(w.unique().tolist()) == {-1.0, 1.0}
    init_weight_(w, "signed_constant", g)
    assert torch.allclose(w.abs(), torch.full_like(w, math.sqrt(2 / fan)))
    init_weight_(w, "signed_constant", g, keep_ratio=0.1, scale_fan=True)
    assert torch.allclose(w.abs(), torch.full_like(w, math.sqrt(2 / (fan * 0.1))))
    init_weight_(w, "kaiming_normal", g)
    assert abs(w.std().item() - math.sqrt(2 / fan)) < 0.05 * math.sqrt(2 / fan)
    with pytest.raises(ValueError, match="valid: signed_constant"):
        init_weight_(w, "ones", g)


def test_score_inits():
    g = torch.Generator().manual_seed(0)
    s = torch.empty(64, 32, 3, 3)
    fan = 32 * 9
    init_scores_(s, "kaiming_uniform", g)
    assert s.abs().max() <= 1 / math.sqrt(fan) and s.abs().max() > 0.9 / math.sqrt(fan)
    init_scores_(s, "uniform", g, scale=0.01)
    assert s.abs().max() <= 0.01 and s.abs().max() > 0.009
    init_scores_(s, "uniform", g, scale=0.01, fan_scaled=True)
    assert s.abs().max() <= 0.01 / math.sqrt(fan)


def test_topkmask_rejects_bad_keep_ratio():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        TopKMask(torch.empty(3, 3), 0.0)


def _reference_topk_mask(values, k):
    ref = torch.zeros(values.numel(), dtype=torch.bool)
    ref[torch.topk(values, k).indices] = True
    return ref


@pytest.mark.parametrize("n,ratio", [(1 << 15, 0.05), (100_000, 0.001), (100_000, 0.05),
                                     (300_000, 0.3), (300_000, 0.49), (2_359_296, 0.05)])
def test_banded_topk_mask_is_exactly_torch_topk(n, ratio):
    from rst_lib.masks.topk import _banded_topk_mask, topk_mask
    g = torch.Generator().manual_seed(n)
    k = max(1, round(ratio * n))
    for values in (torch.rand(n, generator=g),
                   torch.randn(n, generator=g).abs(),
                   torch.rand(n, generator=g).sort().values,         # structured: sorted
                   torch.rand(n, generator=g) * (torch.arange(n) % 31 == 0)):  # stride-aligned
        ref = _reference_topk_mask(values, k)
        mask = topk_mask(values, k)
        assert mask.dtype == torch.bool and int(mask.sum()) == k
        if values[ref].min() > values[~ref].max():  # no tie at the threshold: one answer
            assert torch.equal(mask, ref)
    # the band itself (not only its fallback) runs on ordinary scores
    assert _banded_topk_mask(torch.rand(n, generator=g), k) is not None


def test_topk_mask_with_ties_and_masks_from_set_mask():
    from rst_lib.masks.topk import topk_mask
    g = torch.Generator().manual_seed(1)
    values = (torch.rand(200_000, generator=g) < 0.05).float()  # 0/1 scores, as set_mask leaves
    k = int(values.sum())
    assert torch.equal(topk_mask(values, k), values.bool())
    tied = torch.randint(0, 4, (200_000,), generator=g).float()  # massive ties at the k-th
    mask = topk_mask(tied, 12_345)
    assert int(mask.sum()) == 12_345
    assert tied[mask].min() >= tied[~mask].max()


def test_discard_buffer_is_lazy_and_round_trips(tmp_path, tiny_model):
    from rst_lib.models.tickets import load_ticket, save_ticket
    model = tiny_model(keep_ratio=0.3)
    p = get_mask_param(next(layer for _, layer in masking.masked_layers(model)))
    assert p.discarded is None and not any(k.endswith("discarded") for k in model.state_dict())
    fresh_state = {k: v.clone() for k, v in model.state_dict().items()}
    p.discard_lowest(0.25)
    assert p.discarded is not None and int(p.discarded.sum()) == int(0.25 * p.scores.numel())
    state = model.state_dict()
    other = tiny_model(keep_ratio=0.3)
    other.load_state_dict(state)  # the buffer is created from the state
    q = get_mask_param(next(layer for _, layer in masking.masked_layers(other)))
    assert torch.equal(q.discarded, p.discarded)
    loaded = load_ticket(save_ticket(model, tmp_path / "t.pt"))
    r = get_mask_param(next(layer for _, layer in masking.masked_layers(loaded)))
    assert torch.equal(r.discarded, p.discarded)
    model.load_state_dict(fresh_state)  # a full state saved before any discard: none discarded
    assert p.discarded is None


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


@pytest.fixture
def model():
    return create_model("conv2", 10, 1, width=0.25, keep_ratio=0.3, image_size=28).eval()


def test_discard_stops_the_gradient_of_the_lowest_scores_per_layer(data):
    """RST utils/conv_type.py discard_low_score / clear_low_score_grad: the lowest fraction
    of |scores| of each layer stops receiving gradient; they still compete for the mask."""
    cfg = RunConfig(**{**TINY_256, "discard": True, "weight_decay": 0.0, "momentum": 0.0}).validate()
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
