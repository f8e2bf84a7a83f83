"""One CIFAR-10 recipe measurement (docs/cifar10-cpu-recipe.md): a search with the given
overrides on top of params/01_search/cifar10-cpu.yaml, timed, on a fixed thread count.

    OMP_NUM_THREADS=1 python bench/cifar10_recipe.py NAME threads=1 key=value ...

Writes outputs/recipe/NAME (metrics.json, ticket.pt; resumable) and prints one line:
threads, training examples, epochs, minutes, best validation numbers and the test numbers.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from rst_lib import RunConfig, train
from rst_lib.config import load_params

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    name, overrides = argv[0], argv[1:]
    threads = 1
    rest = []
    for o in overrides:
        if o.startswith("threads="):
            threads = int(o.split("=", 1)[1])
        else:
            rest.append(o)
    torch.set_num_threads(threads)
    params = load_params(ROOT / "params/01_search/cifar10-cpu.yaml", rest)
    # the notebook-only parameters (masking checks) are not the search's
    cfg = RunConfig.from_dict({k: v for k, v in params.items() if k in RunConfig.field_names()})
    run_dir = ROOT / "outputs/recipe" / name
    t0 = time.time()
    result = train(cfg, run_dir, progress=False, resume=True)
    minutes = (time.time() - t0) / 60
    f = result.final or {}
    line = {"name": name, "threads": threads, "overrides": rest,
            "train_examples": cfg.train_examples, "epochs": cfg.epochs, "minutes": round(minutes, 1),
            "best_val": result.best, "test_clean": f.get("clean_acc"), "test_pgd": f.get("pgd_acc"),
            "test_robust": f.get("robust_acc"), "robust_attack": f.get("robust_attack"),
            "history": [{k: r.get(k) for k in ("epoch", "clean_acc", "pgd_acc", "train_loss",
                                                  "epoch_seconds")} for r in result.history]}
    print(json.dumps(line), flush=True)
    with open(ROOT / "outputs/recipe/results.jsonl", "a") as fh:
        fh.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
