"""One training step on one batch, chosen once per run by ``cfg.train_attack``.

:class:`EpochContext` is what every epoch of a run shares (the network, its optimizer, the
step recipe, the precision); :data:`BATCH_STEPS` maps each training attack to its recipe:

* :class:`NaturalStep` (``none``): cross-entropy on the clean batch (edge-popup);
* :class:`AdversarialStep` (``pgd``, ``fgsm_rs``, ``fgsm_carried``): adversarial examples of
  the inner attack, then a step on them;
* :class:`TradesStep` (``trades``): CE on clean + beta * KL(adv || clean);
* :class:`FreeStep` (``free``): each minibatch replayed ``free_repeats`` times; one backward
  gives both the step and the perturbation update (Shafahi et al., 2019).

Every recipe ends in :meth:`EpochContext.update` (finite check, backward, discard, step).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.gradient import lp_step, project
from ..config import RunConfig
from ..masks import masking
from ..utils.devices import Distributed
from .auto_precision import resolve_for_network
from .precision import autocast_context, make_scaler
from .tasks import make_train_attack
from .tuning import resolve_channels_last, to_channels_last


class BatchStep:
    """A per-batch recipe: ``step(ctx, x, y, index, eps, where) -> (loss, logits)``; it
    updates the trainable tensors itself (Free updates several times per batch)."""

    attack = None  # the inner attack, if the recipe has one

    def start_epoch(self) -> None:
        """Forget per-epoch state (Free's perturbation)."""

    def set_eps(self, eps: float, alpha: float) -> None:
        """The inner attack's budget and step at this point of the eps warm-up."""
        if self.attack is not None:
            self.attack.set_eps(eps, alpha)

    def __call__(self, ctx: "EpochContext", x, y, index, eps: float, where: tuple[int, int]):
        raise NotImplementedError


class NaturalStep(BatchStep):
    def __call__(self, ctx, x, y, index, eps, where):
        with autocast_context(ctx.cfg.precision, ctx.device):
            logits = ctx.forward_model(x)
            loss = F.cross_entropy(logits, y)
        ctx.update(loss, where)
        return loss, logits


class AdversarialStep(BatchStep):
    """PGD / FGSM-RS; with ``carried`` (``fgsm_carried``, RBRN's fast AT) each example's
    perturbation carries over between epochs, looked up by its index in the training set."""

    def __init__(self, attack, carried: bool = False):
        self.attack, self.carried = attack, carried

    def __call__(self, ctx, x, y, index, eps, where):
        with autocast_context(ctx.cfg.precision, ctx.device):  # the attack's delta stays fp32
            # masks computed once, reused by every attack step
            x_adv = self.attack(x, y, index) if self.carried else self.attack(x, y)
            logits = ctx.forward_model(x_adv)
            loss = F.cross_entropy(logits, y)
        ctx.update(loss, where)
        return loss, logits


class TradesStep(BatchStep):
    def __init__(self, attack):
        self.attack = attack

    def __call__(self, ctx, x, y, index, eps, where):
        with autocast_context(ctx.cfg.precision, ctx.device):
            x_adv = self.attack(x, y)
            # Separate passes, as the TRADES code does (BN statistics of each batch).
            # Only one goes through DDP; both gradients sum before its hooks fire.
            logits_adv = ctx.forward_model(x_adv)
            logits = ctx.model(x)  # TRADES fits and reports clean predictions
            loss = F.cross_entropy(logits, y) + ctx.cfg.trades_beta * F.kl_div(
                F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="batchmean")
        ctx.update(loss, where)
        return loss, logits


class FreeStep(BatchStep):
    """Free AT: the perturbation lives across the minibatches of an epoch."""

    def __init__(self, attack=None):
        self.delta = None

    def start_epoch(self) -> None:
        self.delta = None

    def __call__(self, ctx, x, y, index, eps, where):
        cfg = ctx.cfg
        if self.delta is None or self.delta.shape != x.shape:
            self.delta = torch.zeros_like(x)
        for _ in range(cfg.free_repeats):
            self.delta.requires_grad_(True)
            with autocast_context(cfg.precision, ctx.device):
                logits = ctx.forward_model(x + self.delta)
                loss = F.cross_entropy(logits, y)
            ctx.update(loss, where)
            grad = torch.nan_to_num(self.delta.grad, 0.0, 0.0, 0.0)  # fp16: scaled, inf
            step = lp_step(grad, eps, cfg.threat_model)
            self.delta = project(x, self.delta.detach() + step, eps, cfg.threat_model)
        return loss, logits


BATCH_STEPS: dict[str, type[BatchStep]] = {
    "pgd": AdversarialStep, "fgsm_rs": AdversarialStep, "fgsm_carried": AdversarialStep,
    "trades": TradesStep, "free": FreeStep, "none": NaturalStep}


def make_batch_step(cfg: RunConfig, attack) -> BatchStep:
    """The recipe of ``cfg.train_attack`` around its inner ``attack`` (None for free, none)."""
    recipe = BATCH_STEPS[cfg.train_attack]
    if recipe is AdversarialStep:
        return AdversarialStep(attack, carried=cfg.train_attack == "fgsm_carried")
    return recipe(attack) if recipe is not NaturalStep else NaturalStep()


@dataclass
class EpochContext:
    """What every epoch of a run shares (built once per run).

    ``forward_model`` is what the training step runs forward (the DDP wrapper and/or the
    compiled network; ``model`` itself by default); attacks and TRADES' clean pass run on
    the plain ``model``. ``notes`` collects the run's warnings (metrics.json)."""

    cfg: RunConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    step: BatchStep
    scaler: torch.amp.GradScaler
    forward_model: nn.Module
    dist: Distributed = field(default_factory=Distributed)
    channels_last: bool = False
    progress: bool = True
    notes: list[str] | None = None

    @classmethod
    def build(cls, model: nn.Module, optimizer, cfg: RunConfig, device: torch.device,
              n_examples: int, *, attack=None, scaler=None, forward_model=None, dist=None,
              progress: bool = True, notes: list[str] | None = None) -> "EpochContext":
        """``attack``: the inner attack (:func:`make_train_attack` on ``model`` for
        ``n_examples`` training examples when None). A ``fgsm_carried`` attack keeps state
        across epochs; :func:`~rst_lib.engine.training.train` builds it once per run.
        ``scaler`` (:func:`make_scaler`) scales fp16 losses and lives across epochs. A
        ``cfg`` still holding ``auto`` (a step built outside ``train``) is resolved here."""
        cfg = resolve_for_network(cfg, model, device)
        if attack is None:
            attack = make_train_attack(model, cfg, n_examples)
        return cls(cfg, model, optimizer, device, make_batch_step(cfg, attack),
                   make_scaler(cfg.precision, device) if scaler is None else scaler,
                   model if forward_model is None else forward_model, dist or Distributed(),
                   resolve_channels_last(cfg.channels_last, device), progress, notes)

    def batch_to_device(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x = batch[0].to(self.device, non_blocking=True)
        y = batch[1].to(self.device, non_blocking=True)
        return (to_channels_last(x) if self.channels_last else x), y, (
            batch[2] if len(batch) > 2 else None)

    def update(self, loss: torch.Tensor, where: tuple[int, int]) -> None:
        """A non-finite loss stops the run; then backward (an fp16 loss scaled), RST's
        discard (discarded scores get no gradient), the step (skipped by the scaler after
        an fp16 overflow); masks follow the new scores."""
        if not torch.isfinite(loss):
            epoch, batch = where
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, batch {batch}; "
                                     "lower lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.discard:
            masking.zero_discarded_grads(self.model)
        self.scaler.step(self.optimizer)
        self.scaler.update()
