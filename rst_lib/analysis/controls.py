"""Controls that make a ticket's robustness meaningful, and a common final evaluation.

* random mask: the same random weights and keep ratio, a random top-k mask (the initial
  scores), BatchNorm statistics re-estimated on training data, no search at all;
* natural ticket: the same search without an attack (plain edge-popup);

Every model in :func:`compare_models` goes through the same
:func:`~rst_lib.engine.evaluation.final_evaluation` (same test examples, same attack random
starts, AutoAttack when the config asks for it), so the rows can be compared.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import RunConfig
from ..data.datasets import DataBundle, fixed_subset
from ..data.loaders import make_loader
from ..utils import progress_log
from ..utils.devices import resolve_device
from ..engine.evaluation import final_evaluation, recalibrate_bn
from ..models.registry import RandomNetwork
from ..engine.tasks import build_task
from ..engine.training import TrainResult, train


def random_mask_control(cfg: RunConfig, data: DataBundle) -> RandomNetwork:
    """The untrained network of ``cfg``: random top-k mask, BN recalibrated on training
    examples (never the validation or test split), eval mode."""
    device = resolve_device(cfg.device)
    _, model = build_task(cfg, data, device)
    train_part, _ = data.validation_split(cfg.val_fraction, cfg.seed)
    part = train_part if cfg.train_examples is None else fixed_subset(train_part, cfg.train_examples)
    loader = make_loader(part, cfg.batch_size,
                         shuffle=True, seed=cfg.seed, num_workers=cfg.num_workers, device=device)
    recalibrate_bn(model, loader, device)
    return model


def natural_control(cfg: RunConfig, data: DataBundle, run_dir: str | Path | None = None,
                    progress: bool = True) -> TrainResult:
    """Edge-popup without attacks (same model, seed, keep ratio and schedule)."""
    natural = cfg.replace(train_attack="none", name=f"{cfg.name or 'run'}-natural")
    with progress_log.part("natural control"):  # the run's log names what the lines are for
        return train(natural, run_dir, progress=progress, data=data)


def compare_models(models: dict[str, torch.nn.Module], cfg: RunConfig, data: DataBundle,
                   progress: bool = True) -> list[dict]:
    """One row per model: :func:`final_evaluation` with ``cfg`` (clean, PGD, AutoAttack),
    on the same ``cfg.final_examples`` test inputs."""
    device = resolve_device(cfg.device)
    rows = []
    for name, model in models.items():
        with progress_log.part(name):  # the run's log names the model its lines are about
            rows.append({"model": name, **final_evaluation(model, cfg, data, device, progress)})
    return rows
