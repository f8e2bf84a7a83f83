"""Robustness evaluation: clean, FGSM, PGD-k (any steps/restarts) and AutoAttack
(:mod:`rst_lib.attacks.autoattack`) on datasets, and a run's final evaluation."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from ..utils.progress import tqdm  # its notebook bars leave text, not a widget
from ..utils import progress_log

from ..masks import masking
from ..attacks.gradient import FGSM, PGD
from ..config import RunConfig
from ..data.datasets import DataBundle, EvaluationImages, evaluation_images
from ..data.outcomes import outcome_record
from ..data.loaders import make_loader
from ..utils.devices import Distributed, resolve_device, seeded_rng
from ..utils.journal import Journal, fingerprint, open_journal, unit_seed
from ..masks.masking import frozen_masks
from ..attacks.autoattack import autoattack_robust
from .auto_precision import resolve_for_model
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
    """The numbers to report: clean and PGD (``eval_*``) accuracy on the first
    ``final_examples`` of the test split's fixed random order, and AutoAttack
    (``cfg.autoattack``) on its first ``autoattack_examples``
    (:func:`~rst_lib.data.datasets.evaluation_indices`: the same images as
    :func:`autoattack_accuracy` and :func:`autoattack_versus_pgd` take for that number,
    whatever ``final_examples`` is), each also per class (:class:`ClassAccuracy`), in
    ``cfg.eval_precision`` (fp32 unless asked otherwise, whatever autocast surrounds it).
    ``subset`` and ``autoattack.subset`` record which images (size and SHA-256 of the
    indices, :func:`~rst_lib.data.datasets.subset_record`).

    Random starts come from generators seeded per batch from ``cfg.seed`` (the global RNG
    is left as it was), so every model evaluated with the same ``cfg`` meets the same attack.

    ``run_dir``: each batch's outcome (PGD, then each AutoAttack attack) is recorded in
    ``run_dir/eval-state/final_evaluation.json`` as soon as it is known; a killed
    evaluation called again with the same model and config continues where it stopped and
    gives the numbers of an uninterrupted one. Progress bars: one per attack, per batch.
    """
    device = device or resolve_device(cfg.device)
    if cfg.autoattack_precision == "auto":  # as a run resolves it (a control, 06): concrete
        cfg = dataclasses.replace(cfg, autoattack_precision=resolve_for_model(
            "auto", model, data.test[0][0][None], device, cfg.eval_batch_size))
    n_test = len(evaluation_images(data.test, cfg.final_examples, cfg.seed))
    n_aa = (len(evaluation_images(data.test, cfg.autoattack_examples, cfg.seed))
            if cfg.autoattack != "none" else 0)
    # One prefix of the split's evaluation order of the run's seed, taken once from the whole
    # split: the test examples are its first n_test, the AutoAttack examples its first n_aa
    # (PGD also runs on AutoAttack examples beyond final_examples: AutoAttack attacks what
    # PGD left).
    images = evaluation_images(data.test, max(n_test, n_aa), cfg.seed)
    # the journal belongs to these images: a journal of other inputs is never read back
    journal = open_journal(run_dir, "final_evaluation", fingerprint(
        model, {**cfg.to_dict(), "inputs": images.record()}))
    with autocast_context(cfg.eval_precision, device):
        return _final_evaluation(model, cfg, data, device, progress, journal, images, n_test, n_aa)


def _final_evaluation(model: nn.Module, cfg: RunConfig, data: DataBundle, device: torch.device,
                      progress: bool, journal: Journal, images: EvaluationImages, n_test: int,
                      n_aa: int) -> dict:
    x, y = input_tensors(images)
    clean_all, pgd_all = _correct_flags(model, x, y, eval_attacks(model, cfg)["pgd"],
                                        cfg.eval_batch_size, device, cfg.seed, journal,
                                        progress, f"final PGD-{cfg.eval_steps}")
    clean_ok, pgd_ok = clean_all[:n_test], pgd_all[:n_test]
    out = {"split": "test", "examples": n_test, "subset": images.prefix(n_test).record(),
           "clean_acc": _fraction(clean_ok), "pgd_acc": _fraction(pgd_ok),
           "pgd": f"PGD-{cfg.eval_steps}", "eps": cfg.eval_eps_value,
           "threat_model": cfg.threat_model}
    robust = None
    if cfg.autoattack != "none":
        survivors = pgd_all[:n_aa]
        robust = worst_case_flags(model, x[:n_aa], y[:n_aa], survivors, cfg.eval_eps_value,
                                  cfg.threat_model, cfg.autoattack, device, cfg.seed,
                                  cfg.eval_batch_size, progress, journal,
                                  precision=cfg.autoattack_precision)
        out["autoattack_acc"] = _fraction(robust)
        out["autoattack"] = {"version": cfg.autoattack, "examples": n_aa,
                             "search_precision": cfg.autoattack_precision,
                             "on": "inputs PGD did not break (per-example worst case)",
                             "subset": images.prefix(n_aa).record()}
        out["pgd_acc_on_autoattack_examples"] = _fraction(survivors)
    out["per_class"] = per_class_accuracy(y, clean_ok, pgd_ok, robust, data.classes)
    # The headline: AutoAttack when it ran (PGD alone overstates robustness too often).
    out["robust_acc"] = out.get("autoattack_acc", out["pgd_acc"])
    out["robust_attack"] = (f"AutoAttack ({cfg.autoattack})" if "autoattack_acc" in out
                            else out["pgd"])
    out["robust_examples"] = n_aa if robust is not None else n_test
    out["outcomes"] = outcome_record(images.indices, images.split_examples, images.seed, {
        "clean": clean_ok, "pgd": pgd_ok, **({"autoattack": robust} if robust is not None else {})})
    if journal.resumed:
        out["resumed_units"] = journal.resumed  # batches recorded before an interruption
    return out


def worst_case_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor, pgd_ok: torch.Tensor,
                     eps: float, threat_model: str, version: str, device, seed: int,
                     batch_size: int, progress: bool = False,
                     journal: Journal | None = None, precision: str = "fp32") -> torch.Tensor:
    """Per input: robust to PGD AND to AutoAttack's ``version``? AutoAttack runs only on the
    inputs PGD did not break (``pgd_ok``): an input counts as robust only if both fail (the
    per-example worst case), and no AutoAttack time goes to inputs already lost."""
    robust = pgd_ok.clone()
    precision = resolve_for_model(precision, model, x, device, batch_size)  # auto: fp32 | bf16
    if pgd_ok.any():
        robust[pgd_ok] = autoattack_robust(model, x[pgd_ok], y[pgd_ok], eps, threat_model,
                                           version, device, seed, batch_size, progress, journal,
                                           precision=precision)
    return robust


@dataclass(frozen=True)
class ClassAccuracy:
    """One class's row of a final evaluation's ``per_class`` (metrics.json): the same keys
    whatever the subset sizes, written by :func:`per_class_accuracy` and read back by
    :meth:`from_dict` (e.g. :func:`~rst_lib.workbook.notebooks.per_class_table`)."""
    examples: int                      # the class's test examples (of final_examples)
    clean_acc: float | None            # None: the class has no test example
    pgd_acc: float | None
    autoattack_examples: int           # the class's AutoAttack examples (0: AutoAttack did not run)
    autoattack_acc: float | None       # None: AutoAttack did not run, or on no input of the class

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> "ClassAccuracy":
        """A row of metrics.json, also as written before issue 26, when
        ``autoattack_examples`` was left out if AutoAttack covered every test example."""
        aa = row.get("autoattack_acc")
        default_aa_examples = row["examples"] if aa is not None else 0
        return cls(int(row["examples"]), row.get("clean_acc"), row.get("pgd_acc"),
                   int(row.get("autoattack_examples", default_aa_examples)), aa)


def per_class_accuracy(labels: torch.Tensor, clean_ok: torch.Tensor, pgd_ok: torch.Tensor,
                       robust: torch.Tensor | None, classes: list[str]) -> dict[str, dict]:
    """``{class name: ClassAccuracy row (dict)}`` of per-input correctness in input order:
    ``clean_ok`` and ``pgd_ok`` cover the first test inputs, ``robust`` (AutoAttack, per-example
    worst case; None when it did not run) the first AutoAttack inputs; ``labels`` covers
    both. Classes with neither test nor AutoAttack examples are left out."""
    out = {}
    for c, cname in enumerate(classes):
        test = labels[:len(clean_ok)] == c
        aa = labels[:len(robust)] == c if robust is not None else None
        n, n_aa = int(test.sum()), int(aa.sum()) if aa is not None else 0
        if not (n or n_aa):
            continue
        out[str(cname)] = ClassAccuracy(
            examples=n, clean_acc=_fraction(clean_ok[test]) if n else None,
            pgd_acc=_fraction(pgd_ok[test]) if n else None, autoattack_examples=n_aa,
            autoattack_acc=_fraction(robust[aa]) if n_aa else None).to_dict()
    return out


def input_tensors(images: EvaluationImages) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples of ``images`` (:func:`~rst_lib.data.datasets.evaluation_images`), in
    order, as two tensors (inputs, labels)."""
    xs, ys = zip(*make_loader(images.dataset, 500))
    return torch.cat(xs), torch.cat(ys)


def autoattack_versus_pgd(model: nn.Module, dataset: Dataset | EvaluationImages, eps: float, alpha: float,
                          threat_model: str = "linf", version: str = "fast",
                          n_examples: int | None = 1000, steps: int = 20, restarts: int = 1,
                          early_stop: bool = False, device: str | torch.device = "cpu",
                          seed: int = 0, batch_size: int = 250, progress: bool = False,
                          precision: str = "fp32") -> dict:
    """AutoAttack and PGD-``steps`` on the SAME images, the first ``n_examples`` of the
    split's fixed order (those a search with ``autoattack_examples = n_examples`` runs
    AutoAttack on), measured as :func:`final_evaluation` does: AutoAttack on the inputs
    PGD did not break (per-example worst case). For a comparison of the two, e.g. the flag
    "AutoAttack far below PGD". Returns ``examples``, ``clean_acc``, ``pgd_acc``,
    ``autoattack_acc``, ``pgd`` (its name), ``subset`` (which images) and ``outcomes``
    (per image, :mod:`rst_lib.data.outcomes`). ``seed`` also seeds the images' order
    (:func:`~rst_lib.data.datasets.evaluation_images`; or hand them as ``dataset``)."""
    device = torch.device(device)
    images = evaluation_images(dataset, n_examples, seed)
    x, y = input_tensors(images)
    precision = resolve_for_model(precision, model, x, device, batch_size)  # auto: fp32 | bf16
    attack = PGD(model, eps, alpha, steps, restarts, norm=threat_model, early_stop=early_stop)
    clean_ok, pgd_ok = _correct_flags(model, x, y, attack, batch_size, device, seed,
                                      progress=progress, desc=f"PGD-{steps}")
    robust = worst_case_flags(model, x, y, pgd_ok, eps, threat_model, version, device, seed,
                              batch_size, progress, precision=precision)
    return {"examples": len(x), "clean_acc": _fraction(clean_ok), "pgd_acc": _fraction(pgd_ok),
            "autoattack_acc": _fraction(robust), "pgd": f"PGD-{steps}", "autoattack": version,
            "autoattack_precision": precision, "subset": images.record(),
            "outcomes": outcome_record(images.indices, images.split_examples, images.seed,
                                       {"clean": clean_ok, "pgd": pgd_ok, "autoattack": robust})}


def autoattack_accuracy(model: nn.Module, dataset: Dataset | EvaluationImages, eps: float, threat_model: str = "linf",
                        version: str = "standard", n_examples: int | None = 1000,
                        device: str | torch.device = "cpu", seed: int = 0,
                        batch_size: int = 250, progress: bool = False,
                        journal: Journal | None = None, precision: str = "fp32") -> float:
    """Robust accuracy under AutoAttack on the first ``n_examples`` of the fixed order of the
    split ``dataset`` (:func:`~rst_lib.data.datasets.evaluation_indices`): the images a
    search with ``autoattack_examples = n_examples`` runs AutoAttack on. AutoAttack alone;
    :func:`autoattack_versus_pgd` gives it next to PGD on the same images.

    ``version``: ``standard`` (APGD-CE, APGD-T, FAB-T, Square); ``fast`` = APGD-CE (1
    restart, as standard) and APGD-T on the 3 most likely wrong classes (standard: 9),
    the two attacks that decide most standard-AA numbers; ``rand`` = AutoAttack's
    version for randomized defenses (APGD-CE and APGD-DLR with 20 EOT samples per step),
    e.g. R2S's random switch.

    ``journal`` (:class:`~rst_lib.utils.journal.Journal`): records each (attack, batch).
    ``seed`` also seeds the images' order (:func:`~rst_lib.data.datasets.evaluation_images`);
    :func:`autoattack_outcomes` gives the number with the record of its images.
    """
    return autoattack_outcomes(model, dataset, eps, threat_model, version, n_examples, device,
                               seed, batch_size, progress, journal, precision)["acc"]


def autoattack_outcomes(model: nn.Module, dataset: Dataset | EvaluationImages, eps: float,
                        threat_model: str = "linf", version: str = "standard",
                        n_examples: int | None = 1000, device: str | torch.device = "cpu",
                        seed: int = 0, batch_size: int = 250, progress: bool = False,
                        journal: Journal | None = None, precision: str = "fp32") -> dict:
    """:func:`autoattack_accuracy` with what it was measured on: ``acc``, ``examples``,
    ``subset`` (the images attacked, from the indices handed along with them) and
    ``outcomes`` (``autoattack``: robust per image, :mod:`rst_lib.data.outcomes`)."""
    images = evaluation_images(dataset, n_examples, seed)
    x, y = input_tensors(images)
    precision = resolve_for_model(precision, model, x, device, batch_size)  # auto: fp32 | bf16
    robust = autoattack_robust(model, x, y, eps, threat_model, version, device, seed,
                               batch_size, progress, journal, precision=precision)
    return {"acc": _fraction(robust), "examples": len(images), "subset": images.record(),
            "outcomes": outcome_record(images.indices, images.split_examples, images.seed,
                                       {"autoattack": robust})}


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

    stage = progress_log.Stage(desc, len(x))  # the run's log: how far, about how long left
    with frozen_masks(model):
        for b, i in enumerate(starts):
            fresh = not journal.done(f"{prefix}/{b}")
            c, a = journal.run(f"{prefix}/{b}", lambda: run(b, i))
            clean.append(torch.tensor(c, dtype=torch.bool))
            adv.append(torch.tensor(a, dtype=torch.bool))
            stage.advance(len(c), fresh)
    bar.close()
    stage.finish(f"{sum(map(int, map(sum, clean)))} correct, "
                 f"{sum(map(int, map(sum, adv)))} robust")
    empty = torch.zeros(0, dtype=torch.bool)
    return (torch.cat(clean) if clean else empty), (torch.cat(adv) if adv else empty)


def robustness_report(model: nn.Module, dataset: Dataset, eps: float, alpha: float,
                      threat_model: str = "linf", pgd_steps=(20,), restarts: int = 1,
                      autoattack: str = "none", n_examples: int | None = 1000,
                      device: str | torch.device = "cpu", seed: int = 0,
                      progress: bool = True) -> dict:
    """Clean, FGSM, PGD-k for each k in ``pgd_steps``, and optionally AutoAttack accuracy,
    on the first ``n_examples`` of the split's order of ``seed`` (``subset``: which images)."""
    device = torch.device(device)
    images = evaluation_images(dataset, n_examples, seed)
    loader = make_loader(images.dataset, 250)
    attacks = {"fgsm": FGSM(model, eps, norm=threat_model)}
    for k in pgd_steps:
        attacks[f"pgd{k}"] = PGD(model, eps, alpha, k, restarts, norm=threat_model)
    with seeded_rng(seed, device):
        out = evaluate(model.to(device), loader, device, attacks, progress, desc="robustness")
    if autoattack != "none":
        out["autoattack_acc"] = autoattack_accuracy(model, dataset, eps, threat_model, autoattack,
                                                    n_examples, device, seed, progress=progress)
    out["eps"], out["n_examples"], out["subset"] = eps, len(images), images.record()
    return out
