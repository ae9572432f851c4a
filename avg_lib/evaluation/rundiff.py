"""How far did a change of settings move the results? Two runs' per-seed tables, compared row by row
against the seeds' own spread.

A cut made to save time (one discriminative epoch instead of two, bfloat16 autocast in training) changes
every trained number a little; the question is whether it changes them more than rerunning with another
seed does. For each row present in both runs (a main-table method and pseudo-query setting, or an ablation
variant) with the same seeds, the **shift** is the mean over seeds of ``after - before`` (seed-matched: the
same seed gives the same initialisation and batch order in both), with a 95% t interval over those seeds.
A shift whose interval contains zero is **within seed noise**. The seeds' own spread (the standard
deviation over seeds within each run) is reported next to it.

``avg compare BEFORE AFTER`` prints the comparison as a markdown table; ``BEFORE`` and
``AFTER`` are results directories or ``<git revision>:<results directory>`` (read with ``git show``).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

from avg_lib.paths import REPO_ROOT

TABLES = {  # per-seed table -> the columns that name a row
    "main_table_runs": ["method", "pseudo_queries"],
    "ablation_runs": ["variant"],
}


def read_table(source: str, name: str) -> pd.DataFrame | None:
    """``<name>.csv`` of a results directory, or of ``<revision>:<directory>`` in git; ``None`` if absent."""
    if Path(source).is_dir():
        path = Path(source) / f"{name}.csv"
        return pd.read_csv(path) if path.exists() else None
    rev, _, directory = source.partition(":")
    if not directory:
        raise ValueError(f"{source!r} is neither a directory nor <git revision>:<results directory>")
    out = subprocess.run(
        ["git", "show", f"{rev}:{directory.rstrip('/')}/{name}.csv"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        if "exists on disk, but not in" in out.stderr or "does not exist" in out.stderr:
            return None
        raise ValueError(f"git show {rev}:{directory}/{name}.csv failed: {out.stderr.strip()}")
    return pd.read_csv(io.StringIO(out.stdout))


def shifts(before: pd.DataFrame, after: pd.DataFrame, keys: list[str], metric: str = "R@1") -> pd.DataFrame:
    """One row per key present in both per-seed tables with at least two common seeds: the seed-matched shift
    ``after - before`` of ``metric``, its 95% t interval over the common seeds, each run's std over seeds,
    and ``within_noise`` (the interval contains zero)."""
    rows = []
    b_groups = {k if isinstance(k, tuple) else (k,): g for k, g in before.groupby(keys, sort=False)}
    for key, a in after.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        if key not in b_groups:
            continue
        b = b_groups[key].drop_duplicates("seed").set_index("seed")[metric]
        a = a.drop_duplicates("seed").set_index("seed")[metric]
        common = sorted(set(a.index) & set(b.index))
        if len(common) < 2:
            continue
        d = (a[common] - b[common]).to_numpy(dtype=float)
        mean, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
        half = float(_scipy_stats.t.ppf(0.975, len(d) - 1) * se)
        rows.append(
            {
                **dict(zip(keys, key)),
                "seeds": len(common),
                f"before_{metric}": float(b[common].mean()),
                f"after_{metric}": float(a[common].mean()),
                "shift": mean,
                "low": mean - half,
                "high": mean + half,
                "before_seed_std": float(b[common].std(ddof=1)),
                "after_seed_std": float(a[common].std(ddof=1)),
                "within_noise": bool(mean - half <= 0.0 <= mean + half),
            }
        )
    return pd.DataFrame(rows)


TIMING = ("latency_ms", "train_seconds", "decode_ms", "rerank_ms")  # measured again by every run, never compared
PROVENANCE = ("profile", "seed", "git_commit", "created_utc")


def shared_rows(before: pd.DataFrame, after: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The rows of two per-seed tables with the same key and seed (two profiles that train the same model), one
    line each with ``differs``: the columns (besides timings and provenance) whose values are not equal, empty when
    the rows are identical. Numbers are compared as the CSVs store them."""
    cols = [c for c in before.columns if c in after.columns and c not in (*TIMING, *PROVENANCE, *keys)]
    b = before.assign(_seed=before["seed"].astype(str)).set_index([*keys, "_seed"])
    a = after.assign(_seed=after["seed"].astype(str)).set_index([*keys, "_seed"])
    common = b.index.intersection(a.index)
    rows = []
    for key in common:
        x, y = b.loc[key], a.loc[key]
        if isinstance(x, pd.DataFrame) or isinstance(y, pd.DataFrame):
            raise ValueError(f"{key}: a row appears twice in one per-seed table")
        differs = [c for c in cols if not (pd.isna(x[c]) and pd.isna(y[c])) and x[c] != y[c]]
        rows.append({**dict(zip([*keys, "seed"], key)), "differs": ", ".join(differs)})
    return pd.DataFrame(rows, columns=[*keys, "seed", "differs"])


def compare(before: str, after: str, metric: str = "R@1") -> pd.DataFrame:
    """:func:`shifts` for every per-seed table both runs have, stacked, with a ``row`` label column."""
    parts = []
    for name, keys in TABLES.items():
        b, a = read_table(before, name), read_table(after, name)
        if b is None or a is None:
            continue
        s = shifts(b, a, keys, metric)
        if s.empty:
            continue
        label = s[keys[0]].astype(str)
        if "pseudo_queries" in keys:
            label = label + np.where(s["pseudo_queries"].astype(str) == "True", " + pseudo queries", "")
        parts.append(s.drop(columns=keys).assign(table=name, row=label))
    if not parts:
        raise ValueError(f"no row with two or more common seeds in both {before} and {after}")
    out = pd.concat(parts, ignore_index=True)
    return out[["table", "row", *[c for c in out.columns if c not in ("table", "row")]]]


def summary(table: pd.DataFrame) -> str:
    """One sentence: how many rows moved beyond seed noise, and the mean shift over rows."""
    n, out = len(table), int((~table["within_noise"]).sum())
    return (
        f"{n - out} of {n} rows within seed noise (95% interval of the seed-matched shift contains 0); "
        f"mean shift over rows {table['shift'].mean():+.2f} points (range {table['shift'].min():+.2f} to "
        f"{table['shift'].max():+.2f}); mean std over seeds {table['before_seed_std'].mean():.2f} before, "
        f"{table['after_seed_std'].mean():.2f} after."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="avg compare", description=__doc__.split("\n\n")[0])
    p.add_argument("before", help="results directory, or <git revision>:<results directory>")
    p.add_argument("after", help="results directory, or <git revision>:<results directory>")
    p.add_argument("--metric", default="R@1", help="column compared (default R@1)")
    p.add_argument("--out", help="also write the table as CSV here")
    args = p.parse_args(argv)
    try:
        table = compare(args.before, args.after, args.metric)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from avg_lib.evaluation.tables import markdown

    print(markdown(table))
    print()
    print(summary(table))
    if args.out:
        table.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
