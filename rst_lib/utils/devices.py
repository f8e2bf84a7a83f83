"""Devices, processes and random streams: ``device="auto"``, the ``torchrun`` process
group, and seeded blocks that leave the caller's random stream as it was."""
from __future__ import annotations

import atexit
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as torch_dist


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
            torch_dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        """Wait for every rank (no-op with one process)."""
        if self.world_size > 1:
            torch_dist.barrier()


def setup_distributed(device: torch.device) -> Distributed:
    """Join the process group that ``torchrun --nproc_per_node=N`` describes (env vars);
    gloo on CPU, nccl on CUDA. Without WORLD_SIZE > 1 this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # Leave the group before the interpreter tears down: a process exiting with a live
        # gloo group can abort ("terminate called without an active exception").
        atexit.register(_leave_process_group)
    return Distributed(torch_dist.get_rank(), torch_dist.get_world_size())


def _leave_process_group() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


@contextmanager
def seeded_rng(seed: int | None, device: str | torch.device = "cpu"):
    """Run the block with the global random streams seeded to ``seed``; restore them afterwards.

    Forks the torch CPU generator and, for a CUDA ``device``, that device's generator, and
    python's ``random`` and numpy's global RNG (seeded too: nothing in a seeded block draws
    from an unseeded stream), so the caller's random streams are untouched. ``seed=None``
    leaves them alone.
    """
    if seed is None:
        yield
        return
    dev = torch.device(device)
    devices = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev.type == "cuda" else []
    host = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2 ** 32)
            yield
    finally:
        random.setstate(host[0])
        np.random.set_state(host[1])


def generator_states() -> dict:
    """The state of every generator a run draws from, for a resumable checkpoint: torch's
    CPU generator, each CUDA device's generator (when this process uses CUDA), python's
    ``random`` and numpy's global RNG. Tensors and plain containers only (``last.pt`` is
    read with ``weights_only``). :func:`set_generator_states` restores them.

    (The data order and the batch augmentation have no state to keep: their generators are
    made anew each epoch from the seed and the epoch, :mod:`rst_lib.data.loaders`.)"""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(),
              "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                         "gauss": gauss},
              "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                        "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return states


def set_generator_states(states: dict | torch.Tensor) -> list[str]:
    """Restore what :func:`generator_states` saved (a bare tensor: the torch CPU state
    alone, as checkpoints before issue 26 kept it). Returns what could not be restored
    (e.g. CUDA states saved on 2 devices, resumed on 1), to be recorded with the run."""
    if isinstance(states, torch.Tensor):
        torch.set_rng_state(states)
        return ["the checkpoint keeps the torch CPU generator only (saved before issue 26): "
                "CUDA, python and numpy streams continue from the run's seed"]
    notes = []
    torch.set_rng_state(states["torch"])
    if "python" in states:
        p = states["python"]
        random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "numpy" in states:
        n = states["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                             n["has_gauss"], n["cached"]))
    saved_cuda = states.get("cuda") or []
    if saved_cuda:
        here = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for i, s in enumerate(saved_cuda[:here]):
            torch.cuda.set_rng_state(s, i)
        if here < len(saved_cuda):
            notes.append(f"the run was saved with {len(saved_cuda)} CUDA device generator(s) "
                         f"and resumed with {here}: the others are not restored, so random "
                         "draws on them differ from the run it replaces")
    return notes
