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
# seeds. Feed it a keep-ratio × seed sweep of 01_search (`rst-workbook sweep
# params/sweeps/keep-ratios-cpu.yaml`).

# %% tags=["parameters"]
# Parameters (papermill overrides this cell; see params/07_compare_runs/*.yaml)
name = "compare"
run_dir = None             # None: a new folder under outputs/07_compare_runs/ (batch runs pass one)
progress = True            # progress bars
runs_root = "../outputs"   # every metrics.json below this folder
run_dirs = []              # only these run folders / globs instead (empty: all of runs_root)
tasks = None               # only these tasks, e.g. ["search"] (None: all)
group_by = ["model", "dataset", "train_attack", "task"]

# %%
import glob
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display, Markdown

from rst_lib.plots import plot_accuracy_vs_keep_ratio, plot_robust_vs_clean
from rst_lib.report import collect_metrics, ensure_run_dir, write_summary

run_dir = ensure_run_dir(run_dir, "07_compare_runs", name)
roots = [p for d in run_dirs for p in sorted(glob.glob(str(d)))] if run_dirs else [runs_root]
rows = [r for r in collect_metrics(roots) if tasks is None or r["task"] in tasks]
print(f"{len(rows)} finished searches/finetunes under {', '.join(map(str, roots))}")

# %% [markdown]
# ## 1. All runs

# %%
df = pd.DataFrame(rows)
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
                     "then re-run this notebook."))

# %% [markdown]
# ## 2. Accuracy vs keep ratio

# %%
if rows:
    plot_accuracy_vs_keep_ratio(rows, tuple(group_by))
    plt.show()
    plot_robust_vs_clean(rows, tuple(group_by))
    plt.show()

# %% [markdown]
# ## 3. Summary

# %%
best = max((r for r in rows if r["pgd_acc"] is not None), key=lambda r: r["pgd_acc"], default=None)
write_summary(run_dir, {"runs": len(rows), "pgd_acc": best["pgd_acc"] if best else None,
                        "clean_acc": best["clean_acc"] if best else None,
                        "keep_ratio": best["keep_ratio"] if best else None,
                        "model": best["model"] if best else None, "dataset": best["dataset"] if best else None},
              roots=[str(r) for r in roots])
if best:
    display(Markdown(f"{len(rows)} runs in {df.groupby(list(group_by), dropna=False).ngroups} groups. Most robust: "
                     f"**{best['model']} on {best['dataset']}, keep {best['keep_ratio']:.3g}, {best['task']}: "
                     f"PGD {best['pgd_acc']:.1%}, clean {best['clean_acc']:.1%}** (`{best['path']}`). "
                     f"Table saved as `{run_dir / 'runs.csv'}`."))
