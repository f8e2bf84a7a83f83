"""The gradient-masking checks (Carlini et al., 2019): signs that an attack's number
overstates robustness, measured and flagged."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from ..attacks.gradient import FGSM, PGD
from ..attacks.noise import UniformNoise
from ..config import RunConfig
from ..data.datasets import DataBundle, fixed_subset
from ..data.loaders import make_loader
from ..utils.devices import resolve_device, seeded_rng
from .evaluation import autoattack_accuracy, evaluate


def gradient_masking_report(model: nn.Module, dataset: Dataset, eps: float, alpha: float,
                            threat_model: str = "linf", n_examples: int | None = 500,
                            steps: int = 20, more_steps: int = 100, restarts: int = 5,
                            eps_factors=(0.25, 0.5, 1.0, 2.0, 4.0), large_eps: float | None = None,
                            autoattack: str = "none", device: str | torch.device = "cpu",
                            seed: int = 0, progress: bool = True, early_stop: bool = False) -> dict:
    """Measure the signs of gradient masking (Carlini et al., 2019, "On Evaluating
    Adversarial Robustness", section 5) and flag each one that shows.

    Measured on the same ``n_examples`` test inputs: clean, uniform random noise at eps,
    FGSM, PGD-``steps``, PGD-``more_steps``, PGD-``steps`` with ``restarts`` restarts, PGD at
    eps * each factor in ``eps_factors`` and at ``large_eps`` (default 1.0: the whole image
    can be replaced, accuracy must reach ~0), optionally AutoAttack.

    ``early_stop``: every PGD stops on an input once it is misclassified (the run's
    ``eval_early_stop``; an input counts as broken if any iterate breaks it).

    Returns ``{"accuracy": {...}, "eps_curve": [(eps, acc), ...], "flags": [str, ...]}``;
    an empty ``flags`` list means no sign was seen (not a proof of robustness).
    """
    device = torch.device(device)
    model = model.to(device).eval()
    loader = make_loader(fixed_subset(dataset, n_examples), 250)
    n = len(fixed_subset(dataset, n_examples))
    large_eps = large_eps if large_eps is not None else (1.0 if threat_model == "linf" else 100.0)

    def acc(attacks: dict) -> dict:
        with seeded_rng(seed, device):
            return evaluate(model, loader, device, attacks, progress, desc="masking checks")

    def pgd(e, a, k, r=1):
        return PGD(model, e, a, k, r, norm=threat_model, early_stop=early_stop)

    base = acc({"fgsm": FGSM(model, eps, norm=threat_model), "pgd": pgd(eps, alpha, steps),
                "pgd_more_steps": pgd(eps, alpha / 2, more_steps),
                "pgd_restarts": pgd(eps, alpha, steps, restarts),
                "noise": UniformNoise(model, eps, threat_model)})
    curve = []
    for f in eps_factors:
        e = eps * f
        curve.append((e, acc({"pgd": pgd(e, max(alpha * f, 1e-6), steps)})["pgd_acc"]))
    curve.append((large_eps, acc({"pgd": pgd(large_eps, large_eps / 4, steps)})["pgd_acc"]))
    accuracy = {k.removesuffix("_acc"): v for k, v in base.items() if k.endswith("_acc")}
    if autoattack != "none":
        accuracy["autoattack"] = autoattack_accuracy(model, dataset, eps, threat_model, autoattack,
                                                     n_examples, device, seed)
    tol = 2.0 / n  # two examples: differences below this are noise
    flags = []
    if accuracy["pgd"] > accuracy["fgsm"] + tol:
        flags.append(f"PGD accuracy {accuracy['pgd']:.1%} is above FGSM {accuracy['fgsm']:.1%}: "
                     "an iterative attack should never be weaker than a single step")
    if accuracy["pgd_more_steps"] > accuracy["pgd"] + tol or accuracy["pgd_restarts"] > accuracy["pgd"] + tol:
        flags.append("more PGD steps or restarts raised accuracy "
                     f"({accuracy['pgd']:.1%} -> {accuracy['pgd_more_steps']:.1%} / "
                     f"{accuracy['pgd_restarts']:.1%}): the attack is not converging")
    accs = [a for _, a in curve]
    if any(b > a + tol for a, b in zip(accs, accs[1:])):
        flags.append("accuracy does not fall monotonically as eps grows: "
                     + ", ".join(f"{e:.3g}: {a:.1%}" for e, a in curve))
    if accs[-1] > 0.1:
        flags.append(f"accuracy is still {accs[-1]:.1%} at eps={large_eps:g}, where an attacker "
                     "can replace the image: gradients are probably uninformative")
    if accuracy["noise"] < accuracy["pgd"] - tol:
        flags.append(f"random noise ({accuracy['noise']:.1%}) hurts more than PGD "
                     f"({accuracy['pgd']:.1%})")
    if "autoattack" in accuracy and accuracy["autoattack"] < accuracy["pgd"] - 0.05:
        flags.append(f"AutoAttack ({accuracy['autoattack']:.1%}) is far below PGD "
                     f"({accuracy['pgd']:.1%}): PGD overestimates robustness here")
    return {"accuracy": accuracy, "eps_curve": curve, "flags": flags, "n_examples": n,
            "eps": eps, "threat_model": threat_model}


def final_checks(model: nn.Module, cfg: RunConfig, data: DataBundle, final: dict,
                 n_examples: int | None = 500, more_steps: int = 100, restarts: int = 5,
                 progress: bool = True) -> dict:
    """The gradient-masking checks of a final ticket (:func:`gradient_masking_report` on
    ``n_examples`` test inputs, with the run's evaluation attack), plus the AutoAttack
    check on the final numbers themselves: AutoAttack far below PGD on the same test
    examples (``final``, from :func:`final_evaluation`) means PGD overstates robustness."""
    report = gradient_masking_report(
        model, data.test, cfg.eval_eps_value, cfg.eval_alpha_value, cfg.threat_model,
        n_examples, cfg.eval_steps, more_steps, restarts, device=resolve_device(cfg.device),
        seed=cfg.seed, progress=progress, early_stop=cfg.eval_early_stop)
    aa, pgd = final.get("autoattack_acc"), final.get("pgd_acc_on_autoattack_examples")
    if aa is not None and aa < pgd - 0.05:
        report["flags"].append(
            f"AutoAttack ({aa:.1%}) is far below {final['pgd']} ({pgd:.1%}) on the same "
            f"{final['autoattack']['examples']} test inputs: PGD overestimates robustness here")
    return report
