"""rst_lib.data: the embedded digits, torchvision sets, image folders, loaders."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rst_lib.data.datasets import DatasetUnavailable, fixed_subset, load_dataset
from rst_lib.data.loaders import make_loader
from rst_lib.config import ConfigError


SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def test_mnist5k_shapes_labels_and_split():
    data = load_dataset("mnist5k")
    assert (len(data.train), len(data.test)) == (4000, 1000)
    x, y = data.train.tensors
    xt, yt = data.test.tensors
    assert x.shape == (4000, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) == 1.0
    assert torch.equal(torch.bincount(y), torch.full((10,), 400))
    assert torch.equal(torch.bincount(yt), torch.full((10,), 100))
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 28)
    # real digits: class means differ, and the split is the same every time
    assert (x[y == 1].mean() < x[y == 0].mean())  # ones have fewer ink pixels than zeros
    again = load_dataset("mnist5k")
    assert torch.equal(again.test.tensors[0], xt)
    # no test digit is also a training digit
    train_keys = {bytes(v.numpy().tobytes()) for v in x.view(4000, -1)}
    assert not any(bytes(v.numpy().tobytes()) in train_keys for v in xt.view(1000, -1))


def test_loader_order_is_seeded():
    data = load_dataset("mnist5k")
    a = [y for _, y in make_loader(data.train, 500, shuffle=True, seed=1)]
    b = [y for _, y in make_loader(data.train, 500, shuffle=True, seed=1)]
    c = [y for _, y in make_loader(data.train, 500, shuffle=True, seed=2)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert sum(len(v) for v in a) == 4000


def test_fixed_subset_covers_classes():
    data = load_dataset("mnist5k")
    sub = fixed_subset(data.test, 200)
    assert len(sub) == 200 and len(torch.bincount(sub.tensors[1])) == 10


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "mnist"])
def test_missing_torchvision_data_names_path(tmp_path, name):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetUnavailable, match=str(missing)) as e:
        load_dataset(name, data_dir=missing)
    assert "download=True" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetUnavailable, match=str(empty)):
        load_dataset(name, data_dir=empty)


def _write_folder(root: Path, split: str, classes=("cat", "dog"), n=3, size=8):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / split / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                root / split / c / f"{i}.png")


def test_imagefolder_with_val_split(tmp_path):
    _write_folder(tmp_path, "train")
    _write_folder(tmp_path, "val")
    data = load_dataset("imagefolder", data_dir=tmp_path)
    assert (len(data.train), len(data.test), data.num_classes, data.image_size) == (6, 6, 2, 8)
    x, y = next(iter(make_loader(data.test, 4)))
    assert x.shape == (4, 3, 8, 8) and 0 <= x.min() and x.max() <= 1


def test_imagefolder_missing_split_is_clear(tmp_path):
    _write_folder(tmp_path, "train")
    with pytest.raises(DatasetUnavailable, match="test"):
        load_dataset("imagefolder", data_dir=tmp_path)


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="shared CIFAR-10 JPEG copy not present")
def test_shared_cifar10_jpeg_loads_as_imagefolder():
    data = load_dataset("imagefolder", data_dir=SHARED_CIFAR, augment=False)
    assert (len(data.train), len(data.test), data.num_classes, data.image_size) == (50000, 10000, 10, 32)
    assert data.classes[:3] == ["airplane", "automobile", "bird"]
    x, y = data.test[0]
    assert x.shape == (3, 32, 32)


def test_unknown_dataset_name_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid choices are .*cifar10"):
        load_dataset("imagenet22k")
