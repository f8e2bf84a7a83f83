"""``precision: auto``: bf16 only where the device runs it natively AND faster, else fp32.

Resolved once per run, here (:func:`resolve_run_precisions`; the training setup replaces the
config's ``auto`` by the concrete value, so every consumer sees fp32 or bf16), for
``precision`` and ``autoattack_precision`` (``eval_precision`` has no ``auto``):

* CUDA: bf16 if ``torch.cuda.is_bf16_supported()`` (Ampere and later), else fp32.
* CPU: fp32 if oneDNN reports no native bf16 (AVX2-only CPUs; ``ONEDNN_MAX_CPU_ISA=AVX2``):
  bf16 would be emulated, about 10x slower than fp32 (issue 33). Otherwise a short
  measurement of the actual step decides: forward + backward to the input of the run's own
  network (eval mode, masks frozen: an attack step) at batch ``min(32, eval_batch_size)``,
  fp32 and under bf16 autocast, one warm-up pass each, then interleaved passes (about
  a second; the fastest pass of each counts; cut short once bf16 is clearly slower). bf16 is chosen only if it is at least
  :data:`BF16_MIN_SPEEDUP` times as fast: oneDNN's flag says what the ISA supports, not what
  is fast, and noise or a small network should not flip a run to bf16 for nothing.
* any other device: fp32.

Measurements are cached per machine (:func:`cache_path`: ``$RST_PRECISION_CACHE``, else
``$XDG_CACHE_HOME/rst-workbook/precision.json``, else ``~/.cache/rst-workbook/...``), keyed by
the CPU model and flags, ``ONEDNN_MAX_CPU_ISA``, torch version, threads, the batch and the
network's signature (its parameter names and shapes, the input shape): a run, its controls
and its evaluations make the same choice, and the next run on the same machine measures
nothing. An explicit ``bf16`` is obeyed; where bf16 is not native or not faster it warns
once per process, one line, with the measured factor.

The measurement draws its inputs from its own generator inside a seeded block and leaves the
model in the mode it found it: the run's random streams are the same whether it ran or not.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import warn_once
from ..masks.masking import frozen_masks
from ..utils.devices import seeded_rng
from ..utils.files import write_json
from ..utils.machine import cpu_facts, describe_cpu, mkldnn_bf16_native
from .precision import autocast_context, check_supported

AUTO = "auto"
BF16_MIN_SPEEDUP = 1.2        # bf16 must be at least this much faster than fp32 to be chosen
MEASURE_BATCH = 32            # at most this batch (and at most eval_batch_size)
MEASURE_SECONDS = 1.0         # timed passes stop after this (at least MIN_PASSES each)
MIN_PASSES, MAX_PASSES = 2, 7
CLEARLY_SLOWER = 2.0          # bf16 this many times slower after one pass: stop measuring
AUTO_PARAMS = ("precision", "autoattack_precision")       # the parameters that take auto
CHECKED_PARAMS = AUTO_PARAMS + ("eval_precision",)        # an explicit bf16 here is checked too
CACHE_ENV = "RST_PRECISION_CACHE"

_MEMO: dict[str, "Bf16Verdict"] = {}   # this process's verdicts: one answer per key
_SLOW_WARNED: set[str] = set()          # the verdicts an explicit bf16 was warned about


@dataclass(frozen=True)
class Bf16Verdict:
    """Whether bf16 is worth it on a device for one network: ``fast``, why (``reason``), and
    the measurement (ms per forward + backward pass at ``batch``) if one was made."""
    fast: bool
    reason: str
    fp32_ms: float | None = None
    bf16_ms: float | None = None
    batch: int | None = None
    cached: bool = False

    @property
    def speedup(self) -> float | None:
        """How many times faster bf16 is than fp32 (below 1: slower)."""
        if self.fp32_ms and self.bf16_ms:
            return round(self.fp32_ms / self.bf16_ms, 2)
        return None

    def factor_text(self) -> str:
        if self.speedup is None:
            return ""
        return (f"bf16 {self.speedup:.2f}x as fast as fp32 ({self.bf16_ms:.1f} vs "
                f"{self.fp32_ms:.1f} ms per forward+backward of this network, batch {self.batch})")


def cache_path() -> Path:
    """Where measured verdicts are kept (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rst-workbook" / "precision.json"


def network_signature(model: nn.Module, input_shape) -> str:
    """What the step's cost depends on: the network's class, parameter names and shapes, and
    the input shape (not its values, seed or keep ratio: masked weights are dense tensors)."""
    parts = [type(model).__name__, "x".join(map(str, input_shape))]
    parts += [f"{n}:{tuple(p.shape)}" for n, p in model.named_parameters()]
    return hashlib.sha256(";".join(parts).encode()).hexdigest()[:16]


def cache_key(model: nn.Module, input_shape, batch: int) -> str:
    """The machine (CPU model and ISA flags, oneDNN cap, torch version, threads) and the work."""
    facts = cpu_facts()
    key = {k: facts[k] for k in ("cpu", "flags", "onednn_max_cpu_isa", "torch", "threads")}
    key.update(network=network_signature(model, input_shape), batch=batch)
    return json.dumps(key, sort_keys=True)


def read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(key: str, entry: dict) -> None:
    """Add one entry (an unwritable cache is skipped: the choice is then made per process)."""
    data = read_cache()
    data[key] = entry
    try:
        write_json(cache_path(), data)
    except OSError:
        pass


def measure_step(model: nn.Module, input_shape, device: torch.device,
                 batch: int) -> tuple[float, float]:
    """ms per forward + backward to the input (an attack step), fp32 and bf16 autocast: the
    fastest of interleaved passes after one warm-up pass each."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch, *input_shape), generator=gen).to(device)
    was_training = model.training
    model.eval()

    def one_pass(precision: str) -> float:
        start = time.perf_counter()
        xa = x.clone().requires_grad_(True)
        with autocast_context(precision, device):
            logits = model(xa)
        loss = F.cross_entropy(logits.float(), logits.detach().argmax(1), reduction="sum")
        torch.autograd.grad(loss, xa)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    try:
        with seeded_rng(0, device), frozen_masks(model), torch.enable_grad():
            one_pass("fp32"), one_pass("bf16")  # warm-up: oneDNN builds its kernels
            started = time.perf_counter()
            while len(times["fp32"]) < MAX_PASSES:
                for p in ("fp32", "bf16") if len(times["fp32"]) % 2 == 0 else ("bf16", "fp32"):
                    times[p].append(one_pass(p))
                n = len(times["fp32"])
                if times["bf16"][0] > CLEARLY_SLOWER * times["fp32"][0] or (
                        n >= MIN_PASSES and time.perf_counter() - started > MEASURE_SECONDS):
                    break
    finally:
        model.train(was_training)
    # the fastest pass of each: other processes on the cores only ever add time
    return round(1e3 * min(times["fp32"]), 3), round(1e3 * min(times["bf16"]), 3)


def bf16_verdict(device: torch.device | str, model: nn.Module, input_shape, batch: int,
                 measure_anyway: bool = False) -> Bf16Verdict:
    """Is bf16 native and faster than fp32 for ``model`` on ``device``? (see module docstring).
    ``measure_anyway``: measure on a CPU without native bf16 too (the factor an explicit
    ``bf16`` is warned with)."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device)
        return Bf16Verdict(ok, f"{name} {'runs bf16 natively' if ok else 'has no bf16'}")
    if device.type != "cpu" or not torch.amp.is_autocast_available("cpu"):
        return Bf16Verdict(False, f"bf16 is not chosen automatically on {device.type}")
    native = mkldnn_bf16_native()
    no_native = ("oneDNN reports no native bf16 on this CPU (emulated bf16 is several times "
                 "slower than fp32)")
    if not native and not measure_anyway:
        return Bf16Verdict(False, no_native)
    key = cache_key(model, input_shape, batch)
    if key in _MEMO:
        return _MEMO[key]
    entry = read_cache().get(key)
    cached = isinstance(entry, dict) and {"fp32_ms", "bf16_ms"} <= set(entry)
    if cached:
        fp32_ms, bf16_ms = float(entry["fp32_ms"]), float(entry["bf16_ms"])
    else:
        fp32_ms, bf16_ms = measure_step(model, input_shape, device, batch)
        write_cache(key, {"fp32_ms": fp32_ms, "bf16_ms": bf16_ms, "measured": time.strftime(
            "%Y-%m-%d %H:%M:%S"), "cpu": describe_cpu(cpu_facts())})
    fast = native and fp32_ms >= BF16_MIN_SPEEDUP * bf16_ms
    verdict = Bf16Verdict(fast, "", fp32_ms, bf16_ms, batch, cached)
    reason = (f"measured {verdict.factor_text()}; chosen at >= {BF16_MIN_SPEEDUP}x"
              if native else f"{no_native}; measured {verdict.factor_text()}")
    verdict = dataclasses.replace(verdict, reason=reason)
    _MEMO[key] = verdict
    return verdict


def needs_measurement(cfg, device: torch.device | str) -> bool:
    """Would resolving ``cfg``'s precisions on ``device`` time the network? (CPU only: an
    ``auto`` where oneDNN reports native bf16, or any explicit ``bf16``, whose factor a
    warning quotes.) Callers that hold only a network's structure build it for real then."""
    if torch.device(device).type != "cpu":
        return False
    values = [getattr(cfg, n) for n in CHECKED_PARAMS]
    return "bf16" in values or (AUTO in values and mkldnn_bf16_native())


def resolve_precision(requested: str, device: torch.device | str, model: nn.Module, input_shape,
                      param: str = "precision", batch: int = MEASURE_BATCH
                      ) -> tuple[str, Bf16Verdict | None]:
    """The concrete precision for ``requested`` (``auto`` resolved; others as given) and the
    verdict it rests on (None for fp32 / fp16 as given). An explicit ``bf16`` on a CPU where
    it is not native or not faster warns (:func:`warn_slow_bf16`)."""
    if requested not in (AUTO, "bf16"):
        return requested, None
    dev = torch.device(device)
    verdict = bf16_verdict(dev, model, input_shape, batch, measure_anyway=requested == "bf16")
    if requested == AUTO:
        return ("bf16" if verdict.fast else "fp32"), verdict
    if dev.type == "cpu" and not verdict.fast:
        warn_slow_bf16([param], verdict)
    return "bf16", verdict


def warn_slow_bf16(params: list[str], verdict: Bf16Verdict) -> None:
    """One line, once per process and verdict (a run, its controls and its evaluations resolve
    again): bf16 was asked for where it is slow, with the measured factor."""
    if verdict.reason in _SLOW_WARNED:
        return
    _SLOW_WARNED.add(verdict.reason)
    given = ", ".join(f"{p}=bf16" for p in params)
    warn_once(f"{given} on a CPU where bf16 is slow: {verdict.reason}; auto would choose fp32")


def resolve_run_precisions(cfg, model: nn.Module, input_shape, device: torch.device | str,
                           dist=None) -> tuple[object, dict]:
    """``cfg`` with ``auto`` replaced by fp32 or bf16 in :data:`AUTO_PARAMS`, and the record
    metrics.json keeps (``precision``: requested, chosen, reason, measured ms and speed-up).
    ``dist`` (a :class:`~rst_lib.utils.devices.Distributed`): bf16 only if every process chose
    it (one precision for the whole job)."""
    requested = {name: getattr(cfg, name) for name in CHECKED_PARAMS}
    for name, value in requested.items():  # e.g. fp16 where torch has no autocast: one line
        check_supported(value, device, name)
    batch = max(1, min(MEASURE_BATCH, cfg.eval_batch_size))
    chosen, verdict = {}, None
    slow = [name for name, value in requested.items() if value == "bf16"]
    if slow:  # one warning naming every parameter given bf16, before resolve_precision's own
        v = bf16_verdict(device, model, input_shape, batch, measure_anyway=True)
        if torch.device(device).type == "cpu" and not v.fast:
            warn_slow_bf16(slow, v)
    for name, value in requested.items():
        chosen[name], v = resolve_precision(value, device, model, input_shape, name, batch)
        verdict = verdict or v
    autos = [n for n in AUTO_PARAMS if requested[n] == AUTO]
    reason = verdict.reason if verdict is not None else "as set"
    if dist is not None and dist.world_size > 1 and autos:
        votes = dist.sum([float(chosen[n] == "bf16") for n in autos]).tolist()
        for n, v in zip(autos, votes):
            if chosen[n] == "bf16" and v < dist.world_size:
                chosen[n] = "fp32"
                reason += "; not every process found bf16 faster: fp32 for all"
    record = {"requested": requested, "chosen": chosen, "reason": reason,
              "fp32_ms": verdict.fp32_ms if verdict else None,
              "bf16_ms": verdict.bf16_ms if verdict else None,
              "bf16_speedup": verdict.speedup if verdict else None,
              "threshold": BF16_MIN_SPEEDUP, "batch": verdict.batch if verdict else None,
              "cached": verdict.cached if verdict else None,
              "device": str(torch.device(device)), "cpu": describe_cpu(cpu_facts())}
    record["summary"] = precision_summary(record)
    return dataclasses.replace(cfg, **{n: chosen[n] for n in AUTO_PARAMS}), record


def precision_summary(record: dict) -> str:
    """One line: ``training fp32, AutoAttack search fp32 (auto: oneDNN reports no ...)``."""
    c, r = record["chosen"], record["requested"]
    line = f"training {c['precision']}, AutoAttack search {c['autoattack_precision']}"
    if c.get("eval_precision", "fp32") != "fp32":
        line += f", evaluation {c['eval_precision']}"
    given = "auto" if AUTO in (r["precision"], r["autoattack_precision"]) else "as set"
    return f"{line} ({given}: {record['reason']})" if record["reason"] != "as set" else f"{line} (as set)"


def resolve_for_network(cfg, model: nn.Module, device):
    """``cfg`` with ``auto`` resolved for a network of the model registry (its ``config`` gives
    the input shape), as :func:`resolve_run_precisions` does; another module: fp32. For
    steps built outside ``train`` (which resolves once, before building them)."""
    if cfg.precision != AUTO:  # what a step uses (an evaluation resolves its own)
        return cfg
    mc = getattr(model, "config", None)
    if mc is None or not hasattr(mc, "in_channels"):
        return dataclasses.replace(cfg, **{n: "fp32" for n in AUTO_PARAMS if getattr(cfg, n) == AUTO})
    return resolve_run_precisions(cfg, model, (mc.in_channels, mc.image_size, mc.image_size),
                                  device)[0]


def resolve_for_model(precision: str, model: nn.Module, x: torch.Tensor, device,
                      batch: int, param: str = "autoattack_precision") -> str:
    """``precision`` for an evaluation of ``model`` on inputs like ``x`` (``auto`` resolved as a
    run resolves it, from the same cache): for the evaluation entry points given ``auto``."""
    chosen, _ = resolve_precision(precision, device, model, tuple(x.shape[1:]), param,
                                  max(1, min(MEASURE_BATCH, batch)))
    return chosen
