"""The uint8 data cache (rst_lib.data.cache) against the PIL / torchvision path it replaces:
the same images, labels and order, augmentation with the same distribution, caches that
notice changed or damaged files, and an unaugmented validation split."""
import logging
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

import rst_lib
from rst_lib.data import datasets as data_mod
from rst_lib.config import ConfigError, RunConfig
from rst_lib.data.datasets import TORCHVISION_AUGMENT, load_dataset
from rst_lib.data.loaders import make_loader, resolve_num_workers, shard_order
from rst_lib.data.cache import (Augment, CachedImages, crop_flip, draw_crop_flip,
                                random_crop_flip)

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


# ------------------------------------------------------------------------------ fixtures


def _write_folder(root: Path, split: str, n: int = 5, size: int = 8, seed: int = 0) -> None:
    """cat: RGB PNGs, dog: RGB JPEGs, owl: greyscale PNGs (ImageFolder converts to RGB)."""
    rng = np.random.default_rng(seed)
    for c, ext, shape in (("cat", "png", (size, size, 3)), ("dog", "jpg", (size, size, 3)),
                          ("owl", "png", (size, size))):
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
                root / split / c / f"{i}.{ext}", **({"quality": 90} if ext == "jpg" else {}))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "tiny"
    _write_folder(root, "train", n=6, seed=0)
    _write_folder(root, "test", n=3, seed=1)
    return root


def _items(ds) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(xs), torch.tensor(ys)


def _assert_same_images(cached, reference):
    """Item by item: image tensors bit-identical (uint8 / 255 == ToTensor()), same labels."""
    assert isinstance(cached, CachedImages) and not isinstance(reference, CachedImages)
    assert len(cached) == len(reference) > 0
    xc, yc = _items(cached)
    xr, yr = _items(reference)
    assert xc.dtype == xr.dtype == torch.float32 and xc.shape == xr.shape
    assert torch.equal(xc, xr)
    assert torch.equal(yc, yr)
    assert torch.equal(cached.images, (xr * 255).round().to(torch.uint8))


# ----------------------------------------------------------------- same images, labels


def test_imagefolder_cache_equals_the_pil_path(folder):
    cached = load_dataset("imagefolder", data_dir=folder, augment=False)
    pil = load_dataset("imagefolder", data_dir=folder, augment=False, cache=False)
    _assert_same_images(cached.train, pil.train)
    _assert_same_images(cached.test, pil.test)
    for f in ("name", "num_classes", "in_channels", "image_size", "mean", "std", "classes"):
        assert getattr(cached, f) == getattr(pil, f), f
    assert cached.classes == ["cat", "dog", "owl"] and cached.image_size == 8
    # written once inside data_dir: one cache file and one sidecar per split
    names = sorted(p.name for p in (folder / ".rst-cache").iterdir())
    assert [n.rsplit("-", 1)[0] for n in names] == ["tiny-test"] * 2 + ["tiny-train"] * 2
    assert {Path(n).suffix for n in names} == {".pt", ".json"}


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="shared CIFAR-10 JPEG copy not present")
def test_real_cifar10_jpegs_subset_cache_equals_the_pil_path(tmp_path):
    """The first 40 / 10 JPEGs of every class (symlinks into tmp_path, not copies)."""
    root = tmp_path / "cifar-subset"
    for split, k in (("train", 40), ("test", 10)):
        for c in sorted(os.listdir(SHARED_CIFAR / split)):
            (root / split / c).mkdir(parents=True)
            for f in sorted(os.listdir(SHARED_CIFAR / split / c))[:k]:
                os.symlink(SHARED_CIFAR / split / c / f, root / split / c / f)
    cached = load_dataset("imagefolder", data_dir=root, augment=False)
    pil = load_dataset("imagefolder", data_dir=root, augment=False, cache=False)
    _assert_same_images(cached.train, pil.train)
    _assert_same_images(cached.test, pil.test)
    assert (len(cached.train), cached.image_size, cached.classes[0]) == (400, 32, "airplane")
    aug = load_dataset("imagefolder", data_dir=root)
    assert aug.train.augment == Augment(4, True)  # CIFAR: RandomCrop(32, padding=4) + flip


def _fake_cifar10(root: Path, monkeypatch, per_file: int = 6):
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # fake files
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_file).tolist()}
        (d / name).write_bytes(pickle.dumps(entry))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))


def _fake_mnist(root: Path, monkeypatch, n: int = 12):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix in ("train", "t10k"):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            bytes([0, 0, 8, 3]) + struct.pack(">3i", n, 28, 28) + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + struct.pack(">i", n) + rng.integers(0, 10, n, dtype=np.uint8).tobytes())


def _fake_svhn(root: Path, monkeypatch, n: int = 10):
    import scipy.io
    import torchvision.datasets.svhn as tv_svhn
    monkeypatch.setattr(tv_svhn, "check_integrity", lambda *a, **k: True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        scipy.io.savemat(root / f"{split}_32x32.mat",
                         {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                          "y": rng.integers(1, 11, (n, 1)).astype(np.uint8)})  # 10 means 0


FAKES = {"cifar10": _fake_cifar10, "mnist": _fake_mnist, "svhn": _fake_svhn}


@pytest.mark.parametrize("name", sorted(FAKES))
def test_torchvision_cache_equals_the_torchvision_path(tmp_path, monkeypatch, name):
    root = tmp_path / name
    FAKES[name](root, monkeypatch)
    cached = load_dataset(name, data_dir=root)
    tv = load_dataset(name, data_dir=root, augment=False, cache=False)
    _assert_same_images(cached.train_eval, tv.train)
    _assert_same_images(cached.test, tv.test)
    assert cached.classes == tv.classes and cached.in_channels == tv.in_channels
    assert cached.train.augment == TORCHVISION_AUGMENT.get(name)  # mnist: none, svhn: no flip
    assert list((root / ".rst-cache").glob(f"{name}-train-*.pt"))


# -------------------------------------------------------------------------------- order


@pytest.mark.parametrize("world_size", [1, 2])
def test_same_order_and_batches_as_the_dataloader_path(folder, world_size):
    cached = load_dataset("imagefolder", data_dir=folder, augment=False)
    pil = load_dataset("imagefolder", data_dir=folder, augment=False, cache=False)
    for rank in range(world_size):
        new = list(make_loader(cached.train, 4, shuffle=True, seed=7, rank=rank,
                               world_size=world_size, with_index=True))
        old = list(make_loader(pil.train, 4, shuffle=True, seed=7, rank=rank,
                               world_size=world_size, with_index=True))
        assert len(new) == len(old) == len(make_loader(cached.train, 4, world_size=world_size))
        for (x, y, i), (xo, yo, io) in zip(new, old):
            assert torch.equal(i, io) and torch.equal(y, yo) and torch.equal(x, xo)
        assert torch.equal(torch.cat([b[2] for b in new]),
                           shard_order(len(cached.train), True, 7, rank, world_size))
    other = torch.cat([b[2] for b in make_loader(cached.train, 4, shuffle=True, seed=8,
                                                 with_index=True)])
    assert not torch.equal(other, shard_order(len(cached.train), True, 7))


# ------------------------------------------------------------------------- augmentation


def test_crop_flip_is_torchvisions_pad_crop_flip_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8, generator=g)
    dy, dx, flipped = draw_crop_flip(64, Augment(3, True), g)
    out = crop_flip(x, dy, dx, flipped, 3)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for k in range(64):
        ref = TF.crop(TF.pad(x[k], [3], fill=0), int(dy[k]), int(dx[k]), 12, 12)
        ref = TF.hflip(ref) if flipped[k] else ref
        assert torch.equal(out[k], ref), k
    assert flipped.any() and not flipped.all() and len(set(dy.tolist())) == 7


def _position_images(n: int, size: int = 32) -> torch.Tensor:
    """Channel 0: row + 1, channel 1: column + 1, channel 2: 255 (0 only in the padding)."""
    r = torch.arange(1, size + 1, dtype=torch.uint8)
    img = torch.stack([r[:, None].expand(size, size), r[None, :].expand(size, size),
                       torch.full((size, size), 255, dtype=torch.uint8)])
    return img.expand(n, 3, size, size).contiguous()


def _recover(out: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dy, dx, flipped) of crops of :func:`_position_images` (uint8 batch), read at the
    centre pixel, which no offset of at most ``pad`` moves into the padding."""
    c = out.shape[-1] // 2
    flipped = out[:, 1, c, c + 1].long() < out[:, 1, c, c].long()
    dy = out[:, 0, c, c].long() - 1 - c + pad
    dx = out[:, 1, c, c].long() - 1 + pad - torch.where(flipped, out.shape[-1] - 1 - c, c)
    return dy, dx, flipped


def test_cached_augmentation_has_torchvisions_distribution():
    """CIFAR augmentation through the cached loader: every crop offset uniform over the 9
    positions (jointly over the 81), flips at rate 1/2, each image exactly a zero-padded
    shifted / mirrored copy; torchvision's RandomCrop + RandomHorizontalFlip measured the
    same way gives the same frequencies."""
    n, pad = 20_000, 4
    ds = CachedImages(_position_images(n), torch.zeros(n, dtype=torch.long), Augment(pad, True))
    batches = [(x * 255).round().to(torch.uint8) for x, _ in make_loader(ds, 500, shuffle=True, seed=3)]
    out = torch.cat(batches)
    dy, dx, flipped = _recover(out, pad)
    assert dy.min() == dx.min() == 0 and dy.max() == dx.max() == 2 * pad
    for k in range(0, n, 97):  # exact copies (zero padding included) for the recovered draws
        assert torch.equal(out[k], crop_flip(ds.images[k:k + 1], dy[k:k + 1], dx[k:k + 1],
                                             flipped[k:k + 1], pad)[0])
    freq_y = torch.bincount(dy, minlength=9) / n
    freq_x = torch.bincount(dx, minlength=9) / n
    joint = torch.bincount(dy * 9 + dx, minlength=81) / n
    # binomial standard errors: 0.0022 (offsets), 0.0035 (flips), 0.0008 (joint cells)
    assert (freq_y - 1 / 9).abs().max() < 0.02 and (freq_x - 1 / 9).abs().max() < 0.02
    assert (joint - 1 / 81).abs().max() < 0.006
    assert abs(flipped.float().mean().item() - 0.5) < 0.025
    # torchvision's transforms on the same image (global RNG, seeded), read the same way
    tv = T.Compose([T.RandomCrop(32, padding=pad), T.RandomHorizontalFlip()])
    torch.manual_seed(0)
    m = 3000
    ref = torch.stack([tv(ds.images[0]) for _ in range(m)])
    ry, rx, rf = _recover(ref, pad)
    assert (torch.bincount(ry, minlength=9) / m - freq_y).abs().max() < 0.04  # se 0.006
    assert (torch.bincount(rx, minlength=9) / m - freq_x).abs().max() < 0.04
    assert abs(rf.float().mean().item() - flipped.float().mean().item()) < 0.06  # se 0.009


def test_svhn_augmentation_never_flips_and_small_folders_pad_by_an_eighth(folder):
    n = 4000
    svhn = CachedImages(_position_images(n), torch.zeros(n, dtype=torch.long),
                        TORCHVISION_AUGMENT["svhn"])
    out = torch.cat([(x * 255).round().to(torch.uint8) for x, _ in make_loader(svhn, 1000)])
    dy, dx, flipped = _recover(out, 4)
    assert not flipped.any() and set(dy.tolist()) == set(dx.tolist()) == set(range(9))
    data = load_dataset("imagefolder", data_dir=folder)  # 8 px images: padding 8 // 8 = 1
    assert data.train.augment == Augment(1, True) and data.test.augment is None
    plain = data.train_eval
    seen = set()
    for x, _, idx in make_loader(data.train, 5, shuffle=True, seed=1, with_index=True):
        for img, i in zip(x, idx):
            src = plain.images[i]
            matches = [(a, b, f) for a in range(3) for b in range(3) for f in (False, True)
                       if torch.equal(img, crop_flip(src[None], torch.tensor([a]), torch.tensor([b]),
                                                     torch.tensor([f]), 1)[0].float() / 255)]
            assert matches, f"example {int(i)} is not a shifted / flipped copy"
            seen.update(matches)
    assert len(seen) > 4  # the draws vary


def test_augmentation_is_seeded_per_loader_and_leaves_the_global_rng_alone(folder):
    data = load_dataset("imagefolder", data_dir=folder)
    state = torch.get_rng_state()
    a = [x for x, _ in make_loader(data.train, 6, shuffle=True, seed=11)]
    b = [x for x, _ in make_loader(data.train, 6, shuffle=True, seed=11)]
    c = [x for x, _ in make_loader(data.train, 6, shuffle=False, seed=12)]
    d = [x for x, _ in make_loader(data.train, 6, shuffle=False, seed=13)]
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(c, d))  # same order, other draws
    x = data.train.images[:4]
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(random_crop_flip(x, Augment(1, True), g1), random_crop_flip(x, Augment(1, True), g2))


# ---------------------------------------------------------------------- cache validity


def _count_decodes(monkeypatch) -> list:
    calls = []
    real = data_mod.decode_image_files

    def counting(samples):
        calls.append(len(samples))
        return real(samples)
    monkeypatch.setattr(data_mod, "decode_image_files", counting)
    return calls


def test_cache_is_reused_then_rebuilt_when_a_file_changes(folder, monkeypatch, caplog):
    calls = _count_decodes(monkeypatch)
    load_dataset("imagefolder", data_dir=folder)
    assert calls == [18, 9]  # train, test: decoded once
    with caplog.at_level(logging.INFO, logger="rst_lib.data.datasets"):
        again = load_dataset("imagefolder", data_dir=folder, augment=False)
    assert calls == [18, 9] and not caplog.records  # valid: read, nothing decoded or logged
    changed = folder / "train" / "cat" / "0.png"
    Image.fromarray(np.full((8, 8, 3), 7, dtype=np.uint8)).save(changed)
    st = changed.stat()  # a later edit, even on a file system with coarse timestamps
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    with caplog.at_level(logging.WARNING, logger="rst_lib.data.datasets"):
        fresh = load_dataset("imagefolder", data_dir=folder, augment=False)
    assert calls == [18, 9, 18]  # only the changed split
    assert len(caplog.records) == 1 and "stale" in caplog.text
    assert torch.all(fresh.train.images[0] == 7) and not torch.equal(fresh.train.images, again.train.images)
    _assert_same_images(fresh.train, load_dataset("imagefolder", data_dir=folder, augment=False,
                                                  cache=False).train)
    assert len(list((folder / ".rst-cache").glob("tiny-train-*"))) == 2  # old cache removed
    touched = folder / "test" / "owl" / "1.png"  # same bytes, a later mtime: rebuilt too
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    load_dataset("imagefolder", data_dir=folder)
    assert calls == [18, 9, 18, 9]


@pytest.mark.parametrize("damage, message", [
    ("truncate", "truncated"), ("flip_byte", "checksum"), ("drop_sidecar", "sidecar")])
def test_damaged_cache_is_rebuilt(folder, monkeypatch, caplog, damage, message):
    good = load_dataset("imagefolder", data_dir=folder, augment=False)
    (pt,) = (folder / ".rst-cache").glob("tiny-train-*.pt")
    raw = pt.read_bytes()
    if damage == "truncate":
        pt.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip_byte":
        pt.write_bytes(raw[:-100] + bytes([raw[-100] ^ 0xFF]) + raw[-99:])
    else:
        pt.with_suffix(".json").unlink()
    calls = _count_decodes(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="rst_lib.data.datasets"):
        again = load_dataset("imagefolder", data_dir=folder, augment=False)
    assert calls == [18] and len(caplog.records) == 1 and message in caplog.text
    assert torch.equal(again.train.images, good.train.images)
    assert pt.read_bytes() == raw  # rebuilt byte for byte; the next load reads it
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rst_lib.data.datasets"):
        third = load_dataset("imagefolder", data_dir=folder, augment=False)
    assert calls == [18] and not caplog.records
    assert torch.equal(third.train.images, good.train.images)


def test_read_only_data_dir_caches_elsewhere(folder, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RST_CACHE_DIR", str(tmp_path / "elsewhere"))
    folder.chmod(0o555)
    try:
        with caplog.at_level(logging.INFO, logger="rst_lib.data.datasets"):
            data = load_dataset("imagefolder", data_dir=folder, augment=False)
    finally:
        folder.chmod(0o755)
    assert not (folder / ".rst-cache").exists()
    assert len(list((tmp_path / "elsewhere").glob("tiny-*/tiny-train-*.pt"))) == 1
    assert "read-only" in caplog.text and isinstance(data.train, CachedImages)
    explicit = load_dataset("imagefolder", data_dir=folder, cache_dir=tmp_path / "mine")
    assert torch.equal(explicit.train.images, data.train.images)
    assert len(list((tmp_path / "mine").glob("*.pt"))) == 2


def test_a_runs_data_follows_its_cache_parameters(folder, tmp_path):
    from rst_lib.engine.tasks import load_run_data
    cfg = RunConfig(dataset="imagefolder", data_dir=str(folder))
    uncached = load_run_data(cfg.replace(data_cache=False))
    assert not isinstance(uncached.train, CachedImages)
    assert not (folder / ".rst-cache").exists()
    elsewhere = load_run_data(cfg.replace(data_cache_dir=str(tmp_path / "mine")))
    assert isinstance(elsewhere.train, CachedImages) and not (folder / ".rst-cache").exists()
    assert len(list((tmp_path / "mine").glob("*.pt"))) == 2


# ------------------------------------------------------------------- validation split


def test_validation_split_is_unaugmented_and_matches_the_pil_path(folder):
    cached = load_dataset("imagefolder", data_dir=folder)  # augment=True
    pil = load_dataset("imagefolder", data_dir=folder, cache=False)
    train, val = cached.validation_split(0.25, seed=4)
    train_p, val_p = pil.validation_split(0.25, seed=4)
    assert train.augment == Augment(1, True) and val.augment is None
    assert (len(train), len(val)) == (len(train_p), len(val_p)) == (14, 4)  # round(4.5) = 4
    assert torch.equal(val.targets, torch.tensor([val_p[i][1] for i in range(len(val_p))]))
    xs, ys = zip(*make_loader(val, 2, shuffle=True, seed=0))  # the loader leaves it as is
    order = shard_order(len(val), True, 0)
    assert torch.equal(torch.cat(xs), _items(val_p)[0][order])
    assert torch.equal(torch.cat(ys), val.targets[order])
    assert torch.equal(train.targets, torch.tensor([train_p[i][1] for i in range(len(train_p))]))


def test_training_on_the_cache_equals_training_on_the_pil_path(folder):
    """Unaugmented: the same batches in the same order, hence the same training. (Natural
    training: a DataLoader draws a seed from the global RNG on every pass, the cached
    loader does not, so attack random starts during the epochs would differ.)"""
    cfg = RunConfig(dataset="imagefolder", data_dir=str(folder), augment=False, model="conv2",
                    train_attack="none",
                    width=0.125, epochs=1, batch_size=6, eval_batch_size=8, val_fraction=0.2,
                    steps=1, eval_steps=1, autoattack="none", final_examples=9).validate()
    runs = [rst_lib.train(cfg.replace(data_cache=c), progress=False) for c in (True, False)]
    assert isinstance(runs[0].data.train, CachedImages)
    assert not isinstance(runs[1].data.train, CachedImages)
    assert runs[0].history[0]["train_loss"] == runs[1].history[0]["train_loss"]
    assert runs[0].final == runs[1].final


# ------------------------------------------------------------------------ num_workers


def test_num_workers_auto_follows_the_cpus(monkeypatch, folder):
    for cpus, workers in ((1, 0), (2, 0), (3, 2), (4, 3), (32, 8)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)), raising=False)
        assert resolve_num_workers("auto") == workers
    assert resolve_num_workers(3) == 3
    for ok in ("auto", 0, 2):
        RunConfig(num_workers=ok).validate()
    for bad in (-1, "many", True):
        with pytest.raises(ConfigError, match="num_workers"):
            RunConfig(num_workers=bad).validate()
    pil = load_dataset("imagefolder", data_dir=folder, augment=False, cache=False)
    loader = make_loader(pil.train, 4, shuffle=True, seed=2, num_workers=1)
    assert loader.num_workers == 1 and loader.persistent_workers
    plain = make_loader(pil.train, 4, shuffle=True, seed=2)
    assert plain.num_workers == 0 and not plain.persistent_workers
    for (x, y), (xo, yo) in zip(loader, plain):
        assert torch.equal(x, xo) and torch.equal(y, yo)


def test_one_loader_per_run_gives_each_epoch_the_order_of_its_own_seed():
    """training.py builds the training loader once (its workers live all run) and calls
    set_epoch: epoch e's batches (order and augmentation) are those of a loader made with
    seed + e, for in-memory, cached and DataLoader-served datasets."""
    from torch.utils.data import Subset, TensorDataset
    from rst_lib.data.loaders import set_epoch
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(40) % 10
    sets = {"tensor": TensorDataset(x.float() / 255, y), "cached": CachedImages(x, y, Augment(1, True)),
            "dataloader": Subset(TensorDataset(x.float() / 255, y), list(range(40)))}
    for name, ds in sets.items():
        once = make_loader(ds, 16, shuffle=True, seed=700)
        for epoch in (0, 3):
            set_epoch(once, epoch)
            fresh = make_loader(ds, 16, shuffle=True, seed=700 + epoch)
            got, want = list(once), list(fresh)
            assert len(got) == len(want) == 3, name
            for (xa, ya), (xb, yb) in zip(got, want):
                assert torch.equal(xa, xb) and torch.equal(ya, yb), (name, epoch)
        set_epoch(once, 1)
        assert not torch.equal(next(iter(once))[1], next(iter(make_loader(ds, 16, True, 700)))[1]), name
