"""AutoAttack (Croce & Hein, 2020) on tensors, through the ``pyautoattack`` package (PyPI) or
``autoattack`` (fra31/auto-attack) where a user has that installed instead.

``version="fast"`` runs the APGD-CE + APGD-T subset (cheaper; the two attacks that decide
most standard-AA numbers), ``version="standard"`` the full ensemble (APGD-CE, APGD-T, FAB-T,
Square), ``version="rand"`` the version for randomized defenses (EOT).
"""
from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn
from ..utils.progress import tqdm  # its notebook bars leave text, not a widget
from ..utils import progress_log

from ..config import allowed
from .apgd_stop import stop_on_broken
from ..masks.masking import frozen_masks
from ..utils.devices import seeded_rng
from ..utils.journal import Journal

AUTOATTACK_VERSIONS = ("fast", "standard", "rand")
# APGD-T of the fast version attacks the 3 most likely wrong classes (the standard version: 9).
# On CPUs APGD-T is most of AutoAttack's cost; 3 targets keep the quickstart within minutes.
FAST_TARGET_CLASSES = 3
# Precision of the search for adversarial examples (the config's autoattack_precision). With
# "bf16" the attacks run under bf16 autocast (2-5x cheaper on CPUs with avx512_bf16 or AMX),
# and an input counts as broken only if the fp32 model misclassifies the example found: every
# reported break is a real fp32 adversarial example inside the eps-ball, so the accuracy stays
# an upper bound on the fp32 model's robust accuracy (a bf16 search can only miss breaks).
# ("auto" is resolved to one of these by the engine before an attack runs: see
# rst_lib.engine.auto_precision.)
SEARCH_PRECISIONS = tuple(p for p in allowed("autoattack_precision") if p != "auto")


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


def make_adversary(model: nn.Module, eps: float, threat_model: str, version: str, device,
                   seed: int, stop_broken: bool = True, confirm=None):
    """An AutoAttack object configured for ``version`` (its ``attacks_to_run`` in order).

    ``stop_broken``: its APGD attacks stop iterating an input once it is broken
    (:mod:`~rst_lib.attacks.apgd_stop`; not for ``rand``, whose model answers at random);
    with ``confirm(x_adv, y)`` only once the reported model misclassifies it."""
    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"version={version!r} is invalid: valid {', '.join(AUTOATTACK_VERSIONS)}")
    AutoAttack, flavour = autoattack_class()
    norm = {"linf": "Linf", "l2": "L2"}[threat_model]
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    if flavour == "pyautoattack":
        kw = dict(device=str(device), eps=eps, norm=norm, seed=seed)
        adversary = (AutoAttack(model, attacks=["apgd-ce", "apgd-t"], version="custom", **kw)
                     if version == "fast" else AutoAttack(model, version=version, **kw))
        adversary.verbose = False
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
    if stop_broken and version != "rand" and not getattr(model, "stochastic", False):
        stop_on_broken(adversary.apgd, confirm)
        stop_on_broken(adversary.apgd_targeted, confirm)
    return adversary, flavour


def search_context(precision: str, device: torch.device):
    """The autocast of the adversarial search: ``fp32`` leaves the caller's context as it is
    (the run's ``eval_precision``), ``bf16`` autocasts to bfloat16."""
    if precision not in SEARCH_PRECISIONS:
        raise ValueError(f"precision={precision!r} is invalid: valid {', '.join(SEARCH_PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def confirm_context(precision: str, device: torch.device):
    """The autocast of the check that an example fools the model: fp32 after a bf16 search
    (the model reported on is the fp32 one), else the caller's context."""
    if precision == "fp32" or not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


def _attack_batch(adversary, flavour: str, attack: str, model: nn.Module, x: torch.Tensor,
                  y: torch.Tensor, eps: float, threat_model: str, device,
                  precision: str = "fp32") -> torch.Tensor:
    """One of AutoAttack's attacks on one batch (inputs not broken yet): survives? (bool, CPU)

    The search runs in ``precision``; whether each example fools the model is decided in
    fp32 after a bf16 search (:func:`survives`)."""
    adversary.attacks_to_run = [attack]
    with search_context(precision, device):
        if flavour == "pyautoattack":
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(x))
        else:
            x_adv = adversary.run_standard_evaluation(x, y, bs=len(x))
    return survives(model, x, x_adv, y, eps, threat_model, device, precision)


@torch.no_grad()
def survives(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
             eps: float, threat_model: str, device, precision: str = "fp32") -> torch.Tensor:
    """Per input: is ``x_adv`` (inside the eps-ball of ``x``, checked) still classified as
    ``y``? Decided in fp32 when the search ran in bf16 (:func:`confirm_context`). (bool, CPU)"""
    if threat_model == "linf" and (x_adv.cpu() - x).abs().flatten(1).max() > eps + 1e-5:
        raise RuntimeError("AutoAttack returned perturbations outside the eps-ball")
    with confirm_context(precision, torch.device(device)):
        return model(x_adv.to(device)).argmax(1).cpu() == y


def autoattack_robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                      threat_model: str, version: str, device, seed: int,
                      batch_size: int = 250, progress: bool = False, journal: Journal | None = None,
                      unit: str = "autoattack", precision: str = "fp32",
                      stop_broken: bool = True) -> torch.Tensor:
    """Per input: does it survive AutoAttack's ``version``? (bool, on the CPU)

    Runs AutoAttack's attacks one after the other, as AutoAttack does (each on the inputs
    the ones before did not break), batch by batch of the input order: each (attack, batch)
    is one unit of ``journal`` (a killed evaluation resumes at the next unit) and one step
    of that attack's progress bar. Every attack call re-seeds with ``seed`` (AutoAttack
    does), so a unit's result does not depend on what ran before it in this process; the
    caller's random stream is left as it was.

    ``precision`` (``autoattack_precision``): ``bf16`` searches under bf16 autocast and counts
    an input as broken only if the fp32 model misclassifies the example found (the clean
    check is fp32 too), so every break is a real one; ``fp32`` runs in the caller's context.
    ``stop_broken``: APGD stops iterating an input once broken (:func:`make_adversary`).
    """
    device = torch.device(device)
    model = model.to(device).eval()
    if precision not in SEARCH_PRECISIONS:
        raise ValueError(f"precision={precision!r} is invalid: valid {', '.join(SEARCH_PRECISIONS)}")
    def confirm(x_adv, y_adv):  # after a bf16 search: broken only if the fp32 model says so
        with confirm_context(precision, device):
            return model(x_adv).argmax(1) != y_adv

    adversary, flavour = make_adversary(model, eps, threat_model, version, device, seed,
                                        stop_broken, None if precision == "fp32" else confirm)
    attacks = list(adversary.attacks_to_run)
    journal = journal or Journal(None, "")
    starts = range(0, len(x), batch_size)
    with frozen_masks(model), seeded_rng(seed, device):
        robust = torch.zeros(len(x), dtype=torch.bool)
        for b, i in enumerate(starts):  # AutoAttack attacks what is classified correctly
            flags = journal.run(f"{unit}/clean/{b}", lambda: _clean_flags(
                model, x[i:i + batch_size], y[i:i + batch_size], device, precision))
            robust[i:i + batch_size] = torch.tensor(flags, dtype=torch.bool)
        for attack in attacks:
            bar = tqdm(total=len(starts), desc=f"AutoAttack {attack}", unit="batch", leave=False,
                       disable=not progress, initial=journal.count(f"{unit}/{attack}/"))
            stage = progress_log.Stage(f"AutoAttack {attack.upper()}", int(robust.sum()))
            for b, i in enumerate(starts):
                part = robust[i:i + batch_size]

                def attack_batch(part=part, i=i):
                    out = part.clone()
                    if part.any():
                        xb, yb = x[i:i + batch_size][part], y[i:i + batch_size][part]
                        out[part] = _attack_batch(adversary, flavour, attack, model, xb, yb,
                                                  eps, threat_model, device, precision)
                    return out.int().tolist()

                done, attacked = journal.done(f"{unit}/{attack}/{b}"), int(part.sum())
                robust[i:i + batch_size] = torch.tensor(
                    journal.run(f"{unit}/{attack}/{b}", attack_batch), dtype=torch.bool)
                if not done:
                    bar.update(1)
                bar.set_postfix(robust=f"{int(robust.sum())}/{len(x)}")
                stage.advance(attacked, fresh=not done)  # (part: a view, changed by now)
            bar.close()
            stage.finish(f"{int(robust.sum())} still robust")
    return robust


@torch.no_grad()
def _clean_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device,
                 precision: str = "fp32") -> list[int]:
    with confirm_context(precision, device):
        return (model(x.to(device)).argmax(1).cpu() == y).int().tolist()
