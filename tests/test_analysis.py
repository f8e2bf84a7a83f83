"""rst_lib.analysis: the controls behind the headline claim, the transferability matrix, the
random switch (R2S) with its attacks, and mask statistics."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rst_lib import create_model, evaluate
from rst_lib.attacks.gradient import PGD
from rst_lib.masks.masking import masked_layers, set_masks
from rst_lib.analysis import mask_stats as ms
from rst_lib.analysis.r2s import EOTPGD, RandomSwitch, evaluate_r2s
from rst_lib.analysis.transfer import check_same_network, transfer_matrix
from rst_lib import RunConfig, train
from rst_lib.masks import masking
from rst_lib.analysis.controls import compare_models, natural_control, random_mask_control
from rst_lib.config import default
from tiny import TINY
from rst_lib.data.loaders import make_loader, shard_order
from rst_lib.engine.evaluation import recalibrate_bn
from rst_lib.engine.tasks import build_task


def _model(keep_ratio=0.2, seed=0, **kw):
    return create_model("conv2", 10, 1, image_size=12, width=0.125, keep_ratio=keep_ratio,
                        end_with_bn=True, seed=seed, **kw)


def _data(n_batches=2, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(size, 1, 12, 12, generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(n_batches)]


def _ticket(keep_ratio, loader, steps=15):
    """A ticket of the seed-0 network fitted a little to `loader` (not at chance)."""
    model = _model(keep_ratio)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from 2 threads, and on a busy 2-core machine OpenMP thread
    contention makes them ~50x slower; restored after this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loader():
    return _data()


@pytest.fixture(scope="module")
def tickets(loader):
    return {f"keep{kr}": _ticket(kr, loader) for kr in (0.3, 0.5, 0.7)}


def _constant_member(cls, keep_ratio=0.2):
    """A ticket that always predicts `cls`: its last BatchNorm shifts that logit up by 1e3."""
    model = _model(keep_ratio).eval()
    with torch.no_grad():
        model.last_bn.running_mean.zero_()[cls] = -1e3
        model.last_bn.running_var.fill_(1.0)
    return model


# ------------------------------------------------------------------------- transfer


def test_transfer_diagonal_is_whitebox_accuracy(tickets, loader):
    factory = lambda m: PGD(m, eps=0.05, alpha=0.02, steps=3)  # noqa: E731
    rng = torch.get_rng_state()
    result = transfer_matrix(tickets, loader, factory, progress=False, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is untouched
    assert result["names"] == list(tickets) and result["n"] == 32
    assert len(result["matrix"]) == 3 and all(len(row) == 3 for row in result["matrix"])
    for i, model in enumerate(tickets.values()):
        torch.manual_seed(3)
        ref = evaluate(model, loader, torch.device("cpu"), {"adv": factory(model)}, progress=False)
        assert result["matrix"][i][i] == ref["adv_acc"]
        assert result["clean"][i] == ref["clean_acc"]
        assert ref["clean_acc"] > 0.3  # the tickets fit the data: a meaningful comparison
    assert all(0.0 <= v <= 1.0 for row in result["matrix"] for v in row)


def test_check_same_network_accepts_tickets_of_one_network_only(loader):
    a, b = _model(0.2), _model(0.5)  # same seed, other keep ratio: weights equal up to scale
    check_same_network({"a": a, "b": b})
    with pytest.raises(ValueError, match="not tickets of the same random network"):
        check_same_network({"a": a, "b": b}, up_to_scale=False)
    with pytest.raises(ValueError, match="not tickets of the same random network"):
        check_same_network([a, _model(0.2, seed=1)])
    with pytest.raises(ValueError, match="shape"):
        check_same_network([a, create_model("conv2", 10, 1, image_size=12, width=0.25,
                                            keep_ratio=0.2, end_with_bn=True, seed=0)])
    other = {"a": a, "c": _model(0.2, seed=1)}
    with pytest.raises(ValueError):
        transfer_matrix(other, loader[:1], lambda m: PGD(m, 0.05, 0.02, 1), progress=False)
    out = transfer_matrix(other, loader[:1], lambda m: PGD(m, 0.05, 0.02, 1), progress=False,
                          require_same_network=False)
    assert out["n"] == 16


# ------------------------------------------------------------------------------ R2S


def test_single_member_switch_is_that_member(tickets, loader):
    member = tickets["keep0.5"]
    x, y = loader[0]
    for mode in ("batch", "example"):
        switch = RandomSwitch([member], mode=mode).eval()
        with torch.no_grad():
            assert torch.equal(switch(x), member(x))
    torch.manual_seed(0)
    via_switch = PGD(switch, 0.05, 0.02, 3)(x, y)
    torch.manual_seed(0)
    assert torch.equal(via_switch, PGD(member, 0.05, 0.02, 3)(x, y))

    pgd = dict(eps=0.05, alpha=0.02, steps=3)
    res = evaluate_r2s(switch, loader, **pgd, eot_samples=2, random_start=False, progress=False)
    ref = evaluate(member, loader, torch.device("cpu"),
                   {"pgd": PGD(member, **pgd, random_start=False)}, progress=False)
    assert res["clean_acc"] == res["member_clean_acc"][0] == ref["clean_acc"]
    robust = [res["member_whitebox_acc"][0], res["fixed_member_acc"][0], res["switching_acc"],
              res["adaptive_eot_acc"], res["min_robust_acc"]]
    assert robust == [ref["pgd_acc"]] * 5
    # with random starts every threat model of a batch starts from the same point
    res = evaluate_r2s(switch, loader, **pgd, eot_samples=2, progress=False)
    assert (res["member_whitebox_acc"][0] == res["fixed_member_acc"][0] == res["switching_acc"]
            == res["adaptive_eot_acc"])


def test_switch_respects_probabilities():
    members = [_constant_member(c) for c in range(3)]
    probs = [0.2, 0.5, 0.3]
    x = torch.rand(1, 1, 12, 12)
    switch = RandomSwitch(members, probs, mode="batch", seed=0).eval()
    with torch.no_grad():
        picks = torch.tensor([switch(x).argmax(1).item() for _ in range(1500)])
    freq = torch.bincount(picks, minlength=3).double() / len(picks)
    assert torch.allclose(freq, torch.tensor(probs, dtype=torch.float64), atol=0.04)

    switch = RandomSwitch(members, probs, mode="example", seed=0).eval()
    with torch.no_grad():
        pred = switch(torch.rand(6000, 1, 12, 12)).argmax(1)
    freq = torch.bincount(pred, minlength=3).double() / len(pred)
    assert torch.allclose(freq, torch.tensor(probs, dtype=torch.float64), atol=0.03)


def test_example_mode_picks_a_member_per_example():
    members = [_constant_member(c) for c in range(3)]
    x = torch.rand(64, 1, 12, 12)
    for m, c in zip(members, range(3)):
        assert (m(x).argmax(1) == c).all()
    switch = RandomSwitch(members, mode="example", seed=1).eval()
    with torch.no_grad():
        out = switch(x)
        manual = torch.stack([m(x) for m in members])[switch.last_choice, torch.arange(64)]
    assert torch.equal(out.argmax(1), switch.last_choice)  # member c predicts class c
    assert len(switch.last_choice.unique()) == 3
    assert torch.equal(out, manual)

    batch_switch = RandomSwitch(members, mode="batch", seed=1).eval()
    with torch.no_grad():
        for _ in range(5):
            assert len(batch_switch(x).argmax(1).unique()) == 1
        with batch_switch.use_member(2):
            assert (batch_switch(x).argmax(1) == 2).all()
        assert batch_switch.fixed_member is None
        batch_switch.fixed_member = "1"  # members given as a list are named by position
        assert (batch_switch(x).argmax(1) == 1).all()


def test_switch_is_seeded_and_validates_its_inputs():
    members = [_constant_member(c) for c in range(3)]
    x = torch.rand(32, 1, 12, 12)
    a, b = (RandomSwitch(members, mode="example", seed=5) for _ in range(2))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    with pytest.raises(ValueError, match="non-negative"):
        RandomSwitch(members, [0.5, 0.7, -0.2])
    with pytest.raises(ValueError, match="normalize=True"):
        RandomSwitch(members, [1, 1, 2])
    assert RandomSwitch(members, [1, 1, 2], normalize=True).probs.tolist() == [0.25, 0.25, 0.5]
    with pytest.raises(ValueError, match="3 members"):
        RandomSwitch(members, [0.5, 0.5])
    with pytest.raises(ValueError, match="at least one"):
        RandomSwitch([])
    with pytest.raises(ValueError, match="mode"):
        RandomSwitch(members, mode="layer")
    with pytest.raises(ValueError, match="same random network"):
        RandomSwitch([members[0], _model(0.2, seed=1)])
    with pytest.raises(ValueError, match="out of range"):
        RandomSwitch(members).fixed_member = 3


def test_eot_pgd_stays_in_the_ball_and_equals_pgd_on_a_deterministic_model(tickets, loader):
    x, y = loader[0]
    switch = RandomSwitch(tickets, mode="example", seed=0)
    eps = 0.06
    x_adv = EOTPGD(switch, eps, 0.03, steps=3, eot_samples=3)(x, y)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1

    model = tickets["keep0.3"]
    for restarts in (1, 2):
        torch.manual_seed(4)
        eot = EOTPGD(model, eps, 0.02, steps=3, restarts=restarts, eot_samples=1)(x, y)
        torch.manual_seed(4)
        assert torch.equal(eot, PGD(model, eps, 0.02, steps=3, restarts=restarts)(x, y))


def test_evaluate_r2s_reports_all_threat_models_reproducibly(tickets, loader):
    members = {k: tickets[k] for k in ("keep0.3", "keep0.7")}
    switch = RandomSwitch(members, mode="batch", seed=0)
    gen_state, rng = switch.generator.get_state(), torch.get_rng_state()
    run = lambda: evaluate_r2s(switch, loader[:1], 0.05, 0.02, 2, eot_samples=2,  # noqa: E731
                               eval_draws=2, progress=False)
    res = run()
    assert res == run()
    assert torch.equal(switch.generator.get_state(), gen_state)  # own streams for evaluation
    assert torch.equal(torch.get_rng_state(), rng)
    assert res["names"] == ["keep0.3", "keep0.7"] and res["n"] == 16
    assert len(res["fixed_member_acc"]) == 2
    accs = [res[k] for k in ("clean_acc", "switching_acc", "adaptive_eot_acc",
                             "fixed_member_mean_acc", "min_robust_acc")]
    assert all(0.0 <= a <= 1.0 for a in accs + res["fixed_member_acc"])
    assert res["min_robust_acc"] == min(res["fixed_member_min_acc"], res["switching_acc"],
                                        res["adaptive_eot_acc"])
    switch.fixed_member = 0
    with pytest.raises(ValueError, match="fixed_member"):
        run()


# ------------------------------------------------------------------------ mask stats

PLUS, CENTER, TOP_ROW, FULL = 0b010111010, 0b000010000, 0b111000000, 0b111111111


def _hand_masks():
    """Masks for the tiny conv2 with known counts (see the expectations in the tests)."""
    model = _model()
    shapes = {name: layer.parametrizations.weight.original.shape
              for name, layer in masked_layers(model)}
    masks = {name: torch.zeros(shape, dtype=torch.bool) for name, shape in shapes.items()}
    p = ms.decode_pattern
    f0, f3 = masks["body.features.0"], masks["body.features.3"]  # (8, 1, 3, 3), (8, 8, 3, 3)
    f0[0, 0], f0[1, 0], f0[2, 0], f0[3, 0] = p(PLUS), p(PLUS), p(TOP_ROW), p(CENTER)
    f3[0, 0], f3[0, 1], f3[1, 0], f3[2, 2] = p(PLUS), p(CENTER), p(CENTER), p(FULL)
    masks["body.classifier.1"][0, :10] = True  # (32, 288)
    masks["body.classifier.1"][5, 0] = True
    masks["body.classifier.4"] |= torch.eye(32, dtype=torch.bool)
    masks["body.classifier.7"] |= True  # (10, 32)
    set_masks(model, masks)
    return model, masks


@pytest.mark.parametrize("source", ["model", "dict"])
def test_mask_stats_counts_on_a_hand_built_mask(source):
    model, masks = _hand_masks()
    obj = model if source == "model" else masks
    density = ms.layer_density(obj)
    assert [(d["kept"], d["total"]) for d in density.values()] == [
        (14, 72), (16, 576), (11, 32 * 288), (32, 32 * 32), (320, 320)]
    assert density["body.features.0"]["density"] == 14 / 72

    filters = ms.filter_counts(obj)
    assert list(filters) == ["body.features.0", "body.features.3"]
    assert filters["body.features.0"]["per_filter"].tolist() == [5, 5, 3, 1, 0, 0, 0, 0]
    assert filters["body.features.0"]["per_channel"].tolist() == [14]
    assert filters["body.features.3"]["per_filter"].tolist() == [6, 1, 9, 0, 0, 0, 0, 0]
    assert filters["body.features.3"]["per_channel"].tolist() == [6, 1, 9, 0, 0, 0, 0, 0]

    kernels = ms.kernel_counts(obj)["body.features.3"]
    expected = torch.zeros(8, 8, dtype=torch.long)
    expected[0, 0], expected[0, 1], expected[1, 0], expected[2, 2] = 5, 1, 1, 9
    assert torch.equal(kernels, expected)

    units = ms.pruned_units(obj)
    got = {n: (u["pruned_out"], u["pruned_in"]) for n, u in units.items()}
    assert got == {"body.features.0": (4, 0), "body.features.3": (5, 5),
                   "body.classifier.1": (30, 278), "body.classifier.4": (0, 0),
                   "body.classifier.7": (0, 0)}
    assert units["body.features.3"]["pruned_out_fraction"] == 5 / 8


def test_kernel_patterns_on_a_hand_built_mask():
    model, _ = _hand_masks()
    pooled = ms.kernel_patterns(model)
    assert pooled["layers"] == ["body.features.0", "body.features.3"]
    assert (pooled["kernels"], pooled["nonempty"], pooled["distinct"]) == (72, 8, 4)
    assert pooled["kept_histogram"] == [64, 3, 0, 1, 0, 3, 0, 0, 0, 1]
    assert [(p["code"], p["count"], p["kept"]) for p in pooled["patterns"]] == [
        (CENTER, 3, 1), (PLUS, 3, 5), (TOP_ROW, 1, 3), (FULL, 1, 9)]
    assert [p["fraction"] for p in pooled["patterns"]] == [3 / 8, 3 / 8, 1 / 8, 1 / 8]
    plus = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    assert torch.equal(pooled["patterns"][1]["pattern"], plus)

    first = ms.kernel_patterns(model, layer="body.features.0", top=2)
    assert first["nonempty"] == 4
    assert [(p["code"], p["count"]) for p in first["patterns"]] == [(PLUS, 2), (CENTER, 1)]
    with pytest.raises(ValueError, match="3x3 conv"):
        ms.kernel_patterns(model, layer="body.classifier.1")
    assert all(ms.encode_pattern(ms.decode_pattern(c)) == c for c in range(512))


def test_mask_summary_table_rows():
    model, _ = _hand_masks()
    rows = ms.mask_summary_table(model)
    assert [r["layer"] for r in rows] == [n for n, _ in masked_layers(model)]
    conv = rows[1]
    assert (conv["kind"], conv["kept"], conv["pruned_out"], conv["pruned_in"]) == ("conv", 16, 5, 5)
    assert (conv["empty_kernels"], conv["mean_kept_per_kernel"]) == (60, 4.0)
    assert (conv["top_pattern"], conv["top_pattern_fraction"]) == (CENTER, 0.5)
    linear = rows[2]
    assert (linear["kind"], linear["kept"], linear["pruned_out"]) == ("linear", 11, 30)
    assert linear["empty_kernels"] is None and linear["top_pattern"] is None


# the tiny base with the schema's own training attack and no last BN
CFG = TINY | dict(end_with_bn=False, train_attack=default("train_attack"), final_examples=100, eval_steps=3)


def test_random_mask_control_is_the_untrained_network_with_recalibrated_bn(data):
    cfg = RunConfig(**CFG).validate()
    control = random_mask_control(cfg, data)
    _, fresh = build_task(cfg, data)
    # same random weights, the initial (random) top-k mask, no search
    for (_, a), (_, b) in zip(masking.masked_layers(control), masking.masked_layers(fresh)):
        assert torch.equal(masking.raw_weight(a), masking.raw_weight(b))
        assert torch.equal(masking.get_mask_param(a).mask(), masking.get_mask_param(b).mask())
    bn = next(m for m in control.modules() if isinstance(m, nn.BatchNorm2d))
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))  # recalibrated
    assert not control.training


def test_controls_and_ticket_meet_the_same_attack_on_the_same_examples(data):
    cfg = RunConfig(**{**CFG, "epochs": 3, "train_examples": 1024}).validate()
    robust = train(cfg, None, progress=False, data=data)
    natural = natural_control(cfg, data)
    assert natural.config.train_attack == "none" and natural.config.seed == cfg.seed
    rows = compare_models({"robust": robust.model, "random": random_mask_control(cfg, data)},
                          cfg, data, progress=False)
    assert [r["model"] for r in rows] == ["robust", "random"]
    assert all(r["examples"] == 100 and r["split"] == "test" for r in rows)
    # compare_models gives the ticket exactly the numbers its own run reported
    assert rows[0]["clean_acc"] == robust.final["clean_acc"]
    assert rows[0]["pgd_acc"] == robust.final["pgd_acc"]
    # and a random mask is no robust ticket: the claim the quickstart makes
    assert rows[1]["clean_acc"] < rows[0]["clean_acc"]


def test_recalibrate_bn_estimates_statistics_from_the_loader(data):
    model = create_model("conv2", 10, 1, image_size=28, width=0.125, keep_ratio=0.5)
    x = data.train.tensors[0][:256]
    loader = make_loader(data.train, 128)
    recalibrate_bn(model, loader, torch.device("cpu"), max_batches=2)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():  # the BN input statistics over the same 256 examples
        feats = model.body.features[0](model.normalize(x))
    assert torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-4)
    assert not model.training and bn.momentum == 0.1


def test_shard_order_splits_one_permutation_like_distributed_sampler():
    from torch.utils.data.distributed import DistributedSampler
    full = shard_order(10, True, seed=3)
    assert sorted(full.tolist()) == list(range(10))
    ranks = [shard_order(10, True, 3, rank=r, world_size=3) for r in range(3)]
    assert [len(r) for r in ranks] == [4, 4, 4]  # padded to a multiple of the world size
    for r in range(3):
        sampler = DistributedSampler(range(10), num_replicas=3, rank=r, shuffle=True, seed=3)
        assert ranks[r].tolist() == list(sampler)
    assert shard_order(5, False, 0).tolist() == [0, 1, 2, 3, 4]


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
