"""Figures shared by the notebooks (matplotlib, Agg-safe). Each returns the figure; saving is the caller's."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np

THUMB = 256  # figures read images through the thumbnail cache at this shorter side (a panel is never larger)


def image_grid(ds, indices, n_cols: int = 6, captions: int = 2, width: int = 28, title: str | None = None):
    """Images of ``ds`` at ``indices`` with their first ``captions`` captions underneath."""
    indices = list(indices)
    n_rows = max(1, int(np.ceil(len(indices) / n_cols)))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.3 * n_cols, 2.9 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), indices):
        it = ds.items[i]
        ax.imshow(ds.image(i, THUMB))
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
            ax.annotate(
                f"selected: epoch {history['epoch'][best]}",
                (history["epoch"][best], history[m][best]),
                fontsize=8,
                xytext=(5, -12),
                textcoords="offset points",
            )
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
    ax.set_xticks(x, [textwrap.fill(str(m), 20) for m in table[methods_col]], fontsize=8)
    ax.set_ylabel("recall (%)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def codebook_usage(codes: np.ndarray, codebook_size: int, title: str = ""):
    """Per level: how many items use each codebook entry, entries sorted by use (a long tail = healthy)."""
    levels = codes.shape[1]
    fig, axes = plt.subplots(1, levels, figsize=(3.4 * levels, 2.8), squeeze=False, sharey=True)
    for level, ax in enumerate(axes[0]):
        counts = np.sort(np.bincount(codes[:, level], minlength=codebook_size))[::-1]
        used = int((counts > 0).sum())
        p = counts[counts > 0] / counts.sum()
        ax.bar(np.arange(codebook_size), counts, width=1.0, color=f"C{level}")
        ax.set_title(
            f"level {level + 1}: {used}/{codebook_size} used, perplexity {np.exp(-(p * np.log(p)).sum()):.0f}",
            fontsize=9,
        )
        ax.set_xlabel("codebook entry (sorted by use)")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("images")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def prefix_grids(ds, codes: np.ndarray, prefixes: list[tuple[int, ...]], per_prefix: int = 8, captions: int = 1):
    """One row per voken prefix: the images whose identifier starts with it, with a caption each."""
    rows = len(prefixes)
    fig, axes = plt.subplots(rows, per_prefix, figsize=(1.9 * per_prefix, 2.35 * rows), squeeze=False)
    for r, prefix in enumerate(prefixes):
        members = np.nonzero((codes[:, : len(prefix)] == np.asarray(prefix)).all(1))[0]
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(members):
                i = members[c]
                ax.imshow(ds.image(i, THUMB))
                ax.set_title(
                    textwrap.fill(textwrap.shorten(ds.items[i].captions[0], 36, placeholder="…"), 18), fontsize=7
                )
        label = "".join(f"<{v}>" for v in prefix)
        axes[r][0].text(
            -0.15,
            0.5,
            f"{label}\n{len(members)} images",
            transform=axes[r][0].transAxes,
            ha="right",
            va="center",
            fontsize=9,
            family="monospace",
        )
    fig.tight_layout()
    return fig


def voken_map(
    xy: np.ndarray,
    first_voken: np.ndarray,
    ds=None,
    n_colored: int = 12,
    thumbs: int = 0,
    seed: int = 0,
    title: str = "",
):
    """2-D map of image embeddings coloured by first voken (the ``n_colored`` most frequent; rest grey),
    optionally with ``thumbs`` image thumbnails drawn at their positions."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    fig, ax = plt.subplots(figsize=(9, 7.5))
    vals, counts = np.unique(first_voken, return_counts=True)
    top = vals[np.argsort(-counts)][:n_colored]
    other = ~np.isin(first_voken, top)
    ax.scatter(xy[other, 0], xy[other, 1], s=6, c="lightgray", label="other first vokens")
    cmap = plt.get_cmap("tab20")
    for j, v in enumerate(top):
        m = first_voken == v
        ax.scatter(xy[m, 0], xy[m, 1], s=12, color=cmap(j % 20), label=f"<{v}> ({m.sum()})")
    if ds is not None and thumbs:
        rng = np.random.default_rng(seed)
        for i in rng.choice(len(xy), size=min(thumbs, len(xy)), replace=False):
            j = np.nonzero(top == first_voken[i])[0]
            color = cmap(int(j[0]) % 20) if len(j) else "lightgray"
            box = AnnotationBbox(
                OffsetImage(np.asarray(ds.image(int(i), THUMB).resize((24, 24))), zoom=0.8),
                xy[i],
                frameon=True,
                pad=0.1,
                bboxprops={"edgecolor": color, "lw": 1.2},
            )
            ax.add_artist(box)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="first voken", title_fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    fig.tight_layout()
    return fig


def query_panels(
    ds, queries: list[str], query_vokens: np.ndarray, neighbours: np.ndarray, codes: np.ndarray, per_query: int = 6
):
    """For each typed query: its vokens, and the nearest images with their identifiers; an image's
    identifier is bold where it shares the query's first voken."""
    fig, axes = plt.subplots(len(queries), per_query, figsize=(1.9 * per_query, 2.4 * len(queries)), squeeze=False)
    for r, q in enumerate(queries):
        qv = "".join(f"<{v}>" for v in query_vokens[r])
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            i = int(neighbours[r, c])
            ax.imshow(ds.image(i, THUMB))
            ident = "".join(f"<{v}>" for v in codes[i])
            same = codes[i, 0] == query_vokens[r, 0]
            ax.set_title(ident, fontsize=7, family="monospace", fontweight="bold" if same else "normal")
        axes[r][0].text(
            -0.15,
            0.5,
            f'"{textwrap.shorten(q, 28)}"\n→ {qv}',
            transform=axes[r][0].transAxes,
            ha="right",
            va="center",
            fontsize=9,
        )
    fig.tight_layout()
    return fig


def generator_curves(hist, disc_start: int | None = None, colour_by: str | None = None):
    """Training loss and validation R@1 per epoch for each model in ``hist`` (column ``model``);
    the start of the discriminative stage is marked. ``colour_by``: a column whose values share a colour (the
    curves of one value then differ by line style), e.g. one colour per backend over several seeds."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.3))
    groups = list(hist[colour_by].unique()) if colour_by else []
    seen: dict = {}
    for name, h in hist.groupby("model", sort=False):
        style = {}
        if colour_by:
            g = h[colour_by].iloc[0]
            style = {"color": f"C{groups.index(g)}", "ls": ("-", "--", ":", "-.")[seen.setdefault(g, 0) % 4]}
            seen[g] += 1
        axes[0].plot(h["epoch"], h["train_gen_loss"], label=name, **style)
        disc = h[h["train_listwise_loss"] > 0]
        if len(disc):
            axes[1].plot(disc["epoch"], disc["train_listwise_loss"], marker="o", label=name, **style)
        axes[2].plot(h["epoch"], h["val_R@1"], marker=".", label=name, **style)
    for ax, label in zip(axes, ("generation loss (train)", "listwise loss (train)", "R@1 (validation)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if disc_start is not None:
            ax.axvline(disc_start + 0.5, color="gray", ls="--", lw=0.8)
    if colour_by:  # many curves: the legend beside the plots, not over them
        axes[2].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        fig.set_size_inches(17, 3.3)
    else:
        axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep(table, x: str, title: str = "", ks=("R@1", "R@5", "R@10"), logx: bool = False):
    """Recall@K (left) and mean query latency (right) against one swept setting ``x``."""
    table = table.sort_values(x)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for k in ks:
        a.plot(table[x], table[k], marker="o", label=k)
    b.plot(table[x], table["latency_ms"], marker="o", color="tab:gray")
    for ax, label in ((a, "recall (%)"), (b, "latency (ms / query)")):
        ax.set_xlabel(x)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_xticks(table[x].tolist(), [str(v) for v in table[x]])
    a.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def efficiency(table, title: str = ""):
    """Latency at batch 1 and batched throughput against gallery size (log-log), one line per method, and
    the index's bytes per image when the table has them (:func:`avg_lib.evaluation.efficiency.study`)."""
    panels = [
        ("latency_ms_batch1", "latency at batch 1 (ms / query)"),
        ("queries_per_s_batched", "throughput (queries / s)"),
    ]
    if "bytes_per_image" in table:
        panels.append(("bytes_per_image", "index memory (bytes / image)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    for method, t in table.groupby("method", sort=False):
        for ax, (col, _) in zip(axes, panels):
            ax.plot(t["gallery_size"], t[col], marker="o", label=method)
    for ax, (_, label) in zip(axes, panels):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("gallery size (images)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def delta_bars(table, ref: float, col: str = "R@1", label_col: str = "variant", title: str = ""):
    """Horizontal bars of ``col`` per row (error bars: ``col_low``..``col_high`` when the table has them, else
    ``col_std`` when it has that), with the reference value as a vertical line."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(table) + 1.2))
    y = np.arange(len(table))[::-1]
    colors = ["tab:red" if v < ref else "tab:green" for v in table[col]]
    err = table.get(f"{col}_std")
    if f"{col}_low" in table and f"{col}_high" in table:
        err = np.stack([table[col] - table[f"{col}_low"], table[f"{col}_high"] - table[col]])
    bars = ax.barh(y, table[col], color=colors, xerr=err, capsize=3)
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.axvline(ref, color="k", lw=1, ls="--")
    ax.set_yticks(y, table[label_col], fontsize=8)
    ax.set_xlabel(f"{col} (%)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def rerank_curves(table, metric: str = "R@1", reference: float | None = None, title: str = ""):
    """Per pseudo-query setting: ``metric`` of each re-ranker against the beam-list size K, with the
    candidate ceiling (recall@K of the beams: no re-ranker can pass it) and an optional ``reference`` line
    (the two-tower model). ``table``: :func:`avg_lib.evaluation.tables.rerank_table` output."""
    settings = list(dict.fromkeys(table["pseudo_queries"]))
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 3.6), squeeze=False, sharey=True)
    for ax, pq in zip(axes[0], settings):
        t = table[table["pseudo_queries"] == pq]
        first = t.drop_duplicates("k")
        ax.plot(first["k"], first["ceiling"], "k--", marker="o", label="ceiling: recall@K of the beams")
        for name, r in t.groupby("reranker", sort=False):
            err = r.get(f"{metric}_std")
            ax.errorbar(r["k"], r[metric], yerr=err, marker="o", capsize=3, label=name)
        if reference is not None:
            ax.axhline(reference, color="grey", lw=1, label=f"two-tower {metric}")
        ax.set_xscale("log")
        ax.set_xticks(sorted(first["k"]), [str(k) for k in sorted(first["k"])])
        ax.set_xlabel("K (AVG beams re-ranked)")
        ax.set_title(("with" if pq else "without") + " pseudo queries", fontsize=10)
    axes[0][0].set_ylabel(f"{metric} (%)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
