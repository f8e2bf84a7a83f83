# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python (rst-workbook)
#     language: python
#     name: rst-workbook
# ---

# %% [markdown]
# # 04 · Random RST Switch (R2S) under three threat models
#
# R2S answers every query with a randomly drawn ticket of one random network. We evaluate
# it honestly under three attacks: **fixed-member** PGD (crafted on one member, fed to the
# switch — the kind of number the paper reports), **switching** PGD (attacking the switch
# itself) and an **adaptive** attack averaging the gradient over `eot_samples` draws (EOT).
# Quote the lowest (`min_robust_acc`).
#
# `tickets`: ticket files or run folders of one random network; empty: searched here.

# %% tags=["parameters"]
# Parameters (papermill overrides this cell; see params/04_r2s/*.yaml)
name = "r2s"
run_dir = None             # None: a new folder under outputs/04_r2s/ (batch runs pass one)
progress = True            # progress bars
resume = True              # continue searches already in run_dir
tickets = []               # ticket.pt files / run folders / globs, all of ONE random network (empty: search here)
keep_ratios = [0.05, 0.1, 0.3]  # searched here, one ticket each, when tickets is empty
mode = "batch"             # batch: one member per query batch | example: one per input
eot_samples = 10           # gradient samples per step of the adaptive attack
eval_draws = 5             # member draws the switch's accuracy is averaged over (forward passes only)
r2s_examples = 500         # test inputs (None: all)
r2s_batch_size = 100       # batch mode draws one member per batch: smaller batches, more draws
# --- the random network and the search (rst_lib.RunConfig fields)
dataset = "mnist5k"        # mnist5k (embedded) | cifar10 | cifar100 | svhn | mnist | imagefolder
data_dir = None            # where torchvision data lives (None: $RST_DATA_DIR or data/)
download = False
train_examples = None      # None: the whole training split
eval_examples = 250        # test examples of the per-epoch check (None: all)
batch_size = 128
eval_batch_size = 500
augment = True
seed = 0                   # seed of the random weights (one seed: one random network)
device = "auto"
model = "conv4"            # conv2/4/6, resnet18, preact_resnet18, resnet34, wide_resnet, ...
model_kwargs = {}
width = 0.25
adaptive_p = 1.0           # RBRN's p: layer keep ratio ~ size^(p-1); 1: uniform
weight_init = "signed_constant"  # signed_constant (RST) | binary (RBRN) | kaiming_normal
scale_fan = True
score_init = "kaiming_uniform"
score_init_scale = 0.01
score_fan_mode = "none"
norm = "bn"
bn_affine = False
end_with_bn = True         # RBRN's last BatchNorm on the logits
epochs = 5
optimizer = "sgd"
lr = 0.1
momentum = 0.9
weight_decay = 5e-4
lr_schedule = "cosine"     # cosine | step | multistep | cifar_piecewise | constant
lr_milestones = []
lr_gamma = 0.1
train_attack = "fgsm_rs"   # pgd | fgsm_rs | free | trades | none (natural edge-popup)
eps = 0.3                  # L-inf budget in [0, 1] pixels ('8/255' works)
alpha = 0.375              # training attack step (FGSM-RS: 1.25 * eps)
steps = 7                  # PGD steps of the training attack
eval_alpha = 0.0375        # PGD step for evaluation (eps / 8)
eval_steps = 20
eval_restarts = 1

# %%
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import display, Markdown

import rst_lib
from rst_lib import evaluate_r2s, RandomSwitch
from rst_lib.data import fixed_subset, load_dataset, make_loader
from rst_lib.plots import markdown_table, plot_r2s, r2s_rows
from rst_lib.report import (config_from, ensure_run_dir, load_tickets, resolve_tickets,
                            search_tickets, write_summary)
from rst_lib.train import resolve_device, write_json

cfg = config_from(globals())
run_dir = ensure_run_dir(run_dir, "04_r2s", name)
device = resolve_device(cfg.device)
data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.augment)
print("run directory:", run_dir)

# %% [markdown]
# ## 1. The member tickets

# %%
paths = resolve_tickets(tickets)
if not paths:  # search them here: one seed, so one random network, several keep ratios
    paths = search_tickets(cfg, keep_ratios, run_dir, progress, data, resume)
members = load_tickets(paths, device)
for label, p in zip(members, paths):
    print(f"{label:>14}: {p}")

# %% [markdown]
# ## 2. The switch under attack

# %%
switch = RandomSwitch(members, mode=mode, seed=cfg.seed).to(device)
loader = make_loader(fixed_subset(data.test, r2s_examples), r2s_batch_size)
result = evaluate_r2s(switch, loader, cfg.eval_eps_value, cfg.eval_alpha_value, cfg.eval_steps, device,
                      eot_samples=eot_samples, restarts=cfg.eval_restarts, eval_draws=eval_draws,
                      seed=cfg.seed, progress=progress)
write_json(run_dir / "r2s.json", result)
rows = r2s_rows(result)
display(Markdown(markdown_table(rows)))
plot_r2s(result, f"R2S ({mode} mode, {len(members)} members): PGD-{cfg.eval_steps}, "
                 f"eps={cfg.eval_eps_value:.4g}, {result['n']} test inputs");

# %% [markdown]
# ## 3. Summary

# %%
best_member = max(result["member_whitebox_acc"])
write_summary(run_dir, {"dataset": cfg.dataset, "model": next(iter(members.values())).config.name,
                        "clean_acc": result["clean_acc"], "pgd_acc": result["min_robust_acc"],
                        "fixed_member_acc": result["fixed_member_mean_acc"]},
              tickets=[str(p) for p in paths], rows=rows)
display(Markdown(
    f"R2S with {len(members)} members: clean {result['clean_acc']:.1%}; fixed-member PGD "
    f"{result['fixed_member_mean_acc']:.1%} (mean), switching PGD {result['switching_acc']:.1%}, "
    f"adaptive EOT-{eot_samples} {result['adaptive_eot_acc']:.1%}. The best single member alone: "
    f"{best_member:.1%} white-box. **Honest robust accuracy of the switch: "
    f"{result['min_robust_acc']:.1%}** (lowest of the three)"
    + (" — the switch does not beat its best member under the adaptive attack."
       if result["min_robust_acc"] <= best_member else " — above its best member.")))
