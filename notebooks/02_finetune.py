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
# # 02 · Finetune a ticket: inherited vs re-initialized weights
#
# RST's *lottery ticket phenomenon* for robustness: take a robust ticket's mask and train
# its weights adversarially, once starting from the **inherited** random weights
# (`finetune`) and once from **re-initialized** random weights (`finetune_reinit`: same
# mask, a different random network), plus a **full** finetune of all weights
# (`finetune_full`). If the inherited weights matter, `finetune` ends more robust than
# `finetune_reinit`.
#
# `ticket`: a `ticket.pt` or a 01_search run folder. Empty: a ticket is searched here
# first (`search_epochs`).

# %% tags=["parameters"]
# Parameters (papermill overrides this cell; see params/02_finetune/*.yaml)
name = "finetune"
run_dir = None             # None: a new folder under outputs/02_finetune/ (batch runs pass one)
progress = True            # progress bars
resume = True              # continue searches/finetunes already in run_dir
ticket = None              # a ticket.pt or a run folder of 01_search (None: search one here)
tasks = ["finetune", "finetune_reinit", "finetune_full"]
search_epochs = 5          # epochs of the ticket search when ticket is None
search_lr = 0.1            # its learning rate (scores)
final_examples = 1000      # test examples of the final table (None: all)
# --- data, network (for a search here) and the finetuning (rst_lib.RunConfig fields)
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
epochs = 3
optimizer = "sgd"
lr = 0.01                  # finetuning learning rate (weights)
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
from rst_lib import load_ticket, search
from rst_lib.controls import compare_models
from rst_lib.data import load_dataset
from rst_lib.plots import markdown_table, plot_bars, plot_histories
from rst_lib.report import config_from, ensure_run_dir, resolve_ticket, write_summary
from rst_lib.train import resolve_device, write_json

ticket = str(resolve_ticket(ticket)) if ticket else None   # a run folder -> its ticket.pt
cfg = config_from(globals())
run_dir = ensure_run_dir(run_dir, "02_finetune", name)
data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.augment)
print("run directory:", run_dir)

# %% [markdown]
# ## 1. The ticket

# %%
histories = {}
if ticket is None:
    found = search(cfg.replace(task="search", ticket=None, epochs=search_epochs, lr=search_lr,
                               name=f"{name}-ticket"), run_dir / "ticket", progress, data, resume)
    ticket = str(found.ticket_path)
    histories["ticket search (scores)"] = found.history
print("ticket:", ticket)
ticket_model = load_ticket(ticket, resolve_device(cfg.device))
print(f"{ticket_model.config.name}, keep ratio {rst_lib.mask_summary(ticket_model)['keep_ratio']:.3g}")

# %% [markdown]
# ## 2. Finetune the weights (mask fixed)

# %%
LABELS = {"finetune": "inherited weights", "finetune_reinit": "re-initialized weights",
          "finetune_full": "full finetune (all weights)"}
runs = {}
for task in tasks:
    runs[task] = search(cfg.replace(task=task, ticket=ticket, name=f"{name}-{task}"),
                        run_dir / task, progress, data, resume)
    histories[LABELS.get(task, task)] = runs[task].history
plot_histories(histories, f"{cfg.train_attack} finetuning");

# %% [markdown]
# ## 3. Same test inputs, same attack

# %%
models = {"ticket (no training)": ticket_model}
models.update({LABELS.get(t, t): r.model for t, r in runs.items()})
rows = compare_models(models, cfg, data, final_examples, progress)
display(Markdown(markdown_table(rows)))
plot_bars(rows, {"clean_acc": "clean", "pgd_acc": f"PGD-{cfg.eval_steps}"}, "model",
          f"same {rows[0]['examples']} test inputs, PGD-{cfg.eval_steps}, eps={cfg.eval_eps_value:.4g}");

# %% [markdown]
# ## 4. Summary

# %%
by = {r["model"]: r for r in rows}
inh, rei = by.get(LABELS["finetune"]), by.get(LABELS["finetune_reinit"])
main = inh or rows[-1]
write_summary(run_dir, {"dataset": cfg.dataset, "model": ticket_model.config.name,
                        "keep_ratio": rst_lib.mask_summary(ticket_model)["keep_ratio"],
                        "clean_acc": main["clean_acc"], "pgd_acc": main["pgd_acc"],
                        "ticket": ticket}, final=rows)
text = f"Ticket `{ticket}`; {len(runs)} finetunes of {cfg.epochs} epochs each. "
if inh and rei:
    gap = inh["pgd_acc"] - rei["pgd_acc"]
    text += (f"Inherited weights: PGD {inh['pgd_acc']:.1%} (clean {inh['clean_acc']:.1%}); "
             f"re-initialized: PGD {rei['pgd_acc']:.1%} (clean {rei['clean_acc']:.1%}). "
             + ("**The inherited random weights help** (the lottery ticket phenomenon)."
                if gap > 0 else "**Re-initializing did not hurt in this run.**"))
display(Markdown(text))
