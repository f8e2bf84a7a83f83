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
# **The verdict rule** (`rst_lib.analysis.verdicts`, docs/evaluation.md "Verdicts"): the two
# arms are **paired by seed** (same random network, same test images; each seed its own random
# test images). The interval is the t interval of the per-seed differences; its variance is at
# least what each seed's test images give, estimated from the images the two arms classify
# differently. Each claim declares its **kind and margin δ** before any run: *superiority*
# (lower 95 % bound > δ), *non-inferiority* (lower 95 % bound > −δ), *equivalence* (90 %
# interval inside ±δ). "Does not hold" when the interval is on the wrong side of the margin,
# else *inconclusive at this scale* with the smallest effect the study could have detected
# (80 % power). A claim with no paired seed is *not run yet*, with fewer than the sweep
# declares *too few seeds*: neither is judged. **Holm** over the counted claims (a claim not
# judged stays in the family and cannot hold); sanity checks and controls are shown, not counted.

# %% tags=["parameters"]
# Parameters (papermill overrides them; `rst-workbook params 08_paper_claims` explains each)
name = None       # run name: the folder is <name>-<time> (None: the notebook's name)
run_dir = None    # the run folder (None: a new one under outputs/<notebook>/) [path]
progress = True   # progress bars
sweep = None      # the sweep file whose run folders are read (its stages are the claims' runs) [path]
runs_root = None  # compare every metrics.json below this folder (None: the project's outputs/) [path]
claims = None     # only these claims, by key, e.g. ['rbrn-last-bn'] (None: all)

# %%
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from rst_lib.analysis import (NOT_RUN, VERDICTS, claims_for_sweep, claims_table, collect_records, family_text,
                              judge_claims, markdown_table, plot_claim, verdict_counts, verdict_table, why_lines)
from rst_lib.workbook import (finish_run, ensure_run_dir, resolve_path_parameters, sweep_cells, write_json,
                              write_summary)

resolve_path_parameters(globals())  # relative paths from the project root; missing ones refused
if not sweep:
    raise ValueError("sweep is required: the claims sweep file, e.g. params/sweeps/claims-cifar10-cpu.yaml")
family = claims_for_sweep(sweep)  # by the sweep's name: the papers' claims, or methods-*: the methods comparison's
unknown = sorted(set(claims or []) - {c.key for c in family})
if unknown:
    raise ValueError(f"unknown claim(s) {unknown}; the claims are {[c.key for c in family]}")
run_dir = ensure_run_dir(run_dir, "08_paper_claims", name, globals())
cells = sweep_cells(sweep, runs_root)
records = collect_records([c.read_dir for c in cells])
print(f"{len(records)} finished runs of the {len(cells)} cells of {sweep}"
      + f" ({sum('/studies/' in str(c.read_dir) for c in cells)} from committed study records)")
print("run directory:", run_dir)

# %% [markdown]
# ## 1. The claims table
# Seeds: paired seeds with both arms finished, of those the sweep declares. The interval is
# 95 % (90 % for equivalence), unadjusted; why each verdict follows the table.

# %% tags=["headline"]
# every claim is judged (the Holm family is the declared one, whatever `claims` shows)
judged = judge_claims(records, family, cells)
results = [r for r in judged if claims is None or r["claim"].key in claims]
display(Markdown(markdown_table(verdict_table(results))))
display(Markdown(why_lines(results)))

# %% [markdown]
# ## 2. One figure per claim with runs
# Each dot is one seed's paired difference (arm a − arm b); the square and bar are their mean
# and interval (95 %; 90 % for equivalence); dashed: the declared margin. Claims not run yet
# have no figure.

# %%
measured = [r for r in results if r["verdict"] != NOT_RUN]
if measured:
    cols = min(3, len(measured))
    rows_ = (len(measured) + cols - 1) // cols
    fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.2 * rows_), squeeze=False)
    for r, ax in zip(measured, axes.flat):
        plot_claim(r, ax)
    for ax in axes.flat[len(measured):]:
        ax.axis("off")
    fig.tight_layout()
not_run = [r["claim"].key for r in results if r["verdict"] == NOT_RUN]
if not_run:
    print(f"not run yet ({len(not_run)}): {', '.join(not_run)}")

# %% [markdown]
# ## 3. Summary

# %%
counted = [r for r in results if r["claim"].counted]
counts = verdict_counts(counted)
rows = claims_table(results)
write_json(run_dir / "claims.json", {
    "sweep": str(sweep), "cells": len(cells), "finished": len(records),
    "multiplicity": family_text(judged), "counted": counts,
    "claims": [{**row, "key": r["claim"].key, "verdict_kind": r["verdict"], "pairs": r["n"],
                "planned": r["planned"], "difference": r["difference"], "interval": r["interval"],
                "level": r["level"], "p": r["p"], "p_holm": r["p_holm"], "detectable": r["detectable"],
                "margin_points": r["claim"].margin, "runs": r["runs"], "a_values": r["a_values"],
                "b_values": r["b_values"]}
               for row, r in zip(rows, results)]})
write_summary(run_dir, {"finished_runs": len(records), "cells": len(cells),
                        **{v: n for v, n in counts.items() if n}})
display(Markdown(f"{len(records)} of {len(cells)} runs finished. Of the {len(counted)} counted claims: "
                 + ", ".join(f"{counts[v]} {v}" for v in VERDICTS)
                 + f"; {len(results) - len(counted)} checks and controls shown.\n\n" + family_text(judged) + "."))

# %% tags=["notebook-only"]
finish_run(run_dir)  # run.json: finished (a run made here is recorded like a batch run)
