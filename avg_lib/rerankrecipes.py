"""Several recipes of the LM re-ranker, trained on one exported job, side by side with paired verdicts.

``python -m avg_lib.rerankjob compare`` puts one trained re-ranker beside AVG's order. When several were trained on
the same export (``scripts/gpu_lm.sh`` with ``AVG_LM_TRAINED`` naming a folder per recipe), this asks which
setting mattered: every two recipes that differ in exactly one setting (the number of alignment epochs, of group
epochs, the scoring) get a claim, "the re-ranker with the one value beats it with the other, every other setting
equal", tested like every claim here (:mod:`avg_lib.claims`: the LM alone, R@1 on the same test queries, seeds
paired, bootstrap over test images). Numeric settings are compared larger against smaller; others in the order the
folders are given::

    python -m avg_lib.rerankrecipes rrjob20 rrjob20/gpu2 rrjob20/a8g1 rrjob20/gpu3 rrjob20/head \\
        --profile default --out results/lm/rerank_gpu_recipes

Writes ``recipes_runs.csv`` (each recipe and seed: test recall with 95% intervals, training seconds),
``recipes_claims.csv``, ``recipes_recall.png`` (R@1 per recipe against AVG's order) and a generated README.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

PHRASES = {"align_epochs": "{} alignment epoch{s}", "epochs": "{} group epoch{s}", "scoring": "{} scoring"}
MACHINE_ONLY = ("device", "seed")  # settings that say where it ran, not what it learned


def settings(info: dict) -> dict:
    """What a trained re-ranker's record says about its recipe (``info["reranker"]`` without where it ran)."""
    return {k: v for k, v in info["reranker"].items() if k not in MACHINE_ONLY}


def phrase(key: str, value) -> str:
    return PHRASES.get(key, f"`{key}` = {{}}").format(value, s="" if value == 1 else "s")


def one_difference(a: dict, b: dict) -> str | None:
    """The one setting in which recipes ``a`` and ``b`` differ, or None where they differ in none or several."""
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return keys[0] if len(keys) == 1 else None


def load_recipe(folder: Path, seeds=None) -> tuple[dict, list[tuple[Path, dict]]]:
    """A folder of trained re-rankers (``seed<s>.json`` and ``-scores.npz``): its recipe and each seed's record.
    Seeds trained with different settings are an error naming the folder."""
    from .genjob import seed_files

    records = [(p, json.loads(p.read_text())) for p in seed_files(folder, seeds)]
    if not records:
        raise FileNotFoundError(f"{folder}: no trained seed*.json; run `python -m avg_lib.rerankjob train` first")
    recipe = settings(records[0][1])
    for p, info in records[1:]:
        if settings(info) != recipe:
            raise ValueError(f"{p}: trained with other settings than {records[0][0].name}; one recipe per folder")
    return recipe, records


def claims_of(recipes: list[tuple[str, dict]]) -> list[tuple[str, str, str]]:
    """``(claim, a, b)`` for every two of ``recipes`` (``(label, settings)``, in the order given) that differ in
    one setting: "b beats a", with a the smaller value of a numeric setting, else the earlier recipe."""
    out = []
    for i, (la, ra) in enumerate(recipes):
        for lb, rb in recipes[i + 1 :]:
            key = one_difference(ra, rb)
            if key is None:
                continue
            lo, hi = (la, ra.get(key)), (lb, rb.get(key))
            if all(isinstance(v, int | float) for _, v in (lo, hi)) and hi[1] < lo[1]:
                lo, hi = hi, lo
            claim = f"The LM re-ranker with {phrase(key, hi[1])} beats it with {phrase(key, lo[1])}"
            out.append((f"{claim}, every other setting equal", lo[0], hi[0]))
    return out


def compare_recipes(run, job: str | Path, folders: list, out: str | Path, seeds=None):
    """Each trained folder's LM re-ranker (alone) on its test beams, and the paired claims of
    :func:`claims_of`: ``(runs, claims)``, written under ``out`` with a README and a figure."""
    from . import claims, rerank, rerankjob, results, stats, tables, viz

    job, out = Path(job), Path(out)
    rows, ranked, recipes, targets = [], {"AVG order": {}}, [], None
    beams = {}  # each exported seed loaded and checked once, however many recipes were trained on it
    for folder in map(Path, folders):
        recipe, records = load_recipe(folder, seeds)
        label = rerankjob.recipe(recipe)
        if any(r == recipe for _, r in recipes):
            raise ValueError(f"{folder}: the same recipe as another folder given ({label})")
        if label in ranked:  # the short label leaves out the setting these two differ in
            label = f"{label} [{folder.name}]"
        recipes.append((label, recipe))
        ranked[label] = {}
        for path, info in records:
            if path.name not in beams:
                beams[path.name] = rerankjob.seed_beams(run, job, path.name)
            meta, _, own, cands = beams[path.name]
            items, _ = rerank.rerank(rerankjob.lm_scores(folder, path.stem, cands), own["test"], cands["test"])
            ranked[label][meta["seed"]] = items
            ranked["AVG order"][meta["seed"]] = cands["test"].items
            targets = own["test"].targets
            hits = stats.hits(items, targets)
            row = {"recipe": label, "folder": folder.name, "seed": meta["seed"], "k": meta["k"]}
            row |= {f"R@{k}": 100 * hits[:, i].mean() for i, k in enumerate(stats.KS)}
            row |= {"train_seconds": info["train_seconds"], "hardware": info["hardware"]}
            rows.append(row)
    checks = claims_of(recipes)
    if not checks:
        raise ValueError(f"{', '.join(map(str, folders))}: no two recipes differ in exactly one setting")
    claim = claims.table([claims.compare(c, a, ranked[a], b, ranked[b], targets) for c, a, b in checks])
    runs = pd.DataFrame(rows)
    mean = _means(ranked, targets).merge(
        runs.groupby("recipe", sort=False)["train_seconds"].mean().rename("train_s"), on="recipe", how="left"
    )
    conf = run.cfg.to_dict() | {"rerankrecipes": {"job": str(job), "recipes": dict(recipes)}}
    results.write_csv(runs, out / "recipes_runs.csv", run.cfg.profile, "per row", conf)
    results.write_csv(claim, out / "recipes_claims.csv", run.cfg.profile, _seeds(ranked), conf)
    ref = float(mean.loc[mean["recipe"] == "AVG order", "R@1"].iloc[0])
    title = f"LM re-ranker alone: test R@1, 95% intervals (dashed: AVG's own order, {ref:.1f})"
    fig = viz.delta_bars(mean[mean["recipe"] != "AVG order"], ref, label_col="recipe", title=title)
    results.save_figure(fig, out / "recipes_recall.png")
    lines = [
        f"# LM re-ranker recipes on AVG's top {rows[0]['k']} beams, side by side: profile `{run.cfg.profile}`",
        "",
        "Generated by `python -m avg_lib.rerankrecipes` (`avg_lib/rerankrecipes.py`) from re-rankers trained on one "
        "exported job; do not edit by hand. Each recipe's own study (with fusion and the embedding re-ranker) is "
        "written by `python -m avg_lib.rerankjob compare`.",
        "",
        *[f"- {claims.sentence(r)}" for _, r in claim.iterrows()],
        "",
        f"The LM alone, test recall over seeds {_seeds(ranked)} (95% intervals: bootstrap over test images of the "
        "seed mean; `train_s`: mean training seconds per seed where it trained, named in `recipes_runs.csv`; "
        "processes sharing one GPU slow each other, so compare these only within one training call):",
        "",
        tables.markdown(mean.round(2)),
        "",
        "![R@1 per recipe](recipes_recall.png)",
        "",
    ]
    results.write_text("\n".join(lines), out / "README.md")
    results.refresh_study_index(out.parent / "README.md")
    return runs, claim


def _seeds(ranked: dict) -> str:
    return ",".join(map(str, sorted(ranked["AVG order"])))


def _means(ranked: dict, targets: np.ndarray) -> pd.DataFrame:
    """Per recipe (and AVG's order): recall of the seed-mean hits with its 95% interval."""
    from . import stats

    rows = []
    for label, by_seed in ranked.items():
        hits = np.mean([stats.hits(by_seed[s], targets) for s in sorted(by_seed)], axis=0)
        row = {"recipe": label}
        for i, (k, iv) in enumerate(zip(stats.KS, stats.recall_interval(hits, targets))):
            row |= {f"R@{k}": 100 * hits[:, i].mean(), f"R@{k}_low": iv.low, f"R@{k}_high": iv.high}
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m avg_lib.rerankrecipes", description=__doc__.split("\n\n")[0])
    ap.add_argument("job", type=Path, help="the exported job (python -m avg_lib.rerankjob export)")
    ap.add_argument("trained", type=Path, nargs="+", help="folders of re-rankers trained on it, one recipe each")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seeds", type=int, nargs="+", help="only these seeds (default: every trained seed)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    from . import pipeline

    run = pipeline.setup(a.profile)
    compare_recipes(run, a.job.resolve(), [t.resolve() for t in a.trained], a.out.resolve(), a.seeds)


if __name__ == "__main__":
    main()
