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
