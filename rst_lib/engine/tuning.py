"""Tuned steps: cuDNN autotuning, the channels_last layout, and ``torch.compile`` with an
eager fallback (the ``channels_last`` and ``compile`` run parameters).

Compile boundary (:class:`CompiledNetwork`): the network is compiled *given* its masked
weights. Each call first computes every masked weight eagerly into parametrize's cache
(inside an attack they are already there, without a graph to the scores, from
:func:`masking.frozen_masks`; in the update step with the straight-through graph to the
scores), then runs the compiled graph, which reads them as inputs. The top-k masks and
their cache (keyed on the scores' version counter) stay in Python: traced, they would
recompile after every optimizer step (dynamo guards on the key), and excluding only
``mask()`` would split the graph at every layer. This way an attack step and an update
step are one graph each (two compilations per architecture and mode). Evaluations (the
per-epoch check, the final numbers) run the eager network.

Compiled and eager runs agree as fp32 arithmetic does, not bit for bit: on a conv2 search
step the compiled score gradients were as close to a float64 reference as eager's (both
~1e-3 on the first conv layers, whose sums cancel heavily), but sign-PGD steps and top-k
thresholds amplify such differences, so masks after a few steps differ slightly.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..masks import masking


class CompileFallbackWarning(UserWarning):
    """torch.compile failed here (no C++ compiler, unsupported op, ...): running eagerly."""


def resolve_channels_last(setting: bool | str, device: torch.device | str) -> bool:
    """``auto``: NHWC on CUDA (tensor-core convolutions want it), not on the CPU (it helped
    on an idle CPU and hurt on a busy one in ``make bench``); True / False as given."""
    if setting == "auto":
        return torch.device(device).type == "cuda"
    return bool(setting)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A batch of images in NHWC memory (other tensors unchanged)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@contextmanager
def backend_settings(device: torch.device | str):
    """For the block: cuDNN autotuning on CUDA (``cudnn.benchmark``: the fastest algorithm
    per input shape, measured once; a run's shapes are fixed). Restored afterwards."""
    before = torch.backends.cudnn.benchmark
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


class CompiledNetwork(nn.Module):
    """``module`` compiled with ``torch.compile`` at the boundary above, same interface.

    On an error of a compiled call (no C++ compiler, an unsupported operation, a failing
    backend) it warns once (:class:`CompileFallbackWarning`), re-runs that call eagerly and
    stays eager; ``fallback`` then holds the reason. An error that is not compile's shows
    up again in the eager call and propagates. Use ``module`` for state dicts and tickets.
    """

    def __init__(self, module: nn.Module, **compile_kwargs):
        super().__init__()
        self.module = module
        self.fallback: str | None = None
        # plain attributes, not submodules: the compiled wrapper and the layer list would
        # otherwise show every layer twice in named_modules() and state_dict()
        self.__dict__["_layers"] = [m for _, m in masking.masked_layers(module)]
        self.__dict__["_compiled"] = None
        try:
            self.__dict__["_compiled"] = torch.compile(module, **compile_kwargs)
        except Exception as e:  # e.g. a Python version torch.compile does not support
            self._fall_back(e)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def _fall_back(self, error: Exception) -> None:
        self.__dict__["_compiled"] = None
        first = (str(error).strip().splitlines() or [""])[0][:300]
        self.fallback = f"{type(error).__name__}: {first}"
        warnings.warn(f"torch.compile failed ({self.fallback}); running eagerly from now on",
                      CompileFallbackWarning, stacklevel=3)

    def forward(self, *args, **kwargs):
        if self._compiled is not None:
            try:
                with parametrize.cached():
                    for layer in self._layers:
                        layer.weight  # noqa: B018 - computed once, eagerly, into the cache
                    return self._compiled(*args, **kwargs)
            except Exception as e:  # compile's errors surface at a call; retry eagerly
                self._fall_back(e)
        return self.module(*args, **kwargs)
