"""The paper's comparative claims as paired tests: ``claims.csv`` (notebook 06) and its README text.

A claim says that system **B** beats system **A** at Recall@K. Both are scored on the same test queries
for the same seeds. Per query, the hit of each system is averaged over the seeds they share, and the
difference B − A (percentage points) gets a 95% interval from the cluster bootstrap over test images of
:mod:`avg_lib.evaluation.stats` (the same images drawn for both systems) and a paired sign-flip p-value. The verdict
is :func:`avg_lib.evaluation.stats.verdict`'s: **holds** when the whole interval is above zero, **does not hold** when
it is below, **inconclusive** otherwise. The interval covers which test images were drawn; the training
randomness enters through the seed mean and is shown beside it as the per-seed differences (with one
seed, it is not covered at all: the row says so).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from avg_lib.evaluation import stats

__all__ = ["COLUMNS", "add_intervals", "agreement", "compare", "sentence", "table"]

COLUMNS = [
    "claim",
    "a",
    "b",
    "metric",
    "seeds",
    "a_recall",
    "b_recall",
    "difference",
    "low",
    "high",
    "p_value",
    "per_seed_differences",
    "verdict",
]


def _seed_hits(ranked: dict, targets: np.ndarray, seeds, ks) -> tuple[np.ndarray, np.ndarray]:
    """Per-query hits ``(n, len(ks))`` averaged over ``seeds``, and each seed's recall ``(seeds, len(ks))``."""
    per_seed = np.stack([stats.hits(ranked[s], targets, ks) for s in seeds])
    return per_seed.mean(0), 100.0 * per_seed.mean(1)


def compare(
    claim: str,
    a: str,
    ranked_a: dict,
    b: str,
    ranked_b: dict,
    targets: np.ndarray,
    k: int = 1,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """One ``claims.csv`` row: "``b`` beats ``a`` at R@``k``". ``ranked_a``/``ranked_b`` map a seed to the
    ranked lists ``(n_queries, depth)`` of that seed's model; only the seeds both have are used. ``targets``:
    the gallery position of each query's image (it also names the image, the bootstrap's cluster)."""
    seeds = sorted(set(ranked_a) & set(ranked_b))
    if not seeds:
        raise ValueError(f"{claim!r}: {a!r} and {b!r} share no seed ({sorted(ranked_a)} vs {sorted(ranked_b)})")
    targets = np.asarray(targets)
    ha, ra = (x[..., 0] for x in _seed_hits(ranked_a, targets, seeds, (k,)))
    hb, rb = (x[..., 0] for x in _seed_hits(ranked_b, targets, seeds, (k,)))
    iv = stats.paired_difference(ha, hb, targets, n_resamples=n_resamples, seed=seed)
    return {
        "claim": claim,
        "a": a,
        "b": b,
        "metric": f"R@{k}",
        "seeds": ",".join(map(str, seeds)),
        "a_recall": float(np.mean(ra)),
        "b_recall": float(np.mean(rb)),
        "difference": iv.estimate,
        "low": iv.low,
        "high": iv.high,
        "p_value": stats.randomisation_test(ha, hb, targets, seed=seed),
        "per_seed_differences": ";".join(f"{y - x:+.2f}" for x, y in zip(ra, rb)),
        "verdict": stats.verdict(iv),
    }


def sentence(row) -> str:
    """The README bullet of one ``claims.csv`` row."""
    seeds = str(row["seeds"]).split(",")
    spread = (
        f"per seed {str(row['per_seed_differences']).replace(';', ', ')}"
        if len(seeds) > 1
        else "one seed: training randomness not covered"
    )
    return (
        f"{row['claim']}: **{row['verdict']}**. {row['b']} {row['b_recall']:.2f} vs {row['a']} {row['a_recall']:.2f} "
        f"{row['metric']}: difference {row['difference']:+.2f} points, 95% interval [{row['low']:+.2f}, "
        f"{row['high']:+.2f}] (paired bootstrap over test images, mean over seed{'s' if len(seeds) > 1 else ''} "
        f"{', '.join(seeds)}; {spread}; sign-flip p = {row['p_value']:.3g})."
    )


def table(rows: list[dict]) -> pd.DataFrame:
    """The rows as a ``claims.csv`` table, columns in :data:`COLUMNS` order."""
    return pd.DataFrame(rows, columns=COLUMNS)


def add_intervals(table: pd.DataFrame, ranked: dict, targets: np.ndarray, ks=stats.KS, n_resamples: int = 2000):
    """``table`` (one row per ``(method, pseudo_queries)``) with ``R@k_low``/``R@k_high`` columns: the 95%
    cluster-bootstrap interval over test images of the recall averaged over the row's seeds, for the rows
    ``ranked`` has lists for (``ranked[(method, pseudo_queries)][seed]``); NaN for the others."""
    out = table.copy()
    for k in ks:
        out[f"R@{k}_low"], out[f"R@{k}_high"] = np.nan, np.nan
    for i, row in out.iterrows():
        lists = ranked.get((row["method"], bool(row["pseudo_queries"])))
        if not lists:
            continue
        h, _ = _seed_hits(lists, targets, sorted(lists), ks)
        for column, value in stats.interval_columns(h, targets, ks, n_resamples=n_resamples).items():
            out.loc[i, column] = value
    return out


DECIDED = ("holds", "does not hold")


def agreement(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """The claims two runs share (the same claim text in both claims tables ``a`` and ``b``, e.g. the default
    profile's three seeds and the full profile's five), each with both verdicts, seeds and intervals and how they
    relate: ``same verdict``; ``decided in b`` / ``decided in a`` (inconclusive in one run, holds or does not hold
    in the other: more seeds or a narrower interval decided it); ``contradiction`` (holds in one, does not hold in
    the other), which two runs of one method should never show."""
    cols = ["claim", "seeds", "difference", "low", "high", "verdict"]
    both = a[cols].merge(b[cols], on="claim", suffixes=("_a", "_b"))

    def relation(r) -> str:
        va, vb = r["verdict_a"], r["verdict_b"]
        if va == vb:
            return "same verdict"
        if va in DECIDED and vb in DECIDED:
            return "contradiction"
        return "decided in b" if vb in DECIDED else "decided in a"

    return both.assign(relation=both.apply(relation, axis=1) if len(both) else pd.Series(dtype=str))
