"""Figures of the masks themselves: kept fraction per layer, the kept 3x3 kernel patterns
(RBRN's structured patterns), kept weights per kernel, filter maps, and an ipywidgets
explorer."""
from __future__ import annotations

import base64
import io
from math import comb

import matplotlib.pyplot as plt

from . import mask_stats


def plot_layer_density(densities: dict[str, dict], title: str = "kept fraction per layer", ax=None):
    """Grouped bars of the kept fraction per layer, one bar per ticket (label ->
    ``mask_stats.layer_density``)."""
    labels = list(densities)
    layers = list(next(iter(densities.values())))
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(layers) + 2), 3.6))
    fig = ax.figure
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        d = densities[label]
        ax.bar([i - 0.4 + width * (j + 0.5) for i in range(len(layers))],
               [d[n]["density"] if n in d else 0 for n in layers], width, label=label, color=f"C{j}")
    ax.set_xticks(range(len(layers)), [n.replace("body.", "") for n in layers], rotation=40,
                  ha="right", fontsize=8)
    ax.set(ylabel="kept fraction", title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_kernel_patterns(patterns: dict, title: str = "most frequent kept 3x3 patterns",
                         columns: int = 10, axes=None):
    """Thumbnails of the most frequent kept 3x3 patterns (``mask_stats.kernel_patterns``)
    with their share of the non-empty kernels."""
    pats = patterns["patterns"]
    n = max(1, len(pats))
    rows = (n + columns - 1) // columns
    if axes is None:
        fig, axes = plt.subplots(rows, columns, figsize=(1.05 * columns, 1.25 * rows + 0.5),
                                 squeeze=False)
    else:
        fig = axes.flat[0].figure
    for ax in axes.flat:
        ax.axis("off")
    for ax, p in zip(axes.flat, pats):
        ax.imshow(p["pattern"].float().numpy(), cmap="Greys", vmin=0, vmax=1)
        ax.set_title(f"{p['fraction']:.1%}", fontsize=8)
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}\n({patterns['nonempty']:,} non-empty of {patterns['kernels']:,} kernels, "
                 f"{patterns['distinct']} distinct patterns)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_kept_histogram(histograms: dict[str, list[int]], title: str = "kept weights per 3x3 kernel",
                        ax=None, reference: dict[str, float] | None = None):
    """Share of 3x3 kernels by number of kept weights (0..9), one bar per ticket.

    ``reference``: label -> density; draws what a uniformly random mask of that density
    would give (binomial(9, density)) as dashed markers in the ticket's color.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.4))
    fig = ax.figure
    width = 0.8 / max(1, len(histograms))
    for j, (label, h) in enumerate(histograms.items()):
        total = max(1, sum(h))
        ax.bar([k - 0.4 + width * (j + 0.5) for k in range(len(h))], [c / total for c in h],
               width, label=label, color=f"C{j}")
        if reference and label in reference:
            d = reference[label]
            ax.plot(range(10), [comb(9, k) * d ** k * (1 - d) ** (9 - k) for k in range(10)], "x--",
                    color=f"C{j}", alpha=0.8, label=f"random mask, density {d:.3g}")
    ax.set_xticks(range(10))
    ax.set(xlabel="kept weights in the kernel", ylabel="share of kernels", title=title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_filter_map(kernel_counts, title: str = "kept weights per kernel", axes=None):
    """A conv layer's mask as a filters x input-channels map of kept weights per kernel,
    with the kept weights per filter beside it (``mask_stats.kernel_counts()[layer]``)."""
    counts = kernel_counts.float().numpy()
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), gridspec_kw={"width_ratios": [3, 1]})
    fig = axes[0].figure
    top = max(1, int(counts.max()))
    # kept weights per kernel are integers 0..k*k: one color per count, a discrete colorbar
    cmap = plt.get_cmap("magma", top + 1)
    im = axes[0].imshow(counts, aspect="auto", cmap=cmap, interpolation="nearest",
                        vmin=-0.5, vmax=top + 0.5)
    axes[0].set(xlabel="input channel", ylabel="filter (output channel)", title=title)
    fig.colorbar(im, ax=axes[0], label="kept weights", ticks=range(0, top + 1, max(1, (top + 1) // 10)))
    per_filter = counts.sum(1)
    axes[1].barh(range(len(per_filter)), per_filter, color="C1")
    axes[1].invert_yaxis()
    axes[1].set(xlabel="kept per filter", yticks=[],
                title=f"{int((per_filter == 0).sum())} empty filters")
    fig.tight_layout()
    return fig


def _png_output(fig) -> dict:
    """A figure as a Jupyter ``display_data`` output (what the inline backend would show)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"),
                     "text/plain": repr(fig)}}


def mask_explorer(tickets: dict, layer: str | None = None):
    """An ipywidgets explorer of ticket masks: pick a layer and the tickets to compare.

    ``tickets``: label -> masked model. Shows, for the chosen 3x3 conv layer and tickets,
    the kept-weights histogram, each ticket's top patterns and filter map. Needs a live
    Jupyter front end; returns the widget (display it).
    """
    import ipywidgets as w

    labels = list(tickets)
    convs = [n for n, m in mask_stats.kernel_counts(tickets[labels[0]]).items()]
    convs3 = [n for n in convs
              if n in mask_stats.kernel_patterns(tickets[labels[0]], top=0)["layers"]]
    layer_pick = w.Dropdown(options=convs3 or convs, value=layer if layer in (convs3 or convs)
                            else (convs3 or convs)[-1], description="layer")
    ticket_pick = w.SelectMultiple(options=labels, value=tuple(labels[:2]), description="tickets",
                                   rows=min(6, len(labels)))
    top = w.IntSlider(value=10, min=1, max=30, description="top patterns")
    out = w.Output()

    def figures():
        chosen = list(ticket_pick.value) or labels[:1]
        name = layer_pick.value
        hists = {lab: mask_stats.kernel_patterns(tickets[lab], name, top=0)["kept_histogram"]
                 for lab in chosen} if name in convs3 else {}
        if hists:
            yield plot_kept_histogram(hists, f"{name}: kept weights per 3x3 kernel")
        for lab in chosen:
            if name in convs3:
                yield plot_kernel_patterns(mask_stats.kernel_patterns(tickets[lab], name, top=top.value),
                                           f"{lab}, {name}: top kept patterns")
            yield plot_filter_map(mask_stats.kernel_counts(tickets[lab])[name], f"{lab}, {name}")

    def redraw(*_):
        # The figures go into the Output's state as PNG outputs, all at once, not through
        # `with out: plt.show()`: that routes output by the message being handled, and in
        # JupyterLab 4 (ipywidgets 8.1, ipykernel 7) the first change's figure lands in the
        # log console instead (a plain Output + plt.show() callback does the same: upstream).
        # Each figure is closed so that pyplot does not show it again under the next cell.
        outputs = []
        for fig in figures():
            try:
                outputs.append(_png_output(fig))
            finally:
                plt.close(fig)
        out.outputs = tuple(outputs)

    for widget in (layer_pick, ticket_pick, top):
        widget.observe(redraw, names="value")
    box = w.VBox([w.HBox([layer_pick, top]), ticket_pick, out])
    redraw()
    return box
