"""Does a change to the generator's settings move AVG's recall? A paired check over seeds, for speed cuts.

A cut that makes the default run cheaper (bfloat16 training, fewer epochs, ...) is kept only if its effect on the
numbers stays within seed noise, shown. This trains (or loads from the cache) AVG's generator at each seed with
the profile's settings and with ``--changes``, scores the test split, and states the claim "the change beats the
profile's settings" with the paired difference of R@1 over the seeds, its 95% interval (a bootstrap over test
images, :func:`avg_lib.evaluation.claims.compare`) and a verdict; with the training seconds of both:

    avg cut --profile default --seeds 0 1 2 3 4 5 --changes '{"precision": "bf16"}' \\
        --out results/scratch/bf16

writes ``<out>/runs.csv`` (one row per seed and setting) and ``<out>/claim.csv``, with provenance columns, and
``<out>/README.md`` (``results/scratch/`` is not committed; docs/run_time.md keeps the cuts that decided a
setting, with their commands).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys

import pandas as pd

from avg_lib.evaluation import claims, tables
from avg_lib.results import write_csv, write_text
from avg_lib.runs import experiments


def check(run, seeds: list[int], changes: dict, pseudo: int = 0) -> tuple[pd.DataFrame, dict]:
    """Per-seed rows (R@1/5/10, validation R@1, training seconds) of AVG with the profile's generator settings
    (``"profile"``) and with ``changes`` (``"changed"``), and the paired claim that the change beats the profile."""
    if not changes:
        raise ValueError("changes is empty: nothing to compare with the profile's settings")
    known = {f.name for f in dataclasses.fields(run.cfg.generator)} - {"seed"}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"changes: {', '.join(unknown)} not generator settings (profiles' generator section)")
    ranked, rows = {"profile": {}, "changed": {}}, []
    for seed in seeds:
        r = run.with_seed(seed)
        for name, ch in (("profile", {}), ("changed", changes)):
            row, items = experiments.avg_result(r, pseudo, return_ranked=True, **ch)
            ranked[name][seed] = items
            meta = r.generator(pseudo, **ch).meta
            rows.append(
                {
                    "setting": name,
                    "changes": json.dumps(ch, sort_keys=True),
                    "seed": seed,
                    **{k: row[k] for k in ("R@1", "R@5", "R@10", "val_R@1", "cache")},
                    "train_seconds": meta["train_seconds"],
                }
            )
    label = ", ".join(f"{k}={v}" for k, v in sorted(changes.items()))
    claim = claims.compare(
        f"AVG with {label} beats the profile's settings",
        "profile",
        ranked["profile"],
        label,
        ranked["changed"],
        run.split().targets,
    )
    return pd.DataFrame(rows), claim


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="avg cut", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default", help="profiles/<name>.yaml (default: default)")
    ap.add_argument("--seeds", type=int, nargs="+", required=True, help="the seeds of the paired comparison")
    ap.add_argument("--changes", required=True, help='generator settings to change, as JSON: {"precision": "bf16"}')
    ap.add_argument("--pseudo", type=int, default=0, help="pseudo queries per test image (default: 0)")
    ap.add_argument("--out", required=True, help="folder for runs.csv and claim.csv")
    args = ap.parse_args(argv)
    from avg_lib.runs import pipeline

    run = pipeline.setup(args.profile, progress=False)
    runs, claim = check(run, args.seeds, json.loads(args.changes), args.pseudo)
    seeds = ",".join(map(str, args.seeds))
    write_csv(runs, f"{args.out}/runs.csv", run.cfg.profile, seeds, run.cfg.to_dict())
    write_csv(pd.DataFrame([claim]), f"{args.out}/claim.csv", run.cfg.profile, seeds)
    table = runs.drop(columns=["cache"]).round(2)
    command = "avg cut " + shlex.join(argv if argv is not None else sys.argv[1:])
    write_text(readme(table, claim, command), f"{args.out}/README.md")
    print(table.to_string(index=False))
    print(claims.sentence(claim))
    return 0


def readme(table: pd.DataFrame, claim: dict, command: str) -> str:
    """``<out>/README.md``: the command, the per-seed table and the claim's sentence."""
    return (
        f"# {claim['claim']}\n\nMade by `{command}` (commit and time in the CSVs' provenance columns). "
        "`train_seconds` is what each model took when it was trained: a model found in the cache keeps the time "
        "of the run that trained it.\n\n"
        f"{tables.markdown(table)}\n\n{claims.sentence(claim)}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
