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
# of run — ticket searches, the dense baseline and its lr pilot, controls, finetunes, transfer,
# R2S, RTT, the RBRN settings — each over several seeds; a study's committed records under
# `studies/` where it has them) and tests each claim of the two papers; a methods sweep
# (`params/sweeps/methods-*.yaml`, docs/methods.md) is judged by the methods comparison's claims.
#
# **The verdict rule** (`rst_lib.analysis.claims`, docs/evaluation.md "Verdicts"): the two arms
# are **paired by seed** (same random network, same test images); the interval is the t
# interval of the per-seed differences, whose variance is at least what the test images
# alone allow. Each claim declares its **kind and margin δ** before any run: *superiority*
# (lower 95 % bound > δ), *non-inferiority* (lower 95 % bound > −δ), *equivalence* (90 %
# interval inside ±δ). "Does not hold" when the interval is on the wrong side of the margin,
# else *inconclusive at this scale* with the smallest effect the study could have detected
# (80 % power). **Holm** over the counted claims; sanity checks and controls are shown, not
# counted.

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

from rst_lib.analysis import (claims_for_sweep, claims_table, collect_records, judge_claims, markdown_notes,
                              markdown_table, plot_claim)
from rst_lib.workbook import (finish_run, ensure_run_dir, resolve_path_parameters, sweep_run_dirs, write_json,
                              write_summary)

resolve_path_parameters(globals())  # relative paths from the project root; missing ones refused
if not sweep:
    raise ValueError("sweep is required: the claims sweep file, e.g. params/sweeps/claims-cifar10-cpu.yaml")
run_dir = ensure_run_dir(run_dir, "08_paper_claims", name, globals())
family = claims_for_sweep(sweep)  # by the sweep's name: the papers' claims, or methods-*: the methods comparison's
chosen = [c for c in family if claims is None or c.key in claims]
unknown = sorted(set(claims or []) - {c.key for c in family})
if unknown:
    raise ValueError(f"unknown claim(s) {unknown}; the claims are {[c.key for c in family]}")
cells = sweep_run_dirs(sweep, runs_root)
records = collect_records(cells)
print(f"{len(records)} finished runs of the {len(cells)} cells of {sweep}"
      + (f" ({sum('/studies/' in str(c) for c in cells)} from committed study records)"))
print("run directory:", run_dir)

# %% [markdown]
# ## 1. The claims table

# %% tags=["headline"]
results = judge_claims(records, chosen)
rows = claims_table(results)  # the table fits the notebook's width; the long columns follow it
display(Markdown(markdown_table(rows, ["paper", "claim", "counted", "paired difference", "verdict"])))
display(Markdown(markdown_notes(rows, "claim", ["kind", "compared", "a", "b", "beside", "why"])))

# %% [markdown]
# ## 2. One figure per claim
# Each dot is one seed's paired difference (arm a − arm b); the square and bar are their mean
# and interval (95 %; 90 % for equivalence); dashed: the declared margin.

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
counted = [r for r in results if r["claim"].counted]
counts = Counter(r["verdict"] for r in counted)
write_json(run_dir / "claims.json", {
    "sweep": str(sweep), "cells": len(cells), "finished": len(records),
    "multiplicity": f"Holm over the {len(counted)} counted claims (family-wise error <= 5 %)",
    "claims": [{**row, "key": r["claim"].key, "pairs": r["n"], "difference": r["difference"],
                "interval": r["interval"], "level": r["level"], "p": r["p"], "p_holm": r["p_holm"],
                "detectable": r["detectable"], "margin_points": r["claim"].margin,
                "runs": r["runs"], "a_values": r["a_values"], "b_values": r["b_values"]}
               for row, r in zip(rows, results)]})
write_summary(run_dir, {"finished_runs": len(records), "cells": len(cells), **counts})
display(Markdown(f"{len(records)} of {len(cells)} runs finished; of the {len(counted)} counted claims "
                 + ", ".join(f"{n} {v}" for v, n in counts.items())
                 + f" (Holm over the counted claims); {len(results) - len(counted)} checks and controls shown."))

# %% tags=["notebook-only"]
finish_run(run_dir)  # run.json: finished (a run made here is recorded like a batch run)
