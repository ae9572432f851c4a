"""What a run claims, as text: each paired recall claim's sentence, the efficiency claims (latency growth,
crossovers, decoding speed against transformers) and, for the profiles run at two seed counts, the same claims
set side by side. Read only from the CSVs of a results directory; ``report`` places these lines in its README.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from avg_lib.evaluation import claims as paired_claims
from avg_lib.evaluation.tables import markdown
from avg_lib.paths import REPO_ROOT

CLAIMS = [("claims.csv", "06", "main_table.csv"), ("ablation_claims.csv", "07", "ablation.csv")]
CLAIMS += [("lm_claims.csv", "09", "lm_table.csv")]  # (paired tests, notebook, the table that says it ran)


def read_csv(d: Path, name: str) -> pd.DataFrame | None:
    """The table ``name`` of results directory ``d``, or ``None`` if that run did not write it."""
    p = d / name
    return pd.read_csv(p) if p.is_file() else None


def _verdict(ok: bool | None) -> str:
    return {True: "**holds here**", False: "**does not hold here**", None: "not measured in this run"}[ok]


def efficiency_claims(d: Path) -> list[str]:
    """The efficiency claims: latency growth with the gallery, crossovers against each comparator, and the
    decoding speed against transformers (each a ratio of timings measured in one run on one machine)."""
    out = []
    eff, cross, dec = (
        read_csv(d, "efficiency.csv"),
        read_csv(d, "efficiency_crossovers.csv"),
        read_csv(d, "decoding_benchmark.csv"),
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
    if cross is not None and len(cross):
        for method, c in cross.groupby("method", sort=False):
            parts = [
                f"{r['metric']} against {r['against']}: "
                + (f"from about {r['crossover']:,.0f} images" if r["status"] == "crossover" else r["status"])
                for _, r in c.iterrows()
            ]
            out.append(f"Where {method} becomes cheaper (efficiency_crossovers.csv): " + "; ".join(parts) + ".")
    if dec is not None and "speedup_vs_transformers" in dec and "ms_per_query" in dec:
        ours = dec[dec["method"].str.startswith("batched trie")]
        if len(ours):
            best = ours.loc[ours.groupby("batch_size")["speedup_vs_transformers"].idxmax()]
            ok = bool((best["speedup_vs_transformers"] >= 10).all() and (ours["identical_rankings"] == 1).all())
            ratio = best["ms_per_query"].iloc[0] / ours["ms_per_query"].min()
            out.append(
                "Our trie decoding is at least 10× faster than transformers' prefix_allowed_tokens_fn on the same "
                f"model, at every batch size, with identical rankings: {_verdict(ok)}: "
                + ", ".join(
                    f"×{r['speedup_vs_transformers']:.1f} at batch {int(r['batch_size'])} ({r['method']})"
                    for _, r in best.iterrows()
                )
                + f"; best batch-1 time over best batched time per query: ×{ratio:.1f} (goal: at most 2)."
            )
    return out


def claims(d: Path) -> list[str]:
    """The paper's claims, each checked on this directory's tables (one markdown bullet per claim). Recall
    claims come only from the paired tests of notebooks 06, 07 and 09 (``claims.csv``, ``ablation_claims.csv``,
    ``lm_claims.csv``: seed-mean difference, 95% interval, verdict); a point estimate decides nothing."""
    out = []
    for name, nb, table in CLAIMS:
        paired = read_csv(d, name)
        if paired is not None:
            out += [paired_claims.sentence(r) for _, r in paired.iterrows()]
        elif read_csv(d, table) is not None:
            out.append(f"The claims of notebook {nb}: not checked (`{name}` is missing; rerun notebook {nb}).")
    main = read_csv(d, "main_table.csv")
    if main is not None:
        ot, tt = main[main["family"] == "one-tower"], main[main["family"] == "two-tower"]
        if len(ot) and len(tt):
            out.append(
                f"One-tower R@1 {float(ot['R@1'].iloc[0]):.1f} vs two-tower {float(tt['R@1'].iloc[0]):.1f} "
                f"(query latency {float(ot['latency_ms'].iloc[0]):.2f} vs {float(tt['latency_ms'].iloc[0]):.3f} ms)."
            )
    return out + efficiency_claims(d)


def agreement_lines(d: Path, other: Path, profile: str, other_profile: str) -> list[str]:
    """The README section that sets this run's claims beside the same claims of the paired profile's run: every
    shared claim with both verdicts, the ones more seeds decided, and any contradiction (which should not occur)."""
    table = None
    for name in ("claims.csv", "ablation_claims.csv"):
        a, b = read_csv(d, name), read_csv(other, name)
        if a is not None and b is not None:
            part = paired_claims.agreement(a, b)
            table = part if table is None else pd.concat([table, part], ignore_index=True)
    if table is None or not len(table):
        return []
    rel = table["relation"].map(
        {
            "same verdict": "same verdict",
            "decided in a": f"decided here, inconclusive in `{other_profile}`",
            "decided in b": f"inconclusive here, decided in `{other_profile}`",
            "contradiction": "**contradiction**",
        }
    )
    show = pd.DataFrame(
        {
            "claim": table["claim"],
            f"{profile}: seeds": table["seeds_a"],
            f"{profile}: difference [95%]": [_iv(r, "a") for _, r in table.iterrows()],
            f"{profile}": table["verdict_a"],
            f"{other_profile}: seeds": table["seeds_b"],
            f"{other_profile}: difference [95%]": [_iv(r, "b") for _, r in table.iterrows()],
            f"{other_profile}": table["verdict_b"],
            "relation": rel,
        }
    )
    decided = table[table["relation"] == "decided in b"]
    lines = [
        f"## The same claims in the `{other_profile}` profile's run",
        "",
        f"`{other.relative_to(REPO_ROOT) if other.is_relative_to(REPO_ROOT) else other}` shares these claims with "
        "this run (the same models where both train them). No claim may hold in one run and not hold in the other "
        "(`tests/test_results.py` checks it).",
        "",
        markdown(show),
    ]
    if len(decided):
        lines += [
            f"Inconclusive here but decided in the `{other_profile}` run (more seeds): "
            + "; ".join(f"{r['claim']} ({r['verdict_b']}, seeds {r['seeds_b']})" for _, r in decided.iterrows())
            + ".",
            "",
        ]
    return lines


def _iv(r, side: str) -> str:
    """``difference [low, high]`` of a claim row (``side``: "" for a claims.csv row, "a" or "b" in an agreement)."""
    s = f"_{side}" if side else ""
    return f"{r[f'difference{s}']:+.2f} [{r[f'low{s}']:+.2f}, {r[f'high{s}']:+.2f}]"


HEADLINE_MARKERS = ("<!-- headline:start -->", "<!-- headline:end -->")


def _headline_rows(main: pd.DataFrame) -> list[tuple[str, pd.Series]]:
    """The four systems of the headline, in order: two-tower, AVG, + pseudo queries, + embedding re-rank."""
    avg = main["method"].str.startswith("AVG") & ~main["method"].str.contains("re-rank")
    rerank = main["method"].str.contains("re-rank") & ~main["method"].str.contains("fusion")
    picks = [
        main[main["family"] == "two-tower"],
        main[avg & ~main["pseudo_queries"]],
        main[avg & main["pseudo_queries"]],
        main[rerank & main["pseudo_queries"]],
    ]
    rows = []
    for p in picks:
        if len(p):
            r = p.iloc[0]
            rows.append((r["method"] + (" + pseudo queries" if r["pseudo_queries"] else ""), r))
    return rows


def headline(d: Path) -> str | None:
    """The README's headline table from results directory ``d``: two-tower, AVG, AVG + pseudo queries and AVG +
    pseudo queries + embedding re-rank, each with R@1 (95% interval over test images) and the paired claim that
    checks it: against the row above it where such a claim exists (pseudo queries against AVG alone), otherwise
    against the two-tower model. ``None`` without the main table and its claims."""
    main, claims_ = read_csv(d, "main_table.csv"), read_csv(d, "claims.csv")
    if main is None or claims_ is None:
        return None
    rows, out = _headline_rows(main), []
    two_tower = rows[0][0] if rows else None
    for n, (label, r) in enumerate(rows):
        found = claims_[claims_["b"] == label]
        prev = rows[n - 1][0] if n else None
        pick = found[found["a"] == prev] if len(found[found["a"] == prev]) else found[found["a"] == two_tower]
        c = pick.iloc[0] if len(pick) else None
        out.append(
            {
                "system": label,
                "R@1 [95%]": f"{r['R@1']:.2f} [{r['R@1_low']:.2f}, {r['R@1_high']:.2f}]",
                "R@5": f"{r['R@5']:.2f}",
                "R@10": f"{r['R@10']:.2f}",
                "seeds": int(r["n_seeds"]),
                "checked against": "" if c is None else c["a"],
                "R@1 difference [95%]": ""
                if c is None
                else f"{c['difference']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]",
                "verdict": "" if c is None else f"**{c['verdict']}**",
            }
        )
    ds = main["dataset"].iloc[0] if "dataset" in main else "the profile's data"
    gallery = int(main["gallery_size"].iloc[0]) if "gallery_size" in main else None
    note = (
        f"Test R@K in percent on `{ds}` ({gallery:,} test images), mean over the seeds; interval: 95% bootstrap over "
        "test images; difference: paired, mean over seeds, with its verdict (holds / does not hold / inconclusive)."
    )
    return markdown(pd.DataFrame(out)).rstrip("\n") + "\n\n" + note + "\n"
