"""Evaluation subsets are fixed random samples of the whole split, whatever order the
dataset stores it in, and the final numbers come per class (issue 22: on a class-sorted
ImageFolder the AutoAttack headline was measured on the first class only)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rst_lib import RunConfig, build_model, final_evaluation
from rst_lib.data.datasets import evaluation_order, fixed_subset, load_dataset
from rst_lib.models.registry import ModelConfig
from rst_lib.workbook import per_class_table

from tiny import TINY

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
    # the order depends on the split's size and the run's seed only
    assert torch.equal(evaluation_order(120, 3), evaluation_order(120, 3))
    assert not torch.equal(evaluation_order(120, 3), evaluation_order(120, 4))


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


# --- issue 26: one definition of a per-class row; one set of images per number ---------

TINY_EVAL = {k: TINY[k] for k in ("model", "width", "keep_ratio", "eps", "eval_steps")} | dict(
    eval_alpha=0.05, autoattack="fast", eval_batch_size=50)


def _tiny_model(data):
    from rst_lib import create_model
    return create_model("conv2", 10, 1, image_size=28, width=0.125, keep_ratio=0.2).eval()


def test_per_class_rows_hold_the_same_keys_whatever_the_subset_sizes(data):
    """The quickstart crash (issue 26): with AutoAttack on every test example the rows lacked
    autoattack_examples and per_class_table raised KeyError. Equal, smaller and larger
    AutoAttack subsets, and none, all give ClassAccuracy rows the table reads."""
    from dataclasses import fields
    from rst_lib.engine.evaluation import ClassAccuracy
    keys = {f.name for f in fields(ClassAccuracy)}
    model = _tiny_model(data)
    for final_n, aa_n in ((40, 40), (40, 20), (20, 40)):
        cfg = RunConfig(**TINY_EVAL, final_examples=final_n, autoattack_examples=aa_n).validate()
        final = final_evaluation(model, cfg, data, torch.device("cpu"), progress=False)
        rows = final["per_class"]
        assert all(set(r) == keys for r in rows.values()), (final_n, aa_n)
        assert sum(r["examples"] for r in rows.values()) == final_n
        assert sum(r["autoattack_examples"] for r in rows.values()) == aa_n
        table = per_class_table(final)  # the quickstart's cell 6
        assert len(table) == len(rows) and all("AutoAttack" in r for r in table)
        # the per-class rows recombine into the headline numbers, on their own subsets
        robust = sum(r["autoattack_acc"] * r["autoattack_examples"] for r in rows.values()
                     if r["autoattack_examples"]) / aa_n
        clean = sum(r["clean_acc"] * r["examples"] for r in rows.values() if r["examples"]) / final_n
        assert abs(robust - final["autoattack_acc"]) < 1e-9
        assert abs(clean - final["clean_acc"]) < 1e-9
    no_aa = final_evaluation(model, cfg.replace(autoattack="none"), data, torch.device("cpu"),
                             progress=False)
    assert all(set(r) == keys and r["autoattack_examples"] == 0 and r["autoattack_acc"] is None
               for r in no_aa["per_class"].values())
    assert all("AutoAttack" not in r for r in per_class_table(no_aa))
    # a metrics.json written before the fix (no autoattack_examples when AA covered all) reads
    old = {"examples": 4, "clean_acc": 0.5, "pgd_acc": 0.25, "autoattack_acc": 0.25}
    assert ClassAccuracy.from_dict(old).autoattack_examples == 4


class _Recorder:
    """Stands in for AutoAttack and records the images it is given (all survive)."""

    def __init__(self, data):
        self.index = {bytes(x.numpy().tobytes()): i for i, (x, _) in enumerate(data.test)}
        self.calls: list[list[int]] = []

    def indices(self, x: torch.Tensor) -> list[int]:
        return [self.index[bytes(xi.numpy().tobytes())] for xi in x]

    def autoattack_robust(self, model, x, *args, **kwargs):
        self.calls.append(self.indices(x))
        return torch.ones(len(x), dtype=torch.bool)

    def worst_case_flags(self, model, x, y, pgd_ok, *args, **kwargs):
        self.calls.append(self.indices(x))
        return pgd_ok.clone()


def test_autoattack_runs_on_one_fixed_nested_sample_of_the_split(data, monkeypatch):
    """A search's AutoAttack images (final_evaluation) are those autoattack_accuracy
    (06_evaluate, 04_r2s) and autoattack_versus_pgd take for the same size: the first n of
    the split's fixed order, whatever final_examples is; nested for a larger n; and
    metrics.json's hash is that of the images AutoAttack was given (issue 26: the search
    shuffled its final subset a second time)."""
    import hashlib
    import rst_lib.engine.evaluation as E
    from rst_lib.data.datasets import evaluation_indices
    rec = _Recorder(data)
    monkeypatch.setattr(E, "worst_case_flags", rec.worst_case_flags)
    monkeypatch.setattr(E, "autoattack_robust", rec.autoattack_robust)
    model = _tiny_model(data)
    cpu = torch.device("cpu")

    def search_indices(final_n, aa_n):
        cfg = RunConfig(**TINY_EVAL, final_examples=final_n, autoattack_examples=aa_n).validate()
        final = E.final_evaluation(model, cfg, data, cpu, progress=False)
        used = rec.calls.pop()
        assert final["autoattack"]["examples"] == len(used) == aa_n
        sha = hashlib.sha256(",".join(map(str, used)).encode()).hexdigest()
        assert final["autoattack"]["subset"]["indices_sha256"] == sha  # what a user checks
        return used

    aa30 = search_indices(None, 30)
    assert len(set(aa30)) == 30
    assert search_indices(60, 30) == aa30 == search_indices(30, 30) == search_indices(20, 30)
    E.autoattack_accuracy(model, data.test, 0.1, "linf", "fast", 30, cpu)  # 06 / 04's call
    assert rec.calls.pop() == aa30
    E.autoattack_versus_pgd(model, data.test, 0.1, 0.05, n_examples=30, steps=1, device=cpu)
    assert rec.calls.pop() == aa30
    aa80 = search_indices(60, 80)
    assert aa80[:30] == aa30  # nested: a larger sample adds images to the smaller one
    assert aa30 == evaluation_indices(len(data.test), 30).tolist()


# --- issue 34: each seed its own random images, the same for every run of that seed; one bit
# per image and metric in the record ---------------------------------------------------------

def test_each_seed_meets_its_own_images_and_every_run_of_a_seed_the_same(data):
    """Two arms of one seed (different models and settings) are scored on the same images;
    another seed on other images; a seed's prefixes are nested. The record's indices are
    those evaluated (their hash is the subset's) and its bits give back the accuracies."""
    import hashlib
    from rst_lib.data.outcomes import load_outcomes, metric_names
    from rst_lib import create_model
    cpu = torch.device("cpu")
    other = create_model("conv2", 10, 1, image_size=28, width=0.125, keep_ratio=0.5).eval()

    def final(model, **kw):
        cfg = RunConfig(**{**TINY_EVAL, "final_examples": 40, "autoattack_examples": 20, **kw}).validate()
        return final_evaluation(model, cfg, data, cpu, progress=False)

    a, b = final(_tiny_model(data), seed=3), final(other, seed=3, eval_steps=1)
    c = final(_tiny_model(data), seed=4)
    idx_a, _ = load_outcomes(a, "clean")
    assert np.array_equal(idx_a, load_outcomes(b, "clean")[0])          # both arms, same images
    assert not np.array_equal(idx_a, load_outcomes(c, "clean")[0])      # another seed, others
    assert len(set(idx_a.tolist())) == 40 and idx_a.max() < len(data.test)
    aa_idx, _ = load_outcomes(a, "autoattack")
    assert np.array_equal(aa_idx, idx_a[:20])                           # nested prefix
    bigger = final(_tiny_model(data), seed=3, final_examples=80)
    assert np.array_equal(load_outcomes(bigger, "clean")[0][:40], idx_a)
    for rec in (a, b, c):
        assert set(metric_names(rec)) == {"clean", "pgd", "autoattack"}
        for metric, key, n in (("clean", "clean_acc", 40), ("pgd", "pgd_acc", 40),
                               ("autoattack", "autoattack_acc", 20)):
            idx, ok = load_outcomes(rec, metric)
            assert len(idx) == len(ok) == n and abs(ok.mean() - rec[key]) < 1e-9
        sub = rec["subset"]
        idx = load_outcomes(rec, "clean")[0]
        assert sub["indices_sha256"] == hashlib.sha256(",".join(map(str, idx.tolist())).encode()).hexdigest()
        assert sub["seed"] == rec["outcomes"]["seed"]
    # the images evaluated are those the indices name (labels agree image by image)
    labels = torch.tensor([int(data.test[i][1]) for i in idx_a.tolist()])
    from rst_lib.data.datasets import evaluation_images
    imgs = evaluation_images(data.test, 40, 3)
    assert torch.equal(labels, torch.tensor([int(imgs.dataset[i][1]) for i in range(40)]))


def test_outcomes_survive_json_and_are_read_from_a_record_folder(tmp_path):
    import json
    from rst_lib.data.outcomes import load_outcomes, outcome_record
    rng = np.random.default_rng(0)
    idx = rng.permutation(10000)[:501]
    flags = rng.random(501) < 0.4
    rec = outcome_record(idx, 10000, 7, {"clean": flags, "autoattack": flags[:300]})
    (tmp_path / "metrics.json").write_text(json.dumps({"final": {"outcomes": rec}}))
    for source in (tmp_path, tmp_path / "metrics.json", {"final": {"outcomes": rec}}, rec):
        i, ok = load_outcomes(source, "clean")
        assert np.array_equal(i, idx) and np.array_equal(ok, flags)
        i, ok = load_outcomes(source, "autoattack")
        assert np.array_equal(i, idx[:300]) and np.array_equal(ok, flags[:300])
    assert len(json.dumps(rec)) < 4 * 501 * 4 / 3 + 400  # compact: ~4 bytes/index + 1 bit/image
    import pytest
    with pytest.raises(KeyError, match="pgd"):
        load_outcomes(rec, "pgd")
    with pytest.raises(KeyError, match="no per-image outcomes"):
        load_outcomes({"final": {"clean_acc": 0.5}}, "clean")


@pytest.mark.slow
def test_01_04_and_06_attack_the_same_images_of_one_ticket(tmp_path, monkeypatch):
    """Issue 35: the records say which images were attacked, and 01 (the search), 04 (R2S of
    the ticket) and 06 (the ticket evaluated) attacked the same ones for the same seed and
    sizes. Their records come from the indices handed along with the images, so a planted
    reshuffle (04's AutoAttack handed ``fixed_subset(data.test, n)``) shows here."""
    from rst_lib.data.outcomes import load_outcomes
    from rst_lib.workbook.runs import run_notebook
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = Path(__file__).resolve().parents[1] / "notebooks"
    same = {**TINY, "seed": 3, "final_examples": 40, "autoattack": "fast", "autoattack_examples": 20,
            "progress": False}
    search = run_notebook(nb / "01_search.ipynb", overrides={**same, "masking_checks": False},
                          output_root=tmp_path, progress=False)
    metrics = json.loads((search / "metrics.json").read_text())
    aa_idx, _ = load_outcomes(metrics, "autoattack")
    test_idx, _ = load_outcomes(metrics, "clean")
    assert metrics["final"]["autoattack"]["subset"]["split_examples"] == 1000
    ticket = str(search / "ticket.pt")
    r2s_dir = run_notebook(nb / "04_r2s.ipynb", overrides={  # R2S of the ticket with itself
        **{k: v for k, v in same.items() if k not in ("keep_ratio", "precision")}, "tickets": [ticket, ticket], "r2s_examples": 40, "eot_samples": 1, "eval_draws": 1},
        output_root=tmp_path, progress=False)
    r2s = json.loads((r2s_dir / "r2s.json").read_text())
    evaluate = run_notebook(nb / "06_evaluate.ipynb", overrides={
        **{k: v for k, v in same.items() if k != "precision"}, "ticket": ticket, "pgd_steps": [2], "eps_curve": [0.1], "curve_examples": 20,
        "masking_checks": False}, output_root=tmp_path, progress=False)
    summary = json.loads((evaluate / "summary.json").read_text())
    # the AutoAttack images: 01's final evaluation, 04's AutoAttack (rand), 06's AutoAttack
    assert np.array_equal(load_outcomes(r2s["autoattack_rand_outcomes"], "autoattack")[0], aa_idx)
    assert np.array_equal(load_outcomes(summary["autoattack_versus_pgd"], "autoattack")[0], aa_idx)
    aa_sub = metrics["final"]["autoattack"]["subset"]
    assert r2s["autoattack_rand_subset"] == aa_sub == summary["autoattack_versus_pgd"]["subset"]
    # the clean / PGD images: 01's final examples, 04's R2S inputs, 06's attacks
    assert r2s["subset"] == metrics["final"]["subset"] == summary["subset"]
    assert len(test_idx) == 40 and np.array_equal(test_idx[:20], aa_idx)
