"""Adversarial edge-popup: search a robust ticket in a frozen random network.

Read top to bottom: :func:`search` builds data and model from a :class:`RunConfig`, then
for each epoch trains the scores (:func:`train_epoch`), evaluates clean and PGD accuracy
(:func:`evaluate`), keeps the ticket with the best robust accuracy and writes
``metrics.json`` plus a resumable ``last.pt`` into the run directory.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import masking
from .attacks import PGD, make_attack
from .config import RunConfig
from .data import DataBundle, fixed_subset, load_dataset, make_loader
from .models import RandomNetwork, build_model
from .tickets import atomic_torch_save, save_ticket


class CollapseWarning(UserWarning):
    """The search predicts (almost) one class: loss stuck near ln(num_classes)."""


def is_collapsed(train_loss: float, top_class_fraction: float, num_classes: int) -> bool:
    """Constant-prediction collapse: loss within 5 % of ln(C) and >90 % of inputs in one class."""
    chance = math.log(num_classes)
    return abs(train_loss - chance) < 0.05 * chance and top_class_fraction > 0.9


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def new_run_dir(root: str | os.PathLike, name: str) -> Path:
    """A fresh directory ``root/<name>-<timestamp>[-N]``; an old run is never reused."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = root / (f"{name}-{stamp}" + (f"-{i}" if i else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run directory under {root}")


def write_json(path: str | os.PathLike, obj) -> None:
    """Atomic JSON write (temporary file, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


# --------------------------------------------------------------------- optimization


def make_optimizer(params, cfg: RunConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(cfg: RunConfig, epoch_progress: float) -> float:
    """Multiplier of the base LR at a (fractional) epoch."""
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch_progress / cfg.epochs))
    if cfg.lr_schedule == "step":
        return cfg.lr_gamma ** sum(epoch_progress >= m for m in cfg.lr_milestones)
    return 1.0


# ----------------------------------------------------------------------- the loops


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, cfg: RunConfig,
                epoch: int, device: torch.device, progress: bool = True) -> dict:
    """One epoch of (adversarial) edge-popup on the scores; returns loss/accuracy."""
    model.train()
    attack = None
    if cfg.train_attack != "none":
        attack = make_attack(cfg.train_attack, model, cfg.eps, cfg.alpha, cfg.steps,
                             eval_mode=not cfg.attack_train_mode)
    total = correct = 0
    loss_sum = 0.0
    n_batches = len(loader)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs} train", leave=False,
               disable=not progress)
    for i, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, epoch + i / n_batches)
        if attack is not None:
            x = attack(x, y)  # masks computed once here, reused by every attack step
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, batch {i}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()  # scores change -> masks are recomputed on the next forward
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
        bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
    return {"train_loss": loss_sum / total, "train_acc": correct / total,
            "lr": optimizer.param_groups[0]["lr"]}


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, attacks: dict | None = None,
             progress: bool = True, desc: str = "eval") -> dict:
    """Accuracy on clean inputs and under each attack in ``attacks`` (name -> Attack).

    Also returns ``top_class_fraction``: the share of test inputs predicted as the most
    frequent class (near 1.0 means the model collapsed to a constant prediction).
    """
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
            binc = torch.bincount(pred, minlength=1).cpu()
            counts = binc if counts is None else _add_counts(counts, binc)
            for name, attack in attacks.items():
                x_adv = attack(x, y)
                correct[name] += (model(x_adv).argmax(1) == y).sum().item()
            total += len(y)
    out = {f"{k}_acc": v / total for k, v in correct.items()}
    out["top_class_fraction"] = counts.max().item() / total
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
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with masking.frozen_masks(model):
        for i, (x, _) in enumerate(loader):
            if i >= max_batches:
                break
            model(x.to(device))
    for m in bns:
        m.momentum = 0.1
    model.eval()


# ---------------------------------------------------------------------------- search


@dataclass
class SearchResult:
    model: RandomNetwork              # the best ticket (robust acc.; clean for natural), eval mode
    history: list[dict]
    best: dict
    run_dir: Path | None
    ticket_path: Path | None
    config: RunConfig
    data: DataBundle
    warnings: list[str] = field(default_factory=list)


def build_search(cfg: RunConfig, data: DataBundle | None = None, device=None):
    """Data, model and evaluation loader for ``cfg`` (shared by search and the controls)."""
    data = data or load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.augment)
    mcfg = cfg.model_config(data.num_classes, data.in_channels, data.image_size,
                            data.mean, data.std)
    model = build_model(mcfg).to(device or resolve_device(cfg.device))
    return data, model


def eval_attacks(model: nn.Module, cfg: RunConfig) -> dict:
    return {"pgd": PGD(model, cfg.eval_eps_value, cfg.eval_alpha_value, cfg.eval_steps,
                       cfg.eval_restarts)}


def search(cfg: RunConfig, run_dir: str | os.PathLike | None = None, progress: bool = True,
           data: DataBundle | None = None, resume: bool = False) -> SearchResult:
    """Search a ticket (adversarial edge-popup unless ``train_attack='none'``).

    Args:
        run_dir: where metrics.json, ticket.pt (best) and last.pt go; None writes nothing.
        resume: continue from ``run_dir/last.pt`` if present.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data, model = build_search(cfg, data, device)
    train_set = fixed_subset(data.train, cfg.train_examples)
    test_loader = make_loader(fixed_subset(data.test, cfg.eval_examples), cfg.eval_batch_size)
    scores = masking.score_parameters(model)
    trainable = scores if scores else [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, cfg)
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    # Adversarial search keeps the most robust epoch; natural search the most accurate one.
    select = "clean_acc" if cfg.train_attack == "none" else "pgd_acc"
    best: dict = {select: -1.0}
    notes: list[str] = []
    start_epoch = 0
    best_state = None
    if resume and run_dir is not None and (run_dir / "last.pt").exists():
        ck = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"])
        history, best, start_epoch = ck["history"], ck["best"], ck["epoch"]
        best_state = ck["best_model"]
    chance = math.log(data.num_classes)
    t0 = time.time()
    stuck = 0
    epochs = tqdm(range(start_epoch, cfg.epochs), desc=f"search {cfg.name}", disable=not progress,
                  initial=start_epoch, total=cfg.epochs)
    for epoch in epochs:
        loader = make_loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed * 100_003 + epoch)
        t_epoch = time.time()
        row = {"epoch": epoch + 1}
        row.update(train_epoch(model, loader, optimizer, cfg, epoch, device, progress))
        row.update(evaluate(model, test_loader, device, eval_attacks(model, cfg), progress))
        row["epoch_seconds"] = time.time() - t_epoch
        history.append(row)
        # Collapse: training loss at ln(C) and one class predicted for (almost) everything.
        if is_collapsed(row["train_loss"], row["top_class_fraction"], data.num_classes):
            stuck += 1
        else:
            stuck = 0
        if stuck == cfg.collapse_patience:
            msg = (f"search collapsed at epoch {epoch + 1}: training loss {row['train_loss']:.3f} "
                   f"~ ln({data.num_classes}) = {chance:.3f} and "
                   f"{row['top_class_fraction']:.0%} of test inputs get one class. Try a larger "
                   "keep_ratio, end_with_bn=True, a smaller lr, or a smaller eps.")
            notes.append(msg)
            warnings.warn(msg, CollapseWarning, stacklevel=2)
        if row[select] > best[select]:
            best = {k: row[k] for k in ("epoch", "clean_acc", "pgd_acc")}
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if run_dir is not None:
                save_ticket(model, run_dir / "ticket.pt", meta={"run": cfg.to_dict(), "best": best})
        epochs.set_postfix(clean=f"{row['clean_acc']:.3f}", pgd=f"{row['pgd_acc']:.3f}")
        if run_dir is not None:
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "rng": torch.get_rng_state(), "history": history, "best": best,
                               "epoch": epoch + 1, "best_model": best_state},
                              run_dir / "last.pt")
            write_json(run_dir / "metrics.json", _metrics(cfg, model, history, best, notes,
                                                         time.time() - t0, "running"))
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if run_dir is not None:
        write_json(run_dir / "metrics.json",
                   _metrics(cfg, model, history, best, notes, time.time() - t0, "finished"))
    return SearchResult(model, history, best, run_dir,
                        run_dir / "ticket.pt" if run_dir is not None else None, cfg, data, notes)


def _metrics(cfg, model, history, best, notes, seconds, status) -> dict:
    return {"status": status, "config": cfg.to_dict(), "model_config": model.config.to_dict(),
            "mask": masking.mask_summary(model), "history": history, "best": best,
            "warnings": notes, "search_seconds": seconds, "torch": torch.__version__,
            "threads": torch.get_num_threads()}
