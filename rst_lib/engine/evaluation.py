"""Robustness evaluation: clean, FGSM, PGD-k (any steps/restarts) and AutoAttack
(:mod:`rst_lib.attacks.autoattack`) on datasets, and a run's final evaluation."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..masks import masking
from ..attacks.gradient import FGSM, PGD
from ..config import RunConfig
from ..data.datasets import DataBundle, fixed_subset
from ..data.loaders import make_loader
from ..utils.devices import Distributed, resolve_device, seeded_rng
from ..utils.journal import Journal, fingerprint, open_journal, unit_seed
from ..masks.masking import frozen_masks
from ..attacks.autoattack import autoattack_robust
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
                     device: torch.device | None = None, progress: bool = True,
                     run_dir: str | os.PathLike | None = None) -> dict:
    """The numbers to report: clean and PGD (``eval_*``) accuracy, and AutoAttack
    (``cfg.autoattack``), on the first ``final_examples`` of the test split's fixed random
    order (:func:`~rst_lib.data.datasets.fixed_subset`), each also per class, in
    ``cfg.eval_precision`` (fp32 unless asked otherwise, whatever autocast surrounds it).

    Random starts come from generators seeded per batch from ``cfg.seed`` (the global RNG
    is left as it was), so every model evaluated with the same ``cfg`` meets the same attack.

    ``run_dir``: each batch's outcome (PGD, then each AutoAttack attack) is recorded in
    ``run_dir/eval-state/final_evaluation.json`` as soon as it is known; a killed
    evaluation called again with the same model and config continues where it stopped and
    gives the numbers of an uninterrupted one. Progress bars: one per attack, per batch.
    """
    device = device or resolve_device(cfg.device)
    journal = open_journal(run_dir, "final_evaluation", fingerprint(model, cfg.to_dict()))
    with autocast_context(cfg.eval_precision, device):
        return _final_evaluation(model, cfg, data, device, progress, journal)


def _final_evaluation(model: nn.Module, cfg: RunConfig, data: DataBundle,
                      device: torch.device, progress: bool, journal: Journal) -> dict:
    test = fixed_subset(data.test, cfg.final_examples)
    x, y = input_tensors(test, None)
    # per input: clean and PGD outcome, in test order
    clean_ok, pgd_ok = _correct_flags(model, x, y, eval_attacks(model, cfg)["pgd"],
                                      cfg.eval_batch_size, device, cfg.seed, journal,
                                      progress, f"final PGD-{cfg.eval_steps}")
    out = {"split": "test", "examples": len(test), "clean_acc": _fraction(clean_ok),
           "pgd_acc": _fraction(pgd_ok), "pgd": f"PGD-{cfg.eval_steps}",
           "eps": cfg.eval_eps_value, "threat_model": cfg.threat_model}
    if cfg.autoattack != "none":
        # AutoAttack runs on the inputs PGD did not break: an input counts as robust only if
        # both fail (the per-example worst case), and no AutoAttack time goes to inputs that
        # are already lost. Its examples are the first autoattack_examples of the test
        # split's fixed random order (fixed_subset): every class, whatever the storage order.
        n = min(cfg.autoattack_examples, len(test))
        survivors = pgd_ok[:n]
        robust = survivors.clone()
        if survivors.any():
            robust[survivors] = autoattack_robust(model, x[:n][survivors], y[:n][survivors],
                                                   cfg.eval_eps_value, cfg.threat_model,
                                                   cfg.autoattack, device, cfg.seed,
                                                   cfg.eval_batch_size, progress, journal,
                                                   precision=cfg.autoattack_precision)
        out["autoattack_acc"] = _fraction(robust)
        out["autoattack"] = {"version": cfg.autoattack, "examples": n,
                             "on": "inputs PGD did not break (per-example worst case)"}
        out["pgd_acc_on_autoattack_examples"] = _fraction(survivors)
    out["per_class"] = per_class_accuracy(
        y, {"clean_acc": clean_ok, "pgd_acc": pgd_ok,
            **({"autoattack_acc": robust} if cfg.autoattack != "none" else {})}, data.classes)
    # The headline: AutoAttack when it ran (PGD alone overstates robustness too often).
    out["robust_acc"] = out.get("autoattack_acc", out["pgd_acc"])
    out["robust_attack"] = (f"AutoAttack ({cfg.autoattack})" if "autoattack_acc" in out
                            else out["pgd"])
    out["robust_examples"] = out["autoattack"]["examples"] if "autoattack" in out else len(test)
    if journal.resumed:
        out["resumed_units"] = journal.resumed  # batches recorded before an interruption
    return out


def per_class_accuracy(labels: torch.Tensor, flags: dict[str, torch.Tensor],
                       classes: list[str]) -> dict:
    """``{class name: {"examples": n, name: accuracy, ...}}`` of per-example correctness
    ``flags`` (name -> bool per input; a shorter tensor covers the first inputs, e.g. the
    AutoAttack examples, and its count is ``<name>_examples``). Classes without examples
    are left out."""
    out = {}
    for c, cname in enumerate(classes):
        row: dict = {}
        for name, ok in flags.items():
            of_class = labels[:len(ok)] == c
            n = int(of_class.sum())
            if n:
                row[name] = _fraction(ok[of_class])
                if len(ok) < len(labels):
                    row[f"{name.removesuffix('_acc')}_examples"] = n
        if row:
            out[str(cname)] = {"examples": int((labels == c).sum()), **row}
    return out


def input_tensors(dataset: Dataset, n_examples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_examples`` of ``dataset``'s fixed order as two tensors (inputs, labels)."""
    sub = fixed_subset(dataset, n_examples)
    xs, ys = zip(*make_loader(sub, 500))
    return torch.cat(xs), torch.cat(ys)


def autoattack_accuracy(model: nn.Module, dataset: Dataset, eps: float, threat_model: str = "linf",
                        version: str = "standard", n_examples: int | None = 1000,
                        device: str | torch.device = "cpu", seed: int = 0,
                        batch_size: int = 250, progress: bool = False,
                        journal: Journal | None = None) -> float:
    """Robust accuracy under AutoAttack on the first ``n_examples`` of the fixed test order.

    ``version``: ``standard`` (APGD-CE, APGD-T, FAB-T, Square); ``fast`` = APGD-CE (1
    restart, as standard) and APGD-T on the 3 most likely wrong classes (standard: 9),
    the two attacks that decide most standard-AA numbers; ``rand`` = AutoAttack's
    version for randomized defenses (APGD-CE and APGD-DLR with 20 EOT samples per step),
    e.g. R2S's random switch.

    ``journal`` (:class:`~rst_lib.utils.journal.Journal`): records each (attack, batch).
    """
    x, y = input_tensors(dataset, n_examples)
    return _fraction(autoattack_robust(model, x, y, eps, threat_model, version, device, seed,
                                        batch_size, progress, journal))


def _fraction(flags: torch.Tensor) -> float:
    """Share of True flags, exact (count / n), as the per-epoch checks compute it."""
    return int(flags.sum()) / len(flags) if len(flags) else 0.0


@torch.no_grad()
def _correct_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack, batch_size: int,
                   device, seed: int = 0, journal: Journal | None = None, progress: bool = False,
                   desc: str = "PGD") -> tuple[torch.Tensor, torch.Tensor]:
    """Per input, in one pass: classified correctly clean, and under ``attack``? (bool, CPU)

    Batch ``b`` runs under seed :func:`unit_seed` (``seed``, b) and is one unit of
    ``journal``: recorded when done, read back instead of recomputed when resumed."""
    model = model.to(device).eval()
    journal = journal or Journal(None, "")
    clean, adv = [], []
    starts = range(0, len(x), batch_size)
    prefix = desc.split()[-1].lower()
    bar = tqdm(total=len(starts), desc=desc, unit="batch", leave=False, disable=not progress,
               initial=journal.count(f"{prefix}/"))

    def run(b: int, i: int) -> list:
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        with seeded_rng(unit_seed(seed, b), device):
            ok_clean = (model(xb).argmax(1) == yb).cpu()
            ok_adv = (model(attack(xb, yb)).argmax(1) == yb).cpu()
        bar.update(1)
        return [ok_clean.int().tolist(), ok_adv.int().tolist()]

    with frozen_masks(model):
        for b, i in enumerate(starts):
            c, a = journal.run(f"{prefix}/{b}", lambda: run(b, i))
            clean.append(torch.tensor(c, dtype=torch.bool))
            adv.append(torch.tensor(a, dtype=torch.bool))
    bar.close()
    empty = torch.zeros(0, dtype=torch.bool)
    return (torch.cat(clean) if clean else empty), (torch.cat(adv) if adv else empty)


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
                                                    n_examples, device, seed, progress=progress)
    out["eps"], out["n_examples"] = eps, len(fixed_subset(dataset, n_examples))
    return out
