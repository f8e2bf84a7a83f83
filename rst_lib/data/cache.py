"""Small image datasets decoded once: a uint8 tensor cache on disk, served from memory.

MNIST, CIFAR-10/100, SVHN and ImageFolder sets of small images (at most
:data:`MAX_CACHED_SIZE` px, not resized) are decoded once into one uint8 tensor per split,
``<data_dir>/.rst-cache/<name>-<split>-<fingerprint>.pt``, next to a JSON sidecar that
records the source fingerprint (every source file's path, size and mtime), the cache
file's size and its SHA-256. A load checks all three; a stale or corrupt cache is rebuilt
(one log line). A read-only ``data_dir`` (no write permission bits, or not writable) gets
its cache under ``$RST_CACHE_DIR`` (default ``~/.cache/rst-workbook``), in a folder named
after the data folder's path.

:class:`CachedImages` serves the images: ``images[i] / 255`` is exactly torchvision's
``ToTensor()`` of the decoded image. Its augmentation (:class:`Augment`: zero-padded random
crop, optional horizontal flip) runs on whole batches, on the batch's device
(:func:`random_crop_flip`), with the distribution of torchvision's
``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()``.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..utils.files import TORCH_LOAD_ERRORS, atomic_write, read_json, write_json

CACHE_VERSION = 1
CACHE_DIRNAME = ".rst-cache"
MAX_CACHED_SIZE = 64  # native image side (px) up to which an ImageFolder set is cached

log = logging.getLogger("rst_lib.data.datasets")


class NotCacheable(ValueError):
    """The images cannot go into one tensor (sizes differ, not square): use the PIL path."""


# ------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class Augment:
    """RandomCrop(side, padding=padding, fill 0) then, if ``flip``, RandomHorizontalFlip()."""
    padding: int
    flip: bool

    def torchvision_transforms(self, size: int) -> list:
        """The same augmentation for PIL images (the uncached path)."""
        from torchvision import transforms as T
        return [T.RandomCrop(size, padding=self.padding)] + ([T.RandomHorizontalFlip()] if self.flip else [])


def draw_crop_flip(n: int, aug: Augment, generator: torch.Generator | None = None):
    """Random (row offset, column offset, flipped) per image: each offset uniform over the
    ``2 * padding + 1`` positions of the padded image, a flip with probability 1/2."""
    dy = torch.randint(0, 2 * aug.padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * aug.padding + 1, (n,), generator=generator)
    flipped = (torch.rand(n, generator=generator) < 0.5) if aug.flip else torch.zeros(n, dtype=torch.bool)
    return dy, dx, flipped


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flipped: torch.Tensor,
              padding: int) -> torch.Tensor:
    """Images ``x`` (N, C, H, W) zero-padded by ``padding``, cropped back to H x W at
    (``dy``, ``dx``) of the padded image and mirrored where ``flipped``: one gather, on
    ``x``'s device, in ``x``'s dtype."""
    n, _, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (padding,) * 4) if padding else x
    rows = dy.to(dev)[:, None] + torch.arange(h, device=dev)                 # (N, H)
    cols = torch.arange(w, device=dev).expand(n, w)
    cols = torch.where(flipped.to(dev)[:, None], w - 1 - cols, cols) + dx.to(dev)[:, None]
    batch = torch.arange(n, device=dev)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]               # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_crop_flip(x: torch.Tensor, aug: Augment,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`crop_flip` with draws from ``generator`` (None: the global CPU RNG)."""
    return crop_flip(x, *draw_crop_flip(len(x), aug, generator), aug.padding)


def augment_seed(seed: int, rank: int = 0) -> int:
    """The augmentation generator's seed of a loader (seed, rank): unrelated to the order's."""
    return int.from_bytes(hashlib.sha256(f"augment:{seed}:{rank}".encode()).digest()[:7], "big")


# ------------------------------------------------------------------------------ dataset


class CachedImages(Dataset):
    """uint8 images (N, C, H, W) and int64 labels; an item is (image / 255, label), as
    ``ToTensor()`` gives it. ``augment``: what a batch loader applies (an item read on its
    own is augmented with the global RNG, as a torchvision dataset's transform would be)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor,
                 augment: Augment | None = None, classes: Sequence[str] = ()):
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(targets):
            raise ValueError("CachedImages needs uint8 images (N, C, H, W) and N labels")
        self.images, self.targets, self.augment = images, targets.long(), augment
        self.classes = list(classes)
        self._placed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = self.images[i][None]
        if self.augment is not None:
            x = random_crop_flip(x, self.augment)
        return x[0].float().div(255), int(self.targets[i])

    def subset(self, idx: torch.Tensor) -> "CachedImages":
        return CachedImages(self.images[idx], self.targets[idx], self.augment, self.classes)

    def with_augment(self, augment: Augment | None) -> "CachedImages":
        """The same tensors (shared, not copied) with another augmentation."""
        return CachedImages(self.images, self.targets, augment, self.classes)

    def on(self, device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) on ``device``, moved there once and kept. On a GPU where they
        would take over a quarter of the free memory they stay in host memory and each
        batch is copied over."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        if device.type == "cpu":
            return self.images, self.targets
        key = str(device)
        if key not in self._placed:
            fits = True
            if device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                fits = self.images.nbytes < free / 4
            self._placed[key] = ((self.images.to(device), self.targets.to(device)) if fits
                                 else (self.images, self.targets))
        return self._placed[key]


# ------------------------------------------------------------------------- cache files


def files_fingerprint(paths: Sequence[str | os.PathLike], root: Path, extra: str = "") -> str:
    """SHA-256 of every file's path (relative to ``root``), size and mtime, in order."""
    h = hashlib.sha256(f"rst-cache v{CACHE_VERSION}\n{extra}\n".encode())
    for p in paths:
        st = os.stat(p)
        rel = os.path.relpath(p, root)
        h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def tree_files(root: Path, names: Sequence[str]) -> list[Path]:
    """Every file under ``root / name`` for each name (a file or a folder), sorted."""
    out = []
    for name in names:
        p = root / name
        out += sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    return out


def _writable(folder: Path) -> bool:
    """Writable for us, and not marked read-only by its permission bits (root ignores them)."""
    try:
        return bool(folder.stat().st_mode & 0o222) and os.access(folder, os.W_OK)
    except OSError:
        return False


def cache_folder(data_dir: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the caches of ``data_dir`` go: ``cache_dir`` when given, else
    ``data_dir/.rst-cache``, or for a read-only ``data_dir`` ``$RST_CACHE_DIR`` (default
    ``~/.cache/rst-workbook``) / ``<data folder name>-<hash of its path>``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    inside = data_dir / CACHE_DIRNAME
    if _writable(inside) or (not inside.exists() and _writable(data_dir)):
        return inside
    base = Path(os.environ.get("RST_CACHE_DIR") or "~/.cache/rst-workbook").expanduser()
    tag = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    folder = base / f"{data_dir.resolve().name or 'data'}-{tag}"
    log.info("data_dir %s is read-only: its data cache is kept in %s", data_dir, folder)
    return folder


def _read_valid(path: Path, meta_path: Path, fingerprint: str) -> tuple[dict | None, str]:
    """(the cache's contents, "") when it is complete and intact, else (None, why not)."""
    if not path.exists():
        return None, "missing"
    meta = read_json(meta_path)
    if meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != fingerprint:
        return None, f"no valid sidecar {meta_path.name}"
    if path.stat().st_size != meta.get("bytes"):
        return None, f"size {path.stat().st_size} bytes, expected {meta.get('bytes')} (truncated?)"
    raw = path.read_bytes()  # read once: checksummed, then loaded from memory
    if hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
        return None, "checksum mismatch (corrupted)"
    try:
        blob = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS as e:
        return None, f"unreadable ({type(e).__name__})"
    if list(blob["images"].shape) != meta.get("shape") or blob["images"].dtype != torch.uint8:
        return None, "contents differ from the sidecar"
    return blob, ""


def load_or_build(folder: Path, stem: str, fingerprint: str,
                  decode: Callable[[], tuple[torch.Tensor, torch.Tensor, list[str]]],
                  source: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images uint8, labels int64, class names) from ``folder/<stem>-<fp>.pt`` when it is
    valid for ``fingerprint``; else ``decode()`` them and write the cache (older caches of
    ``stem`` are removed). A cache that cannot be written is reported; the images are
    still returned."""
    name = f"{stem}-{fingerprint[:16]}"
    path, meta_path = folder / f"{name}.pt", folder / f"{name}.json"
    blob, why = _read_valid(path, meta_path, fingerprint)
    if blob is not None:
        return blob["images"], blob["targets"], list(blob["classes"])
    stale = sorted(p for p in folder.glob("*.pt")
                   if p.name.startswith(f"{stem}-") and p != path) if folder.is_dir() else []
    if why != "missing":
        log.warning("data cache %s is %s: rebuilding it from %s", path, why, source)
    elif stale:
        log.warning("data cache %s is stale (the files under %s changed): rebuilding it as %s",
                    stale[0], source, path.name)
    else:
        log.info("decoding %s once into the data cache %s", source, path)
    images, targets, classes = decode()
    buf = io.BytesIO()  # serialized in memory: the same bytes whoever builds it (torchrun ranks)
    torch.save({"images": images, "targets": targets, "classes": classes}, buf)
    raw = buf.getbuffer()
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(raw))
        write_json(meta_path, {"version": CACHE_VERSION, "fingerprint": fingerprint,
                               "source": source, "bytes": len(raw),
                               "sha256": hashlib.sha256(raw).hexdigest(),
                               "shape": list(images.shape), "classes": classes})
        for old in stale:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
    except OSError as e:
        log.warning("could not write the data cache %s (%s); using the decoded images without "
                    "a cache", path, e)
    return images, targets, classes


def decode_image_files(samples: Sequence[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageFolder samples decoded as torchvision's loader does (PIL, ``convert("RGB")``)
    into one uint8 (N, 3, S, S) tensor. :class:`NotCacheable` if the sizes differ."""
    from PIL import Image
    images = None
    for i, (p, _) in enumerate(samples):
        with open(p, "rb") as f:
            a = np.asarray(Image.open(f).convert("RGB"))
        if images is None:
            if a.shape[0] != a.shape[1]:
                raise NotCacheable(f"{p} is {a.shape[1]}x{a.shape[0]} px, not square")
            images = np.empty((len(samples), *a.shape), dtype=np.uint8)
        if a.shape != images.shape[1:]:
            raise NotCacheable(f"{p} is {a.shape[1]}x{a.shape[0]} px, the first image "
                               f"{images.shape[2]}x{images.shape[1]}")
        images[i] = a
    if images is None:
        images = np.empty((0, 1, 1, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor([t for _, t in samples], dtype=torch.int64)


def torchvision_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 (N, C, H, W) images and labels of a torchvision MNIST / CIFAR / SVHN set,
    as its ``__getitem__`` + ``ToTensor()`` would give them (times 255)."""
    data = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(np.asarray(ds.data))
    if data.dim() == 3:            # MNIST: (N, H, W), grey
        x = data[:, None]
    elif data.shape[-1] == 3:      # CIFAR: (N, H, W, C)
        x = data.permute(0, 3, 1, 2)
    else:                          # SVHN: (N, C, H, W) already
        x = data
    labels = ds.labels if hasattr(ds, "labels") else ds.targets
    return x.contiguous().to(torch.uint8), torch.as_tensor(np.asarray(labels), dtype=torch.int64)
