"""Train generators away from the data, then compare them with the profile's own generator at the same seeds.

A generator needs little: its training pairs (caption, identifier), the validation and test splits (queries,
the gallery position of each query's image, the gallery's identifiers), the training images' identifiers
(negatives are mined over them) and the tokenizer's codebooks. ``export`` writes exactly that, a few MB per
seed, so that a machine with neither the data set nor the feature cache (a lent GPU) can train generators
with other settings: another backend, another device. ``train`` does so there and writes each seed's ranked
test lists; ``compare`` brings them back beside the profile's generator trained on the same seeds: recall with
95% intervals, and the paired difference over test images with its verdict::

    python -m avg_lib.genjob export --profile default --seeds 0 1 2 --out job
    python -m avg_lib.genjob train job --overrides '{"backend": "decoder", "device": "cuda"}'   # elsewhere
    python -m avg_lib.genjob compare job --profile default --out results/lm
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

ARRAYS = ("train_codes", "train_codes_all", "val_targets", "val_codes", "test_targets", "test_codes", "codebooks")


def export(run, seeds, out: str | Path, pseudo: int = 0) -> list[Path]:
    """``<out>/seed<s>.json`` + ``.npz`` for each seed: what :func:`train` needs to train ``run``'s generator with
    ``pseudo`` pseudo queries per test image on that seed's identifiers (each seed has its own chain)."""
    from . import results, splits

    out = Path(out)
    written = []
    for s in seeds:
        r = run.with_seed(s)
        texts, codes = splits.generator_training_pairs(r.js, r.vt, pseudo, **r.cfg.retrieval.recipe)
        val, test = r.split("val"), r.split("test")
        arrays = {
            "train_codes": codes,
            "train_codes_all": r.vt.ids.codes[r.js.ds.split_indices("train")],
            "val_targets": val.targets,
            "val_codes": val.gallery_codes,
            "test_targets": test.targets,
            "test_codes": test.gallery_codes,
            "codebooks": np.asarray(r.vt.codebooks),
        }
        meta = {
            "seed": s,
            "profile": r.cfg.profile,
            "pseudo_per_image": pseudo,
            "git_commit": results.git_commit(),
            "codebook_size": r.vt.ids.codebook_size,
            "depth": r.vt.ids.depth,
            "generator": dataclasses.asdict(r.cfg.generator),
            "train_texts": list(texts),
            "val_texts": val.texts,
            "test_texts": test.texts,
        }
        results.write_file(out / f"seed{s}.npz", lambda f, a=arrays: np.savez(f, **a))
        written.append(results.write_text(json.dumps(meta) + "\n", out / f"seed{s}.json"))
    return written


def load_job(path: str | Path) -> tuple[dict, dict]:
    """``(meta, arrays)`` of one exported seed (``seed<s>.json``), with a clear error for a broken job."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
        with np.load(path.with_suffix(".npz")) as z:
            arrays = {k: z[k] for k in ARRAYS}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a generator job written by `python -m avg_lib.genjob export` ({e})") from e
    if len(meta["train_texts"]) != len(arrays["train_codes"]) or len(meta["test_texts"]) != len(arrays["test_targets"]):
        raise ValueError(f"{path}: texts and arrays disagree in length; export it again")
    return meta, arrays


def seed_files(directory: Path, seeds=None) -> list[Path]:
    """The ``seed<s>.json`` files in ``directory`` (an exported job, or what was trained on it), in seed order;
    those of ``seeds`` only, if given."""
    paths = sorted(
        (p for p in Path(directory).glob("seed*.json") if p.stem[4:].isdigit()), key=lambda p: int(p.stem[4:])
    )
    return [p for p in paths if seeds is None or int(p.stem[4:]) in seeds]


def checkpoint_file(trained: Path, seed: int) -> Path:
    """Where :func:`train` keeps seed ``seed``'s checkpoint while it trains into ``trained`` (gone once it ends)."""
    return Path(trained) / f"seed{seed}-checkpoint.pt"


def seed_histories(trained: Path, seeds=None) -> pd.DataFrame | None:
    """The epochs (losses, validation recall) of the generators trained in ``trained`` (those of ``seeds``, if
    given) that kept their ``seed<s>-history.csv``, with each one's ``model`` and ``seed``; ``None`` if none did."""
    histories = [
        pd.read_csv(h).assign(model=json.loads(p.read_text())["model"], seed=int(p.stem[4:]))
        for p in seed_files(trained, seeds)
        if (h := p.with_name(f"{p.stem}-history.csv")).is_file()
    ]
    return pd.concat(histories, ignore_index=True) if histories else None


def exported_seeds(job: Path, seeds=None, command: str = "genjob") -> list[Path]:
    """The ``seed<s>.json`` files of an exported ``job`` (those of ``seeds`` only, if given), with an error naming
    the export command (``python -m avg_lib.<command> export``) when there are none."""
    paths = seed_files(job, seeds)
    if not paths:
        raise FileNotFoundError(f"{job}: no seed*.json; run `python -m avg_lib.{command} export` first")
    return paths


def train(
    job: str | Path,
    overrides: dict | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    seeds: list[int] | None = None,
):
    """Train one generator per exported seed of ``job`` (or of ``seeds``) with its settings and ``overrides``
    (e.g. another backend or ``device: cuda``), score its test split, and write ``<out>/seed<s>-ranked.npy``,
    ``-history.csv`` and ``.json`` (settings, time, hardware). ``out`` defaults to ``<job>/trained``. Each seed's
    training keeps ``<out>/seed<s>-checkpoint.pt`` after every epoch until it ends, so an interrupted seed
    resumes at its last finished epoch."""
    import torch

    from . import generator, results
    from .metrics import recall_at_k
    from .trie import VokenTrie

    job = Path(job)
    out = Path(out or job / "trained")
    out.mkdir(parents=True, exist_ok=True)
    software = results.environment_record()  # the same for every seed of this process
    for path in exported_seeds(job, seeds, "genjob"):
        meta, a = load_job(path)
        cfg = generator.GeneratorConfig(**{**meta["generator"], **(overrides or {})})
        device = generator.training_device(cfg)
        gen = generator.build_generator(meta["codebook_size"], meta["depth"], cfg, a["codebooks"]).to(device)
        gen, history = generator.train_generator(
            gen,
            (meta["train_texts"], a["train_codes"]),
            (meta["val_texts"], a["val_targets"], a["val_codes"]),
            train_codes_all=a["train_codes_all"],
            progress=progress,
            checkpoint=checkpoint_file(out, int(path.stem[4:])),  # an interrupted seed resumes at its last epoch
        )
        seconds = gen.train_seconds  # summed over the pieces of a resumed training
        with torch.no_grad():
            res = gen.retrieve(meta["test_texts"], VokenTrie(a["test_codes"]).to(device), batch_size=64)
        ranked = res.items.cpu().numpy()
        stem = out / path.stem
        results.write_file(stem.with_name(f"{path.stem}-ranked.npy"), lambda f, r=ranked: np.save(f, r))
        results.write_text(pd.DataFrame(history).to_csv(index=False), stem.with_name(f"{path.stem}-history.csv"))
        best = max(history, key=lambda h: h.get("val_R@1", -1))
        info = {
            "seed": meta["seed"],
            "model": generator.backend_label(cfg),
            "generator": dataclasses.asdict(cfg),
            "train_seconds": round(seconds, 1),
            "train_pieces": gen.train_pieces,  # > 1: resumed from its checkpoint, the seconds summed
            "epochs_run": len(history),
            "selected_epoch": int(best["epoch"]),
            "val_R@1": float(best["val_R@1"]),
            "test": {k: float(v) for k, v in recall_at_k(ranked, a["test_targets"]).items()},
            "hardware": results.hardware(device.type),
            "git_commit": results.git_commit(),
        } | software
        results.write_text(json.dumps(info, indent=1) + "\n", stem.with_suffix(".json"))
        if progress:
            print(f"seed {meta['seed']}: test R@1 {info['test']['R@1']:.2f} in {seconds:.0f} s on {info['hardware']}")
    return out


def compare(run, job: str | Path, trained: str | Path | None = None, out: str | Path | None = None, seeds=None):
    """The trained generators of ``job`` (those of ``seeds``, if given) against ``run``'s own generator at the same
    seeds: ``(runs, claim)`` tables, written to ``<out>/backend_runs.csv`` and ``backend_claims.csv`` (default: the
    run's results dir), with the trained generators' epochs in ``backend_history.csv`` and a generated README."""
    from . import claims, experiments, generator, results, stats, tables

    job, trained = Path(job), Path(trained or Path(job) / "trained")
    out = Path(out or run.cfg.results_dir)
    ranked_a, ranked_b, rows, targets, name_b, notes = {}, {}, [], None, None, []
    infos = seed_files(trained, seeds)
    for info_path in infos:
        info = json.loads(info_path.read_text())
        meta, a = load_job(job / info_path.name)
        s = meta["seed"]
        row_a, ranked_a[s] = experiments.avg_result(run.with_seed(s), meta["pseudo_per_image"], return_ranked=True)
        test = run.with_seed(s).split("test")
        if not np.array_equal(test.targets, a["test_targets"]) or test.texts != meta["test_texts"]:
            raise ValueError(
                f"{job / info_path.name}: its test split is not this profile's; export it from {run.cfg.profile}"
            )
        targets = a["test_targets"]
        notes += [f"Seed {s}: {info['note']}."] if info.get("note") else []
        ranked_b[s] = np.load(trained / f"{info_path.stem}-ranked.npy")
        name_a, name_b = generator.backend_label(run.cfg.generator), info["model"]
        for name, ranked, extra in (
            (name_a, ranked_a[s], {"train_seconds": None, "hardware": None, "selected_epoch": row_a["selected_epoch"]}),
            (name_b, ranked_b[s], {k: info[k] for k in ("train_seconds", "hardware", "selected_epoch")}),
        ):
            hits = stats.hits(ranked, targets)
            row = {"model": name, "seed": s, **{f"R@{k}": 100 * hits[:, i].mean() for i, k in enumerate(stats.KS)}}
            for k, iv in zip(stats.KS, stats.recall_interval(hits, targets)):
                row[f"R@{k}_low"], row[f"R@{k}_high"] = iv.low, iv.high
            rows.append({**row, **extra})
    if not rows:
        raise FileNotFoundError(f"{trained}: no trained seed*.json; run `python -m avg_lib.genjob train` first")
    runs = pd.DataFrame(rows)
    claim = claims.table(
        [claims.compare(f"The {name_b} generator beats the {name_a} one", name_a, ranked_a, name_b, ranked_b, targets)]
    )
    conf = run.cfg.to_dict() | {"genjob": {"job": str(job), "trained_generator": info["generator"]}}
    results.write_csv(runs, out / "backend_runs.csv", run.cfg.profile, "per row", conf)
    results.write_csv(claim, out / "backend_claims.csv", run.cfg.profile, ",".join(map(str, sorted(ranked_b))), conf)
    histories = seed_histories(trained, seeds)
    if histories is not None:  # the trained generators' epochs: losses and validation recall
        results.write_csv(histories, out / "backend_history.csv", run.cfg.profile, "per row", conf)
    lines = [
        f"# Generator backends against the profile's own: profile `{run.cfg.profile}`",
        "",
        "Generated by `python -m avg_lib.genjob compare` (`avg_lib/genjob.py`) from generators trained with "
        "`python -m avg_lib.genjob train` on an exported job; do not edit by hand.",
        "",
        *[f"- {claims.sentence(r)}" for _, r in claim.iterrows()],
        "",
        f"The {name_b} generator's settings where they differ from the profile's generator: "
        + ", ".join(
            f"`{k}: {v}`"
            for k, v in info["generator"].items()
            if k != "seed" and v != dataclasses.asdict(run.cfg.generator).get(k)
        )
        + f". Trained on: {info['hardware']}.",
        "",
        *notes,
        *([""] if notes else []),
        tables.markdown(runs),
        "",
        *results.study_index(out),
    ]
    results.write_text("\n".join(lines), out / "README.md")
    return runs, claim


def job_parser(prog: str, description: str, helps: dict):
    """The command line every export / train / compare job shares (this module's and :mod:`avg_lib.rerankjob`'s):
    ``(parser, export subparser)``, the latter for a job's own export options. ``helps``: each subcommand's help
    (``export``, ``train``, ``compare``) and the help of ``overrides`` and of compare's ``out``."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    sub = ap.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help=helps["export"])
    e.add_argument("--profile", default="default")
    e.add_argument("--seeds", type=int, nargs="+", help="default: the profile's main_table.seeds")
    e.add_argument("--pseudo", type=int, default=0, help="pseudo queries per test image (default 0)")
    e.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("train", help=helps["train"])
    t.add_argument("job", type=Path)
    t.add_argument("--overrides", default="{}", help=helps["overrides"])
    t.add_argument("--out", type=Path, help="default: <job>/trained")
    t.add_argument("--seeds", type=int, nargs="+", help="only these exported seeds (several processes can share a GPU)")
    c = sub.add_parser("compare", help=helps["compare"])
    c.add_argument("job", type=Path)
    c.add_argument("--profile", default="default")
    c.add_argument("--trained", type=Path, help="default: <job>/trained")
    c.add_argument("--out", type=Path, help=helps["compare_out"])
    return ap, e


def run_job_command(args, export_seeds, train_job, compare_job) -> None:
    """Carry out parsed ``args`` of :func:`job_parser`: ``train_job(job, overrides, out, seeds=...)`` needs no data;
    ``export_seeds(run, seeds, args)`` and ``compare_job(run, job, trained, out)`` get the profile's run."""
    for name in ("job", "out", "trained"):  # relative to where the command runs (results' paths are the repo's)
        if getattr(args, name, None) is not None:
            setattr(args, name, getattr(args, name).resolve())
    if args.command == "train":
        train_job(args.job, json.loads(args.overrides), args.out, seeds=args.seeds)
        return
    from . import pipeline

    run = pipeline.setup(args.profile)
    if args.command == "export":
        export_seeds(run, args.seeds or list(run.cfg.main_table.seeds), args)
    else:
        compare_job(run, args.job, args.trained, args.out)


def main(argv=None) -> None:
    helps = {
        "export": "write what each seed's generator needs (a few MB per seed)",
        "train": "train one generator per exported seed and write its test rankings",
        "overrides": "generator settings over the exported ones, as JSON",
        "compare": "recall and the paired difference against the profile's generator",
        "compare_out": "default: the profile's results_dir",
    }
    ap, _ = job_parser("python -m avg_lib.genjob", __doc__.split("\n\n")[0], helps)
    run_job_command(ap.parse_args(argv), lambda run, seeds, a: export(run, seeds, a.out, a.pseudo), train, compare)


if __name__ == "__main__":
    main()
