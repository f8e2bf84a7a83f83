"""Live curves of a running training: TensorBoard event files, a small progress file and
one line in the run's log (:mod:`rst_lib.utils.progress_log`), written after every epoch.

``tensorboard --logdir outputs`` then shows every run as it goes (a sweep's cells side by
side, each under its folder); ``progress.json`` (epoch k of n) is what the run index reads
to say how far a running run is; the log line is what ``rst-workbook run`` prints.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from torch import nn
from torch.utils.tensorboard import SummaryWriter  # the `tensorboard` package (~0.3 s import)

from ..config import RunConfig
from ..masks import masking
from ..utils import progress_log
from ..utils.files import PROGRESS_FILE, read_json, write_json
from .schedules import eps_factor

TENSORBOARD_DIR = "tensorboard"
HISTOGRAM_EVERY = 5  # epochs between score histograms (also the first and the last epoch)
# history row key -> TensorBoard tag (scalars written once per epoch, when present)
SCALARS = {"train_loss": "loss/train", "train_acc": "accuracy/train", "clean_acc": "accuracy/val_clean",
           "pgd_acc": "accuracy/val_pgd", "lr": "schedule/lr", "eps": "schedule/eps",
           "keep_ratio": "mask/keep_ratio", "epoch_seconds": "time/epoch_seconds",
           "top_class_fraction": "accuracy/val_top_class_fraction"}


class LiveLog:
    """Per-epoch TensorBoard scalars (losses, clean and robust validation accuracy, LR,
    eps, keep ratio), per-layer kept fractions, score histograms every
    :data:`HISTOGRAM_EVERY` epochs, and ``progress.json``. ``run_dir`` None: does nothing.

    ``start_epoch``: the epoch a resumed run continues from; every start is listed in
    ``progress.json`` (``starts``), so a resumed run can be told from a restarted one.
    """

    def __init__(self, run_dir: str | os.PathLike | None, cfg: RunConfig, start_epoch: int = 0):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.cfg = cfg
        self.writer = None
        self.start_epoch, self.started = start_epoch, time.time()  # the rate of this process
        if self.run_dir is None:
            return
        # purge_step: a resumed run drops the events of epochs it will redo (killed mid-epoch)
        self.writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR),
                                    purge_step=start_epoch + 1 if start_epoch else None,
                                    flush_secs=30)
        old = read_json(self.run_dir / PROGRESS_FILE)
        self.starts = old.get("starts", []) + [{"epoch": start_epoch,
                                               "time": time.strftime("%Y-%m-%d %H:%M:%S")}]
        self._progress(start_epoch, "training" if start_epoch < cfg.epochs else "final evaluation")

    def _progress(self, epoch: int, phase: str) -> None:
        write_json(self.run_dir / PROGRESS_FILE, {
            "epoch": epoch, "epochs": self.cfg.epochs, "phase": phase, "starts": self.starts,
            "updated": time.strftime("%Y-%m-%d %H:%M:%S"), "updated_unix": time.time()})

    def epoch(self, row: dict, model: nn.Module) -> None:
        """Record one finished epoch (``row``: the history row; ``row['epoch']`` 1-based)."""
        progress_log.write(epoch_line(row, self.cfg, time.time() - self.started,
                                      int(row["epoch"]) - self.start_epoch))
        if self.writer is None:
            return
        step = int(row["epoch"])
        eps = self.cfg.eps * eps_factor(self.cfg, step - 1e-9)  # at the end of the epoch
        for key, tag in SCALARS.items():
            value = row.get(key, eps if key == "eps" else None)
            if isinstance(value, (int, float)):
                self.writer.add_scalar(tag, value, step)
        for name, layer in masking.mask_summary(model)["layers"].items():
            self.writer.add_scalar(f"kept_fraction/{name}", layer["keep_ratio"], step)
        if step == 1 or step % HISTOGRAM_EVERY == 0 or step == self.cfg.epochs:
            for name, module in masking.masked_layers(model):
                scores = masking.get_mask_param(module).scores.detach().float().cpu()
                self.writer.add_histogram(f"scores/{name}", scores, step)
        self.writer.flush()
        self._progress(step, "training" if step < self.cfg.epochs else "final evaluation")

    def close(self, phase: str = "finished") -> None:
        if self.writer is None:
            return
        self.writer.close()
        old = read_json(self.run_dir / PROGRESS_FILE)
        self._progress(int(old.get("epoch", 0)), phase)


def epoch_line(row: dict, cfg: RunConfig, seconds: float, epochs_here: int) -> str:
    """``epoch 2/6 in 19 s: validation clean 93.5%, PGD-20 61.0%; about 1 min left`` (the
    time left: this process's mean epoch, ``epochs_here`` in ``seconds``, per epoch left)."""
    k, n = int(row["epoch"]), cfg.epochs
    split = {"val": "validation"}.get(row.get("eval_split"), row.get("eval_split", "validation"))
    text = (f"epoch {k}/{n} in {progress_log.duration(row['epoch_seconds'])}: {split} clean "
            f"{row['clean_acc']:.1%}, PGD-{cfg.eval_steps} {row['pgd_acc']:.1%}")
    left = progress_log.time_left(epochs_here, epochs_here + n - k, seconds)
    return text + (f"; {progress_log.estimate(left)} left" if left and k < n else "")
