"""Collapse: a search that does not learn (loss at ln C, accuracy at chance), said with
the remedies this run does not use yet."""
from __future__ import annotations

import math

from ..config import RunConfig


class CollapseWarning(UserWarning):
    """The search predicts (almost) one class: loss stuck near ln(num_classes)."""


def is_collapsed(train_loss: float, eval_acc: float, num_classes: int) -> bool:
    """"Not learning": the training loss within 5 % of ln(C) and the evaluation accuracy
    within 5 points of chance (1/C), whatever the predictions look like. A collapse to
    near-uniform logits spreads its argmax over several classes, so the prediction
    histogram is not part of the test."""
    chance_loss = math.log(num_classes)
    return (abs(train_loss - chance_loss) < 0.05 * chance_loss
            and eval_acc < 1.0 / num_classes + 0.05)


def collapse_message(cfg: RunConfig, row: dict, num_classes: int, epochs: int) -> str:
    """Why a run is said to have collapsed, and the remedies the workbook offers that this
    run does not use yet (the likeliest first)."""
    remedies = []
    # frozen random weights with few kept: without these, activations shrink to nothing
    if cfg.norm == "none":
        remedies.append("BatchNorm layers (norm: bn)")
    if not cfg.scale_fan:
        remedies.append("weights scaled to the kept fan (scale_fan: true)")
    if cfg.train_attack != "none" and not cfg.eps_warmup_epochs:
        remedies.append("an eps warm-up (eps_warmup_epochs: 5, linear from 0)")
    if not cfg.warmup_epochs:
        remedies.append("an LR warm-up (warmup_epochs: 2)")
    if not cfg.end_with_bn:
        remedies.append("a last BatchNorm on the logits (end_with_bn: true, RBRN)")
    remedies += ["a larger keep_ratio", "a smaller lr"]
    return (f"search collapsed (not learning) for {epochs} epochs up to epoch {row['epoch']}: "
            f"training loss {row['train_loss']:.3f} ~ ln({num_classes}) = "
            f"{math.log(num_classes):.3f} and {row.get('eval_split', 'eval')} accuracy "
            f"{row['clean_acc']:.1%} ~ chance ({1 / num_classes:.1%}). "
            f"{'Stopped early (stop_on_collapse). ' if cfg.stop_on_collapse else ''}"
            f"Try: {'; '.join(remedies)}.")
