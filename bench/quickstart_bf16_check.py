"""Same ticket, same digits: AutoAttack fast with its search in fp32 and in bf16 (every bf16
break confirmed in fp32), on the test digits PGD-20 did not break.

    OMP_NUM_THREADS=2 python bench/quickstart_bf16_check.py RUN_DIR [N_DIGITS]
"""
import json
import sys
import time

import torch

from rst_lib import load_ticket
from rst_lib.attacks.autoattack import autoattack_robust
from rst_lib.config import RunConfig
from rst_lib.data import load_dataset
from rst_lib.engine.evaluation import eval_attacks, input_tensors
from rst_lib.masks.masking import frozen_masks
from rst_lib.utils.devices import seeded_rng

run_dir, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 400
cfg = RunConfig.from_dict(json.load(open(f"{run_dir}/metrics.json"))["config"])
model = load_ticket(f"{run_dir}/ticket.pt").eval()
x, y = input_tensors(load_dataset(cfg.dataset).test, n)
with frozen_masks(model), seeded_rng(cfg.seed, "cpu"):
    survivors = model(eval_attacks(model, cfg)["pgd"](x, y)).argmax(1) == y
out = {"digits": n, "pgd_survivors": int(survivors.sum())}
robust = {}
for precision in ("fp32", "bf16"):
    t = time.perf_counter()
    robust[precision] = autoattack_robust(model, x[survivors], y[survivors], cfg.eval_eps_value,
                                          cfg.threat_model, cfg.autoattack, "cpu", cfg.seed,
                                          cfg.eval_batch_size, precision=precision)
    out[precision] = {"robust": int(robust[precision].sum()),
                      "seconds": round(time.perf_counter() - t, 1)}
out["robust_in_bf16_only"] = int((robust["bf16"] & ~robust["fp32"]).sum())
out["robust_in_fp32_only"] = int((robust["fp32"] & ~robust["bf16"]).sum())
print(json.dumps(out))
