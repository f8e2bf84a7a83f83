"""Time the quickstart's pieces for one recipe, as notebooks/00_quickstart runs them, and
print its numbers (the recipe study of docs/quickstart.md).

    OMP_NUM_THREADS=2 python bench/quickstart_recipe.py [--split val|test] [KEY=VALUE ...]

KEY=VALUE override params/quickstart.yaml (e.g. precision=bf16 autoattack_precision=bf16
eval_batch_size=128). ``--split val`` (the default) evaluates everything on the validation
digits the search holds out (recipes are chosen there, never on test); ``--split test`` is
what the notebook reports. Prints one JSON line: seconds per piece (search, its final PGD,
its AutoAttack, natural control, random mask, masking checks) and the headline numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time

import torch
import yaml

from rst_lib import final_checks
from rst_lib.analysis import compare_models, natural_control, random_mask_control
from rst_lib.config import RunConfig
from rst_lib.data import load_dataset
from rst_lib.engine import evaluation, training
from rst_lib.utils.stats import wilson_interval

NOTEBOOK_ONLY = ("masking_examples", "progress")  # parameters of the notebook, not the run


def timed(module, name: str, seconds: dict, key: str):
    """Wrap ``module.name`` so the time spent in it is added to ``seconds[key]``."""
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t
    setattr(module, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--params", default="params/quickstart.yaml")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    params = yaml.safe_load(open(args.params))
    for item in args.overrides:
        key, value = item.split("=", 1)
        params[key] = yaml.safe_load(value)
    masking_examples = params.get("masking_examples", 500)
    for key in NOTEBOOK_ONLY:
        params.pop(key, None)
    cfg = RunConfig.from_dict(params)
    data = load_dataset(cfg.dataset)
    if args.split == "val":  # the held-out validation digits stand in for the test digits
        _, val = data.validation_split(cfg.val_fraction, cfg.seed)
        data = dataclasses.replace(data, test=val)
    seconds: dict = {}
    timed(evaluation, "autoattack_robust", seconds, "autoattack")
    start = time.perf_counter()
    t = time.perf_counter()
    robust = training.train(cfg, None, progress=False, data=data)
    seconds["search+final"] = time.perf_counter() - t
    aa_search = seconds.get("autoattack", 0.0)
    t = time.perf_counter()
    natural = natural_control(cfg, data, None, progress=False)
    seconds["natural control"] = time.perf_counter() - t
    t = time.perf_counter()
    controls = compare_models({"random mask": random_mask_control(cfg, data)}, cfg, data, False)
    seconds["random mask"] = time.perf_counter() - t
    t = time.perf_counter()
    checks = final_checks(robust.model, cfg, data, robust.final, masking_examples, 100, 5, False)
    seconds["masking checks"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - start
    seconds["autoattack of the ticket"] = aa_search
    final = robust.final
    n = final["robust_examples"]
    low, high = wilson_interval(final["robust_acc"], n)
    print(json.dumps({
        "split": args.split, "overrides": args.overrides, "torch": torch.__version__,
        "machine": platform.processor(), "threads": torch.get_num_threads(),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "examples": final["examples"], "clean": final["clean_acc"], "pgd": final["pgd_acc"],
        "autoattack": final.get("autoattack_acc"), "autoattack_interval": [low, high],
        "natural_ticket": natural.final["robust_acc"], "random_mask": controls[0]["robust_acc"],
        "masking_flags": checks["flags"], "best_epoch": robust.best.get("epoch")}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
