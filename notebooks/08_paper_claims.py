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
# # 08 · The papers' claims
#
# Reads the run folders of a claims sweep (`params/sweeps/claims-*.yaml`: one stage per kind
# of run — ticket searches, dense networks, natural controls, finetunes, transfer, R2S, the
# RBRN settings — each over several seeds) and tests each claim of the two papers: the runs
# that test it, their numbers (mean ± std over seeds and the 95 % interval of the mean;
# AutoAttack as the robust number where the notebook measured it) and a verdict.
#
# **The verdict rule** (`rst_lib.analysis.claims.verdict`): *inconclusive at this scale*
# when an arm has fewer than 2 seeds, when the difference of the means is inside the seed
# spread (not larger than the larger std), or when its 95 % interval (Welch) holds 0;
# otherwise *holds* or *does not hold* by the sign of the difference.

# %% tags=["parameters"]
# Parameters (papermill overrides them; `rst-workbook params 08_paper_claims` explains each)
name = None       # run name: the folder is <name>-<time> (None: the notebook's name)
run_dir = None    # the run folder (None: a new one under outputs/<notebook>/) [path]
progress = True   # progress bars
sweep = None      # the sweep file whose run folders are read (its stages are the claims' runs) [path]
runs_root = None  # compare every metrics.json below this folder (None: the project's outputs/) [path]
claims = None     # only these claims, by key, e.g. ['rbrn-last-bn'] (None: all)

# %%
from collections import Counter

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from rst_lib.analysis import CLAIMS, claims_table, collect_records, judge_claims, markdown_table, plot_claim
from rst_lib.workbook import (finish_run, ensure_run_dir, resolve_path_parameters, sweep_run_dirs, write_json,
                              write_summary)

resolve_path_parameters(globals())  # relative paths from the project root; missing ones refused
if not sweep:
    raise ValueError("sweep is required: the claims sweep file, e.g. params/sweeps/claims-cifar10-cpu.yaml")
run_dir = ensure_run_dir(run_dir, "08_paper_claims", name, globals())
chosen = [c for c in CLAIMS if claims is None or c.key in claims]
unknown = sorted(set(claims or []) - {c.key for c in CLAIMS})
if unknown:
    raise ValueError(f"unknown claim(s) {unknown}; the claims are {[c.key for c in CLAIMS]}")
cells = sweep_run_dirs(sweep, runs_root)
records = collect_records(cells)
print(f"{len(records)} finished runs of the {len(cells)} cells of {sweep}")
print("run directory:", run_dir)

# %% [markdown]
# ## 1. The claims table

# %%
results = judge_claims(records, chosen)
rows = claims_table(results)
display(Markdown(markdown_table(rows)))

# %% [markdown]
# ## 2. One figure per claim
# Each dot is one seed; the square and bar are the mean and its 95 % interval.

# %%
cols = 3
fig, axes = plt.subplots((len(results) + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.2 * ((len(results) + cols - 1) // cols)),
                         squeeze=False)
for r, ax in zip(results, axes.flat):
    plot_claim(r, ax)
for ax in axes.flat[len(results):]:
    ax.axis("off")
fig.tight_layout()

# %% [markdown]
# ## 3. Summary

# %%
counts = Counter(r["verdict"] for r in results)
write_json(run_dir / "claims.json", {"sweep": str(sweep), "cells": len(cells), "finished": len(records),
                                     "claims": [{**row, "key": r["claim"].key, "runs": r["runs"],
                                                 "a_values": r["a_values"], "b_values": r["b_values"]}
                                                for row, r in zip(rows, results)]})
write_summary(run_dir, {"finished_runs": len(records), "cells": len(cells), **counts})
display(Markdown(f"{len(records)} of {len(cells)} runs finished; "
                 + ", ".join(f"{n} claim(s) {v}" for v, n in counts.items()) + "."))

# %%
finish_run(run_dir)  # run.json: finished (a run made here is recorded like a batch run)
