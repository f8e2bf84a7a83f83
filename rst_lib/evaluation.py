"""Robustness evaluation: clean, FGSM, PGD-k (any steps/restarts) and AutoAttack.

AutoAttack comes from the ``pyautoattack`` package (PyPI), or from ``autoattack``
(fra31/auto-attack) when a user has that installed instead. ``version="fast"`` runs the
APGD-CE + APGD-T subset (cheaper; the two attacks that decide most standard-AA numbers),
``version="standard"`` the full ensemble (APGD-CE, APGD-T, FAB-T, Square).
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.utils.data import Dataset

from .attacks import FGSM, PGD
from .data import fixed_subset, make_loader
from .masking import frozen_masks
from .train import evaluate


class _FrozenEval(nn.Module):
    """Eval-mode wrapper: AutoAttack calls the model many times; masks stay frozen."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def _autoattack_class():
    try:
        from pyautoattack import AutoAttack
        return AutoAttack, "pyautoattack"
    except ImportError:
        try:
            from autoattack import AutoAttack  # fra31/auto-attack
            return AutoAttack, "autoattack"
        except ImportError:
            raise ImportError("AutoAttack needs the `pyautoattack` package: pip install pyautoattack") from None


def _tensors(dataset: Dataset, n_examples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    sub = fixed_subset(dataset, n_examples)
    xs, ys = zip(*make_loader(sub, 500))
    return torch.cat(xs), torch.cat(ys)


def autoattack_accuracy(model: nn.Module, dataset: Dataset, eps: float, threat_model: str = "linf",
                        version: str = "standard", n_examples: int | None = 1000,
                        device: str | torch.device = "cpu", seed: int = 0,
                        batch_size: int = 250) -> float:
    """Robust accuracy under AutoAttack on the first ``n_examples`` of the fixed test order."""
    AutoAttack, flavour = _autoattack_class()
    norm = {"linf": "Linf", "l2": "L2"}[threat_model]
    x, y = _tensors(dataset, n_examples)
    device = torch.device(device)
    model = model.to(device).eval()
    wrapped = _FrozenEval(model).eval()
    attacks = ["apgd-ce", "apgd-t"] if version == "fast" else None
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    with frozen_masks(model):
        if flavour == "pyautoattack":
            kw = dict(device=str(device), eps=eps, norm=norm, seed=seed)
            adversary = (AutoAttack(wrapped, attacks=attacks, version="custom", **kw) if attacks
                         else AutoAttack(wrapped, version="standard", **kw))
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
        else:
            adversary = AutoAttack(wrapped, norm=norm, eps=eps, device=str(device), seed=seed,
                                   version="custom" if attacks else "standard", verbose=False)
            if attacks:
                adversary.attacks_to_run = attacks
            x_adv = adversary.run_standard_evaluation(x, y, bs=batch_size)
        if (x_adv - x).abs().flatten(1).max() > eps + 1e-5 and threat_model == "linf":
            raise RuntimeError("AutoAttack returned perturbations outside the eps-ball")
        correct = 0
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                pred = model(x_adv[i:i + batch_size].to(device)).argmax(1).cpu()
                correct += (pred == y[i:i + batch_size]).sum().item()
    return correct / len(x)


def robustness_report(model: nn.Module, dataset: Dataset, eps: float, alpha: float,
                      threat_model: str = "linf", pgd_steps=(20,), restarts: int = 1,
                      autoattack: str = "none", n_examples: int | None = 1000,
                      device: str | torch.device = "cpu", seed: int = 0,
                      progress: bool = True) -> dict:
    """Clean, FGSM, PGD-k for each k in ``pgd_steps``, and optionally AutoAttack accuracy."""
    device = torch.device(device)
    loader = make_loader(fixed_subset(dataset, n_examples), 250)
    attacks = {"fgsm": FGSM(model, eps, norm=threat_model)}
    for k in pgd_steps:
        attacks[f"pgd{k}"] = PGD(model, eps, alpha, k, restarts, norm=threat_model)
    torch.manual_seed(seed)
    out = evaluate(model.to(device), loader, device, attacks, progress, desc="robustness")
    if autoattack != "none":
        out["autoattack_acc"] = autoattack_accuracy(model, dataset, eps, threat_model, autoattack,
                                                    n_examples, device, seed)
    out["eps"], out["n_examples"] = eps, len(fixed_subset(dataset, n_examples))
    return out


def gradient_masking_report(model: nn.Module, dataset: Dataset, eps: float, alpha: float,
                            threat_model: str = "linf", n_examples: int | None = 500,
                            steps: int = 20, more_steps: int = 100, restarts: int = 5,
                            eps_factors=(0.25, 0.5, 1.0, 2.0, 4.0), large_eps: float | None = None,
                            autoattack: str = "none", device: str | torch.device = "cpu",
                            seed: int = 0, progress: bool = True) -> dict:
    """Measure the signs of gradient masking (Carlini et al., 2019, "On Evaluating
    Adversarial Robustness", section 5) and flag each one that shows.

    Measured on the same ``n_examples`` test inputs: clean, uniform random noise at eps,
    FGSM, PGD-``steps``, PGD-``more_steps``, PGD-``steps`` with ``restarts`` restarts, PGD at
    eps * each factor in ``eps_factors`` and at ``large_eps`` (default 1.0: the whole image
    can be replaced, accuracy must reach ~0), optionally AutoAttack.

    Returns ``{"accuracy": {...}, "eps_curve": [(eps, acc), ...], "flags": [str, ...]}``;
    an empty ``flags`` list means no sign was seen (not a proof of robustness).
    """
    device = torch.device(device)
    model = model.to(device).eval()
    loader = make_loader(fixed_subset(dataset, n_examples), 250)
    n = len(fixed_subset(dataset, n_examples))
    large_eps = large_eps if large_eps is not None else (1.0 if threat_model == "linf" else 100.0)

    def acc(attacks: dict) -> dict:
        torch.manual_seed(seed)
        return evaluate(model, loader, device, attacks, progress, desc="masking checks")

    base = acc({"fgsm": FGSM(model, eps, norm=threat_model),
                "pgd": PGD(model, eps, alpha, steps, norm=threat_model),
                "pgd_more_steps": PGD(model, eps, alpha / 2, more_steps, norm=threat_model),
                "pgd_restarts": PGD(model, eps, alpha, steps, restarts, norm=threat_model),
                "noise": _Noise(model, eps, threat_model)})
    curve = []
    for f in eps_factors:
        e = eps * f
        curve.append((e, acc({"pgd": PGD(model, e, max(alpha * f, 1e-6), steps,
                                         norm=threat_model)})["pgd_acc"]))
    curve.append((large_eps, acc({"pgd": PGD(model, large_eps, large_eps / 4, steps,
                                             norm=threat_model)})["pgd_acc"]))
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


class _Noise:
    """Uniform random noise on the eps-ball surface (L-inf corners / L2 sphere)."""

    def __init__(self, model, eps: float, threat_model: str):
        self.eps, self.norm = eps, threat_model

    def __call__(self, x, y):
        from .attacks import lp_step, project
        return x + project(x, lp_step(torch.randn_like(x), self.eps, self.norm), self.eps, self.norm)
