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
# # 07 · Compare runs
#
# Reads every `metrics.json` under `runs_root` (or only the `run_dirs` given) into one
# table, and plots clean and PGD accuracy against the keep ratio — the main figure of both
# papers — one line per model / dataset / training attack / task, with the spread over
# seeds.

# %% [markdown] tags=["notebook-only"]
# Feed it a keep-ratio × seed sweep of 01_search (`rst-workbook sweep
# params/sweeps/keep-ratios-cpu.yaml`).

# %% tags=["parameters"]
# Parameters (papermill overrides them; `rst-workbook params 07_compare_runs` explains each)
name = None                   # run name: the folder is <name>-<time> (None: the notebook's name)
run_dir = None                # the run folder (None: a new one under outputs/<notebook>/) [path]
progress = True               # progress bars
runs_root = None              # compare every metrics.json below this folder (None: the project's outputs/) [path]
run_dirs = []                 # only these run folders / globs (empty: all of runs_root) [paths]
task_filter = None            # only runs of these tasks, e.g. ['search'] (None: all)
group_by = ["model", "dataset", "train_attack", "task"]  # runs differing only in these are one curve

# %%
import glob
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from rst_lib.analysis import plot_accuracy_vs_keep_ratio, plot_robust_vs_clean
from rst_lib.workbook import (finish_run, PROJECT_ROOT, collect_metrics, ensure_run_dir, group_over_seeds,
                              resolve_path_parameters, write_summary)

resolve_path_parameters(globals())  # relative paths from the project root; missing ones refused
run_dir = ensure_run_dir(run_dir, "07_compare_runs", name, globals())
roots = ([p for d in run_dirs for p in sorted(glob.glob(str(d)))] if run_dirs
         else [runs_root or PROJECT_ROOT / "outputs"])
rows = [r for r in collect_metrics(roots) if task_filter is None or r["task"] in task_filter]
print(f"{len(rows)} finished trainings under {', '.join(map(str, roots))}")

# %% [markdown]
# ## 1. All runs
# `clean` / `PGD` / `AutoAttack` are final numbers on the `split` named (the test split,
# read once per run); `select_*` are the best epoch's numbers on the split that chose it.

# %%
df = pd.DataFrame(rows)
if len(df):
    df["where"] = [str(Path(p).relative_to(Path(r).parent)) if Path(p).is_relative_to(Path(r).parent) else p
                   for p, r in zip(df["path"], df["run"])]
    df = df.sort_values(["model", "dataset", "task", "keep_ratio", "seed"], na_position="last")
    df.to_csv(run_dir / "runs.csv", index=False)
    cols = ["where", "task", "dataset", "model", "keep_ratio", "train_attack", "eps", "seed", "epochs",
            "split", "examples", "clean_acc", "pgd_acc", "autoattack_acc", "select_split", "select_pgd_acc"]
    fmt = {c: "{:.1%}" for c in ("clean_acc", "pgd_acc", "autoattack_acc", "select_pgd_acc")}
    fmt.update(keep_ratio="{:.3g}", eps="{:.4g}", examples="{:.0f}")
    display(df[cols].style.format(fmt, na_rep="").hide(axis="index"))
else:
    display(Markdown(f"**No finished runs under `{roots}` yet.** Run 01_search (or a sweep) first, "
                     "then re-run this notebook."))

# %% [markdown]
# ## 2. Over seeds: mean ± std
# Runs that differ only in their seed are one setting; its spread says how much a
# difference between settings can be trusted.

# %% tags=["headline"]
metrics = ["clean_acc", "pgd_acc", "autoattack_acc", "robust_acc"]
keep = ["task", "dataset", "model", "width", "keep_ratio", "train_attack", "eps", "split", "examples", "seed"]
grouped = group_over_seeds([{k: r[k] for k in keep + metrics} for r in rows], metrics)
if grouped:
    table = pd.DataFrame([{**{k: g[k] for k in keep if k in g}, "seeds": len(g["seeds"]),
                           **{m: (f"{g[m + '_mean']:.1%} ± {g[m + '_std']:.1%}" if g[m + "_mean"] is not None else "")
                              for m in metrics}} for g in grouped])
    display(table.drop(columns=[c for c in ("seed",) if c in table]).style.hide(axis="index"))

# %% [markdown]
# ## 3. Accuracy vs keep ratio

# %%
if rows:
    plot_accuracy_vs_keep_ratio(rows, tuple(group_by))
    plt.show()
    plot_robust_vs_clean(rows, tuple(group_by))
    plt.show()

# %% [markdown]
# ## 4. Summary

# %%
best = max((g for g in grouped if g["robust_acc_mean"] is not None),
           key=lambda g: g["robust_acc_mean"], default=None)
write_summary(run_dir, {"runs": len(rows), "settings": len(grouped),
                        "robust_acc": best["robust_acc_mean"] if best else None,
                        "clean_acc": best["clean_acc_mean"] if best else None,
                        "keep_ratio": best["keep_ratio"] if best else None,
                        "model": best["model"] if best else None, "dataset": best["dataset"] if best else None},
              roots=[str(r) for r in roots], over_seeds=grouped)
if best:
    display(Markdown(f"{len(rows)} runs, {len(grouped)} settings. Most robust (mean over "
                     f"{best['n_seeds']} seed(s)): **{best['model']} on {best['dataset']}, keep "
                     f"{best['keep_ratio']:.3g}, {best['task']}: robust {best['robust_acc_mean']:.1%} ± "
                     f"{best['robust_acc_std']:.1%}, clean {best['clean_acc_mean']:.1%}** "
                     f"({best['split']} split, {best['examples']} examples). "
                     f"Table saved as `{run_dir / 'runs.csv'}`."))

# %% tags=["notebook-only"]
finish_run(run_dir)  # run.json: finished (a run made here is recorded like a batch run)
