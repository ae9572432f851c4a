"""``results/README.md``: every table and figure of one results directory, and the paper's claims
checked against them. Built only from the CSVs and PNGs in that directory (nothing typed in by
hand), so it always matches them; a missing table is reported as missing, not skipped silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import claims as paired_claims
from .results import write_text
from .tables import markdown

# The best public anchor for the paper's numbers (docs/paper.md: an independent re-run of the
# authors' code with T5-base, ComGTIR, SIGIR-AP 2025). Different data and models: only the
# *relations* between rows are compared with this run, never the values.
ANCHORS = pd.DataFrame(
    [
        {
            "setting": "AVG, no pseudo queries",
            "Flickr30K R@1/5/10": "40.8 / 75.1 / 84.2",
            "MS-COCO 5K R@1/5/10": "19.3 / 45.7 / 59.7",
        },
        {
            "setting": "AVG, with pseudo queries",
            "Flickr30K R@1/5/10": "49.4 / 81.6 / 89.0",
            "MS-COCO 5K R@1/5/10": "23.2 / 51.1 / 64.1",
        },
        {
            "setting": "GRACE structured IDs (as cited)",
            "Flickr30K R@1/5/10": "37.4 / 59.5 / 66.2",
            "MS-COCO 5K R@1/5/10": "16.7 / 39.2 / 50.3",
        },
        {
            "setting": "CLIP ViT-L/14-336 zero-shot",
            "Flickr30K R@1/5/10": "68.7 / 90.6 / 95.2",
            "MS-COCO 5K R@1/5/10": "37.8 / 62.4 / 72.2",
        },
    ]
)

PROVENANCE = ["profile", "seed", "git_commit", "created_utc"]

SECTIONS = [  # (csv, title, figures, columns to show (None = all but provenance))
    (
        "main_table.csv",
        "Main table (test gallery)",
        ["main_recall.png"],
        [
            "method",
            "pseudo_queries",
            "R@1",
            "R@1_std",
            "R@1_low",
            "R@1_high",
            "R@5",
            "R@10",
            "rSum",
            "rSum_std",
            "latency_ms",
            "n_seeds",
        ],
    ),
    (
        "claims.csv",
        "Paired comparisons behind the claims (difference = b - a, 95% interval over test images)",
        [],
        ["claim", "metric", "seeds", "a_recall", "b_recall", "difference", "low", "high", "p_value", "verdict"],
    ),
    (
        "rerank.csv",
        "Re-ranking AVG's K beams: candidate ceiling (recall@K of the beams) and each re-ranker",
        ["rerank.png"],
        ["k", "pseudo_queries", "reranker", "ceiling", "R@1", "R@1_std", "R@5", "R@10", "latency_ms", "n_seeds"],
    ),
    (
        "ablation.csv",
        "Ablations (AVG without pseudo queries)",
        ["ablation.png"],
        ["variant", "R@1", "R@1_std", "R@5", "R@10", "rSum", "delta_R@1", "val_R@1", "n_seeds"],
    ),
    (
        "ablation_claims.csv",
        "Ablations as paired tests (difference = full AVG - variant, 95% interval over test images)",
        [],
        ["claim", "metric", "seeds", "a_recall", "b_recall", "difference", "low", "high", "p_value", "verdict"],
    ),
    (
        "analysis_codebook_size.csv",
        "Analysis: codebook size (generative stage only: no discriminative training)",
        ["analysis_codebook_size.png"],
        ["codebook_size", "voken_length", "identifier_depth", "R@1", "R@5", "R@10", "latency_ms", "val_R@1"],
    ),
    (
        "analysis_voken_length.csv",
        "Analysis: voken length (generative stage only: no discriminative training)",
        ["analysis_voken_length.png"],
        ["codebook_size", "voken_length", "identifier_depth", "R@1", "R@5", "R@10", "latency_ms", "val_R@1"],
    ),
    (
        "analysis_beam_size.csv",
        "Analysis: beam size",
        ["analysis_beam_size.png"],
        ["beam_size", "R@1", "R@5", "R@10", "latency_ms"],
    ),
    (
        "efficiency.csv",
        "Efficiency: query cost against gallery size",
        ["efficiency.png"],
        ["method", "gallery_size", "latency_ms_batch1", "queries_per_s_batched", "hardware"],
    ),
    (
        "two_tower.csv",
        "Two-tower baseline and the ridge reference (notebook 01)",
        ["two_tower_recall.png", "two_tower_training.png"],
        None,
    ),
    (
        "tokenizer.csv",
        "Voken tokenizer (notebook 02)",
        [
            "tokenizer_training.png",
            "tokenizer_collisions.png",
            "voken_codebook_usage.png",
            "voken_prefix1_grid.png",
            "voken_prefix2_grid.png",
            "voken_map.png",
            "voken_queries.png",
        ],
        None,
    ),
    ("generator_training.csv", "Generator training (notebook 04)", ["generator_training.png"], None),
    ("generator_backends.csv", "Generator backends (notebook 04)", [], None),
    ("evaluation.csv", "AVG against two-tower at the profile seed (notebook 05)", ["evaluation_recall.png"], None),
    (
        "decoding_benchmark.csv",
        "Decoding speed: batched trie vs transformers' prefix_allowed_tokens_fn (notebook 05)",
        [],
        None,
    ),
]


def _read(d: Path, name: str) -> pd.DataFrame | None:
    p = d / name
    return pd.read_csv(p) if p.is_file() else None


def _verdict(ok: bool | None) -> str:
    return {True: "**holds here**", False: "**does not hold here**", None: "not measured in this run"}[ok]


def _runs(d: Path) -> pd.DataFrame | None:
    """``main_table_runs.csv`` (one row per method, setting and seed), if it has what the claims need."""
    runs = _read(d, "main_table_runs.csv")
    if runs is None or not {"method", "family", "pseudo_queries", "seed", "R@1", "rSum"} <= set(runs.columns):
        return None
    return runs.assign(pseudo_queries=runs["pseudo_queries"].astype(bool), seed=runs["seed"].astype(int))


def _seeds(seeds) -> str:
    seeds = sorted(seeds)
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def _pseudo_query_effect(runs: pd.DataFrame | None, main: pd.DataFrame):
    """AVG without and with pseudo queries, ``((R@1, R@1), (rSum, rSum), which seeds)``, on the same
    seeds: from ``main_table_runs.csv`` when present (the main table may average the setting without
    pseudo queries over more seeds than the one with them), else the main table's rows."""
    if runs is not None:
        r = runs[runs["family"] == "AVG"]
        seeds = set(r.loc[r["pseudo_queries"], "seed"]) & set(r.loc[~r["pseudo_queries"], "seed"])
        if not seeds:
            return None
        r = r[r["seed"].isin(seeds)]
        a, p = r[~r["pseudo_queries"]], r[r["pseudo_queries"]]
        return (a["R@1"].mean(), p["R@1"].mean()), (a["rSum"].mean(), p["rSum"].mean()), _seeds(seeds)
    r = main[main["family"] == "AVG"]
    pq = r["pseudo_queries"].astype(bool)
    if not pq.any() or pq.all():
        return None
    a, p = r[~pq].iloc[0], r[pq].iloc[0]
    return (a["R@1"], p["R@1"]), (a.get("rSum", np.nan), p.get("rSum", np.nan)), "main table rows"


def _identifier_comparison(runs: pd.DataFrame | None, avg: pd.DataFrame, gen: pd.DataFrame):
    """AVG's R@1 and each generative baseline's (``{method: R@1}``), on the seeds the baselines ran
    (from ``main_table_runs.csv``), else the main table's rows; and which seeds."""
    if runs is not None:
        base = runs[(runs["family"] == "generative baseline") & ~runs["pseudo_queries"]]
        mine = runs[(runs["family"] == "AVG") & ~runs["pseudo_queries"]]
        seeds = set(base["seed"]) & set(mine["seed"])
        if seeds:
            base = base[base["seed"].isin(seeds)].groupby("method", sort=False)["R@1"].mean()
            return float(mine[mine["seed"].isin(seeds)]["R@1"].mean()), base.to_dict(), _seeds(seeds)
    return float(avg["R@1"].iloc[0]), dict(zip(gen["method"], gen["R@1"])), "main table rows"


def _seed_spread(avg: pd.DataFrame) -> str:
    """How much AVG's R@1 moves between seeds (main table), to read single-seed differences against."""
    if len(avg) and "R@1_std" in avg and int(avg.get("n_seeds", pd.Series([1])).iloc[0]) > 1:
        return (
            f" AVG's R@1 over {int(avg['n_seeds'].iloc[0])} seeds: {float(avg['R@1'].iloc[0]):.1f} ± "
            f"{float(avg['R@1_std'].iloc[0]):.1f}."
        )
    return ""


def claims(d: Path) -> list[str]:
    """The paper's claims, each checked on this directory's tables (one markdown bullet per claim)."""
    out = []
    main, abl, eff = _read(d, "main_table.csv"), _read(d, "ablation.csv"), _read(d, "efficiency.csv")
    runs, paired = _runs(d), _read(d, "claims.csv")
    avg = main[(main["family"] == "AVG") & (~main["pseudo_queries"].astype(bool))] if main is not None else None
    if paired is not None:  # notebook 06's paired tests replace the point comparisons below
        out += [paired_claims.sentence(r) for _, r in paired.iterrows()]
    elif main is not None:
        gen = main[(main["family"] == "generative baseline") & (~main["pseudo_queries"].astype(bool))]
        tt = main[main["family"] == "two-tower"]
        if len(avg) and len(gen):
            a, others, seeds = _identifier_comparison(runs, avg, gen)
            name, b = max(others.items(), key=lambda kv: kv[1])
            out.append(
                f"AVG's identifiers beat the other generative identifiers (same generator): "
                f"{_verdict(a > b)}: AVG R@1 {a:.1f} vs best other {b:.1f} ({name.replace('generative: ', '')}) "
                f"at {seeds}; all: "
                + ", ".join(f"{m.replace('generative: ', '')} {r:.1f}" for m, r in others.items())
                + "."
                + _seed_spread(avg)
            )
        pq = _pseudo_query_effect(runs, main)
        if pq is not None:
            (a, p), (ra, rp), seeds = pq
            out.append(
                f"Pseudo queries improve AVG (R@1): {_verdict(p > a)}: R@1 {a:.1f} → {p:.1f}, rSum {ra:.1f} → "
                f"{rp:.1f} ({seeds})."
            )
        if len(avg) and len(tt):
            a, t = float(avg["R@1"].iloc[0]), float(tt["R@1"].iloc[0])
            out.append(
                f"AVG is competitive with the two-tower model it is built on: {_verdict(a >= t)} "
                f"(R@1 {a:.1f} vs {t:.1f}). In the anchor re-run AVG also stays below CLIP."
            )
    if main is not None:
        ot, tt = main[main["family"] == "one-tower"], main[main["family"] == "two-tower"]
        if len(ot) and len(tt):
            out.append(
                f"One-tower R@1 {float(ot['R@1'].iloc[0]):.1f} vs two-tower {float(tt['R@1'].iloc[0]):.1f} "
                f"(query latency {float(ot['latency_ms'].iloc[0]):.2f} vs {float(tt['latency_ms'].iloc[0]):.3f} ms)."
            )
    abl_claims = _read(d, "ablation_claims.csv")
    if abl_claims is not None:  # notebook 07's paired tests replace the point comparison below
        out += [paired_claims.sentence(r) for _, r in abl_claims.iterrows()]
    if abl is not None and abl_claims is None:
        rest = abl[~abl["variant"].str.startswith(("AVG (full)", "unresolved"))]
        full = abl[abl["variant"] == "AVG (full)"]
        if len(rest):
            hurts = rest["delta_R@1"] < 0
            d_rsum = (
                rest["rSum"] - float(full["rSum"].iloc[0]) if len(full) and "rSum" in abl else rest["rSum"] * np.nan
            )
            out.append(
                f"Each ablation hurts (R@1): undecided (one seed per variant and no interval, so a sign can flip "
                f"with the seed; {'every' if bool(hurts.all()) else 'not every'} point estimate is negative): "
                + ", ".join(
                    f"{v} {dl:+.1f} R@1 / {dr:+.1f} rSum"
                    for v, dl, dr in zip(rest["variant"], rest["delta_R@1"], d_rsum)
                )
                + " (points; one seed each)."
                + (_seed_spread(avg) if main is not None else "")
            )
    if abl is not None and abl_claims is None:
        unres = abl[abl["variant"].str.startswith("unresolved")]
        if len(unres):
            dl = float(unres["delta_R@1"].iloc[0])
            out.append(
                f"Ignoring identifier collisions inflates recall (the authors' evaluation): "
                f"{_verdict(dl > 0)}: {dl:+.2f} R@1 points on this gallery."
            )
    if eff is not None and len(eff["gallery_size"].unique()) > 1:
        g = eff.sort_values("gallery_size").groupby("method", sort=False)
        growth = g.apply(
            lambda t: t["latency_ms_batch1"].iloc[-1] / t["latency_ms_batch1"].iloc[0], include_groups=False
        )
        span = g["gallery_size"].agg(lambda s: f"{s.min():,}→{s.max():,}")
        gen_key = [m for m in growth.index if m.startswith("generative")]
        if gen_key:
            x = float(growth[gen_key[0]])
            out.append(
                f"Generative retrieval's latency is flat in the gallery size: {_verdict(x < 2.0)}: batch-1 latency "
                f"grows ×{x:.2f} over {span[gen_key[0]]} images; "
                + ", ".join(f"{m} ×{float(v):.2f} ({span[m]})" for m, v in growth.items() if m not in gen_key)
                + "."
            )
    return out


def write_results_readme(results_dir: str | Path, profile: str) -> Path:
    """Write ``<results_dir>/README.md`` from the tables and figures in that directory (the runner calls
    this after the notebooks it ran)."""
    d = Path(results_dir)
    prov = _read(d, "provenance.csv")
    lines = [
        f"# Results: profile `{profile}`",
        "",
        "Generated by `run_all.sh` (`avg_lib/report.py`, after the notebooks it ran) from the CSVs and figures "
        "in this directory; do not edit by hand. Every CSV row carries its profile, seed(s), git commit and "
        "creation time, and `config/<table>.json` holds the run configuration that produced the table.",
        "",
        "Recall is in percent over the test gallery (a hit is the query's own image; identifiers are unique). "
        "`latency_ms` is the mean time per query when queries are processed in batches of 64, excluding the frozen "
        "text encoder for every method (two-tower, one-tower and AVG alike); the efficiency table adds batch-1 "
        "latency.",
        "",
    ]
    if prov is not None and len(prov):
        lines += [
            "## Run",
            "",
            markdown(prov),
            f"Sum of the wall times above: {prov['wall_s'].sum() / 60:.1f} min. "
            "A notebook rerun with cached models (`run_all.sh --from NN`) is much faster than in a fresh run; "
            "`provenance.csv` keeps the latest run of each notebook.",
            "",
        ]
    lines += ["## The paper's claims, checked on this run", ""]
    found = claims(d)
    lines += [f"- {c}" for c in found] if found else ["- (no tables to check yet)"]
    lines += [
        "",
        "Anchors (docs/paper.md; other datasets and models, so only the relations above are comparable):",
        "",
        markdown(ANCHORS),
    ]
    missing = []
    for csv, title, figs, cols in SECTIONS:
        df = _read(d, csv)
        if df is None:
            missing.append(csv)
            continue
        show = [c for c in (cols or df.columns) if c in df.columns and c not in PROVENANCE]
        lines += [f"## {title}", "", f"`{csv}`", "", markdown(df[show])]
        lines += [f"![{f}](figures/{f})" for f in figs if (d / "figures" / f).is_file()] + [""]
    if missing:
        lines += ["## Not produced in this run", "", ", ".join(f"`{m}`" for m in missing), ""]
    return write_text("\n".join(lines), d / "README.md")
