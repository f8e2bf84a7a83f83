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
# Parameters (papermill overrides this cell; see params/06_evaluate/*.yaml)
name = "evaluate"
run_dir = None             # None: a new folder under outputs/06_evaluate/ (batch runs pass one)
progress = True            # progress bars
ticket = None              # a ticket.pt, a run folder or a last.pt (None: search a quick ticket here)
eval_dataset = None        # test data (None: the dataset the ticket was found on)
pgd_steps = [10, 20, 50]   # PGD-k for each k (step eval_alpha, eval_restarts restarts)
final_examples = 1000      # test inputs of the table (None: all)
eps_curve = None           # eps values of the curve (None: 0 to 1.5 x the evaluation eps)
curve_steps = 10           # PGD steps of the curve (step scaled with eps)
curve_examples = 500       # test inputs of the curve (None: all)
autoattack = "fast"        # none | fast | standard
autoattack_examples = 200
eval_eps = None            # evaluation budget (None: eps)
masking_checks = True      # the gradient-masking checks of Carlini et al. (2019)
masking_examples = 200     # their test inputs (None: all)
masking_more_steps = 100   # PGD steps of the "more steps" check
masking_restarts = 5       # restarts of the "restarts" check
# --- a quick search when ticket is None; eps is the evaluation budget (rst_lib.RunConfig fields)
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
from rst_lib import autoattack_accuracy, robustness_report, search
from rst_lib.config import parse_number
from rst_lib.data import load_dataset
from rst_lib.evaluation import gradient_masking_report
from rst_lib.plots import markdown_table, plot_bars, plot_eps_curve
from rst_lib.report import config_from, ensure_run_dir, load_any, resolve_checkpoint, write_summary
from rst_lib.train import resolve_device, write_json

ticket = str(resolve_checkpoint(ticket)) if ticket else None   # a run folder -> its ticket.pt
cfg = config_from(globals())
run_dir = ensure_run_dir(run_dir, "06_evaluate", name)
device = resolve_device(cfg.device)
print("run directory:", run_dir)

# %% [markdown]
# ## 1. Load

# %%
if ticket is None:
    quick = search(cfg.replace(name=f"{name}-ticket", autoattack="none"), run_dir / "ticket", progress)
    ticket = str(quick.ticket_path)
net, info = load_any(ticket, device)
found_with = info["config"]
ds_name = eval_dataset or found_with.get("dataset") or cfg.dataset
data = load_dataset(ds_name, found_with.get("data_dir") if not eval_dataset else cfg.data_dir,
                    cfg.download, augment=False)
summary_ = rst_lib.mask_summary(net)
print(f"{info['kind']} {info['path']}: {net.config.name}, keep ratio {summary_['keep_ratio']:.3g}, "
      f"evaluated on {ds_name}")

# %% [markdown]
# ## 2. Clean, FGSM, PGD-k, AutoAttack

# %%
e, a = cfg.eval_eps_value, cfg.eval_alpha_value
rep = robustness_report(net, data.test, e, a, cfg.threat_model, pgd_steps=tuple(pgd_steps),
                        restarts=cfg.eval_restarts, n_examples=final_examples, device=device,
                        seed=cfg.seed, progress=progress)
n = rep["n_examples"]
table = [{"attack": "clean", "test_acc": rep["clean_acc"], "examples": n},
         {"attack": "FGSM", "test_acc": rep["fgsm_acc"], "examples": n}]
table += [{"attack": f"PGD-{k} x{cfg.eval_restarts}", "test_acc": rep[f"pgd{k}_acc"], "examples": n}
          for k in pgd_steps]
if autoattack != "none":
    aa = autoattack_accuracy(net, data.test, e, cfg.threat_model, autoattack, autoattack_examples,
                             device, seed=cfg.seed)
    table.append({"attack": f"AutoAttack ({autoattack})", "test_acc": aa,
                  "examples": min(autoattack_examples or len(data.test), len(data.test))})
display(Markdown(f"eps = {e:.4g} ({cfg.threat_model}), PGD step {a:.4g}\n\n"
                 + markdown_table(table, ["attack", "test_acc", "examples"])))
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
    aa_row = next((r for r in table if r["attack"].startswith("AutoAttack")), None)
    pgd_k = rep[f"pgd{max(pgd_steps)}_acc"]
    if aa_row and aa_row["test_acc"] < pgd_k - 0.05:
        flags.append(f"AutoAttack ({aa_row['test_acc']:.1%}) is far below PGD-{max(pgd_steps)} "
                     f"({pgd_k:.1%}): PGD overestimates robustness here")
    write_json(run_dir / "gradient_masking.json", {**masking, "flags": flags})
    display(Markdown(f"On {masking['n_examples']} test inputs at eps={e:.4g}:\n\n"
                     + markdown_table([{"check": k, "test_acc": v} for k, v in masking["accuracy"].items()])
                     + "\n\n" + ("\n".join(f"- **{f}**" for f in flags) if flags else
                                   "No sign of gradient masking (not a proof of robustness).")))

# %% [markdown]
# ## 5. Summary

# %%
strongest = min(table[1:], key=lambda r: r["test_acc"])
write_summary(run_dir, {"dataset": ds_name, "model": net.config.name, "keep_ratio": summary_["keep_ratio"],
                        "clean_acc": rep["clean_acc"], "pgd_acc": rep[f"pgd{max(pgd_steps)}_acc"],
                        "autoattack_acc": next((r["test_acc"] for r in table if r["attack"].startswith("AutoAttack")), None),
                        "ticket": str(info["path"])}, table=table, eps_curve=curve,
              gradient_masking_flags=flags)
display(Markdown(f"`{info['path']}`: clean {rep['clean_acc']:.1%}; the strongest attack here is "
                 f"**{strongest['attack']}: {strongest['test_acc']:.1%}** at eps={e:.4g}. "
                 + (f"**{len(flags)} sign(s) of gradient masking**: quote the strongest attack, not PGD."
                    if flags else "No sign of gradient masking was seen." if masking_checks else "")))
