"""L-infinity and L2 attacks in [0, 1] pixel space, one small class per attack.

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

from ..masks.masking import frozen_masks

NORMS = ("linf", "l2")


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (t.dim() - 1))


def lp_step(grad: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    """Steepest-ascent step of size ``alpha``: sign step (L-inf) or normalized gradient (L2)."""
    if norm == "linf":
        return alpha * grad.sign()
    return alpha * grad / _per_example_norm(grad)


def project(x: torch.Tensor, delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``delta`` onto the eps-ball of ``norm`` and keep ``x + delta`` in [0, 1]."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _per_example_norm(delta)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0) - x


class Attack:
    """Base class. ``norm``: ``linf`` (sign steps, box projection) or ``l2`` (normalized
    gradient steps, projection onto the L2 ball of radius eps)."""

    def __init__(self, model: nn.Module, eps: float, eval_mode: bool = True, norm: str = "linf"):
        if eps < 0:
            raise ValueError(f"eps={eps!r} is invalid: it must be >= 0")
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r} is invalid: valid: {', '.join(NORMS)}")
        self.model, self.eps, self.eval_mode, self.norm = model, float(eps), eval_mode, norm

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

    def set_eps(self, eps: float, alpha: float | None = None) -> None:
        """Change the radius (and step) between calls: an eps warm-up during training."""
        if eps < 0:
            raise ValueError(f"eps={eps!r} is invalid: it must be >= 0")
        self.eps = float(eps)
        if alpha is not None and hasattr(self, "alpha"):
            self.alpha = float(alpha)

    # helpers shared by the subclasses
    def _input_grad(self, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor):
        delta.requires_grad_(True)
        logits = self.model(x + delta)
        loss = F.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        delta.requires_grad_(False)
        return grad, logits.detach()

    def _project(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return project(x, delta, self.eps, self.norm)

    def _step(self, grad: torch.Tensor, alpha: float) -> torch.Tensor:
        return lp_step(grad, alpha, self.norm)

    def _random_delta(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return self._project(x, torch.empty_like(x).uniform_(-self.eps, self.eps))
        # uniform in the L2 ball: random direction, radius eps * u^(1/d)
        d = x[0].numel()
        direction = torch.randn_like(x)
        radius = self.eps * torch.rand(len(x), device=x.device).pow(1.0 / d)
        return self._project(x, direction / _per_example_norm(direction)
                             * radius.view(-1, *[1] * (x.dim() - 1)))


class FGSM(Attack):
    """Fast gradient sign method; ``random_start`` gives FGSM-RS (Wong et al., 2020).

    Args:
        alpha: step size; defaults to eps (plain FGSM) or 1.25 * eps (FGSM-RS).
    """

    def __init__(self, model, eps: float, random_start: bool = False, alpha: float | None = None,
                 eval_mode: bool = True, norm: str = "linf"):
        super().__init__(model, eps, eval_mode, norm)
        self.random_start = random_start
        self.alpha = float(alpha) if alpha is not None else (1.25 * eps if random_start else eps)

    def perturb(self, x, y):
        delta = self._random_delta(x) if self.random_start else torch.zeros_like(x)
        grad, _ = self._input_grad(x, delta, y)
        return x + self._project(x, delta + self._step(grad, self.alpha))


class PGD(Attack):
    """Projected gradient descent (Madry et al., 2018), L-infinity or L2.

    Args:
        alpha: step size. steps: iterations per restart (>= 1).
        restarts: independent random starts; per example the worst case is kept: a
            misclassifying perturbation beats a non-misclassifying one, then higher loss.
        random_start: start uniformly in the eps-ball (else at x).
        early_stop: stop perturbing an example once the attacked model misclassifies it,
            checked before every step (RST's ``attack_pgd`` and ``test_trans.py``): an example
            already wrong at the random start keeps that start. The adversarial examples are
            then the least perturbed that fool the model, which matters for transfer.
    """

    def __init__(self, model, eps: float, alpha: float, steps: int = 10, restarts: int = 1,
                 random_start: bool = True, eval_mode: bool = True, norm: str = "linf",
                 early_stop: bool = False):
        super().__init__(model, eps, eval_mode, norm)
        if steps < 1 or restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got {steps}, {restarts}")
        self.alpha, self.steps, self.restarts = float(alpha), int(steps), int(restarts)
        self.random_start, self.early_stop = random_start, early_stop

    def _step_grad(self, x, delta, y) -> torch.Tensor:
        """Input gradient of one step (subclasses average it, e.g. EOT)."""
        return self._input_grad(x, delta, y)[0]

    def _early_stop_steps(self, x, delta, y) -> torch.Tensor:
        """The steps of one restart with early stop: before every step, the examples the
        model already misclassifies stop moving. In eval mode each example's outcome is
        independent of the others, so the gradient is computed for the still-correct ones
        only (a fooled example stays fooled: its delta no longer changes), which makes
        early-stop PGD cost little on a model most inputs break. In train mode BatchNorm
        sees the whole batch, and a randomized model (``stochastic``, R2S) may answer a
        fooled input correctly next time, so every step takes the whole batch."""
        compact = not self.model.training and not getattr(self.model, "stochastic", False)
        active = torch.arange(len(x), device=x.device)  # the inputs each step looks at
        for _ in range(self.steps):
            grad, logits = self._input_grad(x[active], delta[active], y[active])
            still = logits.argmax(1) == y[active]  # still correct: keep attacking these
            if not still.any():
                break
            moving = active[still]
            delta = delta.clone()
            delta[moving] = self._project(x[moving], delta[moving] + self._step(grad[still], self.alpha))
            if compact:
                active = moving
        return delta

    @torch.no_grad()
    def _outcome(self, x_adv, y) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-example loss, misclassified) of a finished restart."""
        logits = self.model(x_adv)
        return F.cross_entropy(logits, y, reduction="none"), logits.argmax(1) != y

    def perturb(self, x, y):
        best = None
        for _ in range(self.restarts):
            delta = self._random_delta(x) if self.random_start else torch.zeros_like(x)
            if self.early_stop:
                delta = self._early_stop_steps(x, delta, y)
            else:
                for _ in range(self.steps):
                    grad = self._step_grad(x, delta, y)
                    delta = self._project(x, delta + self._step(grad, self.alpha))
            if self.restarts == 1:
                return x + delta
            loss, wrong = self._outcome(x + delta, y)
            if best is None:
                best, best_loss, best_wrong = delta, loss, wrong
                continue
            better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
            best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), delta, best)
            best_loss = torch.where(better, loss, best_loss)
            best_wrong = best_wrong | wrong
        return x + best


class CarriedFGSM(Attack):
    """RBRN's fast "FGSM-RS": one signed step from a perturbation carried per example
    across epochs (an ATTA-style buffer, ``code/util/attack.py`` ``FGSM_RS`` of
    IVRL/RobustBinarySubNet), not a fresh random start every batch.

    Each training example (by its index in the training set) gets U(-eps, eps) noise on its
    first visit; every visit takes one step of ``alpha`` from the stored perturbation,
    projects it, stores it back and returns ``x + delta``. RBRN's fast preset uses
    ``alpha = eps / 2`` (4/255 at eps 8/255). Call as ``attack(x, y, index)``.

    Difference from RBRN: RBRN crops and flips inside the attacker so the stored
    perturbation follows the augmentation on a padded canvas; here it is stored in the
    frame of the image the loader delivers (identical without augmentation).
    """

    def __init__(self, model, eps: float, alpha: float, n_examples: int,
                 eval_mode: bool = False, norm: str = "linf"):
        super().__init__(model, eps, eval_mode, norm)
        self.alpha, self.n_examples = float(alpha), int(n_examples)
        self.buffer: torch.Tensor | None = None  # (n_examples, *image shape), on first use
        self.seen: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None):
        if index is None:
            raise ValueError("CarriedFGSM needs the examples' indices: attack(x, y, index)")
        self._index = index.to(x.device)
        return super().__call__(x, y)

    def perturb(self, x, y):
        idx = self._index
        if self.buffer is None or self.buffer.shape[1:] != x.shape[1:]:
            self.buffer = torch.zeros(self.n_examples, *x.shape[1:], device=x.device)
            self.seen = torch.zeros(self.n_examples, dtype=torch.bool, device=x.device)
        fresh = ~self.seen[idx]
        delta = self.buffer[idx]
        if fresh.any():
            delta[fresh] = self._random_delta(x[fresh]) if self.norm == "l2" else \
                torch.empty_like(x[fresh]).uniform_(-self.eps, self.eps)
        delta = self._project(x, delta)  # the eps may have changed (warm-up)
        grad, _ = self._input_grad(x, delta, y)
        delta = self._project(x, delta + self._step(grad, self.alpha))
        self.buffer[idx] = delta
        self.seen[idx] = True
        return x + delta


class TradesPGD(Attack):
    """TRADES inner maximization (Zhang et al., 2019): maximize KL(f(x') || f(x)).

    Starts at x + 0.001 * N(0, 1) as the reference code does. ``y`` is unused (the attack
    needs no labels) but kept for the common call signature.
    """

    def __init__(self, model, eps: float, alpha: float, steps: int = 10, eval_mode: bool = True,
                 norm: str = "linf"):
        super().__init__(model, eps, eval_mode, norm)
        self.alpha, self.steps = float(alpha), int(steps)

    def perturb(self, x, y):
        with torch.no_grad():
            p_clean = F.softmax(self.model(x), dim=1)
        delta = self._project(x, 0.001 * torch.randn_like(x))
        for _ in range(self.steps):
            delta.requires_grad_(True)
            loss = F.kl_div(F.log_softmax(self.model(x + delta), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            delta = self._project(x, delta.detach() + self._step(grad, self.alpha))
        return x + delta


def make_attack(name: str, model: nn.Module, eps: float, alpha: float | None = None,
                steps: int = 10, restarts: int = 1, eval_mode: bool = True,
                norm: str = "linf", early_stop: bool = False,
                n_examples: int | None = None) -> Attack:
    """Build an attack by name: ``fgsm``, ``fgsm_rs``, ``fgsm_carried`` (needs
    ``n_examples``), ``pgd`` or ``trades``."""
    if name == "fgsm":
        return FGSM(model, eps, eval_mode=eval_mode, norm=norm)
    if name == "fgsm_rs":
        return FGSM(model, eps, random_start=True, alpha=alpha, eval_mode=eval_mode, norm=norm)
    if name == "pgd":
        return PGD(model, eps, alpha if alpha is not None else eps / 4, steps, restarts,
                   eval_mode=eval_mode, norm=norm, early_stop=early_stop)
    if name == "fgsm_carried":
        if n_examples is None:
            raise ValueError("fgsm_carried needs n_examples (the size of the training set)")
        return CarriedFGSM(model, eps, alpha if alpha is not None else eps / 2, n_examples,
                           eval_mode=eval_mode, norm=norm)
    if name == "trades":
        return TradesPGD(model, eps, alpha if alpha is not None else eps / 4, steps,
                         eval_mode=eval_mode, norm=norm)
    raise ValueError(f"unknown attack {name!r}; valid: fgsm, fgsm_rs, fgsm_carried, pgd, trades")
