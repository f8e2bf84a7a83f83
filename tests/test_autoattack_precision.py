"""autoattack_precision='bf16': AutoAttack searches in bf16, and an input counts as broken only
if the fp32 model misclassifies the example found."""
import pytest
import torch
from torch import nn

from rst_lib.attacks.autoattack import SEARCH_PRECISIONS, autoattack_robust, survives
from rst_lib.config import RunConfig

# bf16 keeps 8 significant bits: 1 + 2**-10 rounds to 1, so under bf16 autocast all ten logits
# of TieAtBf16 are equal (argmax: class 0), while in fp32 class 9 wins for every positive input.
BUMP = 2.0 ** -10


class TieAtBf16(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 10, bias=False)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)
            self.fc.weight[9] += BUMP

    def forward(self, x):
        return self.fc(x.flatten(1))


def inputs(n=6):
    return torch.full((n, 1, 2, 2), 0.9), torch.full((n,), 9)


def test_the_model_is_right_in_fp32_and_wrong_in_bf16():
    model, (x, y) = TieAtBf16().eval(), inputs()
    assert (model(x).argmax(1) == y).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (model(x).argmax(1) != y).all()


def test_an_example_that_fools_bf16_but_not_fp32_is_not_counted():
    model, (x, y) = TieAtBf16().eval(), inputs()
    # inside a bf16 region (as the search runs), the bf16 search's example is checked in fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert survives(model, x, x.clone(), y, 0.3, "linf", "cpu", precision="bf16").all()
        # the broken rule: judged in the bf16 context, the same example would count as a break
        assert not survives(model, x, x.clone(), y, 0.3, "linf", "cpu", precision="fp32").any()


def test_bf16_autoattack_counts_only_fp32_breaks():
    import pyautoattack  # noqa: F401  a dependency: missing, the test fails (never skips)
    model, (x, y) = TieAtBf16().eval(), inputs()
    fp32 = autoattack_robust(model, x, y, 0.3, "linf", "fast", "cpu", seed=0)
    bf16 = autoattack_robust(model, x, y, 0.3, "linf", "fast", "cpu", seed=0, precision="bf16")
    # no input is breakable in fp32 (class 9 wins for any input in [0.6, 1.0]); the bf16 model
    # misclassifies all of them, and none of those bf16 "breaks" may be counted
    assert fp32.all() and bf16.all()


def test_out_of_ball_examples_are_refused():
    model, (x, y) = TieAtBf16().eval(), inputs()
    with pytest.raises(RuntimeError, match="eps-ball"):
        survives(model, x, x - 0.5, y, 0.3, "linf", "cpu", precision="bf16")


def test_the_precision_is_declared_once_and_checked():
    assert SEARCH_PRECISIONS == ("fp32", "bf16")  # what an attack takes; auto is resolved before
    assert RunConfig().autoattack_precision == "auto"
    with pytest.raises(Exception, match="autoattack_precision"):
        RunConfig(autoattack_precision="fp16").validate()
    model, (x, y) = TieAtBf16().eval(), inputs()
    with pytest.raises(ValueError, match="precision"):
        autoattack_robust(model, x, y, 0.3, "linf", "fast", "cpu", seed=0, precision="fp16")
