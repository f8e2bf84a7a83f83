"""The optimized path (rst_lib) and the seed-style path (bench/seed_style.py) that
``make bench`` compares compute the same thing: identical masks, the same loss, the same
score gradients, the same adversarial inputs and the same masks again after an optimizer
step. Tiny models, runs in a few seconds.

No timing here: speed is measured only by ``make bench``.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))

import rst_lib  # noqa: E402
from rst_lib.masks import masking  # noqa: E402
from rst_lib.masks import inits, topk  # noqa: E402
from rst_lib.attacks.gradient import PGD  # noqa: E402

import seed_style  # noqa: E402
import steps as bench_steps  # noqa: E402


def _pair(name="conv2", keep_ratio=0.1, **kw):
    torch.manual_seed(0)
    ours = rst_lib.create_model(name, 10, 3, image_size=16, keep_ratio=keep_ratio, width=0.25,
                                seed=3, **kw)
    seed_style.untie_scores_(ours)
    seed = seed_style.to_seed_style(ours)
    return ours, seed


def _batch(n=8, size=16):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def _seed_layer_grads(seed):
    return {n: m.scores.grad for n, m in seed.named_modules()
            if isinstance(m, (seed_style.SeedSubnetConv, seed_style.SeedSubnetLinear))}


def _ours_layer_grads(ours):
    return {n: masking.get_mask_param(m).scores.grad for n, m in masking.masked_layers(ours)}


@pytest.mark.parametrize("name,kw", [("conv2", {}), ("resnet18", {}),
                                     ("conv2", {"dense_first": True, "dense_last": True})])
def test_same_masks(name, kw):
    ours, seed = _pair(name, **kw)
    om, sm = masking.get_masks(ours), seed_style.seed_masks(seed)
    assert om.keys() == sm.keys() and len(om) > 0
    for k in om:
        assert torch.equal(om[k], sm[k]), k
        assert int(om[k].sum()) == masking.get_mask_param(dict(masking.masked_layers(ours))[k]).k


@pytest.mark.parametrize("train_mode", [True, False])
def test_same_loss_and_score_gradients(train_mode):
    ours, seed = _pair()
    ours.train(train_mode)
    seed.train(train_mode)
    x, y = _batch()
    lo = F.cross_entropy(ours(x), y)
    ls = F.cross_entropy(seed(x), y)
    torch.testing.assert_close(lo, ls)
    lo.backward()
    ls.backward()
    go, gs = _ours_layer_grads(ours), _seed_layer_grads(seed)
    assert go.keys() == gs.keys()
    for k in go:
        torch.testing.assert_close(go[k], gs[k], msg=k)


def test_same_adversarial_examples_and_step():
    ours, seed = _pair()
    x, y = _batch()
    torch.manual_seed(5)
    xo = PGD(ours, 8 / 255, 2 / 255, steps=5, eval_mode=False)(x, y)
    torch.manual_seed(5)
    xs = seed_style.seed_pgd(seed, x, y, 8 / 255, 2 / 255, 5, eval_mode=False)
    torch.testing.assert_close(xo, xs)
    # the attack never changed the scores; the seed attack only left gradients behind
    opt_o = torch.optim.SGD(masking.score_parameters(ours), lr=0.5, momentum=0.9)
    opt_s = torch.optim.SGD(seed_style.seed_score_parameters(seed), lr=0.5, momentum=0.9)
    for opt, model, xa in ((opt_o, ours, xo), (opt_s, seed, xs)):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xa), y).backward()
        opt.step()
    om, sm = masking.get_masks(ours), seed_style.seed_masks(seed)
    changed = 0
    for k in om:
        assert torch.equal(om[k], sm[k]), k
    for p in masking.score_parameters(ours):
        changed += int((p.grad != 0).sum())
    assert changed > 0
    # and the next loss agrees again (masks re-derived from the updated scores)
    torch.testing.assert_close(F.cross_entropy(ours(x), y), F.cross_entropy(seed(x), y))


def test_ties_differ_only_among_tied_scores():
    """Without untying, a tie at the k-th score may be broken differently; nothing else."""
    torch.manual_seed(0)
    ours = rst_lib.create_model("conv2", 10, 3, image_size=32, keep_ratio=0.1, width=0.25)
    layer = dict(masking.masked_layers(ours))["body.classifier.1"]
    p = masking.get_mask_param(layer)
    with torch.no_grad():  # force a tie at the boundary: the k-th and (k+1)-th equal
        a = p.scores.abs().flatten()
        order = torch.argsort(a, descending=True)
        p.scores.view(-1)[order[p.k]] = p.scores.view(-1)[order[p.k - 1]]
    seed = seed_style.to_seed_style(ours)
    om, sm = masking.get_masks(ours), seed_style.seed_masks(seed)
    for k in om:
        assert int(om[k].sum()) == int(sm[k].sum())
        diff = om[k] != sm[k]
        if diff.any():
            a = masking.get_mask_param(dict(masking.masked_layers(ours))[k]).scores.abs()
            kth = torch.topk(a.flatten(), int(om[k].sum())).values[-1]
            assert torch.all(a[diff] == kth)
    assert seed_style.untie_scores_(ours) >= 1
    seed = seed_style.to_seed_style(ours)
    for k, v in masking.get_masks(ours).items():
        assert torch.equal(v, seed_style.seed_masks(seed)[k])


def test_bench_workloads_agree():
    """The benchmark's own workloads (ours / seed) give the same loss on their first step."""
    wo = bench_steps.Workload("ours", "conv2", 4, keep_ratio=0.1, width=0.25)
    ws = bench_steps.Workload("seed", "conv2", 4, keep_ratio=0.1, width=0.25)
    torch.manual_seed(9)
    lo = wo.search_step(2)
    torch.manual_seed(9)
    ls = ws.search_step(2)
    assert abs(lo - ls) < 1e-4 * max(1.0, abs(lo))
    for k, v in masking.get_masks(wo.model).items():
        assert torch.equal(v, seed_style.seed_masks(ws.model)[k])


def test_banded_topk_masks_match_plain_topk_masks():
    """rst_lib's banded top-k (large layers) and plain torch.topk keep the same weights."""
    ours = rst_lib.create_model("conv4", 10, 3, image_size=32, keep_ratio=0.05, width=0.5)
    seed_style.untie_scores_(ours)
    sizes = [masking.get_mask_param(m).scores.numel() for _, m in masking.masked_layers(ours)]
    assert max(sizes) >= topk.FAST_TOPK_MIN  # the banded path is exercised
    ref = {k: v.clone() for k, v in masking.get_masks(ours).items()}
    with torch.no_grad():  # bump the scores' version counter: every mask is recomputed
        for p in masking.score_parameters(ours):
            p.mul_(1.0)
    with bench_steps.plain_topk_masks():
        got = masking.get_masks(ours)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


def test_float_mask_cache_same_loss_and_gradients():
    ours, _ = _pair()
    x, y = _batch()
    loss = F.cross_entropy(ours(x), y)
    loss.backward()
    ref = [p.grad.clone() for p in masking.score_parameters(ours)]
    for p in masking.score_parameters(ours):
        p.grad = None
    with torch.no_grad():
        for p in masking.score_parameters(ours):
            p.mul_(1.0)  # new version: masks recomputed inside the patch
    with bench_steps.float_mask_cache():
        loss2 = F.cross_entropy(ours(x), y)
        loss2.backward()
        assert all(get.dtype == torch.float32 for get in
                   (masking.get_mask_param(m).mask() for _, m in masking.masked_layers(ours)))
    torch.testing.assert_close(loss, loss2)
    for a, p in zip(ref, masking.score_parameters(ours)):
        torch.testing.assert_close(a, p.grad)
