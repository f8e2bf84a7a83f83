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
# FGSM / PGD / AutoAttack accuracy.

# %% [markdown] tags=["notebook-only"]
# The ticket (`ticket.pt`) feeds the other notebooks: pass this run's folder as `ticket`
# (02, 06) or in `tickets` (03, 04, 05).

# %% tags=["parameters"]
# Parameters (papermill overrides them; `rst-workbook params 01_search` explains each)
name = None                   # run name: the folder is <name>-<time> (None: the notebook's name)
run_dir = None                # the run folder (None: a new one under outputs/<notebook>/) [path]
progress = True               # progress bars
resume = True                 # continue trainings already in run_dir (their last.pt)
task = "search"               # search | finetune | finetune_reinit | finetune_full | dense | bnn
ticket = None                 # a ticket.pt or a run folder (finetune tasks; 02 and 06 take it too) [path]
finetune_init = "kaiming_normal"  # kaiming_normal | kaiming_uniform | signed_constant | unsigned_constant | xavier_normal | xavier_constant | binary | uniform | same (the ticket's scheme): finetune_reinit draws weights so (RST --ft_init)
pretrained = None             # trained dense checkpoint to search in (robust trained tickets) [path]
seed = 0                      # seed of the random weights, the validation split and the attacks
device = "auto"               # auto | cpu | cuda | cuda:N
channels_last = "auto"        # auto (on for CUDA, off for CPU) | true | false: NHWC conv layout
precision = "auto"            # auto (bf16 where native and measured faster, else fp32) | fp32 | bf16 | fp16 (loss-scaled): autocast of the training steps, their attacks, the per-epoch check
eval_precision = "fp32"       # fp32 | bf16 | fp16: autocast of the final test numbers (PGD, AutoAttack)
compile = False               # torch.compile the network (masks stay eager); falls back to eager with one warning
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
keep_ratio = 0.1              # fraction of the weights KEPT (RBRN's --prune-rate) [fraction]
adaptive_p = 1.0              # RBRN's p: a layer keeps ~ size^(p-1); 1: the same ratio everywhere
granularity = "weight"        # weight | kernel | filter | row: what one score gates
keep_rule = "round"           # round (round(k n), at least 1) | getsubnet (n - int((1 - k) n), the seeds' GetSubnet): kept scores of a layer
keep_allocation = "closed_form"  # closed_form (one solve) | rbrn (RBRN's set_model_prune_rate walk) | erk (Erdos-Renyi-Kernel, RigL; ignores adaptive_p): per-layer keep ratios from keep_ratio (and adaptive_p)
keep_scope = "layer"          # layer (top-k in each layer) | global (top-k over all masked layers; the allocation sets only the total): where scores compete for the kept places
keep_min_fraction = 0.0       # global scope: each layer keeps at least this fraction of its scores (0: a layer may be emptied) [fraction]
rerand_freq = 0               # IteRand: re-draw pruned weights before every N-th optimizer step (0: off) [steps]
rerand_rate = 1.0             # IteRand: the lowest-scored fraction of the pruned weights that may be re-drawn [fraction]
rerand_lambda = 0.1           # IteRand: probability that each of those is re-drawn at an event (their bernoulli mode) [fraction]
keep_ratio_schedule = "none"  # none | staged (RBRN pr_steps) | geometric (per epoch) | biprop (global: 0.5 kept to keep_ratio, biprop main.py)
keep_ratio_stages = 1         # staged: stage k of S keeps keep_ratio^(k/S); the cosine LR restarts
keep_ratio_warmup = 0         # geometric: dense epochs before shrinking [epochs]
keep_ratio_steps = 0          # geometric: epochs to shrink from 1 to keep_ratio; biprop: its prune_rate_epoch [epochs]
discard = False               # RST discard mode: the lowest scores stop getting gradient
discard_every = 10            # RST --discard_epoch: epochs between discards [epochs]
discard_rate = 0.1            # RST --discard_rate: scores discarded per discard [fraction]
discard_progressive = False   # RST --progressive_prune: keep 0.9 - discarded (not below keep_ratio)
weight_init = "signed_constant"  # signed_constant (RST) | binary (RBRN) | unsigned_constant | kaiming_normal | kaiming_uniform | xavier_normal | xavier_constant | uniform: frozen random weights
scale_fan = True              # weight scale uses fan x keep ratio (RBRN's correct init)
score_init = "kaiming_uniform"  # kaiming_uniform (RST) | uniform (U(-a, a), RBRN)
score_init_scale = 0.01       # a of the uniform score init
score_fan_mode = "none"       # none | all | except_last | only_last: uniform scores divided by sqrt(fan)
norm = "bn"                   # bn | none
bn_affine = False             # affine BatchNorm (both seeds: non-affine)
end_with_bn = False           # RBRN's last BatchNorm on the logits
dense_first = False           # keep the first layer dense (unmasked)
dense_last = False            # keep the last layer dense (unmasked)
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
loss_jump_factor = None       # debug: warn when a batch loss exceeds factor x its running mean
# --- checks
masking_checks = True         # the gradient-masking checks of Carlini et al. (2019) on the final ticket
masking_examples = 500        # test inputs of the masking checks (None: all) [examples]
masking_more_steps = 100      # PGD steps of the 'more steps' check
masking_restarts = 5          # restarts of the 'restarts' check

# %% tags=["notebook-only"]
from IPython.display import Markdown, display

from rst_lib import final_checks, train
from rst_lib.analysis import markdown_table, plot_comparison, plot_history, plot_keep_ratios
from rst_lib.workbook import (finish_run, checks_markdown, config_from, ensure_run_dir, final_table, per_class_table,
                              write_summary)

cfg = config_from(globals())     # every parameter above, checked before any compute
run_dir = ensure_run_dir(run_dir, "01_search", name, globals())
print("run directory:", run_dir)

# %% [markdown]
# ## 1. Search (scores only; the weights stay random)
# Each epoch is checked on a validation split held out of the training set
# (`val_fraction`); the best one becomes `ticket.pt`. The test split is read once, at the end.

# %%
result = train(cfg, run_dir, progress=progress, resume=resume)
if result.stopped:
    display(Markdown(f"**Stopped early:** {result.stopped['message']}"))
print(f"best epoch {result.best['epoch']} ({result.best['split']}, {result.best['examples']} "
      f"examples): clean {result.best['clean_acc']:.1%}, PGD-{cfg.eval_steps} "
      f"{result.best['pgd_acc']:.1%} -> {result.ticket_path}")
plot_history(result.history, f"{cfg.model}, keep {cfg.keep_ratio:g}");

# %%
plot_keep_ratios(result.model, f"kept fraction per layer (keep_ratio={cfg.keep_ratio:g}, "
                 f"adaptive_p={cfg.adaptive_p:g})");

# %% [markdown]
# ## 2. Final numbers of the best ticket (test split)
# Clean, PGD and AutoAttack on the same test inputs; each accuracy with its 95 % interval.
# The robust accuracy to report is AutoAttack's.

# %% tags=["headline"]
final = {"model": f"{cfg.model} ticket", **result.final}
display(Markdown(markdown_table(final_table([final]))))
display(Markdown("Per class:\n\n" + markdown_table(per_class_table(result.final))))
plot_comparison([final], f"{cfg.model}, keep {cfg.keep_ratio:g}, eps {cfg.eval_eps_value:.4g}");

# %% [markdown]
# ## 3. Is the robustness real? Gradient-masking checks

# %%
checks = (final_checks(result.model, cfg, result.data, result.final, masking_examples,
                       masking_more_steps, masking_restarts, progress, run_dir)
          if masking_checks else None)  # run_dir: a killed check resumes where it stopped
display(Markdown(checks_markdown(checks)))

# %% [markdown]
# ## 4. Summary

# %%
flags = checks["flags"] if checks else []
write_summary(run_dir, {**result.final, "dataset": cfg.dataset, "model": cfg.model,
                        "keep_ratio": cfg.keep_ratio, "ticket": str(result.ticket_path),
                        "masking_flags": len(flags)},
              final=[final], masking_checks=checks, best_epoch=result.best,
              stopped=result.stopped, warnings=result.warnings)
display(Markdown(
    f"**{cfg.model} on {cfg.dataset}, {cfg.keep_ratio:.1%} of the random weights kept, none trained** "
    f"({cfg.train_attack} search, epoch {result.best['epoch']} of {len(result.history)} run"
    f"{' (stopped early)' if result.stopped else ''}): "
    f"**{result.final['robust_acc']:.1%} under {result.final['robust_attack']}**, "
    f"{result.final['pgd']} {result.final['pgd_acc']:.1%}, clean {result.final['clean_acc']:.1%} at "
    f"eps={cfg.eval_eps_value:.4g} on {result.final['examples']} test inputs. "
    + (f"**Gradient-masking flags: {'; '.join(flags)}**" if flags else
       "No gradient-masking flag." if checks else "")
    + f"\n\nNext: this run folder as `ticket` in 02_finetune or 06_evaluate; sweep keep ratios "
    "with `rst-workbook sweep` and compare them in 07_compare_runs."))
for w in result.warnings:
    print("WARNING:", w)

# %% tags=["notebook-only"]
finish_run(run_dir)  # run.json: finished (a run made here is recorded like a batch run)
