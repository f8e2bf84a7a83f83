"""Figures and tables the notebooks show (matplotlib; return the figure for reuse)."""
from __future__ import annotations

import statistics
from collections import defaultdict

import matplotlib.colors as mcolors
import numpy as np
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
from torch import nn

from ..masks import masking
from ..utils.stats import wilson_interval


def plot_history(history: list[dict], title: str = "search", ax=None):
    """Clean and PGD accuracy of the per-epoch check (on the split each row names:
    validation by default) and the training loss, per epoch."""
    if ax is None:
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    else:
        fig = ax[0].figure
    epochs = [h["epoch"] for h in history]
    ax[0].plot(epochs, [h["clean_acc"] for h in history], "o-", label="clean")
    ax[0].plot(epochs, [h["pgd_acc"] for h in history], "s-", label="PGD")
    split = history[0].get("eval_split", "test") if history else "test"
    ax[0].set(xlabel="epoch", ylabel=f"{split} accuracy", title=f"{title}: {split} accuracy", ylim=(0, 1))
    ax[0].legend()
    ax[0].grid(alpha=0.3)
    ax[1].plot(epochs, [h["train_loss"] for h in history], "o-", color="C2")
    ax[1].set(xlabel="epoch", ylabel="training loss", title=f"{title}: training loss")
    ax[1].grid(alpha=0.3)
    for a in ax:
        _integer_ticks(a)
        if len(epochs) == 1:  # one epoch: a readable axis around it, not 0.945...1.050
            a.set_xlim(epochs[0] - 1, epochs[0] + 1)
    fig.tight_layout()
    return fig


def plot_keep_ratios(model: nn.Module, title: str = "kept fraction per layer", ax=None):
    """Bar chart of the kept fraction of every masked layer (with its size); None for a
    network without masks (a dense run)."""
    summary = masking.mask_summary(model)["layers"]
    names = list(summary)
    if not names:
        return None
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names)), 3.5))
    else:
        fig = ax.figure
    ratios = [summary[n]["keep_ratio"] for n in names]
    bars = ax.bar(range(len(names)), ratios, color="C0")
    for b, n in zip(bars, names):  # kept / total weights, above each bar with a gap
        ax.annotate(f"{summary[n]['kept']:,} / {summary[n]['total']:,}",
                    (b.get_x() + b.get_width() / 2, b.get_height()), xytext=(0, 4),
                    textcoords="offset points", ha="center", va="bottom", fontsize=9, rotation=90)
    ax.set_xticks(range(len(names)), [n.replace("body.", "") for n in names], rotation=60,
                  ha="right", fontsize=9)
    ax.set(ylabel="kept fraction", title=title, ylim=(0, min(1.0, max(ratios)) * 2.6))
    fig.tight_layout()
    return fig


def plot_comparison(rows: list[dict], title: str = "same attacks, same test inputs", ax=None):
    """Grouped bars per model: clean, PGD and (when measured) AutoAttack accuracy, each with
    its 95 % Wilson interval over the ``examples`` it was measured on."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.8))
    else:
        fig = ax.figure
    bars = [("clean_acc", "clean", "examples"), ("pgd_acc", rows[0].get("pgd", "PGD"), "examples")]
    if any(r.get("autoattack_acc") is not None for r in rows):
        bars.append(("autoattack_acc", "AutoAttack", "robust_examples"))
    width = 0.8 / len(bars)
    crowded = len(rows) * len(bars) > 9  # narrow bars: upright labels would run into each other
    top = 1.0
    for j, (key, label, n_key) in enumerate(bars):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(rows))]
        ys = [r.get(key) or 0.0 for r in rows]
        errs = [_interval_err(r.get(key), r.get(n_key) or r.get("examples")) for r in rows]
        ax.bar(xs, ys, width, label=label, yerr=list(zip(*errs)) if errs else None, capsize=3)
        for x, y, (_, hi), r in zip(xs, ys, errs, rows):
            if r.get(key) is not None:  # above the interval's cap, not on the error bar
                ax.annotate(f"{y:.1%}", (x, y + hi), xytext=(0, 3), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7, rotation=90 if crowded else 0)
                top = max(top, y + hi)
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows])
    # headroom for the labels above the highest cap; the legend outside, on no bar
    ax.set(ylabel="test accuracy (95 % interval)", ylim=(0, top + 0.12), title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def _interval_err(acc, n) -> tuple[float, float]:
    if acc is None or not n:
        return (0.0, 0.0)
    lo, hi = wilson_interval(acc, n)
    return (acc - lo, hi - acc)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A Markdown table; floats in [0, 1] named *_acc shown as percentages."""
    columns = columns or list(rows[0])
    def fmt(k, v):
        if v is None:
            return ""
        if isinstance(v, float) and k.endswith("acc"):
            return f"{v:.1%}"
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(c, r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def markdown_notes(rows: list[dict], title: str, keys: list[str]) -> str:
    """A Markdown list, one item per row: its ``title`` value in bold, then ``key: value``
    for each of ``keys`` that has a value - the columns too long for a table that must fit
    the notebook's width."""
    items = []
    for r in rows:
        parts = [f"{k}: {r[k]}" for k in keys if r.get(k) not in (None, "")]
        items.append(f"- **{r.get(title, '')}** — " + "; ".join(parts))
    return "\n".join(items)


# ---------------------------------------------------------------- workbook notebooks


def _integer_ticks(ax):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _acc_axes(ax, title, xlabel="epoch"):
    ax.set(xlabel=xlabel, ylabel="test accuracy", title=title, ylim=(0, 1))
    ax.grid(alpha=0.3)
    if xlabel == "epoch":
        _integer_ticks(ax)


def plot_histories(histories: dict[str, list[dict]], title: str = "", axes=None):
    """Side-by-side clean and PGD accuracy per epoch, one line per run (label -> history)."""
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    fig = axes[0].figure
    for i, (label, history) in enumerate(histories.items()):
        epochs = [h["epoch"] for h in history]
        axes[0].plot(epochs, [h["clean_acc"] for h in history], "o-", color=f"C{i}", label=label)
        axes[1].plot(epochs, [h["pgd_acc"] for h in history], "s-", color=f"C{i}", label=label)
    _acc_axes(axes[0], f"{title}: clean accuracy" if title else "clean accuracy")
    _acc_axes(axes[1], f"{title}: PGD accuracy" if title else "PGD accuracy")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_bars(rows: list[dict], keys: dict[str, str], label_key: str = "model",
              title: str = "", ax=None):
    """Grouped bars: for every row (x), one bar per ``keys`` entry (column -> legend)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows) * max(1, len(keys)) / 2), 3.8))
    fig = ax.figure
    width = 0.8 / max(1, len(keys))
    for j, (k, legend) in enumerate(keys.items()):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(rows))]
        vals = [r.get(k) if isinstance(r.get(k), (int, float)) else 0.0 for r in rows]
        ax.bar(xs, vals, width, label=legend, color=f"C{j}")
        for x, v, r in zip(xs, vals, rows):
            if isinstance(r.get(k), (int, float)):
                ax.annotate(f"{v:.0%}", (x, v), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), [str(r[label_key]) for r in rows], rotation=15, ha="right",
                  fontsize=8)
    ax.set(ylabel="test accuracy", ylim=(0, 1.08), title=title)
    if len(keys) > 1:
        ax.legend(fontsize=8, ncol=min(4, len(keys)))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_transfer_matrix(result: dict, title: str = "transferability", ax=None):
    """Heatmap of ``transfer_matrix``: row = source of the attack, column = target model."""
    m = np.array(result["matrix"])
    names = result["names"]
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2.5, 1.1 * len(names) + 1.8))
    fig = ax.figure
    im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{m[i, j]:.0%}", ha="center", va="center", fontsize=9,
                    color="white" if m[i, j] < 0.6 else "black",
                    fontweight="bold" if i == j else "normal")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="evaluated on (target)", ylabel="attack crafted on (source)", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="accuracy on adversarial examples")
    fig.tight_layout()
    return fig


def r2s_rows(result: dict) -> list[dict]:
    """The settings of an ``evaluate_r2s`` result as rows (setting, clean_acc, robust_acc)."""
    rows = [{"setting": f"{n} alone (white-box)", "clean_acc": c, "robust_acc": w}
            for n, c, w in zip(result["names"], result["member_clean_acc"],
                               result["member_whitebox_acc"])]
    rows += [
        {"setting": "R2S: fixed-member PGD (mean)", "clean_acc": result["clean_acc"],
         "robust_acc": result["fixed_member_mean_acc"]},
        {"setting": "R2S: fixed-member PGD (worst)", "clean_acc": result["clean_acc"],
         "robust_acc": result["fixed_member_min_acc"]},
        {"setting": "R2S: PGD through the switch", "clean_acc": result["clean_acc"],
         "robust_acc": result["switching_acc"]},
        {"setting": f"R2S: adaptive EOT-{result['eot_samples']} PGD",
         "clean_acc": result["clean_acc"], "robust_acc": result["adaptive_eot_acc"]},
    ]
    if "autoattack_rand_acc" in result:
        rows.append({"setting": "R2S: AutoAttack (rand, EOT-20)", "clean_acc": result["clean_acc"],
                     "robust_acc": result["autoattack_rand_acc"]})
    for r in rows:  # every number with its 95 % interval
        r["examples"] = result.get("autoattack_rand_examples", result["n"]) \
            if "AutoAttack" in r["setting"] else result["n"]
    return rows


def plot_r2s(result: dict, title: str = "R2S: clean and robust accuracy per setting", ax=None):
    """Grouped bars (clean, robust) for each member alone and each threat model of the switch."""
    rows = r2s_rows(result)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(rows)), 4))
    return plot_bars(rows, {"clean_acc": "clean", "robust_acc": "robust"}, "setting", title, ax)


def plot_eps_curve(rows: list[dict], keys: dict[str, str] | None = None,
                   title: str = "accuracy vs attack strength", ax=None):
    """Accuracy against eps (rows of ``{"eps": ..., "<key>": acc}``), one line per key."""
    keys = keys or {"fgsm_acc": "FGSM", "pgd_acc": "PGD"}
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.6))
    fig = ax.figure
    eps = [r["eps"] for r in rows]
    for j, (k, label) in enumerate(keys.items()):
        ax.plot(eps, [r[k] for r in rows], "o-", label=label, color=f"C{j}")
    _acc_axes(ax, title, "eps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_keep_ratio(rows: list[dict], group_keys=("model", "dataset", "train_attack", "task"),
                                title: str = "robust and clean accuracy vs keep ratio", axes=None):
    """The papers' main figure: clean (left) and robust (right: AutoAttack where measured,
    else PGD) test accuracy against the keep ratio (log scale), one line per group of runs;
    several seeds give the mean and a band of mean ± std."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("keep_ratio") is None:
            continue
        g = " / ".join(str(r.get(k)) for k in group_keys)
        groups[g][float(r["keep_ratio"])].append(r)
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    fig = axes[0].figure
    for i, (g, by_ratio) in enumerate(sorted(groups.items())):
        ratios = sorted(by_ratio)
        for ax, key in zip(axes, ("clean_acc", "robust_acc")):
            vals = [[r[key] for r in by_ratio[k] if r.get(key) is not None] for k in ratios]
            xs = [k for k, v in zip(ratios, vals) if v]
            vals = [v for v in vals if v]
            if not xs:
                continue
            mean = [sum(v) / len(v) for v in vals]
            ax.plot(xs, mean, "o-", color=f"C{i}", label=g)
            if any(len(v) > 1 for v in vals):
                std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
                ax.fill_between(xs, [m - d for m, d in zip(mean, std)],
                                [m + d for m, d in zip(mean, std)], color=f"C{i}", alpha=0.2)
    for ax, name in zip(axes, ("clean accuracy", "robust accuracy (AutoAttack, else PGD)")):
        ax.set_xscale("log")
        ax.set(xlabel="keep ratio (fraction of weights kept)", ylabel="test accuracy",
               title=name, ylim=(0, 1))
        ax.grid(alpha=0.3, which="both")
    if groups:
        axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_robust_vs_clean(rows: list[dict], group_keys=("model", "dataset", "train_attack", "task"),
                         title: str = "robust vs clean accuracy (color: keep ratio)", ax=None):
    """Every run as a point (clean, robust accuracy: AutoAttack where measured, else PGD),
    colored by keep ratio (log scale), one marker per group."""
    pts = [r for r in rows if r.get("clean_acc") is not None and r.get("robust_acc") is not None]
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
    fig = ax.figure
    ratios = [float(r["keep_ratio"]) for r in pts if r.get("keep_ratio")]
    norm = mcolors.LogNorm(min(ratios), max(ratios) if max(ratios) > min(ratios) else min(ratios) * 10) \
        if ratios else None
    markers = "osD^v<>pXh"
    groups = sorted({" / ".join(str(r.get(k)) for k in group_keys) for r in pts})
    sc = None
    for i, g in enumerate(groups):
        mine = [r for r in pts if " / ".join(str(r.get(k)) for k in group_keys) == g]
        sc = ax.scatter([r["clean_acc"] for r in mine], [r["robust_acc"] for r in mine],
                        c=[float(r.get("keep_ratio") or 1.0) for r in mine], cmap="viridis", norm=norm,
                        marker=markers[i % len(markers)], edgecolors="k", linewidths=0.5, label=g)
    if sc is not None and norm is not None:
        fig.colorbar(sc, ax=ax, label="keep ratio")
    ax.set(xlabel="clean accuracy", ylabel="robust accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
