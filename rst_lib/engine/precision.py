"""Mixed precision: the ``precision`` and ``eval_precision`` run parameters.

* ``auto`` (default of ``precision``): resolved once per run to ``bf16`` where the device runs
  it natively and measurably faster, else ``fp32`` (:mod:`.auto_precision`); nothing here
  autocasts ``auto`` itself.
* ``fp32``: no autocast. :func:`autocast_context` even switches off an autocast
  the caller may have entered, so fp32 numbers are fp32 whatever surrounds them.
* ``bf16``: ``torch.autocast(device, torch.bfloat16)``; no loss scaling (bf16 has the
  range of fp32). CUDA (Ampere or later) and CPU.
* ``fp16``: ``torch.autocast(device, torch.float16)`` and a ``torch.amp.GradScaler`` (the
  loss is scaled before backward so that small gradients do not underflow; a step with an
  inf/NaN gradient is skipped and the scale lowered). Meant for CUDA; recent torch also
  autocasts fp16 on the CPU (with a CPU GradScaler), which works but is rarely faster.

What stays fp32 under autocast, by construction: the scores and their gradients, the
masks (bool, from the fp32 scores), the frozen and the masked weights (autocast casts a
copy for each conv / matmul), BatchNorm statistics (buffers keep their dtype), the loss
(``cross_entropy`` is on autocast's fp32 list), and the adversarial perturbation and its
input gradient (``x + delta`` is an fp32 add; the cast inside the first conv sends fp32
gradients back). The inner attack's input gradient is taken without loss scaling: its
``sum`` loss keeps it well above fp16's underflow in practice.
"""
from __future__ import annotations

import contextlib

import torch

from ..config import allowed
from ..errors import ConfigError, check_choice

PRECISIONS = allowed("precision")  # declared with the parameter
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_concrete(precision: str, param: str = "precision") -> None:
    """``auto`` must have been resolved (:mod:`.auto_precision`) before anything autocasts."""
    check_choice(param, precision, PRECISIONS)
    if precision == "auto":
        raise ValueError(f"{param}='auto' reached autocast unresolved: resolve it first with "
                         "rst_lib.engine.auto_precision.resolve_run_precisions")


def check_supported(precision: str, device: torch.device | str, param: str = "precision") -> None:
    """A clear ConfigError, before any compute, if ``device`` cannot autocast to ``precision``."""
    check_choice(param, precision, PRECISIONS)
    device = torch.device(device)
    if precision in ("fp32", "auto"):  # auto: fp32 wherever bf16 is not available
        return
    if not torch.amp.is_autocast_available(device.type):
        raise ConfigError(f"{param}={precision!r} needs torch.autocast on {device.type}, which "
                          f"this torch ({torch.__version__}) lacks: use {param}: fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{param}='bf16' is not supported by this GPU "
                          f"({torch.cuda.get_device_name(device)}): use fp16 or fp32")


def autocast_context(precision: str, device: torch.device | str):
    """The context of the forward passes (and attacks) of ``precision`` on ``device``.

    Backward passes and optimizer steps go outside it (as torch's AMP recipe has them)."""
    check_concrete(precision)
    device_type = torch.device(device).type
    if precision == "fp32":
        if not torch.amp.is_autocast_available(device_type):
            return contextlib.nullcontext()
        return torch.autocast(device_type, enabled=False)
    check_supported(precision, device)
    return torch.autocast(device_type, dtype=DTYPES[precision])


def make_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler:
    """A GradScaler, enabled for fp16 only: for fp32 and bf16 ``scale(loss)`` is ``loss``
    and ``step(optimizer)`` is ``optimizer.step()``, so one update code path serves all."""
    check_concrete(precision)
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")
