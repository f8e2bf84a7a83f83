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

# %% [markdown] tags=["notebook-only"]
# `ticket`: a `ticket.pt` or a 01_search run folder. Empty: a ticket is searched here
# first (`search_epochs`).

# %% tags=["parameters"]
# Parameters (papermill overrides them; `rst-workbook params 02_finetune` explains each)
name = None                   # run name: the folder is <name>-<time> (None: the notebook's name)
run_dir = None                # the run folder (None: a new one under outputs/<notebook>/) [path]
progress = True               # progress bars
resume = True                 # continue trainings already in run_dir (their last.pt)
ticket = None                 # a ticket.pt or a run folder (finetune tasks; 02 and 06 take it too) [path]
tasks = ["finetune", "finetune_reinit", "finetune_full"]  # the finetunes to run
finetune_init = "kaiming_normal"  # kaiming_normal | kaiming_uniform | signed_constant | unsigned_constant | xavier_normal | xavier_constant | binary | uniform | same (the ticket's scheme): finetune_reinit draws weights so (RST --ft_init)
search_epochs = 5             # epochs of the ticket search when ticket is None [epochs]
search_lr = 0.1               # its learning rate (scores)
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
keep_ratio = 0.1              # fraction of the weights KEPT (RBRN's --prune-rate) [fraction]
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
from IPython.display import Markdown, display

from rst_lib import load_run_data, load_ticket, mask_summary, resolve_device, train
from rst_lib.analysis import compare_models, markdown_table, plot_comparison, plot_histories
from rst_lib.workbook import finish_run, config_from, ensure_run_dir, final_table, write_summary

cfg = config_from(globals())
run_dir = ensure_run_dir(run_dir, "02_finetune", name, globals())
data = load_run_data(cfg)
label = cfg.name or "finetune"
print("run directory:", run_dir)

# %% [markdown]
# ## 1. The ticket

# %%
histories = {}
if ticket is None:
    found = train(cfg.replace(task="search", ticket=None, epochs=search_epochs, lr=search_lr,
                              name=f"{label}-ticket"), run_dir / "ticket", progress, data, resume)
    ticket = str(found.ticket_path)
    histories["ticket search (scores)"] = found.history
print("ticket:", ticket)
ticket_model = load_ticket(ticket, resolve_device(cfg.device))
print(f"{ticket_model.config.name}, keep ratio {mask_summary(ticket_model)['keep_ratio']:.3g}")

# %% [markdown]
# ## 2. Finetune the weights (mask fixed)
# `finetune` trains the ticket's own (inherited) weights; `finetune_reinit` the same mask
# over weights re-drawn with `finetune_init` (RST's `--ft_init`, kaiming normal);
# `finetune_full` every weight, starting from the ticket.

# %%
LABELS = {"finetune": "inherited weights", "finetune_reinit": "re-initialized weights",
          "finetune_full": "full finetune (all weights)"}
runs = {}
for task in tasks:
    runs[task] = train(cfg.replace(task=task, ticket=ticket, name=f"{label}-{task}"),
                       run_dir / task, progress, data, resume)
    histories[LABELS.get(task, task)] = runs[task].history
plot_histories(histories, f"{cfg.train_attack} finetuning (validation split)");

# %% [markdown]
# ## 3. Same test inputs, same attacks
# Every model on the same test inputs with the same PGD and AutoAttack; 95 % intervals.

# %% tags=["headline"]
rows = compare_models({"ticket (no training)": ticket_model}, cfg, data, progress)
rows += [{"model": LABELS.get(t, t), **r.final} for t, r in runs.items()]
display(Markdown(markdown_table(final_table(rows))))
plot_comparison(rows, f"eps={cfg.eval_eps_value:.4g}, {rows[0]['examples']} test inputs");

# %% [markdown]
# ## 4. Summary

# %%
by = {r["model"]: r for r in rows}
inh, rei = by.get(LABELS["finetune"]), by.get(LABELS["finetune_reinit"])
main = inh or rows[-1]
write_summary(run_dir, {**main, "dataset": cfg.dataset, "model": ticket_model.config.name,
                        "keep_ratio": mask_summary(ticket_model)["keep_ratio"], "ticket": ticket},
              final=rows)
text = f"Ticket `{ticket}`; {len(runs)} finetune(s), {cfg.epochs} epoch(s) each. "
if inh and rei:
    gap = inh["robust_acc"] - rei["robust_acc"]
    text += (f"Inherited weights: {inh['robust_attack']} {inh['robust_acc']:.1%} (clean "
             f"{inh['clean_acc']:.1%}); re-initialized: {rei['robust_acc']:.1%} (clean "
             f"{rei['clean_acc']:.1%}) on {inh['robust_examples']} test inputs. "
             + ("**The inherited random weights help** (the lottery ticket phenomenon)."
                if gap > 0 else "**Re-initializing did not hurt in this run.**"))
display(Markdown(text))

# %% tags=["notebook-only"]
finish_run(run_dir)  # run.json: finished (a run made here is recorded like a batch run)
