"""Random RST Switch (R2S, Fu et al., NeurIPS 2021) and an honest evaluation of it.

R2S holds several tickets found in ONE random network (e.g. at different keep ratios) and
answers each query with a randomly chosen ticket. It rests on the observation that
adversarial examples transfer poorly between such tickets (:mod:`rst_lib.analysis.transfer`).

:class:`RandomSwitch` is the switching model. ``mode="batch"`` runs one member per call
(cost: one member forward); ``mode="example"`` draws a member per example, which runs
EVERY member on the whole batch and selects per example (cost: one forward and, under
attack, one backward per member, i.e. ``len(members)`` times a single ticket). Running
each member on the full batch keeps each member's output exactly what it would be alone,
also in train mode where BatchNorm uses batch statistics. Each member keeps its own masks
and BatchNorm statistics; the members are separate modules (the frozen random weights are
not shared in memory).

Threat models of :func:`evaluate_r2s`:

(a) ``fixed_member``: PGD on one fixed member ``i``, evaluated on the switch (per member
    and averaged). This is the kind of number the R2S paper reports: attacks crafted on the
    member tickets and fed to the switching model, so the result mostly measures
    transferability between members.
(b) ``switching``: PGD directly on the switch; every PGD step sees whichever member the
    switch picks. The attacker knows the defense and uses it as a black box with gradients.
(c) ``adaptive_eot``: PGD whose gradient is averaged over ``eot_samples`` forward/backward
    passes through the switch (expectation over transformation, Athalye et al., 2018), the
    standard adaptive attack on randomized defenses.

Why (b) and (c) are needed: a randomized defense is only as robust as it is against an
attacker who knows the randomization. (a) never attacks the deployed model; its numbers
are an upper bound on robustness and can look good just because gradients of one member
point elsewhere than those of the others. Random switching makes single gradients noisy
(gradient obfuscation by randomness), which (b) suffers from and (c) averages away. Quote
the lowest of the three (``min_robust_acc``) for an honest judgment.

Randomness: the switch draws members from its own ``torch.Generator`` (seedable, so
evaluation is reproducible). :func:`evaluate_r2s` uses separate generator streams for the
switch while it is attacked and for the final evaluation of the switch on the resulting
examples, and the same PGD random start for every threat model on a batch.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from ..utils.progress import tqdm  # its notebook bars leave text, not a widget

from ..attacks.gradient import PGD
from ..utils.devices import seeded_rng
from ..engine.evaluation import count_correct
from ..masks.masking import frozen_masks
from .transfer import NamedModels, check_same_network, named_models

MODES = ("batch", "example")

# stream ids for derived seeds (evaluate_r2s)
_ATTACK_SWITCH, _EVAL_SWITCH, _RANDOM_START = 1, 2, 3


def stream_seed(seed: int, *keys: int) -> int:
    """An independent 32-bit seed for stream ``(seed, *keys)`` (numpy SeedSequence)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def _check_probs(probs: Sequence[float] | torch.Tensor | None, k: int,
                 normalize: bool) -> torch.Tensor:
    """Validated member probabilities as a float64 CPU tensor summing to 1."""
    if probs is None:
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    p = torch.as_tensor(probs, dtype=torch.float64).detach().cpu().flatten()
    if p.numel() != k:
        raise ValueError(f"got {p.numel()} probabilities for {k} members")
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"probabilities must be finite and non-negative, got {p.tolist()}")
    total = float(p.sum())
    if total <= 0:
        raise ValueError("probabilities sum to 0: at least one member needs a positive one")
    if not normalize and abs(total - 1.0) > 1e-6:
        raise ValueError(f"probabilities sum to {total:g}, not 1; pass normalize=True to divide "
                         f"them by their sum")
    return p / total


class RandomSwitch(nn.Module):
    """Answer every call with a randomly drawn member ticket (R2S).

    ``stochastic = True``: attacks do not assume an input fooled once stays fooled.

    Args:
        members: the tickets: list of models, list of (name, model) pairs or dict.
        probs: probability of each member (default uniform); non-negative, summing to 1
            (or any positive total with ``normalize=True``).
        mode: ``"batch"`` (one member per call) or ``"example"`` (one member per example;
            runs every member on the batch, see the module docstring for the cost).
        seed: seed of the switch's own generator.
        require_same_network: check that all members hold the same random weights
            (:func:`rst_lib.analysis.transfer.check_same_network`).

    Attributes:
        fixed_member: ``None`` (switching) or a member index/name that answers every call.
        last_choice: LongTensor (batch size,) of the member used for each example of the
            last call.
        generator: the ``torch.Generator`` member draws come from.
    """

    # Attacks must not assume that an input fooled once stays fooled (PGD's early stop).
    stochastic = True

    def __init__(self, members: NamedModels, probs: Sequence[float] | torch.Tensor | None = None,
                 mode: str = "batch", seed: int = 0, normalize: bool = False,
                 require_same_network: bool = True):
        super().__init__()
        pairs = named_models(members)
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        if require_same_network:
            check_same_network(pairs)
        self.names = [n for n, _ in pairs]
        self.members = nn.ModuleList([m for _, m in pairs])
        self.probs = _check_probs(probs, len(pairs), normalize)
        self.mode = mode
        self.generator = torch.Generator().manual_seed(seed)
        self._fixed: int | None = None
        self.last_choice: torch.Tensor | None = None

    def member_index(self, member: int | str) -> int:
        """Index of a member given by index or name."""
        if isinstance(member, str):
            if member not in self.names:
                raise ValueError(f"no member named {member!r}; members: {self.names}")
            return self.names.index(member)
        if not 0 <= int(member) < len(self.members):
            raise ValueError(f"member index {member} out of range for {len(self.members)} members")
        return int(member)

    @property
    def fixed_member(self) -> int | None:
        return self._fixed

    @fixed_member.setter
    def fixed_member(self, member: int | str | None) -> None:
        self._fixed = None if member is None else self.member_index(member)

    @contextmanager
    def use_member(self, member: int | str | None):
        """Within the block every call is answered by ``member`` (``None``: switching)."""
        previous = self._fixed
        self.fixed_member = member
        try:
            yield self
        finally:
            self._fixed = previous

    @contextmanager
    def using_generator(self, generator: torch.Generator):
        """Within the block member draws come from ``generator``."""
        previous = self.generator
        self.generator = generator
        try:
            yield self
        finally:
            self.generator = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self._fixed is not None or self.mode == "batch":
            i = self._fixed if self._fixed is not None else int(
                torch.multinomial(self.probs, 1, generator=self.generator))
            self.last_choice = torch.full((n,), i, dtype=torch.long)
            return self.members[i](x)
        choice = torch.multinomial(self.probs, n, replacement=True, generator=self.generator)
        self.last_choice = choice
        outs = torch.stack([m(x) for m in self.members])  # (members, batch, classes)
        rows = torch.arange(n, device=outs.device)
        return outs[choice.to(outs.device), rows]


class EOTPGD(PGD):
    """PGD with expectation over transformation, for randomized models (L-infinity).

    Same call signature and arguments as :class:`rst_lib.attacks.gradient.PGD`, plus
    ``eot_samples``: each step's gradient is the average of ``eot_samples`` forward/backward
    passes through the (random) model, then a signed step of size ``alpha`` is taken and
    projected into the eps-ball and [0, 1]. With ``restarts > 1`` the worst restart per
    example is chosen on the loss averaged over ``eot_samples`` forward passes (and
    "misclassified" judged on the averaged logits). With ``eot_samples=1`` on a
    deterministic model this is exactly :class:`~rst_lib.attacks.gradient.PGD` (same random starts
    from the global torch RNG).
    """

    def __init__(self, model, eps: float, alpha: float, steps: int = 10, restarts: int = 1,
                 random_start: bool = True, eval_mode: bool = True, eot_samples: int = 10):
        if eot_samples < 1:
            raise ValueError(f"eot_samples must be >= 1, got {eot_samples}")
        super().__init__(model, eps, alpha, steps, restarts, random_start, eval_mode)
        self.eot_samples = int(eot_samples)

    def _step_grad(self, x, delta, y) -> torch.Tensor:
        total = torch.zeros_like(x)
        for _ in range(self.eot_samples):
            total += self._input_grad(x, delta, y)[0]
        return total / self.eot_samples

    @torch.no_grad()
    def _outcome(self, x_adv, y) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss averaged over samples, misclassified under the averaged logits)."""
        logits = loss = 0.0
        for _ in range(self.eot_samples):
            out = self.model(x_adv)
            logits = logits + out
            loss = loss + F.cross_entropy(out, y, reduction="none")
        return loss / self.eot_samples, (logits / self.eot_samples).argmax(1) != y


# ------------------------------------------------------------------------- evaluation


def _switch_correct(switch: RandomSwitch, x: torch.Tensor, y: torch.Tensor, seed: int,
                    batch: int, draws: int) -> float:
    """Correct answers of the switch averaged over ``draws`` evaluation draws.

    The draws depend only on (seed, batch), so every threat model of a batch is judged
    with the same member choices, independent of the attack's stream.
    """
    g = torch.Generator().manual_seed(stream_seed(seed, _EVAL_SWITCH, batch))
    with switch.using_generator(g):
        return sum(count_correct(switch, x, y) for _ in range(draws)) / draws


def _attack_batch(attack, x, y, seed: int, batch: int, device) -> torch.Tensor:
    """Run ``attack`` with the random start of (seed, batch): equal for every threat model."""
    with seeded_rng(stream_seed(seed, _RANDOM_START, batch), device):
        return attack(x, y)


def evaluate_r2s(switch: RandomSwitch, loader, eps: float, alpha: float, steps: int,
                 device: str | torch.device = "cpu", eot_samples: int = 10, restarts: int = 1,
                 random_start: bool = True, eval_draws: int = 1, seed: int = 0,
                 progress: bool = True) -> dict:
    """Clean and robust accuracy of a random switch under the three threat models.

    Args:
        switch: the :class:`RandomSwitch` (already on ``device``; must not have a
            ``fixed_member``).
        loader: iterable of ``(x, y)`` batches.
        eps, alpha, steps, restarts, random_start: the PGD attack (L-infinity, [0, 1]).
        eot_samples: gradient samples per step of the adaptive EOT attack.
        eval_draws: the switch's accuracy on each batch is averaged over this many
            independent member draws (forward passes only; lowers the variance of
            ``mode="batch"``, where one draw decides a whole batch).
        seed: seeds the switch's attack stream, its evaluation stream and the random starts.

    Returns a dict with ``names``, ``probs``, ``mode``, ``n``, the attack settings and:
        ``clean_acc`` (the switch), ``member_clean_acc`` and ``member_whitebox_acc`` (each
        member alone, clean and under PGD on itself), ``fixed_member_acc`` (list: the
        switch on PGD examples crafted on member i), ``fixed_member_mean_acc``,
        ``fixed_member_min_acc``, ``switching_acc``, ``adaptive_eot_acc`` and
        ``min_robust_acc`` (the lowest robust accuracy of the switch over the threat models).

    Cost per batch: one PGD per member, one PGD through the switch and one PGD with
    ``eot_samples`` passes per step through the switch (each pass through the switch costs
    ``len(members)`` member passes in ``mode="example"``).
    """
    if switch.fixed_member is not None:
        raise ValueError("evaluate_r2s evaluates the switching model: set "
                         "switch.fixed_member = None first")
    if eval_draws < 1:
        raise ValueError(f"eval_draws must be >= 1, got {eval_draws}")
    switch.eval()
    k = len(switch.members)
    pgd = dict(eps=eps, alpha=alpha, steps=steps, restarts=restarts, random_start=random_start)
    member_attacks = [PGD(m, **pgd) for m in switch.members]
    switching_attack = PGD(switch, **pgd)
    eot_attack = EOTPGD(switch, **pgd, eot_samples=eot_samples)
    attack_stream = torch.Generator().manual_seed(stream_seed(seed, _ATTACK_SWITCH))
    member_clean, member_whitebox, fixed = [0] * k, [0] * k, [0.0] * k
    clean = switching = eot = 0.0
    n = 0
    with frozen_masks(switch):
        for b, (x, y) in enumerate(tqdm(loader, desc="r2s", leave=False, disable=not progress)):
            x, y = x.to(device), y.to(device)
            clean += _switch_correct(switch, x, y, seed, b, eval_draws)
            for i, (member, attack) in enumerate(zip(switch.members, member_attacks)):
                x_adv = _attack_batch(attack, x, y, seed, b, device)
                member_clean[i] += count_correct(member, x, y)
                member_whitebox[i] += count_correct(member, x_adv, y)
                fixed[i] += _switch_correct(switch, x_adv, y, seed, b, eval_draws)
            with switch.using_generator(attack_stream):
                x_switching = _attack_batch(switching_attack, x, y, seed, b, device)
                x_eot = _attack_batch(eot_attack, x, y, seed, b, device)
            switching += _switch_correct(switch, x_switching, y, seed, b, eval_draws)
            eot += _switch_correct(switch, x_eot, y, seed, b, eval_draws)
            n += len(y)
    if n == 0:
        raise ValueError("the loader yielded no examples")
    fixed_acc = [c / n for c in fixed]
    robust = {"fixed_member_min_acc": min(fixed_acc), "switching_acc": switching / n,
              "adaptive_eot_acc": eot / n}
    return {
        "names": list(switch.names), "probs": switch.probs.tolist(), "mode": switch.mode,
        "n": n, "eps": eps, "alpha": alpha, "steps": steps, "restarts": restarts,
        "eot_samples": eot_samples, "eval_draws": eval_draws, "seed": seed,
        "clean_acc": clean / n,
        "member_clean_acc": [c / n for c in member_clean],
        "member_whitebox_acc": [c / n for c in member_whitebox],
        "fixed_member_acc": fixed_acc,
        "fixed_member_mean_acc": sum(fixed_acc) / k,
        **robust,
        "min_robust_acc": min(robust.values()),
    }
