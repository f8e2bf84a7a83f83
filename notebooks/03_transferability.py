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

# %% [markdown] tags=["notebook-only"]
# `tickets`: ticket files or run folders (e.g. a keep-ratio sweep of 01_search with one
# seed). Empty: tickets at `keep_ratios` are searched here from seed `seed`.

# %% tags=["parameters"]
# Parameters (papermill overrides them; `rst-workbook params 03_transferability` explains each)
name = None                   # run name: the folder is <name>-<time> (None: the notebook's name)
run_dir = None                # the run folder (None: a new one under outputs/<notebook>/) [path]
progress = True               # progress bars
resume = True                 # continue trainings already in run_dir (their last.pt)
tickets = []                  # ticket.pt files / run folders / globs of ONE random network (empty: search here) [paths]
keep_ratios = [0.05, 0.1, 0.3]  # keep ratios searched here when tickets is empty [fractions]
transfer_examples = 500       # test inputs attacked on every source (None: all) [examples]
same_network = True           # the tickets must share one random network (RST's experiment); False: a control pair of different random networks
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

from rst_lib import PGD, evaluation_images, load_run_data, make_loader, resolve_device, transfer_matrix
from rst_lib.analysis import compare_models, markdown_table, plot_transfer_matrix, transfer_ratio_record
from rst_lib.workbook import (finish_run, config_from, ensure_run_dir, final_table, load_tickets,
                              resolve_tickets, search_tickets,
                              write_json, write_summary)

cfg = config_from(globals())
run_dir = ensure_run_dir(run_dir, "03_transferability", name, globals())
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
# each ticket alone, white-box: clean, PGD and AutoAttack on the transfer inputs
alone = compare_models(members, cfg.replace(final_examples=transfer_examples), data, progress)
display(Markdown(markdown_table(final_table(alone))))

# %% [markdown]
# ## 2. Transfer matrices (PGD crafted on the row, evaluated on the column)
#
# Two attacks on the source ticket: **full-step** PGD runs all steps on every input;
# **early-stop** PGD stops perturbing an input as soon as the *source* misclassifies it, as
# RST's `test_trans.py` does. Early-stop examples are the least perturbed ones that fool
# the source, so they transfer less: RST's "poor transferability" is measured this way.

# %%
images = evaluation_images(data.test, transfer_examples, cfg.seed)  # the run's seed: the images of its search
loader = make_loader(images.dataset, cfg.eval_batch_size)
eps_, alpha_ = cfg.eval_eps_value, cfg.eval_alpha_value
results = {}
for variant, early in (("full-step", False), ("early-stop", True)):
    results[variant] = transfer_matrix(
        members, loader, lambda m: PGD(m, eps_, alpha_, cfg.eval_steps, cfg.eval_restarts, early_stop=early),
        device, progress, require_same_network=same_network, seed=cfg.seed, images=images)
    results[variant]["ratio"] = transfer_ratio_record(results[variant])  # None + why if undefined
write_json(run_dir / "transfer.json", results)
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
for ax, (variant, res) in zip(axes, results.items()):
    plot_transfer_matrix(res, f"{variant} PGD-{cfg.eval_steps}, eps={eps_:.4g}, {res['n']} test inputs", ax=ax)
plt.tight_layout()

# %% tags=["headline"]
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
mean = lambda key: sum(r[key] for r in alone) / k  # noqa: E731
write_summary(run_dir, {"dataset": cfg.dataset, "model": next(iter(members.values())).config.name,
                        "clean_acc": mean("clean_acc"), "pgd_acc": diag,
                        "autoattack_acc": mean("autoattack_acc") if "autoattack_acc" in alone[0] else None,
                        "robust_acc": mean("robust_acc"), "transfer_acc": off,
                        "transfer_acc_early_stop": means["early-stop"][1],
                        "examples": results["full-step"]["n"]},
              tickets=[str(p) for p in paths], rows=rows, whitebox=alone)
lines = [f"{k} tickets of one random network, {results['full-step']['n']} test inputs; alone, "
         f"{alone[0]['robust_attack']} leaves {mean('robust_acc'):.1%} on average."]
for variant, (d, o) in means.items():
    if o is None:
        lines.append("Give at least two tickets for transfer numbers.")
        break
    lines.append(f"**{variant}** PGD: white-box {d:.1%} on average, crafted on *another* ticket **{o:.1%}** "
                 + ("(poor transfer)." if o > d + 0.05 else "(transfers well: a random switch will not help much)."))
display(Markdown("\n\n".join(lines)))

# %% tags=["notebook-only"]
finish_run(run_dir)  # run.json: finished (a run made here is recorded like a batch run)
