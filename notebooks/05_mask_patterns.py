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
# # 05 · Mask patterns of robust tickets
#
# RBRN studies the structure of robust random subnetworks: how dense each layer is, which
# 3×3 kernel patterns survive, how many filters are pruned away. Figures: per-layer
# density, the most frequent kept 3×3 patterns and the kept-weights-per-kernel histogram
# (against a random mask of the same density), and filter maps of one conv layer.
#
# With `interactive = True` (JupyterLab) an ipywidgets explorer lets you pick a layer and
# compare keep ratios; batch runs draw the static figures only.

# %% tags=["parameters"]
# Parameters (papermill overrides this cell; see params/05_mask_patterns/*.yaml)
name = "patterns"
run_dir = None             # None: a new folder under outputs/05_mask_patterns/ (batch runs pass one)
progress = True            # progress bars
resume = True              # continue searches already in run_dir
tickets = []               # ticket.pt files / run folders / globs, all of ONE random network (empty: search here)
keep_ratios = [0.05, 0.2]  # searched here, one ticket each, when tickets is empty
interactive = True         # ipywidgets explorer (needs a live Jupyter front end; batch runs: False)
layer = None               # conv layer of the filter maps (None: the last 3x3 conv)
top_patterns = 20          # patterns shown per ticket
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
from rst_lib import mask_stats as ms
from rst_lib.data import fixed_subset, load_dataset, make_loader
from rst_lib.plots import (markdown_table, mask_explorer, plot_filter_map, plot_kept_histogram,
                           plot_kernel_patterns, plot_layer_density)
from rst_lib.report import (config_from, ensure_run_dir, load_tickets, resolve_tickets,
                            search_tickets, write_summary)
from rst_lib.train import resolve_device, write_json

cfg = config_from(globals())
run_dir = ensure_run_dir(run_dir, "05_mask_patterns", name)
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
# ## 2. Density per layer

# %%
densities = {label: ms.layer_density(m) for label, m in members.items()}
plot_layer_density(densities, "kept fraction per layer");
cols = ["ticket", "layer", "shape", "density", "pruned_out_fraction", "pruned_in_fraction",
        "empty_kernel_fraction", "mean_kept_per_kernel", "top_pattern_fraction"]
table = [{"ticket": label, **row} for label, m in members.items() for row in ms.mask_summary_table(m)]
display(Markdown(markdown_table(table, cols)))

# %% [markdown]
# ## 3. Kept 3×3 kernel patterns (all 3×3 conv layers pooled)

# %%
patterns = {label: ms.kernel_patterns(m, top=top_patterns) for label, m in members.items()}
for label, p in patterns.items():
    plot_kernel_patterns(p, f"{label}: most frequent kept 3x3 patterns")
    plt.show()
conv_density = {label: sum(r["kept"] for n, r in densities[label].items() if n in p["layers"])
                / sum(r["total"] for n, r in densities[label].items() if n in p["layers"])
                for label, p in patterns.items()}
plot_kept_histogram({label: p["kept_histogram"] for label, p in patterns.items()},
                    reference=conv_density);

# %% [markdown]
# ## 4. Filter maps

# %%
convs3 = next(iter(patterns.values()))["layers"]
layer_name = layer or convs3[-1]
for label, m in members.items():
    plot_filter_map(ms.kernel_counts(m)[layer_name], f"{label}: {layer_name}")
    plt.show()

# %%
if interactive:  # an explorer for JupyterLab; the figures above are the static version
    try:
        display(mask_explorer(members, layer_name))
    except Exception as e:  # no widget support in this front end
        print(f"interactive explorer unavailable ({type(e).__name__}: {e}); static figures above")

# %% [markdown]
# ## 5. Summary

# %%
lines = []
for label, p in patterns.items():
    top = p["patterns"][0] if p["patterns"] else None
    empty = p["kept_histogram"][0] / max(1, p["kernels"])
    lines.append(f"- **{label}**: {p['distinct']} distinct kept patterns among {p['nonempty']:,} non-empty "
                 f"3x3 kernels; {empty:.0%} of kernels empty"
                 + (f"; most frequent pattern `{format(top['code'], '09b')}` ({top['fraction']:.1%})" if top else ""))
write_summary(run_dir, {"dataset": cfg.dataset, "model": next(iter(members.values())).config.name},
              tickets=[str(p) for p in paths],
              patterns={k: {kk: vv for kk, vv in v.items() if kk != "patterns"} for k, v in patterns.items()})
display(Markdown("\n".join(lines)))
