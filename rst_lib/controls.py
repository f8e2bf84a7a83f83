"""Controls that make a ticket's robustness meaningful, and a common final evaluation.

* random mask: the same random weights and keep ratio, a random top-k mask (the initial
  scores), BatchNorm statistics re-estimated on training data, no search at all;
* natural ticket: the same search without an attack (plain edge-popup);

Every model in :func:`compare_models` is evaluated on the same test examples under the
same attack, so the numbers can be compared row by row.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .config import RunConfig
from .data import DataBundle, fixed_subset, make_loader
from .models import RandomNetwork
from .train import build_search, eval_attacks, evaluate, recalibrate_bn, resolve_device, search


def random_mask_control(cfg: RunConfig, data: DataBundle) -> RandomNetwork:
    """The untrained network of ``cfg``: random top-k mask, BN recalibrated, eval mode."""
    device = resolve_device(cfg.device)
    _, model = build_search(cfg, data, device)
    loader = make_loader(fixed_subset(data.train, cfg.train_examples), cfg.batch_size,
                         shuffle=True, seed=cfg.seed)
    recalibrate_bn(model, loader, device)
    return model


def natural_control(cfg: RunConfig, data: DataBundle, run_dir: str | Path | None = None,
                    progress: bool = True):
    """Edge-popup without attacks (same model, seed, keep ratio and schedule)."""
    natural = cfg.replace(train_attack="none", name=f"{cfg.name}-natural")
    return search(natural, run_dir, progress=progress, data=data)


def compare_models(models: dict[str, torch.nn.Module], cfg: RunConfig, data: DataBundle,
                   n_examples: int | None = None, progress: bool = True) -> list[dict]:
    """Clean and PGD accuracy of each model on the same ``n_examples`` test inputs."""
    device = resolve_device(cfg.device)
    loader = make_loader(fixed_subset(data.test, n_examples), cfg.eval_batch_size)
    rows = []
    for name, model in models.items():
        torch.manual_seed(cfg.seed)  # same random starts for every model
        res = evaluate(model.to(device), loader, device, eval_attacks(model, cfg), progress,
                       desc=f"final eval: {name}")
        rows.append({"model": name, "clean_acc": res["clean_acc"], "pgd_acc": res["pgd_acc"],
                     "examples": len(fixed_subset(data.test, n_examples))})
    return rows
