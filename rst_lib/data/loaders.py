"""Batches of a dataset: the example order (one per seed, sharded per rank as
``DistributedSampler`` shards it), in-memory and cached batches augmented on the run's
device, and DataLoader worker processes for images decoded per item.
"""
from __future__ import annotations

import os
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from .cache import CachedImages, augment_seed, random_crop_flip


def shard_order(n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """The example order of one rank, exactly as ``DistributedSampler(seed=seed)`` (epoch 0)
    makes it: one permutation, padded to a multiple of ``world_size``, every
    ``world_size``-th index from ``rank``. With one rank it is the plain permutation, so the
    union of the ranks' t-th batches is the single-process t-th batch."""
    order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle
             else torch.arange(n))
    if world_size > 1:
        pad = (-n) % world_size
        order = torch.cat([order, order[:pad]])[rank::world_size]
    return order


class TensorBatches:
    """Fast in-memory batches for a TensorDataset (no per-item collation)."""

    def __init__(self, ds: TensorDataset, batch_size: int, shuffle: bool, seed: int,
                 rank: int = 0, world_size: int = 1, with_index: bool = False):
        self.ds, self.batch_size, self.shuffle, self.seed = ds, batch_size, shuffle, seed
        self.rank, self.world_size, self.with_index = rank, world_size, with_index
        self.dataset, self.epoch = ds, 0

    def set_epoch(self, epoch: int) -> None:
        """Passes from now on use seed + epoch (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def __len__(self):
        n = -(-len(self.ds) // self.world_size)
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = shard_order(len(self.ds), self.shuffle, self.seed + self.epoch, self.rank,
                            self.world_size)
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield tuple(t[idx] for t in self.ds.tensors) + ((idx,) if self.with_index else ())


class CachedBatches(TensorBatches):
    """Batches of a :class:`~rst_lib.data.cache.CachedImages` set in :func:`shard_order`'s
    order. The uint8 images are moved to ``device`` once; each batch is gathered, augmented
    (``ds.augment``: crop and flip of the whole batch, draws from a generator seeded by
    (seed, rank), never the global RNG) and converted to float in [0, 1] on ``device``."""

    def __init__(self, ds: CachedImages, batch_size: int, shuffle: bool, seed: int,
                 rank: int = 0, world_size: int = 1, with_index: bool = False,
                 device: torch.device | str | None = None):
        super().__init__(ds, batch_size, shuffle, seed, rank, world_size, with_index)
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, targets = self.ds.on(self.device)
        seed, aug = self.seed + self.epoch, self.ds.augment
        order = shard_order(len(self.ds), self.shuffle, seed, self.rank, self.world_size)
        gen = torch.Generator().manual_seed(augment_seed(seed, self.rank)) if aug else None
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            at = idx.to(images.device)
            x = images[at].to(self.device, non_blocking=True)
            if aug is not None:
                x = random_crop_flip(x, aug, gen)
            y = targets[at].to(self.device, non_blocking=True)
            yield (x.float().div_(255), y) + ((idx,) if self.with_index else ())


def set_epoch(loader, epoch: int) -> None:
    """The loader's next passes are epoch ``epoch``'s: order (and augmentation) from its seed
    + epoch, so one loader, and its worker processes, serve a whole run."""
    (loader.sampler if isinstance(loader, DataLoader) else loader).set_epoch(epoch)


def resolve_num_workers(num_workers: int | str) -> int:
    """DataLoader worker processes: ``auto`` is one per CPU this process may use but one
    (for the training process), at most 8; none with 2 CPUs or fewer, where one worker
    was slower than decoding in the main process (bench/data_pipeline.py)."""
    if num_workers != "auto":
        return int(num_workers)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if cpus <= 2 else min(8, cpus - 1)


class WithIndex(Dataset):
    """(x, y, index) items: per-example state (a carried perturbation) needs the index."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return (*self.ds[i], i)


def make_loader(ds: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                num_workers: int | str = 0, rank: int = 0, world_size: int = 1,
                with_index: bool = False, device: torch.device | str | None = None):
    """Batches of (images, labels); ``seed`` fixes the order (use seed + epoch per epoch).

    ``rank``/``world_size`` shard the examples for distributed training
    (``DistributedSampler`` semantics); ``batch_size`` is then per rank. ``with_index``
    adds each example's index in ``ds`` as a third element.

    A cached set (:class:`~rst_lib.data.cache.CachedImages`) gives :class:`CachedBatches`:
    batches made and augmented on ``device`` (None: the CPU). Other datasets go through a
    ``DataLoader`` with ``num_workers`` worker processes (``"auto"``:
    :func:`resolve_num_workers`), kept alive between passes, and pinned memory for CUDA.
    """
    if isinstance(ds, CachedImages):
        return CachedBatches(ds, batch_size, shuffle, seed, rank, world_size, with_index, device)
    if isinstance(ds, TensorDataset):
        return TensorBatches(ds, batch_size, shuffle, seed, rank, world_size, with_index)
    if with_index:
        ds = WithIndex(ds)
    workers = resolve_num_workers(num_workers)
    cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    # DistributedSampler also for one process: the same permutation whatever the world size.
    sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=shuffle,
                                 seed=seed, drop_last=False)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=cuda, persistent_workers=workers > 0)
