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

# %% [markdown] tags=["notebook-only"]
# `tickets`: ticket files or run folders of one random network; empty: searched here.

# %% tags=["parameters"]
# Parameters (papermill overrides them; `rst-workbook params 04_r2s` explains each)
name = None                   # run name: the folder is <name>-<time> (None: the notebook's name)
run_dir = None                # the run folder (None: a new one under outputs/<notebook>/) [path]
progress = True               # progress bars
resume = True                 # continue trainings already in run_dir (their last.pt)
tickets = []                  # ticket.pt files / run folders / globs of ONE random network (empty: search here) [paths]
keep_ratios = [0.05, 0.1, 0.3]  # keep ratios searched here when tickets is empty [fractions]
mode = "batch"                # batch | example: R2S draws one member per query batch or per input
eot_samples = 10              # gradient samples per step of the adaptive (EOT) attack
eval_draws = 5                # member draws the switch's accuracy is averaged over
r2s_examples = 500            # test inputs of the R2S evaluation (None: all) [examples]
r2s_batch_size = 100          # batch mode draws one member per batch: smaller batches, more draws [examples]
r2s_autoattack = True         # also AutoAttack's rand version (EOT) on the switch
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
from IPython.display import display, Markdown

from rst_lib import (RandomSwitch, autoattack_outcomes, evaluate_r2s, evaluation_images, load_run_data,
                     make_loader, resolve_device)
from rst_lib.analysis import markdown_table, plot_r2s, r2s_rows
from rst_lib.workbook import (finish_run, accuracy_text, config_from, ensure_run_dir, load_tickets,
                              resolve_tickets, search_tickets,
                              write_json, write_summary)

cfg = config_from(globals())
run_dir = ensure_run_dir(run_dir, "04_r2s", name, globals())
device = resolve_device(cfg.device)
data = load_run_data(cfg)
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

# %% tags=["headline"]
switch = RandomSwitch(members, mode=mode, seed=cfg.seed).to(device)
images = evaluation_images(data.test, r2s_examples, cfg.seed)  # the run's seed: its search's images
loader = make_loader(images.dataset, r2s_batch_size)
result = evaluate_r2s(switch, loader, cfg.eval_eps_value, cfg.eval_alpha_value, cfg.eval_steps, device,
                      eot_samples=eot_samples, restarts=cfg.eval_restarts, eval_draws=eval_draws,
                      seed=cfg.seed, progress=progress)
result["subset"] = images.record()
# AutoAttack's version for randomized defenses (APGD-CE + APGD-DLR, 20 EOT samples a step)
if r2s_autoattack:
    # the first autoattack_examples of the test split's fixed order: the images of a search's
    # AutoAttack, and a prefix of the R2S inputs above (one order, taken from the whole split)
    n_aa = min(cfg.autoattack_examples, result["n"])
    aa = autoattack_outcomes(switch, images.prefix(n_aa), cfg.eval_eps_value, cfg.threat_model,
                             "rand", n_aa, device, seed=cfg.seed, precision=cfg.autoattack_precision)
    result["autoattack_rand_acc"] = aa["acc"]
    result["autoattack_rand_examples"] = aa["examples"]
    result["autoattack_rand_subset"] = aa["subset"]  # the images attacked, as handed to it
    result["autoattack_rand_outcomes"] = aa["outcomes"]
    print(f"AutoAttack (rand) on the switch: {accuracy_text(result['autoattack_rand_acc'], n_aa)}")
    if n_aa == result["n"]:  # the lowest of numbers on the same images
        result["min_robust_acc"] = min(result["min_robust_acc"], result["autoattack_rand_acc"])
    else:
        print(f"AutoAttack (rand) ran on the first {n_aa} of the {result['n']} R2S inputs: it is "
              "not folded into the honest robust accuracy (other images); give "
              "autoattack_examples >= r2s_examples to compare on the same images")
write_json(run_dir / "r2s.json", result)
rows = r2s_rows(result)
display(Markdown(markdown_table(rows)))
plot_r2s(result, f"R2S ({mode} mode, {len(members)} members): PGD-{cfg.eval_steps}, "
                 f"eps={cfg.eval_eps_value:.4g}, {result['n']} test inputs");

# %% [markdown]
# ## 3. Summary

# %%
best_member = max(result["member_whitebox_acc"])
aa_apart = r2s_autoattack and result["autoattack_rand_examples"] != result["n"]
write_summary(run_dir, {"dataset": cfg.dataset, "model": next(iter(members.values())).config.name,
                        "clean_acc": result["clean_acc"], "pgd_acc": result["adaptive_eot_acc"],
                        "autoattack_acc": result.get("autoattack_rand_acc"),
                        "robust_acc": result["min_robust_acc"], "examples": result["n"],
                        "fixed_member_acc": result["fixed_member_mean_acc"]},
              tickets=[str(p) for p in paths], rows=rows)
display(Markdown(
    f"R2S with {len(members)} members: clean {result['clean_acc']:.1%}; fixed-member PGD "
    f"{result['fixed_member_mean_acc']:.1%} (mean), switching PGD {result['switching_acc']:.1%}, "
    f"adaptive EOT-{eot_samples} {result['adaptive_eot_acc']:.1%}"
    + (f", AutoAttack (rand) {result['autoattack_rand_acc']:.1%}" if r2s_autoattack else "")
    + (f" (on the first {result['autoattack_rand_examples']} of them)" if aa_apart else "")
    + f" on {result['n']} test inputs. The best single member alone: "
    f"{best_member:.1%} white-box. **Honest robust accuracy of the switch: "
    f"{result['min_robust_acc']:.1%}** (the lowest of these"
    + (", AutoAttack (rand) apart: other images)" if aa_apart else ")")
    + (" — the switch does not beat its best member under the adaptive attack."
       if result["min_robust_acc"] <= best_member else " — above its best member.")))

# %% tags=["notebook-only"]
finish_run(run_dir)  # run.json: finished (a run made here is recorded like a batch run)
