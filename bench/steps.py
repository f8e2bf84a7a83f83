"""The measured work: one adversarial search step and one PGD-20 evaluation batch, in the
three versions compared by the benchmarks.

* ``ours``: the library path, exactly what ``rst_lib.engine.training.train_epoch`` / ``evaluate`` do:
  ``PGD(model, eps, alpha, steps, eval_mode=False)(x, y)`` (masks frozen for the attack),
  then forward, cross-entropy, backward and ``optimizer.step()`` on the score parameters.
* ``seed``: the seed-style baseline of :mod:`seed_style` (full sort on every forward, the
  attack back-propagates into the scores), same architecture, weights, scores and masks.
* ``dense``: ``create_model(..., keep_ratio=None)``: plain trainable weights, no masks, the
  same PGD training step updating the weights: the limit the search should approach.

Ablations (the issue's "ideas", each a single change measured against ``ours``):

* ``ours_nocache``: ours without the mask cache (top-k recomputed on every forward, attack
  steps run with the score graph but take only the input gradient);
* ``seed_topk``: seed-style with ``torch.topk`` instead of a full sort;
* ``seed_inputgrad``: seed-style whose attack takes only the input gradient
  (``torch.autograd.grad(loss, delta)``) instead of ``loss.backward()``;
* ``ours_cl`` / ``dense_cl``: ours / dense with ``channels_last`` model and inputs;
* ``ours_plaintopk``: ours with every mask's top-k done by plain ``torch.topk`` on all the
  scores instead of ``rst_lib.masks.topk.topk_mask``'s sampled threshold band;
* ``ours_floatmask``: ours with the cached mask stored as float32 (4 bytes per weight, not 1);
* ``ours_amp``: ours under ``torch.autocast`` in bf16 (CPU and CUDA; fp16 with a loss scaler
  on a GPU without bf16), i.e. ``Workload("ours", precision="bf16")``.

Any variant also takes ``precision`` (``fp32`` / ``bf16`` / ``fp16``, as the run parameter:
:func:`rst_lib.engine.precision.autocast_context` around the attack and the forward, backward
outside), ``compile`` (:class:`rst_lib.engine.tuning.CompiledNetwork`: the attack and the update
run through ``torch.compile``, masks computed eagerly) and ``channels_last`` (``auto``: on
for CUDA): the GPU table (``gpu_table.py``) is made of these.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

import rst_lib
from rst_lib.masks import masking
from rst_lib.masks import inits, topk
from rst_lib.attacks.gradient import PGD
from rst_lib.engine.evaluation import evaluate
from rst_lib.engine.precision import autocast_context, make_scaler
from rst_lib.engine.tuning import CompiledNetwork, resolve_channels_last

import seed_style

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2471, 0.2435, 0.2616]
EPS = 8 / 255
ALPHA = 2 / 255
EVAL_ALPHA = 2 / 255

VARIANTS = ("ours", "seed", "dense", "ours_nocache", "seed_topk", "seed_inputgrad", "ours_cl",
            "dense_cl", "ours_plaintopk", "ours_floatmask", "ours_amp")


def build_ours(model_name: str, keep_ratio: float | None, width: float = 1.0, seed: int = 0):
    return rst_lib.create_model(model_name, 10, 3, image_size=32, keep_ratio=keep_ratio,
                                width=width, mean=CIFAR_MEAN, std=CIFAR_STD, seed=seed)


def make_batch(batch: int, seed: int = 123):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return x, y


# ----------------------------------------------------------------------- ablation helpers


@contextlib.contextmanager
def no_mask_cache():
    """Inside the block every ``TopKMask.mask()`` recomputes top-k (no cache reuse) and
    ``frozen_masks`` does not freeze anything: every forward recomputes every mask."""
    orig_mask = masking.TopKMask.mask
    orig_frozen = masking.frozen_masks

    def mask(self):
        self._mask = None
        return orig_mask(self)

    @contextlib.contextmanager
    def frozen(model):
        yield

    masking.TopKMask.mask = mask
    rst_lib.attacks.gradient.frozen_masks = masking.frozen_masks = frozen
    try:
        yield
    finally:
        masking.TopKMask.mask = orig_mask
        rst_lib.attacks.gradient.frozen_masks = masking.frozen_masks = orig_frozen


class TopKSubnet(torch.autograd.Function):
    """GetSubnet with ``torch.topk`` on the flat scores instead of a full sort."""

    @staticmethod
    def forward(ctx, scores, k):
        flat = scores.flatten()
        out = torch.zeros_like(flat)
        out[torch.topk(flat, k, sorted=False).indices] = 1
        return out.view_as(scores)

    @staticmethod
    def backward(ctx, g):
        return g, None


@contextlib.contextmanager
def plain_topk_masks():
    """rst_lib masks computed with plain ``torch.topk`` on all scores instead of
    ``topk.topk_mask``'s sampled threshold band (monkeypatch local to the benchmark)."""
    orig = topk.FAST_TOPK_MIN
    topk.FAST_TOPK_MIN = 1 << 62
    try:
        yield
    finally:
        topk.FAST_TOPK_MIN = orig


@contextlib.contextmanager
def float_mask_cache():
    """rst_lib's masks cached as float32 0/1 tensors (4 bytes per weight, as before) instead
    of bool, and applied by multiplication (monkeypatch, bench-local)."""
    orig_mask, orig_apply = masking.TopKMask.mask, masking.apply_mask

    def mask(self):
        m = orig_mask(self)
        if m.dtype == torch.bool:
            m = m.to(self.scores.dtype)
            self._mask = m  # the cache key is unchanged: later calls return the float mask
        return m

    masking.TopKMask.mask = mask
    masking.apply_mask = lambda weight, m: weight * m
    try:
        yield
    finally:
        masking.TopKMask.mask, masking.apply_mask = orig_mask, orig_apply


@contextlib.contextmanager
def seed_with_topk():
    orig = seed_style.GetSubnet.apply
    seed_style.GetSubnet.apply = TopKSubnet.apply
    try:
        yield
    finally:
        seed_style.GetSubnet.apply = orig


def seed_pgd_inputgrad(model, x, y, eps, alpha, steps, eval_mode=True):
    """Seed-style PGD taking only the input gradient (no backward into the scores)."""
    was_training = model.training
    if eval_mode:
        model.eval()
    try:
        delta = torch.empty_like(x).uniform_(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                d = (delta + alpha * grad.sign()).clamp(-eps, eps)
                delta = (x + d).clamp(0, 1) - x
    finally:
        model.train(was_training)
    return (x + delta).detach()


# ------------------------------------------------------------------------- the workloads


class Workload:
    """A model + optimizer + fixed batch for one variant; ``search_step`` / ``eval_batch``.

    Args:
        variant: one of :data:`VARIANTS`.
        model_name, batch, keep_ratio, width: the network (CIFAR-shaped: 3x32x32, 10 classes).
        ticket_path: save the masked model as a ticket there and evaluate the loaded ticket
            (``ours``), as a found ticket is evaluated; the seed-style model keeps the scores.
        device: ``cpu`` or ``cuda``; ``ours_amp`` is ours in bf16 (fp16 on a GPU without bf16).
        precision, compile, channels_last: as the run parameters of these names.
    """

    def __init__(self, variant: str, model_name: str, batch: int, keep_ratio: float = 0.05,
                 width: float = 1.0, ticket_path: str | None = None, device: str = "cpu",
                 precision: str = "fp32", compile: bool = False,
                 channels_last: bool | str = False):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
        self.variant = variant
        self.device = torch.device(device)
        torch.manual_seed(0)
        if variant.startswith("dense"):
            model = build_ours(model_name, None, width)
            params = [p for p in model.parameters() if p.requires_grad]
        else:
            model = build_ours(model_name, keep_ratio, width)
            seed_style.untie_scores_(model)
            ticket = None
            if ticket_path is not None:
                rst_lib.save_ticket(model, ticket_path)
                ticket = rst_lib.load_ticket(ticket_path)
            if variant.startswith("seed"):
                model = seed_style.to_seed_style(model)  # the real continuous scores
                params = seed_style.seed_score_parameters(model)
            else:
                if ticket is not None:
                    model = ticket  # a ticket as found and saved: masks from the file
                params = masking.score_parameters(model)
        self.cl = variant in ("ours_cl", "dense_cl") or resolve_channels_last(channels_last,
                                                                              self.device)
        model = model.to(self.device)
        if self.cl:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.net = CompiledNetwork(model) if compile else model  # what attacks and steps call
        self.opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
        x, y = make_batch(batch)
        self.x, self.y = x.to(self.device), y.to(self.device)
        if self.cl:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        if variant == "ours_amp":
            precision = ("fp16" if self.device.type == "cuda" and not torch.cuda.is_bf16_supported()
                         else "bf16")
        self.precision = precision
        self.scaler = make_scaler(precision, self.device)

    @property
    def compiled(self) -> bool | None:
        """True when running compiled, False after a fallback to eager, None if not asked."""
        return self.net.compiled if isinstance(self.net, CompiledNetwork) else None

    def _ctx(self):
        stack = contextlib.ExitStack()
        if self.variant == "ours_nocache":
            stack.enter_context(no_mask_cache())
        if self.variant == "seed_topk":
            stack.enter_context(seed_with_topk())
        if self.variant == "ours_plaintopk":
            stack.enter_context(plain_topk_masks())
        if self.variant == "ours_floatmask":
            stack.enter_context(float_mask_cache())
        if self.precision != "fp32":
            stack.enter_context(autocast_context(self.precision, self.device))
        return stack

    def _attack(self, steps: int, eval_mode: bool, alpha: float):
        m, x, y = self.net, self.x, self.y
        if self.variant in ("seed", "seed_topk"):
            return seed_style.seed_pgd(m, x, y, EPS, alpha, steps, eval_mode=eval_mode)
        if self.variant == "seed_inputgrad":
            return seed_pgd_inputgrad(m, x, y, EPS, alpha, steps, eval_mode=eval_mode)
        return PGD(m, EPS, alpha, steps=steps, eval_mode=eval_mode)(x, y)

    def search_step(self, steps: int = 10) -> float:
        """PGD-``steps`` inner attack (BN in train mode) + one optimizer step; the loss.

        ``ours``/``dense`` do what ``rst_lib.engine.training.train_epoch`` does for one batch."""
        self.model.train()
        with self._ctx():
            x_adv = self._attack(steps, eval_mode=False, alpha=ALPHA)
            logits = self.net(x_adv)
            loss = F.cross_entropy(logits.float(), self.y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # fp16: scaled; otherwise loss.backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss.item()

    def eval_batch(self, steps: int = 20) -> float:
        """Clean + PGD-``steps`` accuracy of the batch (eval mode); returns the robust accuracy.

        ``ours`` is ``rst_lib.engine.evaluation.evaluate`` (masks frozen once for the whole batch)."""
        self.model.eval()
        with self._ctx():
            if not self.variant.startswith("seed"):
                out = evaluate(self.model, [(self.x, self.y)], self.device,
                               {"pgd": PGD(self.model, EPS, EVAL_ALPHA, steps)}, progress=False)
                return out["pgd_acc"]
            with torch.no_grad():
                (self.model(self.x).argmax(1) == self.y).float().mean().item()
            x_adv = self._attack(steps, eval_mode=True, alpha=EVAL_ALPHA)
            with torch.no_grad():
                acc = (self.model(x_adv).argmax(1) == self.y).float().mean().item()
        self.opt.zero_grad(set_to_none=True)  # the seed attack left score gradients behind
        return acc

    def clean_forward(self, _=None) -> float:
        """One clean eval-mode forward (masks frozen): the cost a reused clean pass saves."""
        self.model.eval()
        with torch.no_grad(), masking.frozen_masks(self.model):
            return (self.model(self.x).argmax(1) == self.y).float().mean().item()
