"""Figures shared by the notebooks (matplotlib, Agg-safe). Each returns the figure; saving is the caller's."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np


def image_grid(ds, indices, n_cols: int = 6, captions: int = 2, width: int = 28, title: str | None = None):
    """Images of ``ds`` at ``indices`` with their first ``captions`` captions underneath."""
    indices = list(indices)
    n_rows = max(1, int(np.ceil(len(indices) / n_cols)))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.3 * n_cols, 2.9 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), indices):
        it = ds.items[i]
        ax.imshow(ds.image(i))
        text = "\n".join(textwrap.shorten(c, width * 2, placeholder="…") for c in it.captions[:captions])
        ax.set_title(textwrap.fill(text, width), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def training_curves(history, metrics=("train_loss", "val_R@1"), title: str = ""):
    """One panel per column of ``history`` (a DataFrame with an ``epoch`` column); best val R@1 marked."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        ax.plot(history["epoch"], history[m])
        ax.set_xlabel("epoch")
        ax.set_ylabel(m)
        if m.startswith("val_R@"):
            best = history[m].idxmax()
            ax.axvline(history["epoch"][best], color="gray", ls="--", lw=0.8)
            ax.annotate(f"selected: epoch {history['epoch'][best]}", (history["epoch"][best], history[m][best]),
                        fontsize=8, xytext=(5, -12), textcoords="offset points")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def recall_bars(table, methods_col: str = "method", ks=("R@1", "R@5", "R@10"), title: str = ""):
    """Grouped bars of Recall@K per method."""
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(table), 3.4))
    x = np.arange(len(table))
    w = 0.8 / len(ks)
    for j, k in enumerate(ks):
        bars = ax.bar(x + (j - (len(ks) - 1) / 2) * w, table[k], w, label=k)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, table[methods_col], fontsize=8)
    ax.set_ylabel("recall (%)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig
