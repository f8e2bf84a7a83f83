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

# %% [markdown] tags=["notebook-only"]
# With `interactive = True` (JupyterLab) an ipywidgets explorer lets you pick a layer and
# compare keep ratios; batch runs draw the static figures only.

# %% tags=["parameters"]
# Parameters (papermill overrides them; `rst-workbook params 05_mask_patterns` explains each)
name = None                   # run name: the folder is <name>-<time> (None: the notebook's name)
run_dir = None                # the run folder (None: a new one under outputs/<notebook>/) [path]
progress = True               # progress bars
resume = True                 # continue trainings already in run_dir (their last.pt)
tickets = []                  # ticket.pt files / run folders / globs of ONE random network (empty: search here) [paths]
keep_ratios = [0.05, 0.1, 0.3]  # keep ratios searched here when tickets is empty [fractions]
interactive = True            # ipywidgets explorer (needs a live Jupyter front end)
layer = None                  # conv layer of the filter maps (None: the last 3x3 conv)
top_patterns = 20             # kept 3x3 patterns shown per ticket
seed = 0                      # seed of the random weights, the validation split and the attacks
device = "auto"               # auto | cpu | cuda | cuda:N
# --- data
dataset = "mnist5k"           # mnist5k (embedded) | cifar10 | cifar100 | svhn | mnist | imagefolder
data_dir = None               # where the data lives (None: $RST_DATA_DIR or data/) [path]
download = False              # let torchvision download a missing dataset
train_examples = None         # training examples used (None: all but the validation split) [examples]
val_fraction = 0.02           # training split held out to pick the best epoch (RBRN 2 %); 0: pick on test [fraction]
eval_examples = None          # validation examples of the per-epoch check (None: all) [examples]
final_examples = None         # test examples of the final numbers (None: all) [examples]
batch_size = 32               # training batch (the global batch under torchrun) [examples]
eval_batch_size = 500         # evaluation batch [examples]
augment = True                # random crop + flip (32x32 color data only)
data_cache = True             # decode small images (up to 64 px) once into a uint8 cache; batches augmented on the device
data_cache_dir = None         # where that cache goes (None: data_dir/.rst-cache, or ~/.cache/rst-workbook if read-only) [path]
normalization = "dataset"     # dataset (its usual statistics) | rst (RST's loader) | rbrn (RBRN's DataNormalizeLayer): input mean/std inside the model
num_workers = "auto"          # loader processes for resized (uncached) images: auto (CPUs - 1, max 8; none with 2 CPUs or fewer) | N
# --- model
model = "conv4"               # conv2/4/6/8, mlp, resnet18/34/50, preact_resnet18, wide_resnet, vgg16, mobilenet_v2
model_kwargs = {}             # extra model arguments, e.g. {depth: 28, widen_factor: 10}
width = 0.5                   # channel multiplier
adaptive_p = 1.0              # RBRN's p: a layer keeps ~ size^(p-1); 1: the same ratio everywhere
weight_init = "signed_constant"  # signed_constant (RST) | binary (RBRN) | unsigned_constant | kaiming_normal | kaiming_uniform | xavier_normal | xavier_constant | uniform: frozen random weights
scale_fan = True              # weight scale uses fan x keep ratio (RBRN's correct init)
score_init = "kaiming_uniform"  # kaiming_uniform (RST) | uniform (U(-a, a), RBRN)
score_init_scale = 0.01       # a of the uniform score init
score_fan_mode = "none"       # none | all | except_last | only_last: uniform scores divided by sqrt(fan)
norm = "bn"                   # bn | none
bn_affine = False             # affine BatchNorm (both seeds: non-affine)
end_with_bn = False           # RBRN's last BatchNorm on the logits
# --- optimization
epochs = 6                    # training epochs [epochs]
optimizer = "sgd"             # sgd | adam
lr = 0.2                      # base learning rate
momentum = 0.9                # SGD momentum
weight_decay = 0.0005         # weight decay (on the scores in a search, as both seeds)
lr_schedule = "cosine"        # cosine | step | multistep | cifar_piecewise | constant
lr_step = "batch"             # batch (every batch) | epoch (once per epoch, before it: both seeds): when the LR changes
lr_milestones = []            # step / multistep: epochs where the LR is multiplied by lr_gamma; cifar_piecewise: x0.1 at each (empty: at 50 % and 75 % of the epochs) [epochs]
lr_gamma = 0.1                # step / multistep LR factor
warmup_epochs = 0             # linear LR warm-up [epochs]
# --- training attack
train_attack = "pgd"          # pgd | fgsm_rs | fgsm_carried (RBRN fast) | free | trades | none (natural)
threat_model = "linf"         # linf | l2
free_repeats = 4              # Free AT: replays of each minibatch
trades_beta = 6.0             # TRADES: weight of the KL term
eps = 0.3                     # attack budget ('8/255' works) [pixels in [0, 1]]
eps_warmup_epochs = 2         # the training attack's eps (and step) ramps up from 0 [epochs]
alpha = 0.1                   # training attack step (FGSM-RS: 1.25 x eps) [pixels in [0, 1]]
steps = 3                     # PGD / TRADES steps of the training attack
attack_train_mode = None      # BN mode of the training attack (None: train; eval for trades)
# --- evaluation
eval_eps = None               # evaluation budget (None: eps) [pixels in [0, 1]]
eval_alpha = 0.0375           # PGD step of the evaluation (None: alpha) [pixels in [0, 1]]
eval_steps = 20               # PGD steps of the evaluation
eval_restarts = 1             # PGD restarts of the evaluation
eval_early_stop = True        # PGD stops on an input once it is misclassified (RST; stronger and cheaper)
autoattack = "fast"           # none | fast (APGD-CE + APGD-T) | standard: final AutoAttack
autoattack_examples = 1000    # test examples of the final AutoAttack [examples]
autoattack_precision = "auto"  # auto (bf16 where native and measured faster, else fp32) | fp32 (as eval_precision) | bf16 (bf16 search, every adversarial example confirmed on the fp32 model): autocast of AutoAttack's search for adversarial examples
# --- monitoring
collapse_patience = 2         # epochs at chance level (loss ~ ln C, accuracy ~ 1/C) that mean collapse [epochs]
stop_on_collapse = True       # stop a collapsed run (the reason goes to metrics.json)

# %% tags=["notebook-only"]
import matplotlib.pyplot as plt
from IPython.display import display, Markdown

from rst_lib import load_run_data, resolve_device
from rst_lib.analysis import (markdown_table, mask_explorer, mask_stats as ms, plot_filter_map,
                              plot_kept_histogram, plot_kernel_patterns, plot_layer_density)
from rst_lib.workbook import (finish_run, config_from, ensure_run_dir, load_tickets, resolve_tickets,
                              search_tickets, write_summary)

cfg = config_from(globals())
run_dir = ensure_run_dir(run_dir, "05_mask_patterns", name, globals())
device = resolve_device(cfg.device)
data = load_run_data(cfg)
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
    display(mask_explorer(members, layer_name))

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

# %% tags=["notebook-only"]
finish_run(run_dir)  # run.json: finished (a run made here is recorded like a batch run)
