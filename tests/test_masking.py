import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rst_lib.masks import masking
from rst_lib.attacks.gradient import PGD
from rst_lib.masks.inits import init_scores_, init_weight_
from rst_lib.masks.masking import TopKMask, add_mask, frozen_masks, get_mask_param, keep_count, masked_layers


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
