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
# # 06 · Evaluate a ticket or checkpoint
#
# Loads a ticket (`ticket.pt`), a run folder, or a search checkpoint (`last.pt`) and
# reports clean, FGSM, PGD-k for several k and AutoAttack accuracy, an accuracy-vs-eps curve
# and the gradient-masking checks. Empty `ticket`: a quick ticket is searched here first.

# %% tags=["parameters"]
# Parameters (papermill overrides them; `rst-workbook params 06_evaluate` explains each)
name = None                   # run name: the folder is <name>-<time> (None: the notebook's name)
run_dir = None                # the run folder (None: a new one under outputs/<notebook>/) [path]
progress = True               # progress bars
ticket = None                 # a ticket.pt or a run folder (finetune tasks; 02 and 06 take it too) [path]
eval_dataset = None           # mnist5k | cifar10 | cifar100 | svhn | mnist | imagefolder: test data (None: the dataset the ticket was found on)
pgd_steps = [10, 20, 50]      # PGD-k for each k (step eval_alpha, eval_restarts restarts)
eps_curve = None              # eps values of the curve (None: 0 to 1.5 x the evaluation eps) [pixels in [0, 1]]
curve_steps = 10              # PGD steps of the curve (step scaled with eps)
curve_examples = 500          # test inputs of the curve (None: all) [examples]
masking_checks = True         # the gradient-masking checks of Carlini et al. (2019) on the final ticket
masking_examples = 500        # test inputs of the masking checks (None: all) [examples]
masking_more_steps = 100      # PGD steps of the 'more steps' check
masking_restarts = 5          # restarts of the 'restarts' check
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
from IPython.display import display, Markdown

from rst_lib import (autoattack_versus_pgd, gradient_masking_report, load_dataset, mask_summary,
                     resolve_device, robustness_report, train)
from rst_lib.analysis import markdown_table, plot_bars, plot_eps_curve
from rst_lib.workbook import (finish_run, accuracy_text, config_from, ensure_run_dir, load_any, parse_number,
                              resolve_checkpoint, write_json, write_summary)

ticket = str(resolve_checkpoint(ticket)) if ticket else None   # a run folder -> its ticket.pt
cfg = config_from(globals())
run_dir = ensure_run_dir(run_dir, "06_evaluate", name, globals())
device = resolve_device(cfg.device)
print("run directory:", run_dir)

# %% [markdown]
# ## 1. Load

# %%
if ticket is None:
    quick = train(cfg.replace(name=f"{cfg.name or 'evaluate'}-ticket", autoattack="none"),
                  run_dir / "ticket", progress)
    ticket = str(quick.ticket_path)
net, info = load_any(ticket, device)
found_with = info["config"]
ds_name = eval_dataset or found_with.get("dataset") or cfg.dataset
data = load_dataset(ds_name, found_with.get("data_dir") if not eval_dataset else cfg.data_dir,
                    cfg.download, augment=False, cache=cfg.data_cache, cache_dir=cfg.data_cache_dir)
summary_ = mask_summary(net)
print(f"{info['kind']} {info['path']}: {net.config.name}, keep ratio {summary_['keep_ratio']:.3g}, "
      f"evaluated on {ds_name}")

# %% [markdown]
# ## 2. Clean, FGSM, PGD-k, AutoAttack

# %% tags=["headline"]
e, a = cfg.eval_eps_value, cfg.eval_alpha_value
rep = robustness_report(net, data.test, e, a, cfg.threat_model, pgd_steps=tuple(pgd_steps),
                        restarts=cfg.eval_restarts, n_examples=final_examples, device=device,
                        seed=cfg.seed, progress=progress)
n = rep["n_examples"]
table = [{"attack": "clean", "test_acc": rep["clean_acc"], "examples": n},
         {"attack": "FGSM", "test_acc": rep["fgsm_acc"], "examples": n}]
table += [{"attack": f"PGD-{k} x{cfg.eval_restarts}", "test_acc": rep[f"pgd{k}_acc"], "examples": n}
          for k in pgd_steps]
aa_vs_pgd = None
if autoattack != "none":
    # the first autoattack_examples of the test split's fixed order (the images a search with
    # the same autoattack_examples runs AutoAttack on), PGD-k (the largest k) on the SAME
    # images, AutoAttack on what PGD left (per-example worst case, as a search reports it)
    aa_vs_pgd = autoattack_versus_pgd(net, data.test, e, a, cfg.threat_model, autoattack,
                                      autoattack_examples, max(pgd_steps), cfg.eval_restarts,
                                      device=device, seed=cfg.seed, progress=progress,
                                      precision=cfg.autoattack_precision)
    table.append({"attack": f"AutoAttack ({autoattack})", "test_acc": aa_vs_pgd["autoattack_acc"],
                  "examples": aa_vs_pgd["examples"]})
display(Markdown(f"eps = {e:.4g} ({cfg.threat_model}), PGD step {a:.4g}; 95 % intervals\n\n"
                 + markdown_table([{"attack": r["attack"], "test accuracy": accuracy_text(r["test_acc"], r["examples"])}
                                   for r in table])))
plot_bars([{"model": r["attack"], "acc": r["test_acc"]} for r in table], {"acc": "accuracy"},
          title=f"eps={e:.4g}");

# %% [markdown]
# ## 3. Accuracy vs eps

# %%
grid = [parse_number("eps_curve", v) for v in eps_curve] if eps_curve else [e * f for f in (0, 0.25, 0.5, 0.75, 1, 1.5)]
curve = []
for eps_i in grid:
    r = robustness_report(net, data.test, eps_i, max(a * eps_i / e if e else a, 1e-6), cfg.threat_model,
                          pgd_steps=(curve_steps,), n_examples=curve_examples, device=device,
                          seed=cfg.seed, progress=progress)
    curve.append({"eps": eps_i, "fgsm_acc": r["fgsm_acc"], "pgd_acc": r[f"pgd{curve_steps}_acc"]})
write_json(run_dir / "eps_curve.json", curve)
plot_eps_curve(curve, {"fgsm_acc": "FGSM", "pgd_acc": f"PGD-{curve_steps}"},
               f"{net.config.name}, keep {summary_['keep_ratio']:.3g}: accuracy vs eps");

# %% [markdown]
# ## 4. Gradient-masking checks
# Signs that PGD numbers overstate robustness (Carlini et al., 2019): PGD above FGSM, more steps
# or restarts raising accuracy, accuracy not falling with eps or not reaching ~0 when the image can
# be replaced, noise hurting more than PGD, AutoAttack far below PGD.

# %%
flags = []
if masking_checks:
    masking = gradient_masking_report(net, data.test, e, a, cfg.threat_model, n_examples=masking_examples,
                                      steps=cfg.eval_steps, more_steps=masking_more_steps,
                                      restarts=masking_restarts, device=device, seed=cfg.seed,
                                      progress=progress)
    flags = list(masking["flags"])
    if aa_vs_pgd and aa_vs_pgd["autoattack_acc"] < aa_vs_pgd["pgd_acc"] - 0.05:  # same images
        flags.append(f"AutoAttack ({aa_vs_pgd['autoattack_acc']:.1%}) is far below "
                     f"{aa_vs_pgd['pgd']} ({aa_vs_pgd['pgd_acc']:.1%}) on the same "
                     f"{aa_vs_pgd['examples']} test inputs: PGD overestimates robustness here")
    write_json(run_dir / "gradient_masking.json", {**masking, "flags": flags})
    display(Markdown(f"On {masking['n_examples']} test inputs at eps={e:.4g}:\n\n"
                     + markdown_table([{"check": masking["ran"].get(k, k), "test_acc": v}
                                     for k, v in masking["accuracy"].items()])
                     + "\n\n" + ("\n".join(f"- **{f}**" for f in flags) if flags else
                                   "No sign of gradient masking (not a proof of robustness).")))

# %% [markdown]
# ## 5. Summary

# %%
strongest = min(table[1:], key=lambda r: r["test_acc"])
write_summary(run_dir, {"dataset": ds_name, "model": net.config.name, "keep_ratio": summary_["keep_ratio"],
                        "clean_acc": rep["clean_acc"], "pgd_acc": rep[f"pgd{max(pgd_steps)}_acc"],
                        "autoattack_acc": next((r["test_acc"] for r in table if r["attack"].startswith("AutoAttack")), None),
                        "robust_acc": strongest["test_acc"], "robust_attack": strongest["attack"],
                        "robust_examples": strongest["examples"], "examples": n,
                        "ticket": str(info["path"]), "masking_flags": len(flags)},
              table=table, subset=rep["subset"], eps_curve=curve, autoattack_versus_pgd=aa_vs_pgd,
              gradient_masking_flags=flags)
display(Markdown(f"`{info['path']}`: clean {rep['clean_acc']:.1%}; the strongest attack here is "
                 f"**{strongest['attack']}: {strongest['test_acc']:.1%}** at eps={e:.4g}. "
                 + (f"**{len(flags)} sign(s) of gradient masking**: quote the strongest attack, not PGD."
                    if flags else "No sign of gradient masking was seen." if masking_checks else "")))

# %% tags=["notebook-only"]
finish_run(run_dir)  # run.json: finished (a run made here is recorded like a batch run)
