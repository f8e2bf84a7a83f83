"""L-infinity attacks in [0, 1] pixel space, one small class per attack.

Every attack is built on a model and called as ``attack(x, y) -> x_adv`` (torchattacks
style). Perturbations stay inside the eps-ball and inside [0, 1]. By default the model
is put in eval mode while it is attacked (evaluation); training loops pass
``eval_mode=False`` to attack the model as it trains (BatchNorm in train mode, as both
seeds do). Masked weights are computed once per call (:func:`masking.frozen_masks`), so
attack steps never re-sort scores or build a graph to them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .masking import frozen_masks

ATTACKS = ("fgsm", "pgd")


class Attack:
    def __init__(self, model: nn.Module, eps: float, eval_mode: bool = True):
        if eps < 0:
            raise ValueError(f"eps={eps!r} is invalid: it must be >= 0")
        self.model, self.eps, self.eval_mode = model, float(eps), eval_mode

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        if self.eval_mode:
            self.model.eval()
        try:
            with frozen_masks(self.model), torch.enable_grad():
                x_adv = self.perturb(x.detach(), y)
        finally:
            self.model.train(was_training)
        return x_adv.detach()

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    # helpers shared by the subclasses
    def _input_grad(self, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor):
        delta.requires_grad_(True)
        logits = self.model(x + delta)
        loss = F.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        delta.requires_grad_(False)
        return grad, logits.detach()

    def _project(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        delta = delta.clamp(-self.eps, self.eps)
        return (x + delta).clamp(0.0, 1.0) - x

    def _random_delta(self, x: torch.Tensor) -> torch.Tensor:
        return self._project(x, torch.empty_like(x).uniform_(-self.eps, self.eps))


class FGSM(Attack):
    """Fast gradient sign method; ``random_start`` gives FGSM-RS (Wong et al., 2020).

    Args:
        alpha: step size; defaults to eps (plain FGSM) or 1.25 * eps (FGSM-RS).
    """

    def __init__(self, model, eps: float, random_start: bool = False, alpha: float | None = None,
                 eval_mode: bool = True):
        super().__init__(model, eps, eval_mode)
        self.random_start = random_start
        self.alpha = float(alpha) if alpha is not None else (1.25 * eps if random_start else eps)

    def perturb(self, x, y):
        delta = self._random_delta(x) if self.random_start else torch.zeros_like(x)
        grad, _ = self._input_grad(x, delta, y)
        return x + self._project(x, delta + self.alpha * grad.sign())


class PGD(Attack):
    """L-infinity projected gradient descent (Madry et al., 2018).

    Args:
        alpha: step size. steps: iterations per restart (>= 1).
        restarts: independent random starts; per example the worst case is kept: a
            misclassifying perturbation beats a non-misclassifying one, then higher loss.
        random_start: start uniformly in the eps-ball (else at x).
    """

    def __init__(self, model, eps: float, alpha: float, steps: int = 10, restarts: int = 1,
                 random_start: bool = True, eval_mode: bool = True):
        super().__init__(model, eps, eval_mode)
        if steps < 1 or restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got {steps}, {restarts}")
        self.alpha, self.steps, self.restarts = float(alpha), int(steps), int(restarts)
        self.random_start = random_start

    def perturb(self, x, y):
        best = None
        for _ in range(self.restarts):
            delta = self._random_delta(x) if self.random_start else torch.zeros_like(x)
            for _ in range(self.steps):
                grad, _ = self._input_grad(x, delta, y)
                delta = self._project(x, delta + self.alpha * grad.sign())
            if self.restarts == 1:
                return x + delta
            with torch.no_grad():
                logits = self.model(x + delta)
                loss = F.cross_entropy(logits, y, reduction="none")
                wrong = logits.argmax(1) != y
            if best is None:
                best, best_loss, best_wrong = delta, loss, wrong
                continue
            better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
            best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), delta, best)
            best_loss = torch.where(better, loss, best_loss)
            best_wrong = best_wrong | wrong
        return x + best


def make_attack(name: str, model: nn.Module, eps: float, alpha: float | None = None,
                steps: int = 10, restarts: int = 1, eval_mode: bool = True) -> Attack:
    """Build an attack by name: ``fgsm``, ``fgsm_rs`` or ``pgd``."""
    if name == "fgsm":
        return FGSM(model, eps, eval_mode=eval_mode)
    if name == "fgsm_rs":
        return FGSM(model, eps, random_start=True, alpha=alpha, eval_mode=eval_mode)
    if name == "pgd":
        return PGD(model, eps, alpha if alpha is not None else eps / 4, steps, restarts,
                   eval_mode=eval_mode)
    raise ValueError(f"unknown attack {name!r}; valid: fgsm, fgsm_rs, pgd")
