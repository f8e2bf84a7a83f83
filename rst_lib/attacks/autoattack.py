"""AutoAttack (Croce & Hein, 2020) on tensors, through the ``pyautoattack`` package (PyPI) or
``autoattack`` (fra31/auto-attack) where a user has that installed instead.

``version="fast"`` runs the APGD-CE + APGD-T subset (cheaper; the two attacks that decide
most standard-AA numbers), ``version="standard"`` the full ensemble (APGD-CE, APGD-T, FAB-T,
Square), ``version="rand"`` the version for randomized defenses (EOT).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..masks.masking import frozen_masks

AUTOATTACK_VERSIONS = ("fast", "standard", "rand")
# APGD-T of the fast version attacks the 3 most likely wrong classes (the standard version: 9).
# On CPUs APGD-T is most of AutoAttack's cost; 3 targets keep the quickstart within minutes.
FAST_TARGET_CLASSES = 3


def autoattack_class():
    try:
        from pyautoattack import AutoAttack
        return AutoAttack, "pyautoattack"
    except ImportError:
        try:
            from autoattack import AutoAttack  # fra31/auto-attack
            return AutoAttack, "autoattack"
        except ImportError:
            raise ImportError("AutoAttack needs the `pyautoattack` package: pip install pyautoattack") from None


def autoattack_robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                      threat_model: str, version: str, device, seed: int,
                      batch_size: int = 250) -> torch.Tensor:
    """Per input: does it survive AutoAttack's ``version``? (bool, on the CPU)"""
    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"version={version!r} is invalid: valid {', '.join(AUTOATTACK_VERSIONS)}")
    AutoAttack, flavour = autoattack_class()
    norm = {"linf": "Linf", "l2": "L2"}[threat_model]
    device = torch.device(device)
    model = model.to(device).eval()
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    with frozen_masks(model):
        if flavour == "pyautoattack":
            kw = dict(device=str(device), eps=eps, norm=norm, seed=seed)
            adversary = (AutoAttack(model, attacks=["apgd-ce", "apgd-t"], version="custom", **kw)
                         if version == "fast" else AutoAttack(model, version=version, **kw))
        else:
            adversary = AutoAttack(model, norm=norm, eps=eps, device=str(device), seed=seed,
                                   version="custom" if version == "fast" else version,
                                   verbose=False)
            if version == "fast":
                adversary.attacks_to_run = ["apgd-ce", "apgd-t"]
        if version == "fast":  # 1 restart each (custom keeps 5); the 3 likeliest wrong classes
            adversary.apgd.n_restarts = 1
            adversary.apgd_targeted.n_restarts = 1
            adversary.apgd_targeted.n_target_classes = FAST_TARGET_CLASSES
        if flavour == "pyautoattack":
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
        else:
            x_adv = adversary.run_standard_evaluation(x, y, bs=batch_size)
        if (x_adv - x).abs().flatten(1).max() > eps + 1e-5 and threat_model == "linf":
            raise RuntimeError("AutoAttack returned perturbations outside the eps-ball")
        flags = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                pred = model(x_adv[i:i + batch_size].to(device)).argmax(1).cpu()
                flags.append(pred == y[i:i + batch_size])
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)
