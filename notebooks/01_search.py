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
# # 01 · Search a robust ticket
#
# **Adversarial edge-popup** (RST, Fu et al. 2021; RBRN, Liu et al. 2022): the weights of
# a network stay at their random initial values; one score per weight is trained under
# attack and every layer keeps its top-`keep_ratio` scores. With `train_attack = "none"`
# it is natural edge-popup. Any model, dataset and keep ratio of `rst_lib.RunConfig`.
#
# Shows the learning curves, the kept fraction per layer and a final table of clean /
# FGSM / PGD / AutoAttack accuracy. The ticket (`ticket.pt`) feeds the other notebooks:
# pass this run's folder as `ticket` (02, 06) or in `tickets` (03, 04, 05).

# %% tags=["parameters"]
# Parameters (papermill overrides this cell; see params/01_search/*.yaml)
name = "search"
run_dir = None             # None: a new folder under outputs/01_search/ (batch runs pass one)
progress = True            # progress bars
resume = True              # continue a search already in run_dir (its last.pt)
final_examples = 1000      # test examples of the final table (None: the whole test split)
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
keep_ratio = 0.1           # fraction of weights KEPT (RBRN's --prune-rate)
adaptive_p = 1.0           # RBRN's p: layer keep ratio ~ size^(p-1); 1: uniform
weight_init = "signed_constant"  # signed_constant (RST) | binary (RBRN) | kaiming_normal
scale_fan = True
score_init = "kaiming_uniform"
score_init_scale = 0.01
score_fan_mode = "none"
norm = "bn"
bn_affine = False
end_with_bn = True         # RBRN's last BatchNorm on the logits
granularity = "weight"     # weight | kernel | filter | row
keep_ratio_warmup = 0      # RBRN's schedule: dense epochs first
keep_ratio_steps = 0       # epochs to shrink to keep_ratio (0: off)
discard = False
dense_first = False
dense_last = False
pretrained = None          # a trained dense checkpoint to search in (RST's RTT)
epochs = 5
optimizer = "sgd"
lr = 0.1
momentum = 0.9
weight_decay = 5e-4
lr_schedule = "cosine"     # cosine | step | multistep | cifar_piecewise | constant
lr_milestones = []
lr_gamma = 0.1
warmup_epochs = 0
train_attack = "fgsm_rs"   # pgd | fgsm_rs | free | trades | none (natural edge-popup)
threat_model = "linf"      # linf | l2
free_repeats = 4
trades_beta = 6.0
attack_train_mode = True
eps = 0.3                  # L-inf budget in [0, 1] pixels ('8/255' works)
alpha = 0.375              # training attack step (FGSM-RS: 1.25 * eps)
steps = 7                  # PGD steps of the training attack
eval_alpha = 0.0375        # PGD step for evaluation (eps / 8)
eval_steps = 20
eval_restarts = 1
eval_eps = None            # None: eps
autoattack = "fast"        # on the final ticket: none | fast (APGD-CE + APGD-T) | standard
autoattack_examples = 200
collapse_patience = 2

# %%
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import display, Markdown

import rst_lib
from rst_lib import robustness_report, search
from rst_lib.plots import markdown_table, plot_bars, plot_history, plot_keep_ratios
from rst_lib.report import config_from, ensure_run_dir, write_summary
from rst_lib.train import resolve_device, write_json

cfg = config_from(globals())     # every RunConfig field above, checked before any compute
run_dir = ensure_run_dir(run_dir, "01_search", name)
print("run directory:", run_dir)

# %% [markdown]
# ## 1. Search (scores only; the weights stay random)

# %%
result = search(cfg, run_dir, progress=progress, resume=resume)
print(f"best epoch {result.best['epoch']}: clean {result.best['clean_acc']:.1%}, "
      f"PGD-{cfg.eval_steps} {result.best['pgd_acc']:.1%} -> {result.ticket_path}")
plot_history(result.history, f"{cfg.model}, keep {cfg.keep_ratio:g}");

# %%
plot_keep_ratios(result.model, f"kept fraction per layer (keep_ratio={cfg.keep_ratio:g}, "
                 f"adaptive_p={cfg.adaptive_p:g})");

# %% [markdown]
# ## 2. Final evaluation of the best ticket
# Clean, FGSM and PGD on the same `final_examples` test inputs; AutoAttack (if enabled) ran
# at the end of the search on `autoattack_examples` inputs.

# %%
rep = robustness_report(result.model, result.data.test, cfg.eval_eps_value, cfg.eval_alpha_value,
                        cfg.threat_model, pgd_steps=(cfg.eval_steps,), restarts=cfg.eval_restarts,
                        n_examples=final_examples, device=resolve_device(cfg.device),
                        seed=cfg.seed, progress=progress)
table = [{"attack": "clean", "test_acc": rep["clean_acc"], "examples": rep["n_examples"]},
         {"attack": f"FGSM (eps={cfg.eval_eps_value:.4g})", "test_acc": rep["fgsm_acc"],
          "examples": rep["n_examples"]},
         {"attack": f"PGD-{cfg.eval_steps} x{cfg.eval_restarts}", "test_acc": rep[f"pgd{cfg.eval_steps}_acc"],
          "examples": rep["n_examples"]}]
if "autoattack_acc" in result.best:
    table.append({"attack": f"AutoAttack ({cfg.autoattack})", "test_acc": result.best["autoattack_acc"],
                  "examples": min(cfg.autoattack_examples, len(result.data.test))})
display(Markdown(markdown_table(table, ["attack", "test_acc", "examples"])))
plot_bars([{"model": r["attack"], "acc": r["test_acc"]} for r in table], {"acc": "accuracy"},
          title=f"{cfg.model} ticket, keep {cfg.keep_ratio:g}, eps {cfg.eval_eps_value:.4g}");

# %% [markdown]
# ## 3. Summary

# %%
headline = {"dataset": cfg.dataset, "model": cfg.model, "keep_ratio": cfg.keep_ratio,
            "clean_acc": rep["clean_acc"], "fgsm_acc": rep["fgsm_acc"],
            "pgd_acc": rep[f"pgd{cfg.eval_steps}_acc"],
            "autoattack_acc": result.best.get("autoattack_acc"), "ticket": str(result.ticket_path)}
write_summary(run_dir, headline, final=table, best_epoch=result.best, warnings=result.warnings)
aa = f", AutoAttack {headline['autoattack_acc']:.1%}" if headline["autoattack_acc"] is not None else ""
display(Markdown(
    f"**{cfg.model} on {cfg.dataset}, {cfg.keep_ratio:.1%} of the random weights kept, none trained** "
    f"({cfg.train_attack} search, {cfg.epochs} epochs): clean {headline['clean_acc']:.1%}, "
    f"PGD-{cfg.eval_steps} {headline['pgd_acc']:.1%}{aa} at eps={cfg.eval_eps_value:.4g} "
    f"on {rep['n_examples']} test inputs."
    + ("\n\n**AutoAttack is far below PGD: PGD overestimates this ticket's robustness** (gradient "
       "masking?); check more PGD steps and restarts in 06_evaluate."
       if headline["autoattack_acc"] is not None and headline["autoattack_acc"] < headline["pgd_acc"] - 0.1 else "")
    + f"\n\nNext: `ticket = \"{run_dir}\"` in 02_finetune or 06_evaluate; sweep keep ratios with "
    f"`rst-workbook sweep` and compare them in 07_compare_runs."))
for w in result.warnings:
    print("WARNING:", w)
