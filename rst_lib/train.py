"""Adversarial edge-popup: search a robust ticket in a frozen random network.

Read top to bottom: :func:`search` builds data and model from a :class:`RunConfig`, then
for each epoch trains the scores (:func:`train_epoch`), evaluates clean and PGD accuracy
(:func:`evaluate`), keeps the ticket with the best robust accuracy and writes
``metrics.json`` plus a resumable ``last.pt`` into the run directory.
"""
from __future__ import annotations

import atexit
import dataclasses
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
from .attacks import PGD, lp_step, make_attack, project
from .config import ConfigError, RunConfig
from .data import DataBundle, fixed_subset, load_dataset, make_loader
from .models import RandomNetwork, build_model
from .tickets import atomic_torch_save, load_ticket, save_ticket


class CollapseWarning(UserWarning):
    """The search predicts (almost) one class: loss stuck near ln(num_classes)."""


class LossJumpWarning(UserWarning):
    """A batch loss jumped far above its running mean (debug mode)."""


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a resumable ``last.pt`` (tensors and plain containers only)."""
    import pickle
    import zipfile
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path} was refused: it holds objects other than tensors and plain "
                         "containers, which could run code when loaded") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path} is truncated or corrupted ({type(e).__name__}); delete it to "
                         "restart the run, or resume from a copy") from None
    missing = {"model", "optimizer", "rng", "history", "best", "epoch"} - set(ck)
    if missing:
        raise ValueError(f"{path} is not a search checkpoint (missing {sorted(missing)})")
    return ck


def is_collapsed(train_loss: float, eval_acc: float, num_classes: int) -> bool:
    """"Not learning": the training loss within 5 % of ln(C) and the evaluation accuracy
    within 5 points of chance (1/C), whatever the predictions look like. A collapse to
    near-uniform logits spreads its argmax over several classes, so the prediction
    histogram is not part of the test."""
    chance_loss = math.log(num_classes)
    return (abs(train_loss - chance_loss) < 0.05 * chance_loss
            and eval_acc < 1.0 / num_classes + 0.05)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")  # torchrun
    return torch.device(device)


@dataclass
class Distributed:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when not distributed)."""
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float] | torch.Tensor) -> torch.Tensor:
        """Sum a vector over all ranks (identity with one process)."""
        t = torch.as_tensor(values, dtype=torch.float64)
        if self.world_size > 1:
            import torch.distributed as dist
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        """Wait for every rank (no-op with one process)."""
        if self.world_size > 1:
            import torch.distributed as dist
            dist.barrier()


def setup_distributed(device: torch.device) -> Distributed:
    """Join the process group that ``torchrun --nproc_per_node=N`` describes (env vars);
    gloo on CPU, nccl on CUDA. Without WORLD_SIZE > 1 this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # Leave the group before the interpreter tears down: a process exiting with a live
        # gloo group can abort ("terminate called without an active exception").
        atexit.register(_leave_process_group)
    return Distributed(dist.get_rank(), dist.get_world_size())


def _leave_process_group() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


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
    """Multiplier of the base LR at a (fractional) epoch.

    * ``cosine``: half a cosine from 1 to 0 over the run (over each stage of a ``staged``
      keep-ratio schedule: RBRN restarts it).
    * ``step`` / ``multistep``: times ``lr_gamma`` at each epoch in ``lr_milestones``.
    * ``cifar_piecewise``: times 0.1 at 50 % and again at 75 % of the epochs (the piecewise
      schedule of Madry et al. / Rice et al. used for CIFAR adversarial training).
    * ``constant``.
    ``warmup_epochs`` > 0 ramps linearly from 0 first (the schedule is not shifted).
    """
    e = epoch_progress
    if cfg.lr_schedule == "cosine" and cfg.keep_ratio_schedule == "staged":
        period = cfg.epochs / cfg.keep_ratio_stages  # RBRN: the cosine restarts every stage
        f = 0.5 * (1 + math.cos(math.pi * (e % period) / period))
    elif cfg.lr_schedule == "cosine":
        f = 0.5 * (1 + math.cos(math.pi * e / cfg.epochs))
    elif cfg.lr_schedule in ("step", "multistep"):
        f = cfg.lr_gamma ** sum(e >= m for m in cfg.lr_milestones)
    elif cfg.lr_schedule == "cifar_piecewise":
        f = 0.1 ** ((e >= 0.5 * cfg.epochs) + (e >= 0.75 * cfg.epochs))
    else:
        f = 1.0
    if cfg.warmup_epochs and e < cfg.warmup_epochs:
        f *= e / cfg.warmup_epochs
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
                                                        cfg.adaptive_p)))


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
    if cfg.discard_progressive:
        return 0.9 - discard_fraction(cfg, epoch) <= cfg.keep_ratio + 1e-12
    return True


def make_train_attack(model: nn.Module, cfg: RunConfig, n_examples: int):
    """The inner attack of ``cfg.train_attack`` (None for ``free`` and ``none``).

    BatchNorm mode (``attack_train_mode`` None): train mode for PGD / FGSM as both seeds do,
    eval mode for TRADES (RBRN's ``TradesKL`` and the TRADES code call ``model.eval()``)."""
    if cfg.train_attack in ("free", "none"):
        return None
    train_mode = (cfg.train_attack != "trades" if cfg.attack_train_mode is None
                  else cfg.attack_train_mode)
    return make_attack(cfg.train_attack, model, cfg.eps, cfg.alpha, cfg.steps,
                       eval_mode=not train_mode, norm=cfg.threat_model, n_examples=n_examples)


# ----------------------------------------------------------------------- the loops


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, cfg: RunConfig,
                epoch: int, device: torch.device, progress: bool = True,
                notes: list[str] | None = None, forward_model: nn.Module | None = None,
                dist: Distributed | None = None, attack=None) -> dict:
    """One epoch on the trainable tensors (scores for a search, weights for finetuning).

    Inner attacks: ``pgd``, ``fgsm_rs`` (adversarial examples, then a step on them),
    ``trades`` (CE on clean + beta * KL(adv || clean)), ``free`` (each minibatch replayed
    ``free_repeats`` times; one backward gives both the step and the perturbation update,
    Shafahi et al., 2019), ``none`` (natural edge-popup / training).

    A non-finite loss stops the run (FloatingPointError naming epoch and batch). With
    ``cfg.loss_jump_factor`` set (RBRN's debug mode), a batch loss above that factor times
    the running mean is reported as a warning and appended to ``notes``.

    Distributed: ``forward_model`` is the DDP wrapper (it averages the gradients of the
    training step); attacks run on the plain ``model`` of each rank's shard; the returned
    loss and accuracy are reduced over all ranks.

    ``attack``: the inner attack (:func:`make_train_attack`; built here when None). A
    ``fgsm_carried`` attack keeps state across epochs, so :func:`search` builds it once;
    its loader yields (x, y, index).
    """
    running = None
    dist = dist or Distributed()
    net = forward_model if forward_model is not None else model
    model.train()
    if attack is None:
        attack = make_train_attack(model, cfg, len(loader.dataset))
    total = correct = 0
    loss_sum = 0.0
    n_batches = len(loader)
    free_delta = None
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs} train", leave=False,
               disable=not progress)
    for i, batch in enumerate(bar):
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, epoch + i / n_batches)
        eps = cfg.eps * eps_factor(cfg, epoch + i / n_batches)
        if attack is not None:
            attack.set_eps(eps, cfg.alpha * eps / cfg.eps if cfg.eps else cfg.alpha)
        if cfg.train_attack == "free":
            if free_delta is None or free_delta.shape != x.shape:
                free_delta = torch.zeros_like(x)
            for _ in range(cfg.free_repeats):
                free_delta.requires_grad_(True)
                logits = net(x + free_delta)
                loss = F.cross_entropy(logits, y)
                _check_finite(loss, epoch, i)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.discard:
                    masking.zero_discarded_grads(model)
                optimizer.step()
                step = lp_step(free_delta.grad, eps, cfg.threat_model)
                free_delta = project(x, free_delta.detach() + step, eps, cfg.threat_model)
        else:
            if attack is None:
                x_in = x
            elif cfg.train_attack == "fgsm_carried":
                x_in = attack(x, y, batch[2])  # each example's perturbation carries over
            else:
                x_in = attack(x, y)  # masks computed once, reused by every attack step
            if cfg.train_attack == "trades":
                # Separate passes, as the TRADES code does (BN statistics of each batch). Only
                # one goes through DDP; both gradients sum before its hooks fire.
                logits_adv = net(x_in)
                logits = model(x)  # TRADES fits and reports clean predictions
                loss = F.cross_entropy(logits, y) + cfg.trades_beta * F.kl_div(
                    F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="batchmean")
            else:
                logits = net(x_in)
                loss = F.cross_entropy(logits, y)
            _check_finite(loss, epoch, i)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.discard:
                masking.zero_discarded_grads(model)  # RST: discarded scores get no gradient
            optimizer.step()  # scores change -> masks are recomputed on the next forward
        value = loss.item()
        if cfg.loss_jump_factor and running is not None and value > cfg.loss_jump_factor * running:
            msg = (f"loss jump at epoch {epoch + 1}, batch {i}: {value:.4f} after a running mean "
                   f"of {running:.4f}")
            warnings.warn(msg, LossJumpWarning, stacklevel=2)
            if notes is not None:
                notes.append(msg)
        running = value if running is None else 0.9 * running + 0.1 * value
        loss_sum += value * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
        bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
    loss_sum, correct, total = dist.sum([loss_sum, correct, total]).tolist()
    return {"train_loss": loss_sum / total, "train_acc": correct / total,
            "lr": optimizer.param_groups[0]["lr"]}


def _check_finite(loss: torch.Tensor, epoch: int, batch: int) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, batch {batch}; "
                                 "lower lr or check the data")


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, attacks: dict | None = None,
             progress: bool = True, desc: str = "eval", dist: Distributed | None = None,
             num_classes: int | None = None) -> dict:
    """Accuracy on clean inputs and under each attack in ``attacks`` (name -> Attack).

    Also returns ``top_class_fraction``: the share of test inputs predicted as the most
    frequent class (near 1.0 means the model collapsed to a constant prediction).
    Distributed: each rank evaluates its shard of ``loader``; counts are summed over ranks.
    """
    dist = dist or Distributed()
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
            binc = torch.bincount(pred, minlength=num_classes or 1).cpu()
            counts = binc if counts is None else _add_counts(counts, binc)
            for name, attack in attacks.items():
                x_adv = attack(x, y)
                correct[name] += (model(x_adv).argmax(1) == y).sum().item()
            total += len(y)
    names = list(correct)
    summed = dist.sum([correct[k] for k in names] + [total] + counts.tolist())
    total = summed[len(names)].item()
    out = {f"{k}_acc": summed[i].item() / total for i, k in enumerate(names)}
    out["top_class_fraction"] = summed[len(names) + 1:].max().item() / total
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
    model: RandomNetwork              # the best model (robust acc.; clean if no attack), eval mode
    history: list[dict]
    best: dict
    run_dir: Path | None
    ticket_path: Path | None
    config: RunConfig
    data: DataBundle
    warnings: list[str] = field(default_factory=list)
    final: dict | None = None         # test-split numbers of the best model (final_evaluation)
    stopped: dict | None = None       # why the run stopped early (collapse), else None


def load_dense_weights(model: nn.Module, path: str | os.PathLike) -> int:
    """Copy trained conv/linear weights (a ticket of a dense run, or a plain state_dict
    saved with torch.save) into ``model``'s frozen weights: robust *trained* tickets are then
    searched inside a trained network (RST's RTT). Returns the number of layers loaded."""
    from .tickets import TicketError, read_ticket
    try:
        state = read_ticket(path)["state"]
    except TicketError:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
            raise TicketError(f"pretrained={str(path)!r} is neither a ticket nor a plain "
                              f"state_dict of tensors ({type(e).__name__})") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise TicketError(f"pretrained={str(path)!r} holds no state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    loaded = 0
    for name, layer in model.named_modules():
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            continue
        tensor = state.get(f"{name}.weight", state.get(f"{name}.parametrizations.weight.original"))
        if tensor is None:
            continue
        target = masking.raw_weight(layer)
        if tensor.shape != target.shape:
            raise TicketError(f"pretrained weight {name} has shape {tuple(tensor.shape)}, the "
                              f"model needs {tuple(target.shape)}: different architecture?")
        with torch.no_grad():
            target.copy_(tensor)
        loaded += 1
    if loaded == 0:
        raise TicketError(f"pretrained={str(path)!r}: no conv/linear weight matches the model")
    return loaded


def build_search(cfg: RunConfig, data: DataBundle | None = None, device=None):
    """Data and the model ``cfg.task`` trains (shared by the trainers and the controls).

    * ``search``: masked random network (weights from ``pretrained`` if given); scores train.
    * ``finetune``: the ticket's mask fixed, its inherited weights train.
    * ``finetune_reinit``: the ticket's mask fixed, weights re-drawn with ``finetune_init``
      (RST's ``--ft_init``, default ``kaiming_normal``; ``same``: the ticket's own scheme)
      from the ticket's seed + 1 (a different random network), then trained.
    * ``finetune_full``: the ticket's masked weights as a dense network, all weights train.
    * ``dense``: the dense network, all weights train (adversarial training baseline).
    * ``bnn``: dense binary weights (sign of trained latent weights; RBRN's BNN baseline).
    """
    data = data or load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.augment)
    device = device or resolve_device(cfg.device)
    mcfg = cfg.model_config(data.num_classes, data.in_channels, data.image_size,
                            data.mean, data.std)
    if cfg.task in ("dense", "bnn"):
        mcfg = dataclasses.replace(mcfg, keep_ratio=None, bnn=cfg.task == "bnn")
        return data, build_model(mcfg).to(device)
    if cfg.task == "search":
        model = build_model(mcfg)
        if cfg.pretrained:
            load_dense_weights(model, cfg.pretrained)
        return data, model.to(device)
    ticket = load_ticket(cfg.ticket)
    t = ticket.config
    if (t.num_classes, t.in_channels) != (data.num_classes, data.in_channels):
        raise ConfigError(f"ticket {cfg.ticket!r} was found for {t.num_classes} classes and "
                          f"{t.in_channels} channels; {cfg.dataset} has {data.num_classes} and "
                          f"{data.in_channels}")
    if cfg.task == "finetune_full":
        model = build_model(dataclasses.replace(t, keep_ratio=None))
        with torch.no_grad():
            for (_, src), (_, dst) in zip(_conv_linear(ticket), _conv_linear(model)):
                masking.raw_weight(dst).copy_(src.weight)  # masked weights, now all trainable
        model.load_state_dict({k: v for k, v in ticket.state_dict().items()
                               if "running_" in k or "num_batches" in k}, strict=False)
        return data, model.to(device)
    if cfg.task == "finetune_reinit":
        masks = masking.get_masks(ticket)
        init = t.weight_init if cfg.finetune_init == "same" else cfg.finetune_init
        ticket = build_model(dataclasses.replace(t, seed=t.seed + 1, weight_init=init))
        masking.set_masks(ticket, masks)
    for _, layer in masking.masked_layers(ticket):
        masking.get_mask_param(layer).scores.requires_grad_(False)  # the mask stays fixed
        masking.raw_weight(layer).requires_grad_(True)
    return data, ticket.train().to(device)


def _conv_linear(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def eval_attacks(model: nn.Module, cfg: RunConfig) -> dict:
    return {"pgd": PGD(model, cfg.eval_eps_value, cfg.eval_alpha_value, cfg.eval_steps,
                       cfg.eval_restarts, norm=cfg.threat_model, early_stop=cfg.eval_early_stop)}


def search(cfg: RunConfig, run_dir: str | os.PathLike | None = None, progress: bool = True,
           data: DataBundle | None = None, resume: bool = False) -> SearchResult:
    """Run ``cfg.task`` (a ticket search by default; see :func:`build_search`).

    Each epoch: train, evaluate clean and PGD accuracy on the validation split (``val_fraction``
    of the training set, held out), keep the best model (robust accuracy; clean accuracy when
    ``train_attack='none'``) as ``ticket.pt``, write ``metrics.json`` and a resumable
    ``last.pt``. The test split is read only once, after the last epoch, by
    :func:`final_evaluation` of the best model (clean, PGD and ``cfg.autoattack``): those are
    the numbers to report. With ``val_fraction=0`` epochs are chosen on the test split (as
    RST and HYDRA do), which inflates the final numbers; metrics.json says so.

    A run whose training loss sits at ln(C) with chance accuracy for ``collapse_patience``
    epochs has collapsed: a :class:`CollapseWarning` names the remedies, and with
    ``stop_on_collapse`` the run stops there (metrics.json: ``stopped``).

    Args:
        run_dir: where metrics.json, ticket.pt (best) and last.pt go; None writes nothing.
        resume: continue from ``run_dir/last.pt`` if present.
    """
    cfg.validate()
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None and not resume and any(
            (run_dir / f).exists() for f in ("metrics.json", "last.pt", "ticket.pt")):
        raise FileExistsError(f"{run_dir} already holds a run; it is never overwritten. Pass "
                              "resume=True to continue it, or use a new directory "
                              "(rst_lib.train.new_run_dir)")
    device = resolve_device(cfg.device)
    dist = setup_distributed(device)
    if cfg.batch_size % dist.world_size:
        raise ConfigError(f"batch_size={cfg.batch_size} is the global batch: it must be divisible "
                          f"by the number of processes ({dist.world_size})")
    torch.manual_seed(cfg.seed)
    data, model = build_search(cfg, data, device)
    if cfg.channels_last:  # conv layers pick NHWC kernels from the weights' layout
        model = model.to(memory_format=torch.channels_last)
    train_part, val_part = data.validation_split(cfg.val_fraction, cfg.seed)
    train_set = fixed_subset(train_part, cfg.train_examples)
    # Epochs are compared on held-out training examples; the test split waits for the end.
    select_split = "val" if val_part is not None else "test"
    select_set = fixed_subset(val_part if val_part is not None else data.test, cfg.eval_examples)
    select_loader = make_loader(select_set, max(1, cfg.eval_batch_size // dist.world_size),
                                rank=dist.rank, world_size=dist.world_size)
    optimizer = make_optimizer(trainable_parameters(model), cfg)
    final_ratios = masking.keep_ratios(model)
    layer_sizes = {n: masking.raw_weight(m).numel() for n, m in masking.masked_layers(model)}
    train_attack = make_train_attack(model, cfg, len(train_set))
    forward_model = model
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # global-batch BN statistics
        forward_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    writer = run_dir if dist.main else None  # only rank 0 writes files
    if writer is not None:
        writer.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    # Adversarial training keeps the most robust epoch; natural training the most accurate.
    # Ties (e.g. several epochs at 0 % robust accuracy early on) go to the better other metric.
    select = "clean_acc" if cfg.train_attack == "none" else "pgd_acc"
    tiebreak = "pgd_acc" if select == "clean_acc" else "clean_acc"

    def merit(r: dict) -> tuple[float, float]:
        return r.get(select, -1.0), r.get(tiebreak, -1.0)

    best: dict = {select: -1.0}
    notes: list[str] = []
    stopped = None
    start_epoch = 0
    best_state = None
    if select_split == "test":
        notes.append("val_fraction=0: the best epoch was chosen on the test split, which "
                     "inflates the final test numbers")
    if resume and run_dir is not None and (run_dir / "last.pt").exists():
        ck = load_checkpoint(run_dir / "last.pt")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"])
        history, best, start_epoch = ck["history"], ck["best"], ck["epoch"]
        notes = ck.get("notes", [])
        best_state = ck["best_model"]
        stopped = ck.get("stopped")
    t0 = time.time()
    stuck = 0
    epochs = tqdm(range(start_epoch, cfg.epochs if stopped is None else start_epoch),
                  desc=cfg.name, unit="epoch", disable=not (progress and dist.main),
                  initial=start_epoch, total=cfg.epochs)
    for epoch in epochs:
        ratios = keep_ratios_at(cfg, final_ratios, layer_sizes, epoch)
        if ratios is not None:
            masking.set_keep_ratios(model, ratios)
        loader = make_loader(train_set, cfg.batch_size // dist.world_size, shuffle=True,
                             seed=cfg.seed * 100_003 + epoch, rank=dist.rank,
                             world_size=dist.world_size,
                             with_index=cfg.train_attack == "fgsm_carried")
        t_epoch = time.time()
        row = {"epoch": epoch + 1}
        try:
            row.update(train_epoch(model, loader, optimizer, cfg, epoch, device,
                                   progress and dist.main, notes, forward_model, dist,
                                   train_attack))
        except FloatingPointError as e:
            if writer is not None:
                write_json(writer / "metrics.json", _metrics(
                    cfg, model, history, best, notes + [str(e)], time.time() - t0, "failed"))
            raise
        if cfg.discard and (epoch + 1) % cfg.discard_every == 0:
            masking.discard_low_scores(model, discard_fraction(cfg, epoch + 1))
        row.update(evaluate(model, select_loader, device, eval_attacks(model, cfg),
                            progress and dist.main, desc=f"{select_split} check", dist=dist,
                            num_classes=data.num_classes))
        row["eval_split"] = select_split
        row["eval_examples"] = len(select_set)
        row["keep_ratio"] = masking.mask_summary(model)["keep_ratio"]
        row["epoch_seconds"] = time.time() - t_epoch
        history.append(row)
        stuck = stuck + 1 if is_collapsed(row["train_loss"], row["clean_acc"],
                                          data.num_classes) else 0
        if stuck == cfg.collapse_patience:
            msg = collapse_message(cfg, row, data.num_classes, stuck)
            notes.append(msg)
            if dist.main:
                warnings.warn(msg, CollapseWarning, stacklevel=2)
            if cfg.stop_on_collapse:
                stopped = {"epoch": epoch + 1, "reason": "collapse", "message": msg}
        if at_target_sparsity(cfg, epoch) and merit(row) > merit(best):
            best = {k: row[k] for k in ("epoch", "clean_acc", "pgd_acc")}
            best.update(split=select_split, examples=row["eval_examples"])
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if writer is not None:
                save_ticket(model, writer / "ticket.pt", meta={"run": cfg.to_dict(), "best": best})
        epochs.set_postfix({f"{select_split} clean": f"{row['clean_acc']:.3f}",
                            f"{select_split} pgd": f"{row['pgd_acc']:.3f}"})
        if writer is not None:
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "rng": torch.get_rng_state(), "history": history, "best": best,
                               "epoch": epoch + 1, "best_model": best_state, "notes": notes,
                               "stopped": stopped},
                              writer / "last.pt")
            write_json(writer / "metrics.json", _metrics(cfg, model, history, best, notes,
                                                        time.time() - t0, "running", stopped))
        if stopped is not None:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    final = None
    if dist.main:  # the only place the test split is read (unless val_fraction=0)
        final = final_evaluation(model, cfg, data, device, progress)
    if writer is not None:
        write_json(writer / "metrics.json",
                   _metrics(cfg, model, history, best, notes, time.time() - t0,
                            "collapsed" if stopped else "finished", stopped, final))
    dist.barrier()  # every rank returns once rank 0 has written the results
    return SearchResult(model, history, best, run_dir,
                        run_dir / "ticket.pt" if run_dir is not None else None, cfg, data, notes,
                        final, stopped)


def collapse_message(cfg: RunConfig, row: dict, num_classes: int, epochs: int) -> str:
    """Why a run is said to have collapsed, and what the workbook offers against it."""
    remedies = []
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


def final_evaluation(model: nn.Module, cfg: RunConfig, data: DataBundle,
                     device: torch.device | None = None, progress: bool = True) -> dict:
    """The numbers to report: clean and PGD (``eval_*``) accuracy, and AutoAttack
    (``cfg.autoattack``), on the first ``final_examples`` of the fixed test order.

    Random starts come from a generator seeded with ``cfg.seed`` (the global RNG is left
    as it was), so every model evaluated with the same ``cfg`` meets the same attack.
    """
    from .evaluation import autoattack_accuracy
    device = device or resolve_device(cfg.device)
    test = fixed_subset(data.test, cfg.final_examples)
    loader = make_loader(test, cfg.eval_batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        res = evaluate(model.to(device), loader, device, eval_attacks(model, cfg), progress,
                       desc="final test eval", num_classes=data.num_classes)
    out = {"split": "test", "examples": len(test), "clean_acc": res["clean_acc"],
           "pgd_acc": res["pgd_acc"], "pgd": f"PGD-{cfg.eval_steps}",
           "eps": cfg.eval_eps_value, "threat_model": cfg.threat_model}
    if cfg.autoattack != "none":
        n = min(cfg.autoattack_examples, len(test))
        out["autoattack_acc"] = autoattack_accuracy(
            model, test, cfg.eval_eps_value, cfg.threat_model, cfg.autoattack, n, device,
            seed=cfg.seed)
        out["autoattack"] = {"version": cfg.autoattack, "examples": n}
    return out


train = search  # the same loop trains scores or weights, by cfg.task


def _metrics(cfg, model, history, best, notes, seconds, status, stopped=None,
             final=None) -> dict:
    """metrics.json: ``history`` and ``best`` are on ``selection_split`` (val unless
    val_fraction=0), ``final`` on the test split."""
    return {"status": status, "config": cfg.to_dict(), "model_config": model.config.to_dict(),
            "mask": masking.mask_summary(model), "selection_split": best.get(
                "split", "val" if cfg.val_fraction > 0 else "test"),
            "history": history, "best": best, "final": final, "stopped": stopped,
            "warnings": notes, "search_seconds": seconds, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    """``python -m rst_lib.train -p FILE [-p key=value ...] --run-dir DIR [--resume]``.

    The script entry for ``torchrun --nproc_per_node=N -m rst_lib.train ...``: every rank gets
    the same explicit ``--run-dir`` (rank 0 writes it).
    """
    import argparse
    import sys
    from .config import load_config
    parser = argparse.ArgumentParser(prog="python -m rst_lib.train", description=main.__doc__)
    parser.add_argument("-p", "--param", action="append", default=[],
                        help="a YAML parameter file, or key=value (repeatable)")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    files = [p for p in args.param if "=" not in p or Path(p).is_file()]
    overrides = [p for p in args.param if p not in files]
    try:
        cfg = load_config(files[0] if files else None, overrides)
        search(cfg, args.run_dir, progress=True, resume=args.resume)
    except (ConfigError, FileExistsError) as e:
        print(f"python -m rst_lib.train: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
