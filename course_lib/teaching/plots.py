"""The figures the lessons share. Each returns a small matplotlib Figure.

Figures are closed as soon as they are built, so a notebook shows each one
once: where the cell returns it (or ``display(fig)``), not again at cell end.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

SMALL = (6.0, 3.0)  # modest sizes keep the committed notebooks small


def _finish(fig):
    fig.tight_layout()
    plt.close(fig)  # shown once, where the notebook returns it
    return fig


def weight_histogram(weights: dict[str, torch.Tensor], bins: int = 120, title: str = "",
                     xlabel: str = "weight value", show_zeros: bool = True):
    """Histograms of weight values (or any scores: say so in ``xlabel``) on a log count scale."""
    fig, ax = plt.subplots(figsize=SMALL)
    for label, w in weights.items():
        values = w.detach().float().flatten().cpu().numpy()
        zeros = f" ({np.mean(values == 0):.0%} zeros)" if show_zeros else ""
        ax.hist(values, bins=bins, alpha=0.55, label=f"{label}{zeros}")
    ax.set(yscale="log", xlabel=xlabel, ylabel="count", title=title)
    ax.legend(fontsize=8)
    return _finish(fig)


def mask_image(mask: torch.Tensor, title: str = "", rows: int = 32, cols: int = 64):
    """The top-left corner of a keep-mask: white = kept, black = pruned."""
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    ax.imshow(mask[:rows, :cols].float().cpu().numpy(), cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set(title=title, xlabel="input column", ylabel="output row")
    return _finish(fig)


def heatmap(scores: np.ndarray, title: str = "", xlabel: str = "head", ylabel: str = "layer",
            marked: dict[int, Sequence[int]] | None = None, cmap: str = "viridis"):
    """A layers x heads grid (e.g. head importance); ``marked`` cells get an x."""
    scores = np.asarray(scores)
    fig, ax = plt.subplots(figsize=(max(3.0, 0.45 * scores.shape[1] + 1.8),
                                    max(2.5, 0.16 * scores.shape[0] + 1.0)))
    image = ax.imshow(scores, aspect="auto", cmap=cmap)
    fig.colorbar(image, ax=ax, fraction=0.05)
    for layer, heads in (marked or {}).items():
        for head in heads:
            ax.text(head, layer, "x", ha="center", va="center", color="red", fontsize=8)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _finish(fig)


def curves(x: Sequence[float], series: dict[str, Sequence[float]], xlabel: str, ylabel: str,
           title: str = "", logy: bool = False, reference: dict[str, Sequence[float]] | None = None):
    """Lines of y against x, one per method; ``reference`` lines are dashed (e.g. the ideal)."""
    fig, ax = plt.subplots(figsize=SMALL)
    for label, y in series.items():
        ax.plot(x, y, "o-", label=label)
    for label, y in (reference or {}).items():
        ax.plot(x, y, "--", color="grey", label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig)


def bars(values: dict[str, float], ylabel: str, title: str = "", reference: float | None = None):
    """One bar per label, with an optional horizontal reference line (e.g. dense = 1.0)."""
    fig, ax = plt.subplots(figsize=SMALL)
    ax.bar(list(values), list(values.values()), color="#4c72b0")
    if reference is not None:
        ax.axhline(reference, color="grey", lw=1, ls="--")
    for i, v in enumerate(values.values()):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize=8)
    return _finish(fig)


def stacked_shares(shares: dict[str, dict[str, float]], title: str = ""):
    """Where the FLOPs go: one stacked bar per model, parts summing to 1 (or to the model's cost)."""
    fig, ax = plt.subplots(figsize=SMALL)
    labels = list(shares)
    parts = list(next(iter(shares.values())))
    bottom = np.zeros(len(labels))
    for part in parts:
        values = np.array([shares[label][part] for label in labels])
        ax.bar(labels, values, bottom=bottom, label=part)
        bottom += values
    ax.set(ylabel="share of dense FLOPs per token", title=title)
    ax.legend(fontsize=8, loc="upper right")
    return _finish(fig)


def sensitivity(scan: np.ndarray, layers: Sequence[int], sparsities: Sequence[float], dense: float,
                title: str = "perplexity with one layer pruned"):
    """Heatmap of a per-layer sensitivity scan: rows = layers, columns = sparsities,
    colour = log of perplexity / dense (0: no harm), each cell labelled with its perplexity."""
    scan = np.asarray(scan, dtype=float)
    harm = np.log(scan / dense)
    fig, ax = plt.subplots(figsize=(1.4 * len(sparsities) + 2.4, 0.42 * len(layers) + 1.3))
    image = ax.imshow(harm, aspect="auto", cmap="magma_r", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.05, label="log(perplexity / dense)")
    for r in range(scan.shape[0]):
        for c in range(scan.shape[1]):
            ax.text(c, r, f"{scan[r, c]:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if harm[r, c] > harm.max() / 2 else "black")
    ax.set_xticks(range(len(sparsities)), [f"{s:.0%}" for s in sparsities])
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set(title=title, xlabel="sparsity of that layer alone", ylabel="decoder layer")
    return _finish(fig)


def stage_panels(rows, title: str = "every stage against dense float32 PyTorch"):
    """Four panels, one bar per pipeline stage: disk MB, perplexity, prefill and decode speedups.

    ``rows``: ``runtime.pipeline.StageResult``s. Speedups carry their interquartile range
    (the paired runs) as error bars, and the axis always shows 1.0 (dense) as a line.
    """
    labels = [r.stage for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 4, figsize=(12.0, 3.2))
    panels = (("disk MB", [r.disk_bytes / 1e6 for r in rows], None),
              ("perplexity", [r.perplexity for r in rows], None),
              ("prefill speedup", [r.prefill_speedup for r in rows], "speed"),
              ("decode speedup", [r.decode_speedup for r in rows], "speed"))
    for ax, (name, values, kind) in zip(axes, panels):
        if kind == "speed":
            medians = np.array([s.median for s in values])
            spread = np.array([[s.median - s.low for s in values], [s.high - s.median for s in values]])
            ax.bar(x, medians, yerr=np.clip(spread, 0, None), capsize=3, color="#55a868")
            ax.axhline(1.0, color="grey", lw=1, ls="--")
            ax.set_ylim(0, max(1.2, float((medians + spread[1]).max()) * 1.15))
            shown = medians
        else:
            ax.bar(x, values, color="#4c72b0")
            shown = values
        for i, v in enumerate(shown):
            ax.text(i, v, f"{v:.2f}" if kind else f"{v:.0f}" if v >= 100 else f"{v:.1f}",
                    ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _finish(fig)


def intervals(items: dict[str, tuple[float, float, float]], xlabel: str, title: str = "",
              reference: float | None = 1.0, logx: bool = False):
    """One row per label: a point (the estimate) and a line (its interval), and a reference line.

    The picture of a decided comparison: an interval that does not cross the reference (a tie,
    1.0 for a ratio) is drawn solid, one that crosses it hollow and grey.
    """
    fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(items) + 1.2))
    for row, (label, (value, low, high)) in enumerate(reversed(list(items.items()))):
        decided = reference is None or low > reference or high < reference
        color = "#4c72b0" if decided else "grey"
        ax.plot([low, high], [row, row], color=color, lw=2)
        ax.plot([value], [row], "o", color=color, mfc=color if decided else "white")
    ax.set_yticks(range(len(items)), list(reversed(list(items))), fontsize=8)
    if reference is not None:
        ax.axvline(reference, color="grey", lw=1, ls="--")
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, title=title)
    ax.grid(alpha=0.3, axis="x")
    return _finish(fig)


def pareto(points: dict[str, dict], dense_label: str = "dense", title: str = ""):
    """Quality against speed, one panel per timing (prefill, decode): the cuts before and after
    recovery. ``points[name]``: ``prefill`` / ``decode`` as (median, low, high) speedups,
    ``before`` / ``after`` as (ratio, low, high) perplexity ratios to dense. Speedups carry their
    paired runs' IQR, ratios their 95% interval; an arrow goes from before to after recovery."""
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, stage in zip(axes, ("prefill", "decode")):
        ax.plot([1.0], [1.0], "*", color="black", ms=10, label=dense_label)
        for color, (name, p) in zip(colors, points.items()):
            x, xl, xh = p[stage]
            for when, face in (("before", "white"), ("after", color)):
                y, yl, yh = p[when]
                ax.errorbar([x], [y], xerr=[[x - xl], [xh - x]], yerr=[[y - yl], [yh - y]], fmt="o",
                            color=color, mfc=face, capsize=2, label=f"{name}" if when == "after" else None)
            ax.annotate("", xy=(x, p["after"][0]), xytext=(x, p["before"][0]),
                        arrowprops={"arrowstyle": "->", "color": color, "alpha": 0.6})
        ax.set_yscale("log")
        ticks = [t for t in (1, 1.25, 1.5, 2, 3, 5, 10) if t <= ax.get_ylim()[1]]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set(xlabel=f"{stage} speedup over dense (x)", title=stage)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("perplexity / dense (log)\nhollow: before recovery")
    axes[1].legend(fontsize=7, loc="center left")
    fig.suptitle(title, fontsize=10)
    return _finish(fig)
