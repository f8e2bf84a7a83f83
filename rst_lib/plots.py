"""Figures and tables the notebooks show (matplotlib; return the figure for reuse)."""
from __future__ import annotations

import matplotlib.pyplot as plt
from torch import nn

from . import masking


def plot_history(history: list[dict], title: str = "search", ax=None):
    """Clean and robust test accuracy (and training loss) per epoch."""
    if ax is None:
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    else:
        fig = ax[0].figure
    epochs = [h["epoch"] for h in history]
    ax[0].plot(epochs, [h["clean_acc"] for h in history], "o-", label="clean")
    ax[0].plot(epochs, [h["pgd_acc"] for h in history], "s-", label="PGD")
    ax[0].set(xlabel="epoch", ylabel="test accuracy", title=f"{title}: accuracy", ylim=(0, 1))
    ax[0].legend()
    ax[0].grid(alpha=0.3)
    ax[1].plot(epochs, [h["train_loss"] for h in history], "o-", color="C2")
    ax[1].set(xlabel="epoch", ylabel="training loss", title=f"{title}: loss")
    ax[1].grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_keep_ratios(model: nn.Module, title: str = "kept fraction per layer", ax=None):
    """Bar chart of the kept fraction of every masked layer (with its size)."""
    summary = masking.mask_summary(model)["layers"]
    names = list(summary)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names)), 3.5))
    else:
        fig = ax.figure
    ratios = [summary[n]["keep_ratio"] for n in names]
    bars = ax.bar(range(len(names)), ratios, color="C0")
    for b, n in zip(bars, names):
        ax.annotate(f"{summary[n]['kept']:,}/{summary[n]['total']:,}", (b.get_x() + b.get_width() / 2,
                    b.get_height()), ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(range(len(names)), [n.replace("body.", "") for n in names], rotation=60,
                  ha="right", fontsize=8)
    ax.set(ylabel="kept fraction", title=title, ylim=(0, max(ratios) * 1.6))
    fig.tight_layout()
    return fig


def plot_comparison(rows: list[dict], title: str = "same attack, same test inputs", ax=None):
    """Grouped bars: clean and robust accuracy per model."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig = ax.figure
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["clean_acc"] for r in rows], 0.4, label="clean")
    ax.bar([i + 0.2 for i in x], [r["pgd_acc"] for r in rows], 0.4, label="PGD")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['pgd_acc']:.1%}", (i + 0.2, r["pgd_acc"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), [r["model"] for r in rows])
    ax.set(ylabel="test accuracy", ylim=(0, 1), title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A Markdown table; floats in [0, 1] named *_acc shown as percentages."""
    columns = columns or list(rows[0])
    def fmt(k, v):
        if isinstance(v, float) and k.endswith("acc"):
            return f"{v:.1%}"
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(c, r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
