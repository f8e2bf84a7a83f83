"""Robustness evaluation: clean, FGSM, PGD-k (any steps/restarts) and AutoAttack.

AutoAttack comes from the ``pyautoattack`` package (PyPI), or from ``autoattack``
(fra31/auto-attack) when a user has that installed instead. ``version="fast"`` runs the
APGD-CE + APGD-T subset (cheaper; the two attacks that decide most standard-AA numbers),
``version="standard"`` the full ensemble (APGD-CE, APGD-T, FAB-T, Square).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from . import masking
from .attacks import FGSM, PGD, lp_step, project
from .config import RunConfig
from .data import DataBundle, fixed_subset
from .loaders import make_loader
from .devices import Distributed, resolve_device, seeded_rng
from .masking import frozen_masks
from .precision import autocast_context


@torch.no_grad()
def count_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """How many of ``x`` the model classifies as ``y``."""
    return int((model(x).argmax(1) == y).sum().item())


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, attacks: dict | None = None,
             progress: bool = True, desc: str = "eval", dist: Distributed | None = None,
             num_classes: int | None = None) -> dict:
    """Accuracy on clean inputs and under each attack in ``attacks`` (name -> Attack).

    Also returns ``top_class_fraction``: the share of test inputs predicted as the most
    frequent class (near 1.0 means the model collapsed to a constant prediction).
    Distributed: each rank evaluates its shard of ``loader``; counts are summed over ranks.
    """
    dist = dist or Distributed()
    model.eval()
    attacks = attacks or {}
    correct = {"clean": 0, **{name: 0 for name in attacks}}
    counts = None
    total = 0
    with masking.frozen_masks(model):
        for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress):
            x, y = x.to(device), y.to(device)
            pred = model(x).argmax(1)
            correct["clean"] += (pred == y).sum().item()
            binc = torch.bincount(pred, minlength=num_classes or 1).cpu()
            counts = binc if counts is None else _add_counts(counts, binc)
            for name, attack in attacks.items():
                x_adv = attack(x, y)
                correct[name] += (model(x_adv).argmax(1) == y).sum().item()
            total += len(y)
    names = list(correct)
    summed = dist.sum([correct[k] for k in names] + [total] + counts.tolist())
    total = summed[len(names)].item()
    out = {f"{k}_acc": summed[i].item() / total for i, k in enumerate(names)}
    out["top_class_fraction"] = summed[len(names) + 1:].max().item() / total
    return out


def _add_counts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n = max(len(a), len(b))
    return F.pad(a, (0, n - len(a))) + F.pad(b, (0, n - len(b)))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader, device: torch.device, max_batches: int = 20) -> None:
    """Re-estimate BatchNorm running statistics with plain forward passes (no learning)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with masking.frozen_masks(model):
        for i, (x, _) in enumerate(loader):
            if i >= max_batches:
                break
            model(x.to(device))
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum  # as the model had it
    model.eval()


def eval_attacks(model: nn.Module, cfg: RunConfig) -> dict:
    return {"pgd": PGD(model, cfg.eval_eps_value, cfg.eval_alpha_value, cfg.eval_steps,
                       cfg.eval_restarts, norm=cfg.threat_model, early_stop=cfg.eval_early_stop)}


def final_evaluation(model: nn.Module, cfg: RunConfig, data: DataBundle,
                     device: torch.device | None = None, progress: bool = True) -> dict:
    """The numbers to report: clean and PGD (``eval_*``) accuracy, and AutoAttack
    (``cfg.autoattack``), on the first ``final_examples`` of the fixed test order, in
    ``cfg.eval_precision`` (fp32 unless asked otherwise, whatever autocast surrounds it).

    Random starts come from a generator seeded with ``cfg.seed`` (the global RNG is left
    as it was), so every model evaluated with the same ``cfg`` meets the same attack.
    """
    device = device or resolve_device(cfg.device)
    with autocast_context(cfg.eval_precision, device):
        return _final_evaluation(model, cfg, data, device)


def _final_evaluation(model: nn.Module, cfg: RunConfig, data: DataBundle,
                      device: torch.device) -> dict:
    test = fixed_subset(data.test, cfg.final_examples)
    x, y = _tensors(test, None)
    with seeded_rng(cfg.seed, device):  # per input: clean and PGD outcome, in test order
        clean_ok, pgd_ok = _correct_flags(model, x, y, eval_attacks(model, cfg)["pgd"],
                                          cfg.eval_batch_size, device)
    out = {"split": "test", "examples": len(test), "clean_acc": _fraction(clean_ok),
           "pgd_acc": _fraction(pgd_ok), "pgd": f"PGD-{cfg.eval_steps}",
           "eps": cfg.eval_eps_value, "threat_model": cfg.threat_model}
    if cfg.autoattack != "none":
        # AutoAttack runs on the inputs PGD did not break: an input counts as robust only if
        # both fail (the per-example worst case), and no AutoAttack time goes to inputs that
        # are already lost. Its examples are the first autoattack_examples of the test order.
        n = min(cfg.autoattack_examples, len(test))
        survivors = pgd_ok[:n]
        robust = survivors.clone()
        if survivors.any():
            robust[survivors] = _autoattack_robust(model, x[:n][survivors], y[:n][survivors],
                                                   cfg.eval_eps_value, cfg.threat_model,
                                                   cfg.autoattack, device, cfg.seed)
        out["autoattack_acc"] = _fraction(robust)
        out["autoattack"] = {"version": cfg.autoattack, "examples": n,
                             "on": "inputs PGD did not break (per-example worst case)"}
        out["pgd_acc_on_autoattack_examples"] = _fraction(survivors)
    # The headline: AutoAttack when it ran (PGD alone overstates robustness too often).
    out["robust_acc"] = out.get("autoattack_acc", out["pgd_acc"])
    out["robust_attack"] = (f"AutoAttack ({cfg.autoattack})" if "autoattack_acc" in out
                            else out["pgd"])
    out["robust_examples"] = out["autoattack"]["examples"] if "autoattack" in out else len(test)
    return out


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


AUTOATTACK_VERSIONS = ("fast", "standard", "rand")
# APGD-T of the fast version attacks the 3 most likely wrong classes (the standard version: 9).
# On CPUs APGD-T is most of AutoAttack's cost; 3 targets keep the quickstart within minutes.
FAST_TARGET_CLASSES = 3


def autoattack_accuracy(model: nn.Module, dataset: Dataset, eps: float, threat_model: str = "linf",
                        version: str = "standard", n_examples: int | None = 1000,
                        device: str | torch.device = "cpu", seed: int = 0,
                        batch_size: int = 250) -> float:
    """Robust accuracy under AutoAttack on the first ``n_examples`` of the fixed test order.

    ``version``: ``standard`` (APGD-CE, APGD-T, FAB-T, Square); ``fast`` = APGD-CE (1
    restart, as standard) and APGD-T on the 3 most likely wrong classes (standard: 9),
    the two attacks that decide most standard-AA numbers; ``rand`` = AutoAttack's
    version for randomized defenses (APGD-CE and APGD-DLR with 20 EOT samples per step),
    e.g. R2S's random switch.
    """
    x, y = _tensors(dataset, n_examples)
    return _fraction(_autoattack_robust(model, x, y, eps, threat_model, version, device, seed,
                                        batch_size))


def _fraction(flags: torch.Tensor) -> float:
    """Share of True flags, exact (count / n), as the per-epoch checks compute it."""
    return int(flags.sum()) / len(flags) if len(flags) else 0.0


@torch.no_grad()
def _correct_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack, batch_size: int,
                   device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per input, in one pass: classified correctly clean, and under ``attack``? (bool, CPU)"""
    model = model.to(device).eval()
    clean, adv = [], []
    with frozen_masks(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            clean.append((model(xb).argmax(1) == yb).cpu())
            adv.append((model(attack(xb, yb)).argmax(1) == yb).cpu())
    empty = torch.zeros(0, dtype=torch.bool)
    return (torch.cat(clean) if clean else empty), (torch.cat(adv) if adv else empty)


def _autoattack_robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                       threat_model: str, version: str, device, seed: int,
                       batch_size: int = 250) -> torch.Tensor:
    """Per input: does it survive AutoAttack's ``version``? (bool, on the CPU)"""
    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"version={version!r} is invalid: valid {', '.join(AUTOATTACK_VERSIONS)}")
    AutoAttack, flavour = _autoattack_class()
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
    with seeded_rng(seed, device):
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
                "noise": _Noise(model, eps, threat_model)})
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


class _Noise:
    """Uniform random noise on the eps-ball surface (L-inf corners / L2 sphere)."""

    def __init__(self, model, eps: float, threat_model: str):
        self.eps, self.norm = eps, threat_model

    def __call__(self, x, y):
        return x + project(x, lp_step(torch.randn_like(x), self.eps, self.norm), self.eps, self.norm)
