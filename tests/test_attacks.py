import pytest
import torch
import torch.nn.functional as F

from rst_lib.attacks.gradient import FGSM, PGD, make_attack


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
