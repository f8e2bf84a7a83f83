"""The training loop: one epoch (:func:`train_epoch`) and a whole run (:func:`train`).

:func:`train` reads as its steps: :func:`prepare_run` builds data and model for ``cfg.task``
(:func:`rst_lib.engine.tasks.build_task`: a ticket search by default, or finetuning / dense /
BNN baselines), the splits, the optimizer and the per-batch step (:mod:`.batch_steps`, chosen
once by ``cfg.train_attack``); :func:`restore` resumes from ``last.pt``; then per epoch
:func:`one_epoch` trains (scores for a search, weights otherwise) and checks clean and PGD
accuracy on the validation split, :func:`record_epoch` records the row, :func:`watch_collapse`
stops a run that does not learn, :func:`choose_best` keeps ``ticket.pt``, :func:`checkpoint`
writes ``metrics.json`` and ``last.pt``; :func:`finish` reads the test split once (best model).
"""
from __future__ import annotations

import os
import pickle
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from ..utils import progress_log
from ..utils.progress import tqdm  # its notebook bars leave text, not a widget
from ..masks import masking, rerandomize
from ..config import ConfigError, RunConfig
from ..data.datasets import DataBundle, fixed_subset
from ..data.loaders import make_loader, set_epoch
from ..utils.devices import (Distributed, generator_states, resolve_device, seeded_rng,
                             set_generator_states, setup_distributed)
from .evaluation import eval_attacks, evaluate, final_evaluation
from .live import LiveLog
from ..utils.files import TORCH_LOAD_ERRORS, torch_save, write_json
from ..utils.project import record_paths
from ..models.registry import RandomNetwork
from .batch_steps import EpochContext
from .collapse import CollapseWarning, collapse_message, is_collapsed
from .auto_precision import resolve_run_precisions
from .precision import autocast_context, make_scaler
from .schedules import at_target_sparsity, discard_fraction, eps_factor, keep_ratios_at, lr_factor
from .tasks import build_task, check_run, make_optimizer, make_train_attack, trainable_parameters
from ..models.tickets import save_ticket
from .tuning import CompiledNetwork, backend_settings, resolve_channels_last


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


def train_epoch(ctx: EpochContext, loader, epoch: int) -> dict:
    """One epoch on the trainable tensors (scores for a search, weights for finetuning):
    per batch, the LR and eps schedules, then the run's step (:mod:`.batch_steps`).

    A non-finite loss stops the run (FloatingPointError naming epoch and batch). With
    ``cfg.loss_jump_factor`` set (RBRN's debug mode), a batch loss above that factor times
    the running mean is reported as a warning and appended to ``ctx.notes``. Distributed:
    the returned loss and accuracy are reduced over all ranks.
    """
    cfg = ctx.cfg
    ctx.model.train()
    ctx.step.start_epoch()
    running = None
    total = correct = 0
    loss_sum = 0.0
    n_batches = len(loader)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs} train", leave=False,
               disable=not ctx.progress)
    for i, batch in enumerate(progress_log.each(bar, f"epoch {epoch + 1}/{cfg.epochs}")):
        x, y, index = ctx.batch_to_device(batch)
        for group in ctx.optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, epoch + i / n_batches)
        eps = cfg.eps * eps_factor(cfg, epoch + i / n_batches)
        ctx.step.set_eps(eps, cfg.alpha * eps / cfg.eps if cfg.eps else cfg.alpha)
        rerandomize.at_step(ctx.model, cfg, epoch * n_batches + i + 1)  # IteRand, if on
        loss, logits = ctx.step(ctx, x, y, index, eps, (epoch, i))
        value = loss.item()
        if cfg.loss_jump_factor and running is not None and value > cfg.loss_jump_factor * running:
            _note_loss_jump(ctx, epoch, i, value, running)
        running = value if running is None else 0.9 * running + 0.1 * value
        loss_sum += value * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
        bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
    loss_sum, correct, total = ctx.dist.sum([loss_sum, correct, total]).tolist()
    return {"train_loss": loss_sum / total, "train_acc": correct / total,
            "lr": ctx.optimizer.param_groups[0]["lr"]}


def _note_loss_jump(ctx: EpochContext, epoch: int, batch: int, value: float,
                    running: float) -> None:
    msg = f"loss jump at epoch {epoch + 1}, batch {batch}: {value:.4f} after a running mean of {running:.4f}"
    warnings.warn(msg, LossJumpWarning, stacklevel=3)
    if ctx.notes is not None:
        ctx.notes.append(msg)


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
    check_run(cfg)  # every parameter, and the model and ticket they name, before compute
    device = resolve_device(cfg.device)
    with seeded_rng(cfg.seed, device), backend_settings(device):  # cuDNN autotuning on CUDA
        run = prepare_run(cfg, run_dir, progress, data, resume)
        with progress_log.writing_to(run.writer), progress_log.part(cfg.name or cfg.task):
            state = restore(run, resume)
            run.live = LiveLog(run.writer, cfg, state.epoch)  # TensorBoard, progress.json, log
            for epoch in epoch_bar(run, state):
                row = one_epoch(run, state, epoch)
                record_epoch(run, state, row)
                watch_collapse(run, state, row)
                choose_best(run, state, row)
                checkpoint(run, state)
                run.live.epoch(row, run.model)  # after last.pt: progress.json's epoch k is saved
                if state.stopped is not None:
                    break
            return finish(run, state)


@dataclass
class Run:
    """What stays fixed while a run trains (built by :func:`prepare_run`)."""
    cfg: RunConfig
    run_dir: Path | None
    writer: Path | None               # run_dir on the process that writes files, else None
    device: torch.device
    dist: Distributed
    data: DataBundle
    model: RandomNetwork
    net: nn.Module                    # the model, compiled when cfg.compile
    ctx: EpochContext                 # what train_epoch needs: optimizer, batch step, ...
    loader: object                    # the training batches (order: seed * 100_003 + epoch)
    select_loader: object             # the split the best epoch is chosen on
    select_split: str                 # "val", or "test" with val_fraction=0
    select_examples: int
    final_ratios: dict                # the keep ratios a keep-ratio schedule ends at
    layer_sizes: dict
    progress: bool
    precision: dict                   # how auto precision was resolved (metrics.json)
    bar: tqdm | None = None           # the epoch bar (:func:`epoch_bar`)
    live: LiveLog | None = None       # TensorBoard events and progress.json


@dataclass
class RunState:
    """What changes from epoch to epoch; ``last.pt`` keeps it to resume."""
    notes: list[str]                  # the run's warnings (metrics.json)
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    best_model: dict | None = None    # the best epoch's state dict (CPU)
    stopped: dict | None = None       # why the run stopped early (collapse), else None
    epoch: int = 0                    # epochs done
    stuck: int = 0                    # consecutive epochs at chance level (not resumed)
    started: float = field(default_factory=time.time)


def prepare_run(cfg: RunConfig, run_dir, progress: bool, data: DataBundle | None,
                resume: bool) -> Run:
    """The data and the network of ``cfg.task``, the splits, the optimizer and the
    per-batch step; an existing run folder is refused unless resuming."""
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
    data, model = build_task(cfg, data, device)
    cfg, precision = resolve_run_precisions(  # auto -> fp32 | bf16 once: cfg concrete from here
        cfg, model, (data.in_channels, data.image_size, data.image_size), device, dist)
    if resolve_channels_last(cfg.channels_last, device):  # NHWC kernels follow the weights
        model = model.to(memory_format=torch.channels_last)
    train_part, val_part = data.validation_split(cfg.val_fraction, cfg.seed)
    # All of the training split: as stored (the loader shuffles); else a fixed random sample.
    train_set = train_part if cfg.train_examples is None else fixed_subset(train_part, cfg.train_examples)
    # Epochs are compared on held-out training examples; the test split waits for the end.
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
    ctx = EpochContext.build(model, optimizer, cfg, device, len(train_set), attack=train_attack,
                             scaler=scaler, forward_model=forward_model, dist=dist,
                             progress=progress and dist.main, notes=[])
    loader = make_loader(train_set, cfg.batch_size // dist.world_size, shuffle=True,
                         seed=cfg.seed * 100_003, rank=dist.rank, world_size=dist.world_size,
                         with_index=cfg.train_attack == "fgsm_carried",
                         num_workers=cfg.num_workers, device=device)  # workers live all run
    return Run(cfg, run_dir, writer, device, dist, data, model, net, ctx, loader, select_loader,
               "val" if val_part is not None else "test", len(select_set), final_ratios,
               layer_sizes, progress, precision)


def restore(run: Run, resume: bool) -> RunState:
    """A fresh start, or ``run_dir/last.pt``'s state when resuming (model, optimizer, loss
    scaler, every random generator: the resumed run matches an uninterrupted one)."""
    state = RunState(notes=run.ctx.notes,  # one list: the epochs' warnings land in it
                     best={selection_metrics(run.cfg)[0]: -1.0})
    if run.select_split == "test":
        state.notes.append("val_fraction=0: the best epoch was chosen on the test split, which "
                           "inflates the final test numbers")
    last = run.run_dir / "last.pt" if run.run_dir is not None else None
    if resume and last is not None and last.exists():
        ck = load_checkpoint(last)
        run.model.load_state_dict(ck["model"])
        run.ctx.optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            run.ctx.scaler.load_state_dict(ck["scaler"])
        state.history, state.best, state.epoch = ck["history"], ck["best"], ck["epoch"]
        state.notes[:] = ck.get("notes", [])
        # every generator (CPU, each CUDA device, python, numpy): the same run on any device
        state.notes += [n for n in set_generator_states(ck["rng"]) if n not in state.notes]
        state.best_model, state.stopped = ck["best_model"], ck.get("stopped")
    state.started = time.time()
    return state


def epoch_bar(run: Run, state: RunState):
    """The epochs still to run (none if the run stopped early), with a progress bar."""
    last = run.cfg.epochs if state.stopped is None else state.epoch
    run.bar = tqdm(range(state.epoch, last), desc=run.cfg.name or run.cfg.task, unit="epoch",
                   disable=not (run.progress and run.dist.main), initial=state.epoch,
                   total=run.cfg.epochs)
    return run.bar


def one_epoch(run: Run, state: RunState, epoch: int) -> dict:
    """Train one epoch (keep-ratio schedule, discard), then the clean and PGD check on the
    selection split. A non-finite loss is recorded in metrics.json ('failed') and raised."""
    cfg, model = run.cfg, run.model
    ratios = keep_ratios_at(cfg, run.final_ratios, run.layer_sizes, epoch)
    if ratios is not None:
        masking.set_keep_ratios(model, ratios)
    set_epoch(run.loader, epoch)  # this epoch's order: seed * 100_003 + epoch
    started = time.time()
    row = {"epoch": epoch + 1}
    try:
        row.update(train_epoch(run.ctx, run.loader, epoch))
    except FloatingPointError as e:
        if run.writer is not None:
            write_json(run.writer / "metrics.json",
                       _metrics(run, state, "failed", notes=state.notes + [str(e)]))
        raise
    if cfg.discard and (epoch + 1) % cfg.discard_every == 0:
        masking.discard_low_scores(model, discard_fraction(cfg, epoch + 1))
    with autocast_context(cfg.precision, run.device):  # the check runs as the training does
        row.update(evaluate(model, run.select_loader, run.device, eval_attacks(model, cfg),
                            run.progress and run.dist.main, desc=f"{run.select_split} check",
                            dist=run.dist, num_classes=run.data.num_classes))
    row["eval_split"] = run.select_split
    row["eval_examples"] = run.select_examples
    row.update(masking.kept_fractions(model, per_layer=cfg.keep_scope == "global"))
    row["epoch_seconds"] = time.time() - started
    return row


def selection_metrics(cfg: RunConfig) -> tuple[str, str]:
    """The metric the best epoch is chosen by, and the tie-break."""
    return ("clean_acc", "pgd_acc") if cfg.train_attack == "none" else ("pgd_acc", "clean_acc")


def record_epoch(run: Run, state: RunState, row: dict) -> None:
    """THE place an epoch's metrics are recorded (history, hence metrics.json, and the
    epoch bar; a logger hooks in here)."""
    state.history.append(row)
    state.epoch = row["epoch"]
    if run.bar is not None:
        run.bar.set_postfix({f"{run.select_split} clean": f"{row['clean_acc']:.3f}",
                             f"{run.select_split} pgd": f"{row['pgd_acc']:.3f}"})


def watch_collapse(run: Run, state: RunState, row: dict) -> None:
    """``collapse_patience`` epochs in a row at chance level: warn, and with
    ``stop_on_collapse`` stop the run."""
    cfg, num_classes = run.cfg, run.data.num_classes
    state.stuck = state.stuck + 1 if is_collapsed(row["train_loss"], row["clean_acc"],
                                                  num_classes) else 0
    if state.stuck == cfg.collapse_patience:
        msg = collapse_message(cfg, row, num_classes, state.stuck)
        state.notes.append(msg)
        if run.dist.main:
            warnings.warn(msg, CollapseWarning, stacklevel=2)
        if cfg.stop_on_collapse:
            state.stopped = {"epoch": row["epoch"], "reason": "collapse", "message": msg}


def choose_best(run: Run, state: RunState, row: dict) -> None:
    """Keep the epoch if it beats the best so far (once the keep ratio reached its target):
    adversarial training keeps the most robust epoch, natural training the most accurate;
    ties (e.g. several epochs at 0 % robust accuracy early on) go to the better other
    metric. The best model is saved as ``ticket.pt``."""
    select, tiebreak = selection_metrics(run.cfg)

    def merit(r: dict) -> tuple[float, float]:
        return r.get(select, -1.0), r.get(tiebreak, -1.0)

    if not (at_target_sparsity(run.cfg, row["epoch"] - 1) and merit(row) > merit(state.best)):
        return
    state.best = {k: row[k] for k in ("epoch", "clean_acc", "pgd_acc")}
    state.best.update(split=run.select_split, examples=row["eval_examples"])
    state.best_model = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
    if run.writer is not None:
        save_ticket(run.model, run.writer / "ticket.pt",
                    meta={"run": run.cfg.to_dict(), "best": state.best})


def checkpoint(run: Run, state: RunState) -> None:
    """``last.pt`` (everything to resume) and ``metrics.json`` after each epoch."""
    if run.writer is None:
        return
    torch_save({"model": run.model.state_dict(), "optimizer": run.ctx.optimizer.state_dict(),
                "rng": generator_states(), "history": state.history, "best": state.best,
                "epoch": state.epoch, "best_model": state.best_model, "notes": state.notes,
                "stopped": state.stopped, "scaler": run.ctx.scaler.state_dict()},
               run.writer / "last.pt")
    write_json(run.writer / "metrics.json", _metrics(run, state, "running"))


def finish(run: Run, state: RunState) -> TrainResult:
    """The best model, its final numbers on the test split (the only place the test split
    is read, unless val_fraction=0) and the last metrics.json."""
    cfg, model = run.cfg, run.model
    if cfg.compile and run.net.fallback:  # metrics.json says the run was not compiled
        state.notes.append(f"compile fell back to eager: {run.net.fallback}")
    if state.best_model is not None:
        model.load_state_dict(state.best_model)
    model.eval()
    final = None
    if run.dist.main:
        # eval_precision; each batch recorded in run_dir, so a killed evaluation resumes
        final = final_evaluation(model, cfg, run.data, run.device, run.progress, run.writer)
    if run.writer is not None:
        write_json(run.writer / "metrics.json", _metrics(
            run, state, "collapsed" if state.stopped else "finished", final=final))
    if run.live is not None:
        run.live.close()
    run.dist.barrier()  # every rank returns once rank 0 has written the results
    return TrainResult(model, state.history, state.best, run.run_dir,
                       run.run_dir / "ticket.pt" if run.run_dir is not None else None, cfg,
                       run.data, state.notes, final, state.stopped)


def _metrics(run: Run, state: RunState, status: str, final: dict | None = None,
             notes: list[str] | None = None) -> dict:
    """metrics.json: ``history``/``best`` on ``selection_split``, ``final`` on test; paths relative."""
    cfg = run.cfg
    return {"status": status, "config": record_paths(cfg.to_dict()), "model_config": run.model.config.to_dict(),
            "mask": masking.mask_summary(run.model), "selection_split": state.best.get(
                "split", "val" if cfg.val_fraction > 0 else "test"),
            "history": state.history, "best": state.best, "final": final,
            "stopped": state.stopped, "warnings": state.notes if notes is None else notes,
            "search_seconds": time.time() - state.started, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "precision": run.precision}
