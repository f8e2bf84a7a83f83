"""The training loop: one epoch (:func:`train_epoch`) and a whole run (:func:`train`).

Read top to bottom: :func:`train` builds data and model for ``cfg.task``
(:func:`rst_lib.engine.tasks.build_task`: a ticket search by default, or finetuning / dense /
BNN baselines), then for each epoch trains (scores for a search, weights otherwise),
checks clean and PGD accuracy on the validation split, keeps the best model as
``ticket.pt`` and writes ``metrics.json`` plus a resumable ``last.pt``. The test split is
read once, at the end (:func:`rst_lib.engine.evaluation.final_evaluation`).
"""
from __future__ import annotations

import math
import os
import pickle
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..masks import masking
from ..attacks.gradient import lp_step, project
from ..config import ConfigError, RunConfig
from ..data.datasets import DataBundle, fixed_subset
from ..data.loaders import make_loader, set_epoch
from ..utils.devices import Distributed, resolve_device, seeded_rng, setup_distributed
from .evaluation import eval_attacks, evaluate, final_evaluation
from .live import LiveLog
from ..utils.files import TORCH_LOAD_ERRORS, torch_save, write_json
from ..models.registry import RandomNetwork
from .precision import autocast_context, check_supported, make_scaler
from .schedules import at_target_sparsity, discard_fraction, eps_factor, keep_ratios_at, lr_factor
from .tasks import build_task, make_optimizer, make_train_attack, trainable_parameters
from ..models.tickets import save_ticket
from .tuning import CompiledNetwork, backend_settings, resolve_channels_last, to_channels_last


class CollapseWarning(UserWarning):
    """The search predicts (almost) one class: loss stuck near ln(num_classes)."""


class LossJumpWarning(UserWarning):
    """A batch loss jumped far above its running mean (debug mode)."""


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a resumable ``last.pt`` (tensors and plain containers only)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path} was refused: it holds objects other than tensors and plain "
                         "containers, which could run code when loaded") from None
    except TORCH_LOAD_ERRORS as e:
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


def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, cfg: RunConfig,
                epoch: int, device: torch.device, progress: bool = True,
                notes: list[str] | None = None, forward_model: nn.Module | None = None,
                dist: Distributed | None = None, attack=None, scaler=None) -> dict:
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

    ``cfg.precision``: the attack and the forward passes run under autocast, backward and
    the step outside; ``scaler`` (:func:`make_scaler`, kept across epochs) scales fp16 losses.
    """
    running = None
    scaler = make_scaler(cfg.precision, device) if scaler is None else scaler
    nhwc = resolve_channels_last(cfg.channels_last, device)
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
        x = to_channels_last(x) if nhwc else x
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
                with autocast_context(cfg.precision, device):
                    logits = net(x + free_delta)
                    loss = F.cross_entropy(logits, y)
                _check_finite(loss, epoch, i)
                _update(loss, optimizer, scaler, model, cfg)
                grad = torch.nan_to_num(free_delta.grad, 0.0, 0.0, 0.0)  # fp16: scaled, inf
                step = lp_step(grad, eps, cfg.threat_model)
                free_delta = project(x, free_delta.detach() + step, eps, cfg.threat_model)
        else:
            with autocast_context(cfg.precision, device):  # the attack's delta stays fp32
                if attack is None:
                    x_in = x
                elif cfg.train_attack == "fgsm_carried":
                    x_in = attack(x, y, batch[2])  # each example's perturbation carries over
                else:
                    x_in = attack(x, y)  # masks computed once, reused by every attack step
                if cfg.train_attack == "trades":
                    # Separate passes, as the TRADES code does (BN statistics of each batch).
                    # Only one goes through DDP; both gradients sum before its hooks fire.
                    logits_adv = net(x_in)
                    logits = model(x)  # TRADES fits and reports clean predictions
                    loss = F.cross_entropy(logits, y) + cfg.trades_beta * F.kl_div(
                        F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="batchmean")
                else:
                    logits = net(x_in)
                    loss = F.cross_entropy(logits, y)
            _check_finite(loss, epoch, i)
            _update(loss, optimizer, scaler, model, cfg)
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


def _update(loss, optimizer, scaler: torch.amp.GradScaler, model: nn.Module, cfg) -> None:
    """Backward (an fp16 loss scaled), RST's discard (discarded scores get no gradient),
    the step (skipped by the scaler after an fp16 overflow); masks follow the new scores."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.discard:
        masking.zero_discarded_grads(model)
    scaler.step(optimizer)
    scaler.update()


def _check_finite(loss: torch.Tensor, epoch: int, batch: int) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, batch {batch}; "
                                 "lower lr or check the data")


@dataclass
class TrainResult:
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


def train(cfg: RunConfig, run_dir: str | os.PathLike | None = None, progress: bool = True,
          data: DataBundle | None = None, resume: bool = False) -> TrainResult:
    """Run ``cfg.task`` (a ticket search by default; see :func:`build_task`).

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

    Random numbers come from the global torch RNG seeded with ``cfg.seed`` inside the call;
    the caller's random stream is restored afterwards.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    with seeded_rng(cfg.seed, device), backend_settings(device):  # cuDNN autotuning on CUDA
        return _train(cfg, run_dir, progress, data, resume)


def _train(cfg: RunConfig, run_dir, progress: bool, data: DataBundle | None,
           resume: bool) -> TrainResult:
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None and not resume and any(
            (run_dir / f).exists() for f in ("metrics.json", "last.pt", "ticket.pt")):
        raise FileExistsError(f"{run_dir} already holds a run; it is never overwritten. Pass "
                              "resume=True to continue it, or use a new directory "
                              "(rst_lib.utils.files.new_run_dir)")
    device = resolve_device(cfg.device)
    dist = setup_distributed(device)
    if cfg.batch_size % dist.world_size:
        raise ConfigError(f"batch_size={cfg.batch_size} is the global batch: it must be divisible "
                          f"by the number of processes ({dist.world_size})")
    check_supported(cfg.precision, device)
    check_supported(cfg.eval_precision, device, "eval_precision")
    data, model = build_task(cfg, data, device)
    if resolve_channels_last(cfg.channels_last, device):  # NHWC kernels follow the weights
        model = model.to(memory_format=torch.channels_last)
    train_part, val_part = data.validation_split(cfg.val_fraction, cfg.seed)
    # All of the training split: as stored (the loader shuffles); else a fixed random sample.
    train_set = train_part if cfg.train_examples is None else fixed_subset(train_part, cfg.train_examples)
    # Epochs are compared on held-out training examples; the test split waits for the end.
    select_split = "val" if val_part is not None else "test"
    select_set = fixed_subset(val_part if val_part is not None else data.test, cfg.eval_examples)
    select_loader = make_loader(select_set, max(1, cfg.eval_batch_size // dist.world_size),
                                rank=dist.rank, world_size=dist.world_size,
                                num_workers=cfg.num_workers, device=device)
    optimizer = make_optimizer(trainable_parameters(model), cfg)
    final_ratios = masking.keep_ratios(model)
    layer_sizes = {n: masking.raw_weight(m).numel() for n, m in masking.masked_layers(model)}
    scaler = make_scaler(cfg.precision, device)
    net = CompiledNetwork(model) if cfg.compile else model  # attack and update, compiled
    train_attack = make_train_attack(net, cfg, len(train_set))
    forward_model = net
    if dist.world_size > 1:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # global-batch BN statistics
        forward_model = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
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
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng"])
        history, best, start_epoch = ck["history"], ck["best"], ck["epoch"]
        notes = ck.get("notes", [])
        best_state = ck["best_model"]
        stopped = ck.get("stopped")
    t0 = time.time()
    loader = make_loader(train_set, cfg.batch_size // dist.world_size, shuffle=True,
                         seed=cfg.seed * 100_003, rank=dist.rank, world_size=dist.world_size,
                         with_index=cfg.train_attack == "fgsm_carried",
                         num_workers=cfg.num_workers, device=device)  # workers live all run
    stuck = 0
    live = LiveLog(writer, cfg, start_epoch)  # TensorBoard events and progress.json
    epochs = tqdm(range(start_epoch, cfg.epochs if stopped is None else start_epoch),
                  desc=cfg.name or cfg.task, unit="epoch", disable=not (progress and dist.main),
                  initial=start_epoch, total=cfg.epochs)
    for epoch in epochs:
        ratios = keep_ratios_at(cfg, final_ratios, layer_sizes, epoch)
        if ratios is not None:
            masking.set_keep_ratios(model, ratios)
        set_epoch(loader, epoch)  # this epoch's order: seed * 100_003 + epoch
        t_epoch = time.time()
        row = {"epoch": epoch + 1}
        try:
            row.update(train_epoch(model, loader, optimizer, cfg, epoch, device,
                                   progress and dist.main, notes, forward_model, dist,
                                   train_attack, scaler))
        except FloatingPointError as e:
            if writer is not None:
                write_json(writer / "metrics.json", _metrics(
                    cfg, model, history, best, notes + [str(e)], time.time() - t0, "failed"))
            raise
        if cfg.discard and (epoch + 1) % cfg.discard_every == 0:
            masking.discard_low_scores(model, discard_fraction(cfg, epoch + 1))
        with autocast_context(cfg.precision, device):  # the check runs as the training does
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
            torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "rng": torch.get_rng_state(), "history": history, "best": best,
                               "epoch": epoch + 1, "best_model": best_state, "notes": notes,
                               "stopped": stopped, "scaler": scaler.state_dict()},
                              writer / "last.pt")
            write_json(writer / "metrics.json", _metrics(cfg, model, history, best, notes,
                                                        time.time() - t0, "running", stopped))
        live.epoch(row, model)  # after last.pt: progress.json's epoch k is saved
        if stopped is not None:
            break
    if cfg.compile and net.fallback:  # metrics.json says the run was not compiled
        notes.append(f"compile fell back to eager: {net.fallback}")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    final = None
    if dist.main:  # the only place the test split is read (unless val_fraction=0)
        final = final_evaluation(model, cfg, data, device, progress, writer)  # resumable
    if writer is not None:
        write_json(writer / "metrics.json",
                   _metrics(cfg, model, history, best, notes, time.time() - t0,
                            "collapsed" if stopped else "finished", stopped, final))
    live.close()
    dist.barrier()  # every rank returns once rank 0 has written the results
    return TrainResult(model, history, best, run_dir,
                        run_dir / "ticket.pt" if run_dir is not None else None, cfg, data, notes,
                        final, stopped)


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
