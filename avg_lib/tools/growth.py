"""How each stage's cost grows with the data set: from the ``stages.csv`` of dry runs of different sizes
(``avg train --timing``), a power law per stage and its extrapolation to larger sets::

    avg growth results/scale/tenth results/scale/half --to 31783 123287 --out results/scale/growth.csv

With three runs or more (smallest first), the law is fitted through the two largest, and the largest run also
checks the law the two before it gave: estimated against measured, per stage (``<out>`` with ``_check``).

For a stage timed at ``n1`` and ``n2`` images, the exponent is ``b = log(t2 / t1) / log(n2 / n1)`` (1: linear,
2: quadratic) and the estimate at ``N`` images is ``t2 · (N / n2)^b``. Peak memory (resident set size so far) is
extrapolated the same way. Two points fit any power law exactly, so the estimate says how the measured growth
continues, not that it will: a stage whose cost changes regime between the sizes (a cache that stops fitting in
memory) breaks it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def read_stages(directory: str | Path) -> pd.DataFrame:
    path = Path(directory) / "stages.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no stages.csv; run `avg train --timing` for that size first")
    t = pd.read_csv(path)
    missing = {"stage", "wall_s", "peak_rss_mb_so_far", "n_images"} - set(t.columns)
    if missing:
        raise ValueError(f"{path}: columns {sorted(missing)} missing; not a stages.csv of avg_lib.tools.train")
    return t


def growth(small: pd.DataFrame, large: pd.DataFrame, targets=(31783, 123287)) -> pd.DataFrame:
    """One row per stage both runs timed: its time and peak memory at both sizes, the exponents, and the
    estimates at each of ``targets`` images (plus a ``total`` row summing the stages)."""
    n1, n2 = int(small["n_images"].iloc[0]), int(large["n_images"].iloc[0])
    if n1 >= n2:
        raise ValueError(f"the first run must be the smaller one ({n1} images >= {n2})")
    a, b = small.set_index("stage"), large.set_index("stage")
    stages = [s for s in b.index if s in a.index]
    total = {
        "stage": "total",
        "wall_s_small": a.loc[stages, "wall_s"].sum(),
        "wall_s_large": b.loc[stages, "wall_s"].sum(),
    }
    rows = [
        {
            "stage": s,
            "wall_s_small": float(a.loc[s, "wall_s"]),
            "wall_s_large": float(b.loc[s, "wall_s"]),
            "peak_mb_small": float(a.loc[s, "peak_rss_mb_so_far"]),
            "peak_mb_large": float(b.loc[s, "peak_rss_mb_so_far"]),
        }
        for s in stages
    ] + [{**total, "peak_mb_small": a["peak_rss_mb_so_far"].max(), "peak_mb_large": b["peak_rss_mb_so_far"].max()}]
    out = pd.DataFrame(rows).assign(n_images_small=n1, n_images_large=n2)
    ratio = np.log(n2 / n1)
    out["time_exponent"] = np.log(out["wall_s_large"] / out["wall_s_small"]) / ratio
    out["memory_exponent"] = np.log(out["peak_mb_large"] / out["peak_mb_small"]) / ratio
    for n in targets:
        scale = n / n2
        out[f"wall_s_at_{n}"] = out["wall_s_large"] * scale ** out["time_exponent"]
        out[f"peak_mb_at_{n}"] = out["peak_mb_large"] * scale ** out["memory_exponent"]
    total_at = {f"wall_s_at_{n}": out.loc[out["stage"] != "total", f"wall_s_at_{n}"].sum() for n in targets}
    for k, v in total_at.items():  # the total of the stages' estimates, not a power law of their sum
        out.loc[out["stage"] == "total", k] = v
    return out


def check(small: pd.DataFrame, large: pd.DataFrame, measured: pd.DataFrame) -> pd.DataFrame:
    """How well the power law through ``small`` and ``large`` predicted ``measured``, a run at another size: per
    stage (and the total), the estimate, the measurement and their ratio, for time and peak memory."""
    n = int(measured["n_images"].iloc[0])
    fit = growth(small, large, targets=(n,)).set_index("stage")
    m = measured.set_index("stage")
    missing = [s for s in fit.index if s != "total" and s not in m.index]
    if missing:
        raise ValueError(f"the run at {n} images has no stage {missing[0]!r}; it cannot check that stage's law")
    timed = [s for s in fit.index if s != "total"]
    rows = []
    for s in fit.index:
        t = m.loc[timed, "wall_s"].sum() if s == "total" else float(m.loc[s, "wall_s"])
        peak = m.loc[timed, "peak_rss_mb_so_far"].max() if s == "total" else float(m.loc[s, "peak_rss_mb_so_far"])
        est_t, est_p = float(fit.loc[s, f"wall_s_at_{n}"]), float(fit.loc[s, f"peak_mb_at_{n}"])
        rows.append(
            {
                "stage": s,
                "n_images": n,
                "wall_s_estimated": est_t,
                "wall_s_measured": float(t),
                "wall_ratio": float(t) / est_t,
                "peak_mb_estimated": est_p,
                "peak_mb_measured": float(peak),
                "peak_ratio": float(peak) / est_p,
            }
        )
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="avg growth", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="folders with each run's stages.csv, smallest first (2+)")
    ap.add_argument("--to", type=int, nargs="+", default=[31783, 123287], help="image counts to extrapolate to")
    ap.add_argument("--out", type=Path, help="write the table here (CSV with provenance)")
    args = ap.parse_args(argv)
    if len(args.runs) < 2:
        ap.error("give at least two runs (folders with a stages.csv), smallest first")
    runs = [read_stages(r) for r in args.runs]
    table = growth(runs[-2], runs[-1], args.to)
    checked = check(*runs[-3:]) if len(runs) > 2 else None
    print(table.round(2).to_string(index=False))
    if checked is not None:
        print(checked.round(2).to_string(index=False))
    if args.out:
        from avg_lib.results import write_csv

        profile = str(runs[-1]["profile"].iloc[0]) if "profile" in runs[-1] else "scale"
        config = {"runs": [str(r) for r in args.runs], "to": args.to}
        write_csv(table, args.out, profile, 0, config)
        if checked is not None:
            write_csv(checked, args.out.with_name(f"{args.out.stem}_check.csv"), profile, 0, config)
        write_readme(table, checked, args, Path(args.out).parent)


def write_readme(table: pd.DataFrame, checked: pd.DataFrame | None, args, directory: Path) -> Path:
    """The folder's README: the measured stages and their extrapolation (and the check of the earlier law by the
    largest run), from the tables just written."""
    from avg_lib.evaluation.tables import markdown
    from avg_lib.results import write_readme as write

    keep = ["stage", "wall_s_small", "wall_s_large", "time_exponent", "peak_mb_large", "memory_exponent"]
    keep += [c for n in args.to for c in (f"wall_s_at_{n}", f"peak_mb_at_{n}")]
    sizes = ", ".join(f"{int(n):,}" for n in (table["n_images_small"].iloc[0], table["n_images_large"].iloc[0]))
    made_by = (
        f"Generated by `avg growth {' '.join(map(str, args.runs))} --to {' '.join(map(str, args.to))} "
        f"--out {args.out}` (`avg_lib/tools/growth.py`) from the `stages.csv` of runs of "
        "`avg train --profile scale --seeds 0 --pseudo 0 --timing` at several sizes (see "
        "`profiles/scale.yaml`); do not edit by hand. Times in seconds on the machine of those runs, peak memory "
        f"in MB (resident set size so far). Each estimate continues the power law fitted through the two largest "
        f"sizes ({sizes} images)."
    )
    lines = [markdown(table[keep]), ""]
    if checked is not None:
        n = int(checked["n_images"].iloc[0])
        total = checked.set_index("stage").loc["total"]
        lines += [
            f"## The earlier law, checked at {n:,} images",
            "",
            f"The two smaller runs' power law estimated the run at {n:,} images; measured, it took "
            f"{total['wall_ratio']:.2f}x the estimated time in total and {total['peak_ratio']:.2f}x the estimated peak "
            "memory (`wall_ratio`, `peak_ratio`: measured / estimated).",
            "",
            markdown(checked),
            "",
        ]
    return write(directory, "Scale dry runs: how each stage grows", made_by, lines)


if __name__ == "__main__":
    main()
