"""Same numbers before and after a change to the training loop: fixed-seed small searches.

    PYTHONPATH=<code> python bench/train_fidelity.py run OUT_DIR     # one set of runs
    python bench/train_fidelity.py compare DIR_A DIR_B               # bit-for-bit comparison

Runs a 2-epoch conv2 search on mnist5k with the default training attack (PGD) and small
searches with every other per-batch step (Free, TRADES, FGSM-RS, carried FGSM, natural), then
compares metrics.json (history, best, final) and every tensor of ticket.pt and last.pt.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

RUNS = {
    # the brief's search: conv2, mnist5k, 2 epochs, a seed; final numbers with AutoAttack
    "pgd": dict(autoattack="fast", autoattack_examples=100, final_examples=300),
    "free": dict(train_attack="free", free_repeats=2, train_examples=600),
    "trades": dict(train_attack="trades", train_examples=600),
    "fgsm_rs": dict(train_attack="fgsm_rs", alpha=0.375, train_examples=600),
    "fgsm_carried": dict(train_attack="fgsm_carried", alpha=0.375, train_examples=600),
    "none": dict(train_attack="none", train_examples=600),
}
COMMON = dict(model="conv2", dataset="mnist5k", epochs=2, seed=3, autoattack="none",
              final_examples=300)


def run(out: Path) -> None:
    from rst_lib import RunConfig, train
    torch.set_num_threads(1)
    for name, extra in RUNS.items():
        cfg = RunConfig.from_dict({**COMMON, **extra, "name": name})
        train(cfg, out / name, progress=False)
        print(name, "done", flush=True)


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def compare(a: Path, b: Path) -> bool:
    same = True
    for name in RUNS:
        ma, mb = (json.loads((d / name / "metrics.json").read_text()) for d in (a, b))
        for key in ("history", "best", "final", "status", "warnings"):
            va, vb = ma[key], mb[key]
            if key == "history":  # wall-clock times differ
                va = [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in va]
                vb = [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in vb]
            if key == "final":
                va = {k: v for k, v in (va or {}).items() if "seconds" not in k}
                vb = {k: v for k, v in (vb or {}).items() if "seconds" not in k}
            if va != vb:
                same = False
                print(f"{name}: metrics.json {key} differs:\n  {va}\n  {vb}")
        for file in ("ticket.pt", "last.pt"):
            ta = dict(_tensors(torch.load(a / name / file, weights_only=True)))
            tb = dict(_tensors(torch.load(b / name / file, weights_only=True)))
            if ta.keys() != tb.keys():
                same = False
                print(f"{name}: {file} holds different entries")
                continue
            bad = [k for k in ta if not torch.equal(ta[k], tb[k])]
            if bad:
                same = False
                print(f"{name}: {file}: {len(bad)} tensors differ, e.g. {bad[:3]}")
        final = ma.get("final") or {}
        print(f"{name}: best {ma['best']}  final "
              f"{ {k: v for k, v in final.items() if 'acc' in k} }")
    print("IDENTICAL" if same else "DIFFERENT")
    return same


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(Path(sys.argv[2]))
    else:
        sys.exit(0 if compare(Path(sys.argv[2]), Path(sys.argv[3])) else 1)
