"""engine.evaluation and engine.checks: the final numbers (AutoAttack as the robust accuracy, never above PGD) and the gradient-masking checks."""
import math

import torch
from torch import nn

from rst_lib import RunConfig, create_model
from rst_lib import train
from tiny import TINY, TINY_512


def test_final_evaluation_reports_autoattack_as_the_robust_accuracy(data):
    from rst_lib.engine.evaluation import final_evaluation
    cfg = RunConfig(model="conv2", width=0.125, final_examples=40, autoattack="fast",
                    autoattack_examples=30, eps=0.03, eval_alpha=0.005, eval_steps=3).validate()
    model = create_model("conv2", 10, 1, image_size=28, width=0.125, keep_ratio=0.1)
    final = final_evaluation(model, cfg, data, progress=False)
    assert final["split"] == "test" and final["examples"] == 40
    assert final["robust_acc"] == final["autoattack_acc"] and final["robust_examples"] == 30
    assert final["robust_attack"] == "AutoAttack (fast)" and math.isfinite(final["pgd_acc"])
    # AutoAttack ran on what PGD did not break, and broke some of it: PGD-3 with steps of
    # 0.005 cannot even reach eps 0.03, APGD can. Equal numbers would mean it never ran.
    assert final["autoattack_acc"] < final["pgd_acc_on_autoattack_examples"]
    no_aa = final_evaluation(model, cfg.replace(autoattack="none"), data, progress=False)
    assert no_aa["robust_acc"] == no_aa["pgd_acc"] and no_aa["robust_attack"] == "PGD-3"


def test_autoattack_is_at_most_pgd(data):
    from rst_lib.engine.evaluation import robustness_report
    cfg = RunConfig(**{**TINY, "train_examples": 1000, "train_attack": "none", "epochs": 2}).validate()
    model = train(cfg, None, progress=False, data=data).model
    report = robustness_report(model, data.test, eps=0.1, alpha=0.025, pgd_steps=(10,),
                               autoattack="fast", n_examples=64, progress=False)
    assert report["autoattack_acc"] <= report["pgd10_acc"] <= report["clean_acc"]
    assert report["fgsm_acc"] <= report["clean_acc"]


class _Quantized(nn.Module):
    """Rounds its input: zero gradients everywhere, the textbook gradient-masking defense."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


def test_gradient_masking_checks(data):
    from rst_lib.engine.checks import gradient_masking_report
    cfg = RunConfig(**{**TINY_512, "train_attack": "none", "epochs": 2, "train_examples": 1000}).validate()
    model = train(cfg, None, progress=False, data=data).model
    honest = gradient_masking_report(model, data.test, 0.1, 0.025, n_examples=100, steps=5,
                                     more_steps=10, restarts=2, progress=False)
    masked = gradient_masking_report(_Quantized(model), data.test, 0.1, 0.025, n_examples=100,
                                     steps=5, more_steps=10, restarts=2, progress=False)
    assert honest["eps_curve"][-1][1] <= 0.1
    assert any("eps=1" in f for f in masked["flags"])  # cannot reach 0 with the whole image
    # quantized inputs give PGD no gradient, so random noise does at least as well as PGD
    assert any("random noise" in f for f in masked["flags"]), masked
    assert len(masked["flags"]) > len(honest["flags"])


def test_masking_eps_curve_rises_and_stays_in_the_pixel_range(tiny_model, data):
    """eps 0.3 x factor 4 would be 1.2: past the whole-image eps of 1 (and the pixel range),
    listed before it. The curve is increasing and ends at the whole-image eps."""
    from rst_lib.engine.checks import gradient_masking_report
    model = tiny_model(0.2).eval()
    small = [(x[:, 8:20, 8:20], y) for x, y in (data.test[i] for i in range(16))]
    report = gradient_masking_report(model, small, 0.3, 0.1, n_examples=16, steps=1,
                                     more_steps=2, restarts=2, progress=False)
    eps = [e for e, _ in report["eps_curve"]]
    assert eps == sorted(eps) and len(set(eps)) == len(eps) and eps[-1] == 1.0, eps


def test_masking_eps_curve_at_eps_is_the_checks_own_pgd(tiny_model, data):
    """The curve's point at the evaluation eps is not run twice: it is the base check's PGD,
    which a separate PGD run with the check's seeds and batches reproduces exactly."""
    from rst_lib.attacks.gradient import PGD
    from rst_lib.engine.checks import CHECK_BATCH, gradient_masking_report
    from rst_lib.data.datasets import evaluation_images
    from rst_lib.engine.evaluation import count_correct, input_tensors
    from rst_lib.masks.masking import frozen_masks
    from rst_lib.utils.devices import seeded_rng
    from rst_lib.utils.journal import unit_seed
    model = tiny_model(0.2).eval()
    small = [(x[:, 8:20, 8:20], y) for x, y in (data.test[i] for i in range(300))]
    report = gradient_masking_report(model, small, 0.1, 0.025, n_examples=300, steps=3,
                                     more_steps=6, restarts=2, eps_factors=(0.5, 1.0),
                                     progress=False, seed=3)
    x, y = input_tensors(evaluation_images(small, 300, 3))  # the checks' images, seed 3's order
    correct = 0
    with frozen_masks(model):
        for b, i in enumerate(range(0, len(x), CHECK_BATCH)):
            xb, yb = x[i:i + CHECK_BATCH], y[i:i + CHECK_BATCH]
            with seeded_rng(unit_seed(3, b), "cpu"):
                correct += count_correct(model, PGD(model, 0.1, 0.025, 3)(xb, yb), yb)
    assert report["eps_curve"][1] == (0.1, correct / len(x)) == (0.1, report["accuracy"]["pgd"])
    assert 0 < correct < len(x)
