"""APGD that stops on broken inputs (rst_lib.attacks.apgd_stop): the same robust inputs as
pyautoattack's APGD on a fixed seed, every break a real one, and fewer passes."""
import pytest
import torch
from torch import nn

from rst_lib.attacks.autoattack import autoattack_robust, make_adversary


class Counting(nn.Module):
    """A small deterministic classifier that counts the inputs it sees."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).double()
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return self.net(x.double()).float()  # float64 inside: batch size cannot change a sum


def data(n=256):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=g)
    model = Counting().eval()
    with torch.no_grad():
        y = model(x).argmax(1)  # every input starts correct
    return model, x, y


@pytest.mark.parametrize("threat_model,eps", [("linf", 0.05), ("linf", 0.08), ("l2", 0.3)])
def test_same_robust_inputs_with_fewer_passes(threat_model, eps):
    model, x, y = data()
    out = {}
    for stop in (False, True):
        model.seen = 0
        out[stop] = (autoattack_robust(model, x, y, eps, threat_model, "fast", "cpu", 0, 64,
                                       stop_broken=stop), model.seen)
    (asis, seen_asis), (stopping, seen_stopping) = out[False], out[True]
    assert 0 < int(asis.sum()) < len(x)  # some inputs broken, some not: the test means something
    assert torch.equal(asis, stopping)  # (a half step size in the stopping APGD fails here)
    assert seen_stopping < 0.8 * seen_asis


def test_breaks_are_real_and_inside_the_ball():
    model, x, y = data()
    adversary, _ = make_adversary(model, 0.05, "linf", "fast", "cpu", 0)
    adversary.attacks_to_run = ["apgd-ce"]
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(x))
    assert (x_adv - x).abs().max() <= 0.05 + 1e-6
    with torch.no_grad():
        broken = model(x_adv).argmax(1) != y
    assert broken.any()


def test_rand_version_keeps_the_original():
    model, _, _ = data()
    adversary, _ = make_adversary(model, 0.05, "linf", "rand", "cpu", 0)
    assert "attack_single_run" not in vars(adversary.apgd)


def test_bf16_search_gives_the_same_robust_inputs():
    """Under bf16 autocast the losses come in bf16 (the original stores them as they come)."""
    model, x, y = data()
    model.net.float()  # autocast works on float32 layers
    model.forward = lambda x: model.net(x)
    flags = [autoattack_robust(model, x, y, 0.05, "linf", "fast", "cpu", 0, 64,
                               precision="bf16", stop_broken=stop) for stop in (False, True)]
    assert 0 < int(flags[0].sum()) < len(x)
    assert torch.equal(flags[0], flags[1])


def test_unconfirmed_breaks_keep_iterating_as_in_the_original():
    """With a ``confirm`` that never confirms (a bf16 break the fp32 model rejects), no input
    stops: the same passes and the same outcome as pyautoattack's APGD."""
    from rst_lib.attacks.apgd_stop import stop_on_broken
    model, x, y = data(128)
    runs = []
    for stop in (False, True):
        adversary, _ = make_adversary(model, 0.08, "linf", "fast", "cpu", 0, stop_broken=False)
        if stop:
            stop_on_broken(adversary.apgd, lambda xa, ya: torch.zeros(len(xa), dtype=torch.bool))
        adversary.attacks_to_run = ["apgd-ce"]
        model.seen = 0
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(x))
        with torch.no_grad():
            runs.append((model(x_adv).argmax(1) != y, model.seen - len(x)))
    assert runs[0][0].any() and torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
