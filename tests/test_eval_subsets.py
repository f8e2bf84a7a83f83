"""Evaluation subsets are fixed random samples of the whole split, whatever order the
dataset stores it in, and the final numbers come per class (issue 22: on a class-sorted
ImageFolder the AutoAttack headline was measured on the first class only)."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rst_lib import RunConfig, build_model, final_evaluation
from rst_lib.data.datasets import evaluation_order, fixed_subset, load_dataset
from rst_lib.models.registry import ModelConfig
from rst_lib.workbook import per_class_table

CLASSES = [f"c{i}" for i in range(10)]


def _class_sorted_folder(root: Path, n_per_class: int = 12, size: int = 8) -> None:
    """train/ and test/ with one folder per class; ImageFolder reads them class by class."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n_per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.png")


def _labels(ds) -> torch.Tensor:
    return torch.tensor([int(ds[i][1]) for i in range(len(ds))])


def test_subsets_of_a_class_sorted_folder_hold_every_class(tmp_path):
    _class_sorted_folder(tmp_path / "data")
    for cache in (True, False):  # the uint8 cache and the PIL path alike
        data = load_dataset("imagefolder", data_dir=tmp_path / "data", augment=False,
                            cache=cache, cache_dir=tmp_path / "cache")
        stored = _labels(data.test)
        assert torch.equal(stored[:12], torch.zeros(12, dtype=torch.long))  # sorted by class
        sub = _labels(fixed_subset(data.test, 30))
        assert len(sub) == 30 and set(sub.tolist()) == set(range(10))
        # the whole split (None) comes in the same fixed order: prefixes are the subsets
        assert torch.equal(_labels(fixed_subset(data.test, None))[:30], sub)
    # the order depends on the split's size only (not on any run's seed)
    assert torch.equal(evaluation_order(120), evaluation_order(120))


def test_final_autoattack_examples_and_per_class_numbers(tmp_path):
    _class_sorted_folder(tmp_path / "data")
    cfg = RunConfig(dataset="imagefolder", data_dir=str(tmp_path / "data"), model="conv2",
                    width=0.125, keep_ratio=0.5, eps=8 / 255, alpha=2 / 255, eval_steps=2,
                    final_examples=None, autoattack="fast", autoattack_examples=30,
                    data_cache_dir=str(tmp_path / "cache")).validate()
    data = load_dataset("imagefolder", data_dir=tmp_path / "data", augment=False,
                        cache_dir=tmp_path / "cache")
    model = build_model(ModelConfig.from_run(cfg, 10, 3, 8, data.mean, data.std)).eval()
    final = final_evaluation(model, cfg, data, torch.device("cpu"), progress=False)
    per_class = final["per_class"]
    assert list(per_class) == CLASSES and all(r["examples"] == 12 for r in per_class.values())
    # the AutoAttack examples are spread over every class and add up to autoattack_examples
    aa_counts = [r["autoattack_examples"] for r in per_class.values()]
    assert all(n >= 1 for n in aa_counts) and sum(aa_counts) == 30
    # per-class accuracies recombine into the headline numbers
    clean = sum(r["clean_acc"] * r["examples"] for r in per_class.values()) / 120
    robust = sum(r["autoattack_acc"] * r["autoattack_examples"] for r in per_class.values()) / 30
    assert abs(clean - final["clean_acc"]) < 1e-9 and abs(robust - final["autoattack_acc"]) < 1e-9
    rows = per_class_table(final)
    assert [r["class"] for r in rows] == CLASSES and "AutoAttack" in rows[0]
