"""rst_lib.attacks: FGSM / PGD / TRADES / carried FGSM, L-inf and L2, RST's early stop."""
import pytest
import torch
import torch.nn.functional as F

from rst_lib.attacks.gradient import FGSM, PGD, make_attack
from rst_lib.attacks.gradient import TradesPGD
from rst_lib import RunConfig, create_model
from rst_lib.attacks.gradient import CarriedFGSM, project
from rst_lib.engine.tasks import build_task, make_train_attack
from tiny import TINY_256


@pytest.fixture
def trained_tiny(tiny_model, batch):
    """A tiny model with a few score steps so it is not at chance on `batch`."""
    model = tiny_model(keep_ratio=0.5)
    x, y = batch
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("attack_cls", ["pgd", "fgsm", "fgsm_rs"])
def test_perturbation_inside_eps_ball_and_unit_box(trained_tiny, batch, attack_cls):
    x, y = batch
    eps = 0.1
    x_adv = make_attack(attack_cls, trained_tiny, eps, alpha=0.03, steps=5)(x, y)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad


def test_pgd_raises_the_loss(trained_tiny, batch):
    x, y = batch
    clean = F.cross_entropy(trained_tiny(x), y).item()
    x_adv = PGD(trained_tiny, eps=0.1, alpha=0.025, steps=10)(x, y)
    adv = F.cross_entropy(trained_tiny(x_adv), y).item()
    noise = (x + torch.empty_like(x).uniform_(-0.1, 0.1)).clamp(0, 1)
    assert adv > clean + 0.5
    assert adv > F.cross_entropy(trained_tiny(noise), y).item()


def test_pgd_restarts_keep_the_worst_case_per_example(trained_tiny, batch):
    x, y = batch
    torch.manual_seed(0)
    one = PGD(trained_tiny, eps=0.05, alpha=0.01, steps=3, restarts=1)(x, y)
    torch.manual_seed(0)
    many = PGD(trained_tiny, eps=0.05, alpha=0.01, steps=3, restarts=4)(x, y)
    with torch.no_grad():
        wrong_one = trained_tiny(one).argmax(1) != y
        wrong_many = trained_tiny(many).argmax(1) != y
    # restart 1 of `many` is exactly `one` (same seed), so more restarts never fool fewer
    assert (wrong_many | ~wrong_one).all()
    assert wrong_many.sum() >= wrong_one.sum()


def test_attack_uses_eval_mode_and_restores_training_mode(tiny_model, batch):
    model = tiny_model().train()
    seen = []
    model.register_forward_pre_hook(lambda m, i: seen.append(m.training))
    bn = model.last_bn
    stats = bn.running_mean.clone()
    PGD(model, eps=0.1, alpha=0.03, steps=2)(*batch)
    assert seen and not any(seen)  # attacked in eval mode
    assert model.training  # restored
    assert torch.equal(bn.running_mean, stats)  # no BN statistics leaked from the attack
    seen.clear()
    PGD(model, eps=0.1, alpha=0.03, steps=2, eval_mode=False)(*batch)
    assert all(seen)  # training-time attack: BN in train mode, as the seeds do


def test_fgsm_rs_default_step_and_bad_arguments(tiny_model):
    m = tiny_model()
    assert FGSM(m, 0.1, random_start=True).alpha == pytest.approx(0.125)
    assert FGSM(m, 0.1).alpha == pytest.approx(0.1)
    with pytest.raises(ValueError):
        PGD(m, eps=0.1, alpha=0.01, steps=0)
    with pytest.raises(ValueError):
        PGD(m, eps=-0.1, alpha=0.01)
    with pytest.raises(ValueError, match="valid: fgsm"):
        make_attack("cw", m, 0.1)


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


@pytest.fixture
def model():
    return create_model("conv2", 10, 1, width=0.25, keep_ratio=0.3, image_size=28).eval()


@pytest.fixture
def digit_batch(data):
    return data.test.tensors[0][:32], data.test.tensors[1][:32]


def test_early_stop_keeps_the_random_start_of_examples_fooled_there(model, digit_batch):
    """RST trainers/default.py attack_pgd: an example misclassified at the current iterate is
    not updated any more, so one fooled at the random start keeps that start."""
    x, y = digit_batch
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


def test_early_stop_attacks_only_the_unfooled_and_matches_the_whole_batch_loop(model, digit_batch):
    """In eval mode early-stop PGD takes gradients of the still-correct examples only; the
    adversarial examples are those of the whole-batch loop (what a stochastic model gets),
    and the forward passes shrink with the survivors."""
    x, y = digit_batch
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


def test_early_stop_ends_when_every_example_is_fooled(model, digit_batch):
    x, y = digit_batch
    wrong = (model(x).argmax(1) + 1) % 10  # labels the model never predicts at x ...
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    PGD(model, 1e-6, 1e-7, steps=20, early_stop=True)(x, wrong)  # ... nor at x +- 1e-6
    hook.remove()
    assert len(calls) == 1  # one check, then the loop stops


def test_carried_fgsm_continues_from_each_examples_stored_perturbation(model, digit_batch):
    x, y = digit_batch
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


def test_trades_attack_runs_the_model_in_eval_mode(data, digit_batch):
    cfg = RunConfig(**{**TINY_256, "train_attack": "trades"}).validate()
    _, model = build_task(cfg, data)
    attack = make_train_attack(model, cfg, 256)
    modes = []
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.register_forward_pre_hook(lambda m, _: modes.append(m.training))
    model.train()
    attack(*digit_batch)
    assert modes and not any(modes) and model.training  # eval inside, train again after
    assert make_train_attack(model, cfg.replace(train_attack="pgd"), 256).eval_mode is False
    forced = make_train_attack(model, cfg.replace(attack_train_mode=True), 256)
    assert forced.eval_mode is False
