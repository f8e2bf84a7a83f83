"""Schedules over epochs: learning rate, the training attack's eps, keep ratios (RBRN's
stages, geometric, biprop's ramp), discard.

Each is a pure function of the config and the (fractional) epoch, so a resumed run
follows the same schedule as an uninterrupted one.
"""
from __future__ import annotations

import math

from ..masks import masking
from ..config import RunConfig


def lr_factor(cfg: RunConfig, epoch_progress: float) -> float:
    """Multiplier of the base LR at a (fractional) epoch.

    * ``cosine``: half a cosine from 1 to 0 over the run (over each stage of a ``staged``
      keep-ratio schedule: RBRN restarts it).
    * ``step`` / ``multistep``: times ``lr_gamma`` at each epoch in ``lr_milestones``.
    * ``cifar_piecewise``: times 0.1 at each epoch in ``lr_milestones`` (RST: 80 and 120), or
      without milestones at 50 % and 75 % of the epochs (the piecewise schedule of Madry et al.
      / Rice et al. used for CIFAR adversarial training).
    * ``constant``.
    ``warmup_epochs`` > 0 ramps linearly from 0 first (the schedule is not shifted).
    ``lr_step: epoch`` holds the LR of the epoch's start for the whole epoch, as both seeds
    (their schedulers are called once per epoch, before it); the warm-up then gives epoch e
    ``(e + 1) / warmup_epochs`` as theirs.
    """
    by_epoch = cfg.lr_step == "epoch"
    e = math.floor(epoch_progress) if by_epoch else epoch_progress
    if cfg.lr_schedule == "cosine" and cfg.keep_ratio_schedule == "staged":
        period = cfg.epochs / cfg.keep_ratio_stages  # RBRN: the cosine restarts every stage
        f = 0.5 * (1 + math.cos(math.pi * (e % period) / period))
    elif cfg.lr_schedule == "cosine":
        f = 0.5 * (1 + math.cos(math.pi * e / cfg.epochs))
    elif cfg.lr_schedule in ("step", "multistep"):
        f = cfg.lr_gamma ** sum(e >= m for m in cfg.lr_milestones)
    elif cfg.lr_schedule == "cifar_piecewise":
        milestones = cfg.lr_milestones or (0.5 * cfg.epochs, 0.75 * cfg.epochs)
        f = 0.1 ** sum(e >= m for m in milestones)
    else:
        f = 1.0
    if cfg.warmup_epochs and e < cfg.warmup_epochs:
        f *= min(1.0, (e + 1) / cfg.warmup_epochs) if by_epoch else e / cfg.warmup_epochs
    return f


def eps_factor(cfg: RunConfig, epoch_progress: float) -> float:
    """Multiplier of the inner attack's eps (and step) at a (fractional) epoch: a linear
    ramp from 0 over ``eps_warmup_epochs`` (a remedy for searches that collapse at full eps)."""
    if cfg.eps_warmup_epochs and epoch_progress < cfg.eps_warmup_epochs:
        return epoch_progress / cfg.eps_warmup_epochs
    return 1.0


def scheduled_keep_ratios(final: dict[str, float], epoch: int, warmup: int, steps: int) -> dict:
    """The ``geometric`` schedule: dense for ``warmup`` epochs, then each layer's ratio
    shrinks geometrically from 1 to its final value over ``steps`` epochs."""
    if steps <= 0:
        return dict(final)
    if epoch < warmup:
        return {k: 1.0 for k in final}
    t = min(1.0, (epoch - warmup + 1) / steps)
    return {k: r ** t for k, r in final.items()}


def staged_keep_ratios(cfg: RunConfig, sizes: dict[str, int], epoch: int) -> dict[str, float]:
    """RBRN's ``pr_scheduler.py`` (``pr_steps`` = ``keep_ratio_stages`` = S): the epochs are
    split into S equal stages; stage k (1..S) keeps ``keep_ratio ** (k / S)`` of all weights,
    re-allocated over the layers with ``adaptive_p``. One stage = the target from the start.
    (RBRN triggers stages with a float modulo, so a non-integer stage length skips later
    stages; here stage boundaries are computed exactly.)"""
    stage = min(cfg.keep_ratio_stages, int(epoch * cfg.keep_ratio_stages // cfg.epochs) + 1)
    ratio = cfg.keep_ratio ** (stage / cfg.keep_ratio_stages)
    names = list(sizes)
    return dict(zip(names, masking.allocate_keep_ratios([sizes[n] for n in names], ratio,
                                                        cfg.adaptive_p, cfg.keep_allocation)))


def biprop_keep_ratio(cfg: RunConfig, epoch: int) -> float:
    """biprop's ramp of a global ranking (``main.py``, "gradually increase pruning rate to
    avoid layer collapse"; its ``prune_rate_epoch`` is ``keep_ratio_steps`` = P): epoch e < P
    prunes ``s + (0.5 - s) (1 - e/P)^3`` of all weights, s = 1 - keep_ratio, so epoch 0 keeps
    0.5 and the kept fraction falls cubically to ``keep_ratio``, reached at epoch P; set once
    per epoch, as there (its threshold then follows the scores at every step)."""
    if epoch >= cfg.keep_ratio_steps:
        return cfg.keep_ratio
    s = 1.0 - cfg.keep_ratio
    return 1.0 - (s + (0.5 - s) * (1.0 - epoch / cfg.keep_ratio_steps) ** 3)


def discard_fraction(cfg: RunConfig, epochs_done: int) -> float:
    """RST's cumulative discard fraction after ``epochs_done`` epochs:
    ``discard_rate * (epochs_done // discard_every)``, at most 1."""
    return min(cfg.discard_rate * (epochs_done // cfg.discard_every), 1.0)


def keep_ratios_at(cfg: RunConfig, final: dict[str, float], sizes: dict[str, int],
                   epoch: int) -> dict[str, float] | None:
    """Per-layer keep ratios for ``epoch`` (0-based) under the configured schedule, or None
    when the ratios stay as built. RST's progressive discard keeps ``0.9 - discarded``
    (never below the target; RST itself goes on to 0 kept weights with its defaults)."""
    if cfg.keep_ratio_schedule == "geometric":
        return scheduled_keep_ratios(final, epoch, cfg.keep_ratio_warmup, cfg.keep_ratio_steps)
    if cfg.keep_ratio_schedule == "staged" and cfg.keep_ratio_stages > 1:
        return staged_keep_ratios(cfg, sizes, epoch)
    if cfg.keep_ratio_schedule == "biprop":  # a global budget: each layer at the ramp's ratio
        return dict(final) if epoch >= cfg.keep_ratio_steps else dict.fromkeys(
            final, biprop_keep_ratio(cfg, epoch))
    if cfg.discard_progressive:
        r = discard_fraction(cfg, epoch)
        return {k: max(0.9 - r, v) for k, v in final.items()}
    return None


def at_target_sparsity(cfg: RunConfig, epoch: int) -> bool:
    """Only epochs at the final sparsity compete for the best ticket (RBRN keeps the best
    of the last stage)."""
    if cfg.keep_ratio_schedule == "geometric":
        return epoch + 1 >= cfg.keep_ratio_warmup + cfg.keep_ratio_steps
    if cfg.keep_ratio_schedule == "staged":
        return int(epoch * cfg.keep_ratio_stages // cfg.epochs) + 1 >= cfg.keep_ratio_stages
    if cfg.keep_ratio_schedule == "biprop":
        return epoch >= cfg.keep_ratio_steps
    if cfg.discard_progressive:
        return 0.9 - discard_fraction(cfg, epoch) <= cfg.keep_ratio + 1e-12
    return True
