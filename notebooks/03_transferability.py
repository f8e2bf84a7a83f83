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
# # 03 · Transferability between tickets of one random network
#
# RST observes that adversarial examples **transfer poorly between tickets drawn from the
# same random network** at different keep ratios. Entry *(i, j)* of the matrix is the
# accuracy of ticket *j* on PGD examples crafted on ticket *i*; the diagonal is each
# ticket's white-box robust accuracy. High off-diagonal values = poor transfer, the basis
# of the random switch in 04_r2s.
#
# `tickets`: ticket files or run folders (e.g. a keep-ratio sweep of 01_search with one
# seed). Empty: tickets at `keep_ratios` are searched here from seed `seed`.

# %% tags=["parameters"]
# Parameters (papermill overrides this cell; see params/03_transferability/*.yaml)
name = "transfer"
run_dir = None             # None: a new folder under outputs/03_transferability/ (batch runs pass one)
progress = True            # progress bars
resume = True              # continue searches already in run_dir
tickets = []               # ticket.pt files / run folders / globs, all of ONE random network (empty: search here)
keep_ratios = [0.05, 0.1, 0.3]  # searched here, one ticket each, when tickets is empty
transfer_examples = 500    # test inputs attacked on every source (None: all)
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
from rst_lib import transfer_matrix
from rst_lib.attacks import PGD
from rst_lib.data import fixed_subset, load_dataset, make_loader
from rst_lib.plots import markdown_table, plot_transfer_matrix
from rst_lib.report import (config_from, ensure_run_dir, load_tickets, resolve_tickets,
                            search_tickets, write_summary)
from rst_lib.train import resolve_device, write_json

cfg = config_from(globals())
run_dir = ensure_run_dir(run_dir, "03_transferability", name)
device = resolve_device(cfg.device)
data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.augment)
print("run directory:", run_dir)

# %% [markdown]
# ## 1. The tickets

# %%
paths = resolve_tickets(tickets)
if not paths:  # search them here: one seed, so one random network, several keep ratios
    paths = search_tickets(cfg, keep_ratios, run_dir, progress, data, resume)
members = load_tickets(paths, device)
for label, p in zip(members, paths):
    print(f"{label:>14}: {p}")

# %% [markdown]
# ## 2. Transfer matrices (PGD crafted on the row, evaluated on the column)
#
# Two attacks on the source ticket: **full-step** PGD runs all steps on every input;
# **early-stop** PGD stops perturbing an input as soon as the *source* misclassifies it, as
# RST's `test_trans.py` does. Early-stop examples are the least perturbed ones that fool
# the source, so they transfer less: RST's "poor transferability" is measured this way.

# %%
loader = make_loader(fixed_subset(data.test, transfer_examples), cfg.eval_batch_size)
eps_, alpha_ = cfg.eval_eps_value, cfg.eval_alpha_value
results = {}
for variant, early in (("full-step", False), ("early-stop", True)):
    results[variant] = transfer_matrix(
        members, loader, lambda m: PGD(m, eps_, alpha_, cfg.eval_steps, cfg.eval_restarts, early_stop=early),
        device, progress, seed=cfg.seed)
write_json(run_dir / "transfer.json", results)
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
for ax, (variant, res) in zip(axes, results.items()):
    plot_transfer_matrix(res, f"{variant} PGD-{cfg.eval_steps}, eps={eps_:.4g}, {res['n']} test inputs", ax=ax)
plt.tight_layout()

# %%
k = len(members)
rows = []
for variant, res in results.items():
    for i, n in enumerate(res["names"]):
        rows.append({"attack": variant, "ticket": n, "clean_acc": res["clean"][i], "whitebox_acc": res["matrix"][i][i],
                     "transfer_in_acc": (sum(res["matrix"][j][i] for j in range(k) if j != i) / (k - 1)) if k > 1 else None})
display(Markdown(markdown_table(rows)))


# %% [markdown]
# ## 3. Summary

# %%
def diagonal_and_off(res):
    diag = sum(res["matrix"][i][i] for i in range(k)) / k
    off = (sum(res["matrix"][i][j] for i in range(k) for j in range(k) if i != j) / (k * (k - 1))) if k > 1 else None
    return diag, off

means = {variant: diagonal_and_off(res) for variant, res in results.items()}
diag, off = means["full-step"]
write_summary(run_dir, {"dataset": cfg.dataset, "model": next(iter(members.values())).config.name,
                        "clean_acc": sum(results["full-step"]["clean"]) / k, "pgd_acc": diag, "transfer_acc": off,
                        "transfer_acc_early_stop": means["early-stop"][1], "examples": results["full-step"]["n"]},
              tickets=[str(p) for p in paths], rows=rows)
lines = [f"{k} tickets of one random network, {results['full-step']['n']} test inputs."]
for variant, (d, o) in means.items():
    if o is None:
        lines.append("Give at least two tickets for transfer numbers.")
        break
    lines.append(f"**{variant}** PGD: white-box {d:.1%} on average, crafted on *another* ticket **{o:.1%}** "
                 + ("(poor transfer)." if o > d + 0.05 else "(transfers well: a random switch will not help much)."))
display(Markdown("\n\n".join(lines)))
