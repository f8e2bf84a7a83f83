"""Devices, processes and random streams: ``device="auto"``, the ``torchrun`` process
group, and seeded blocks that leave the caller's random stream as it was."""
from __future__ import annotations

import atexit
import os
from contextlib import contextmanager
from dataclasses import dataclass

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
    """Run the block with the global torch RNG seeded to ``seed``; restore it afterwards.

    Forks the CPU generator and, for a CUDA ``device``, that device's generator, so the
    caller's random stream is untouched. ``seed=None`` leaves the RNG alone.
    """
    if seed is None:
        yield
        return
    dev = torch.device(device)
    devices = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
