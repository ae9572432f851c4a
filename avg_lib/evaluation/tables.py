"""Small table helpers shared by the notebooks and the results report: seed aggregation and markdown."""

from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("R@1", "R@5", "R@10", "rSum")


def mean_std(df: pd.DataFrame, by: list[str], metrics=METRICS + ("latency_ms",)) -> pd.DataFrame:
    """Mean and standard deviation (ddof=1; 0 with one seed) of ``metrics`` per group, with ``n_seeds``."""
    g = df.groupby(by, sort=False)
    out = g[list(metrics)].mean()
    std = g[list(metrics)].std(ddof=1).fillna(0.0)
    for m in metrics:
        out[f"{m}_std"] = std[m]
    out["n_seeds"] = g.size()
    return out.reset_index()


def markdown(df: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub markdown table (no extra dependency); floats rounded to ``digits``."""

    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def with_std(df: pd.DataFrame, metrics=METRICS, digits: int = 1) -> pd.DataFrame:
    """``mean ± std`` strings for a compact markdown view of :func:`mean_std` output."""
    out = df.copy()
    for m in metrics:
        out[m] = [
            f"{a:.{digits}f} ± {b:.{digits}f}" if n > 1 else f"{a:.{digits}f}"
            for a, b, n in zip(df[m], df[f"{m}_std"], df["n_seeds"])
        ]
    return out.drop(columns=[c for c in out.columns if c.endswith("_std")])


def main_table(runs: pd.DataFrame, dataset: str, num_beams: int) -> pd.DataFrame:
    """The main table from its per-seed runs: mean and std per (method, family, pseudo_queries), ``n_seeds``,
    and the gallery and query counts of each row."""
    main = mean_std(runs, ["method", "family", "pseudo_queries"])
    extra = runs.groupby(["method", "pseudo_queries"], sort=False)[["gallery_size", "queries"]].first().reset_index()
    main = main.merge(extra, on=["method", "pseudo_queries"])
    main["dataset"], main["num_beams"] = dataset, num_beams
    return main


def rerank_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Re-ranking rows of every seed (:func:`avg_lib.runs.experiments.rerank_results` plus ``pseudo_queries`` and
    ``seed``) as mean and std over seeds per (K, pseudo-query setting, re-ranker), ceiling included."""
    metrics = (*METRICS, "ceiling", "latency_ms", "rerank_ms", "fusion_weight")
    return mean_std(rows, ["k", "pseudo_queries", "reranker"], metrics=metrics)


def best_by_validation(runs: pd.DataFrame) -> str:
    """The ``method`` of ``runs`` (per-seed rows with ``val_R@1``) with the best mean validation R@1, ties broken by
    the first in row order: how the identifier claim picks "the best other identifiers" without looking at test."""
    if runs.empty:
        raise ValueError("no rows to choose the best method by validation R@1 from")
    means = runs.groupby("method", sort=False)["val_R@1"].mean()
    return str(means.idxmax())


def ablation_table(runs: pd.DataFrame, full: str = "AVG (full)") -> pd.DataFrame:
    """Per-seed ablation rows (``variant``, ``seed``, metrics) as mean and std over seeds per variant, with
    ``delta_R@1``: the variant's mean R@1 minus full AVG's over the same seeds (a mean paired difference)."""
    table = mean_std(runs, ["variant"], metrics=(*METRICS, "latency_ms", "val_R@1"))
    ref = runs[runs["variant"] == full].set_index("seed")["R@1"]
    deltas = {
        v: float(np.mean([r - ref[s] for s, r in zip(g["seed"], g["R@1"]) if s in ref.index]))
        for v, g in runs.groupby("variant", sort=False)
    }
    table["delta_R@1"] = table["variant"].map(deltas)
    return table
