"""Where each dataset's files are and whether they are there: the check a run makes before
a kernel starts, without reading an image (and without importing torch: the CLI refuses a
missing dataset in well under a second)."""
from __future__ import annotations

import os
from pathlib import Path

DATA_HELP = ("Provide the data by pointing data_dir at a folder that holds it, "
             "or pass download=True on a machine with internet access.")


class DatasetUnavailable(FileNotFoundError):
    """The data is not where we looked. The message names the path and how to fix it."""


def default_data_dir() -> Path:
    return Path(os.environ.get("RST_DATA_DIR", "data")).expanduser()


TORCHVISION_FILES = {"cifar10": ["cifar-10-batches-py"], "cifar100": ["cifar-100-python"],
                     "svhn": ["train_32x32.mat", "test_32x32.mat"], "mnist": ["MNIST"]}


def check_available(name: str, data_dir: str | os.PathLike | None = None,
                    download: bool = False) -> None:
    """Raise :class:`DatasetUnavailable` (naming the full path) when ``load_dataset`` would
    not find the data: a check that reads no image, for before a kernel starts."""
    data_status(name, data_dir, download)


def data_status(name: str, data_dir: str | os.PathLike | None = None,
                download: bool = False) -> str:
    """One line saying where the data of ``name`` is (``rst-workbook run --check`` prints
    it), or :class:`DatasetUnavailable` with a one-line reason."""
    if name == "mnist5k":
        return "mnist5k: embedded in the package"
    root = (Path(data_dir).expanduser() if data_dir is not None else default_data_dir()).resolve()
    if name == "imagefolder":
        if data_dir is None:
            raise DatasetUnavailable("dataset=imagefolder needs data_dir: a folder with train/ and "
                                     "test/ (or val/) holding one subfolder per class")
        if not (root / "train").is_dir() or not any((root / d).is_dir() for d in ("test", "val")):
            raise DatasetUnavailable(f"dataset=imagefolder: {str(root)!r} must hold train/ and "
                                     f"test/ (or val/) class folders. {DATA_HELP}")
        return f"imagefolder: train/ and test/ class folders under {str(root)!r}"
    missing = [f for f in TORCHVISION_FILES.get(name, []) if not (root / f).exists()]
    if missing and download:
        return (f"{name}: not under {str(root)!r} yet; download=true fetches it when the run "
                f"starts (needs internet access)")
    if missing:
        raise DatasetUnavailable(f"dataset={name}: no {missing[0]} under data_dir {str(root)!r}. "
                                 f"{DATA_HELP}")
    return f"{name}: present under {str(root)!r}"
