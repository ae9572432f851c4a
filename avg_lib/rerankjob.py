"""Train the causal-LM re-ranker away from the data, then put it beside AVG's own order and the embedding
re-ranker on the same beams.

A re-ranker of AVG's beams needs little: per split, the queries, AVG's top-K beams with their log-probabilities,
the gallery's voken identifiers and image features, and where each query's image is. ``export`` writes exactly
that for each seed (the profile's AVG generator decodes once, here), a few MB, so that a machine with neither the
data set nor the feature cache (a lent GPU) can train and run the LM re-ranker (:mod:`avg_lib.lmrerank`).
``train`` does so there and writes its scores of the validation and test beams. ``compare`` brings them back:
each re-ranker alone and fused with AVG's log-probability (the weight chosen on validation), recall with 95%
intervals, and paired verdicts against AVG's order and against the embedding re-ranker::

    python -m avg_lib.rerankjob export --profile default --seeds 0 1 2 --out job
    python -m avg_lib.rerankjob train job --overrides '{"device": "cuda"}'     # elsewhere
    python -m avg_lib.rerankjob compare job --profile default --out results/lm/rerank

The re-ranker learns from ``--train-queries`` training captions (a sample drawn with the seed) and AVG's beams for
them over the training gallery; the image feature it reads is the image's two-tower (joint-space) embedding.
Validation chooses the re-ranker's epoch (the best R@1 of its re-ranked validation beams) and the fusion weight;
test is scored once.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")
FIELDS = ("items", "logprob", "targets", "codes", "images")


def export(run, seeds, out: str | Path, k: int = 50, train_queries: int = 2000, pseudo: int = 0) -> list[Path]:
    """``<out>/seed<s>.json`` + ``.npz`` for each seed: AVG's top-``k`` beams (``run``'s generator with ``pseudo``
    pseudo queries per test image) for ``train_queries`` training captions, every validation and every test
    caption, with what the LM re-ranker reads about each gallery."""
    from . import rerank, results, two_tower

    out, written = Path(out), []
    for s in seeds:
        r = run.with_seed(s)
        tg = r.generator(pseudo)
        arrays, texts = {"codebooks": np.asarray(r.vt.codebooks)}, {}
        for name in SPLITS:
            inp = rerank.inputs(r.js, r.split(name))
            if name == "train" and train_queries < len(inp.texts):
                pick = np.sort(np.random.default_rng(s).choice(len(inp.texts), train_queries, replace=False))
                inp = dataclasses.replace(
                    inp, texts=[inp.texts[i] for i in pick], text_feats=inp.text_feats[pick], targets=inp.targets[pick]
                )
            cand = rerank.candidates(tg.model, inp, k, r.cfg.retrieval.batch_size)
            images = two_tower.embed(r.js.model, image_feats=inp.image_feats)
            for field, value in zip(FIELDS, (cand.items, cand.logprob, inp.targets, inp.gallery_codes, images)):
                arrays[f"{name}_{field}"] = np.asarray(value)
            texts[name] = list(inp.texts)
        meta = {
            "seed": s,
            "profile": r.cfg.profile,
            "pseudo_per_image": pseudo,
            "k": k,
            "train_queries": len(texts["train"]),
            "generator_cache": tg.directory.name,
            "git_commit": results.git_commit(),
            "codebook_size": r.vt.ids.codebook_size,
            "depth": r.vt.ids.depth,
            "texts": texts,
        }
        results.write_file(out / f"seed{s}.npz", lambda f, a=arrays: np.savez(f, **a))
        written.append(results.write_text(json.dumps(meta) + "\n", out / f"seed{s}.json"))
    return written


def load_job(path: str | Path):
    """``(meta, inputs, candidates, codebooks)`` of one exported seed (``seed<s>.json``): the re-ranking inputs and
    AVG's beams of each split, with a clear error for a broken job."""
    from . import rerank

    path = Path(path)
    try:
        meta = json.loads(path.read_text())
        with np.load(path.with_suffix(".npz")) as z:
            a = {f"{s}_{f}": z[f"{s}_{f}"] for s in SPLITS for f in FIELDS} | {"codebooks": z["codebooks"]}
        texts = {s: meta["texts"][s] for s in SPLITS}
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a re-ranker job written by `python -m avg_lib.rerankjob export` ({e})") from e
    inputs, cands = {}, {}
    for s in SPLITS:
        n = len(texts[s])
        if not len(a[f"{s}_items"]) == len(a[f"{s}_targets"]) == n or len(a[f"{s}_codes"]) != len(a[f"{s}_images"]):
            raise ValueError(f"{path}: the {s} split's texts, beams and gallery disagree in length; export it again")
        images, codes, targets = a[f"{s}_images"], a[f"{s}_codes"], a[f"{s}_targets"]
        inputs[s] = rerank.RerankInputs(texts[s], np.zeros((n, 0)), images, codes, targets)
        cands[s] = rerank.Candidates(a[f"{s}_items"], a[f"{s}_logprob"])
    return meta, inputs, cands, a["codebooks"]


def settings(overrides: dict | None, seed: int):
    """The re-ranker's settings: :class:`~avg_lib.lmrerank.LMRerankConfig`'s defaults, the job's seed, ``overrides``."""
    from .lmrerank import LMRerankConfig

    known = {f.name for f in dataclasses.fields(LMRerankConfig)}
    unknown = sorted(set(overrides or {}) - known)
    if unknown:
        raise ValueError(f"--overrides: {', '.join(unknown)} not LM re-ranker settings ({', '.join(sorted(known))})")
    return LMRerankConfig(**{"seed": seed, **(overrides or {})})


def train(job: str | Path, overrides: dict | None = None, out: str | Path | None = None, progress=True, seeds=None):
    """Train one LM re-ranker per exported seed of ``job`` (or of ``seeds``) with ``overrides`` over the default
    settings, score the validation and test beams, and write ``<out>/seed<s>-scores.npz`` and ``seed<s>.json``
    (settings, losses, times, hardware). ``out`` defaults to ``<job>/trained``. Each seed keeps
    ``<out>/seed<s>-checkpoint.pt`` (:mod:`avg_lib.lmcheckpoint`), written after every epoch and at most every
    ``LMReranker.keep_seconds`` while scoring, until its results are written: an interrupted seed resumes there."""
    from . import generator, results
    from .genjob import checkpoint_file, exported_seeds
    from .lmcheckpoint import RerankCheckpoint
    from .lmrerank import LMReranker

    job = Path(job)
    out = Path(out or job / "trained")
    software = results.environment_record()  # the same for every seed of this process
    for path in exported_seeds(job, seeds, "rerankjob"):
        meta, inputs, cands, codebooks = load_job(path)
        cfg = settings(overrides, meta["seed"])
        ck = RerankCheckpoint(checkpoint_file(out, meta["seed"]), dataclasses.asdict(cfg))
        width = inputs["train"].image_feats.shape[1]
        rr = LMReranker(meta["codebook_size"], meta["depth"], codebooks, cfg, image_dim=width)
        rr.fit(inputs["train"], cands["train"], progress=progress, val=(inputs["val"], cands["val"]), checkpoint=ck)
        scores, t1, before = {}, time.perf_counter(), ck.score_seconds()
        for s in ("val", "test"):

            def keep(part, s=s):
                ck.save_scores(s, part, before + time.perf_counter() - t1)

            scores[s] = rr.score(inputs[s], cands[s], progress=progress, done=ck.scores(s), keep=keep)
            if s == "val":
                keep(scores[s])
        score_ms = 1000 * (before + time.perf_counter() - t1) / sum(len(cands[s].items) for s in scores)
        results.write_file(out / f"{path.stem}-scores.npz", lambda f, a=scores: np.savez(f, **a))
        info = {
            "seed": meta["seed"],
            "model": generator.backend_label(rr.gen.cfg),
            "reranker": dataclasses.asdict(cfg),
            "k": meta["k"],
            "train_queries": meta["train_queries"],
            "train_seconds": round(rr.train_seconds, 1),
            "train_pieces": ck.pieces,  # > 1: resumed from its checkpoint, training and scoring seconds summed
            "score_ms_per_query": round(score_ms, 2),
            "history": rr.history,
            "hardware": results.hardware(cfg.device),
            "git_commit": results.git_commit(),
        } | software
        results.write_text(json.dumps(info, indent=1) + "\n", out / f"{path.stem}.json")
        ck.remove()
        if progress:
            took = f"trained in {rr.train_seconds:.0f} s, {score_ms:.1f} ms per query"
            print(f"seed {meta['seed']}: {took} on {info['hardware']}")
    return out


class _Given:
    """A re-ranker whose scores were computed elsewhere: ``scores[i]`` for the beams ``cands[i]``."""

    def __init__(self, name: str, cands: list, scores: list):
        self.name, self._by = name, [(c, np.asarray(s, dtype=np.float64)) for c, s in zip(cands, scores)]

    def score(self, inputs, cand):
        for c, s in self._by:
            if c is cand:
                return s
        raise KeyError(f"{self.name}: no scores for these beams")


def seed_beams(run, job: Path, name: str):
    """The exported seed ``job/name`` (``seed<s>.json``) checked against ``run``'s profile: ``(meta, r, own,
    cands)``, with ``r`` the run at that seed, ``own`` its validation and test re-ranker inputs and ``cands``
    AVG's beams per split. A split that is not the profile's is an error naming the file."""
    from . import rerank

    meta, inputs, cands, _ = load_job(job / name)
    r = run.with_seed(meta["seed"])
    own = {s: rerank.inputs(r.js, r.split(s)) for s in ("val", "test")}
    for s in own:
        if own[s].texts != inputs[s].texts or not np.array_equal(own[s].targets, inputs[s].targets):
            raise ValueError(f"{job / name}: its {s} split is not this profile's; export it from it")
    return meta, r, own, cands


def lm_scores(trained: Path, stem: str, cands) -> _Given:
    """The trained LM re-ranker's scores of the validation and test beams (``<trained>/<stem>-scores.npz``)."""
    with np.load(trained / f"{stem}-scores.npz") as z:
        return _Given("LM", [cands["val"], cands["test"]], [z["val"], z["test"]])


def compare(run, job: str | Path, trained: str | Path | None = None, out: str | Path | None = None, seeds=None):
    """The trained LM re-rankers of ``job`` (those of ``seeds``, if given) beside AVG's order and the embedding
    re-ranker, alone and fused, on the same beams: ``(runs, claims)`` tables, written to ``<out>/rerank_runs.csv``
    and ``rerank_claims.csv`` (default: the run's results dir ``/lm_rerank``) with a generated ``README.md`` and
    each re-ranker's training record (``trained/seed<s>.json``)."""
    from . import claims, rerank, results, stats, tables
    from .genjob import seed_files

    job = Path(job)
    trained = Path(trained or job / "trained")
    out = Path(out or Path(run.cfg.results_dir) / "lm_rerank")
    grid = [i / run.cfg.rerank.fusion_steps for i in range(run.cfg.rerank.fusion_steps + 1)]
    rows, ranked, targets, infos = [], {}, None, []
    for info_path in seed_files(trained, seeds):
        info = json.loads(info_path.read_text())
        infos.append(info)
        meta, r, own, cands = seed_beams(run, job, info_path.name)
        lm = lm_scores(trained, info_path.stem, cands)
        targets, val, test = own["test"].targets, cands["val"], cands["test"]
        embedding = rerank.EmbeddingReranker(r.js.model)
        for base in (None, embedding, lm):
            variants = [base, rerank.FusionReranker(base, grid=grid).fit(own["val"], val)] if base else [None]
            for v in variants:
                items, ms = (test.items, 0.0) if v is None else rerank.rerank(v, own["test"], test)
                name = "AVG order" if v is None else v.name
                ranked.setdefault(name, {})[meta["seed"]] = items
                hits = stats.hits(items, targets)
                row = {"reranker": name, "seed": meta["seed"], "k": meta["k"], "ceiling": rerank.ceiling(test, targets)}
                row |= {f"R@{k}": 100 * hits[:, i].mean() for i, k in enumerate(stats.KS)}
                for k, iv in zip(stats.KS, stats.recall_interval(hits, targets)):
                    row[f"R@{k}_low"], row[f"R@{k}_high"] = iv.low, iv.high
                row["fusion_weight"] = getattr(v, "weight", float("nan"))
                row["rerank_ms"] = info["score_ms_per_query"] if base is lm else ms
                rows.append(row)
    if not infos:
        raise FileNotFoundError(f"{trained}: no trained seed*.json; run `python -m avg_lib.rerankjob train` first")
    model = info["model"]
    checks = [
        (f"The {model} re-ranker beats AVG's own order", "AVG order", "LM"),
        (f"AVG's log-probability fused with the {model} re-ranker beats AVG's own order", "AVG order", "fusion (LM)"),
        (f"The fused {model} re-ranker beats the fused embedding re-ranker", "fusion (embedding)", "fusion (LM)"),
    ]
    claim = claims.table([claims.compare(c, a, ranked[a], b, ranked[b], targets) for c, a, b in checks])
    runs = pd.DataFrame(rows)
    conf = run.cfg.to_dict() | {"rerankjob": {"job": str(job), "k": info["k"], "train_queries": info["train_queries"]}}
    conf["rerankjob"]["reranker"] = info["reranker"]
    seeds = ",".join(map(str, sorted(ranked["LM"])))
    results.write_csv(runs, out / "rerank_runs.csv", run.cfg.profile, "per row", conf)
    results.write_csv(claim, out / "rerank_claims.csv", run.cfg.profile, seeds, conf)
    times = ", ".join(f"{i['train_seconds']:.0f}" for i in infos)
    hardware = ", ".join(sorted({i["hardware"] for i in infos}))
    mean = runs.groupby("reranker", sort=False)[["ceiling", "R@1", "R@5", "R@10", "fusion_weight", "rerank_ms"]].mean()
    lines = [
        f"# The LM re-ranker on AVG's top {info['k']} beams ({recipe(info['reranker'])}): profile `{run.cfg.profile}`",
        "",
        "Generated by `python -m avg_lib.rerankjob compare` (`avg_lib/rerankjob.py`) from re-rankers trained with "
        "`python -m avg_lib.rerankjob train` on an exported job; do not edit by hand.",
        "",
        *[f"- {claims.sentence(r)}" for _, r in claim.iterrows()],
        "",
        f"The {model} re-ranker {_reads_text(info['reranker'])}; it learned from {info['train_queries']} training "
        + f"captions ({_training_text(info['reranker'])}) in {times} s (seeds {seeds}) on {hardware}. Fusion weights "
        + "were chosen on validation. `rerank_ms` is the re-ranking time per query (the LM's on that machine).",
        "",
        "Its training, per epoch (`val_R@1`: its re-ranked validation beams, where recorded; the best epoch is kept):",
        "",
        *[f"- seed {i['seed']}: {'; '.join(_epoch_text(h) for h in i['history'])}" for i in infos],
        "",
        f"Mean over seeds {seeds}:",
        "",
        tables.markdown(mean.reset_index().round(2)),
        "",
    ]
    for i in infos:  # each re-ranker's own record (settings, history, machine, commit, packages) beside the tables
        results.write_text(json.dumps(i, indent=1) + "\n", out / "trained" / f"seed{i['seed']}.json")
    results.write_text("\n".join(lines), out / "README.md")
    results.refresh_study_index(out.parent / "README.md")  # the folder's generated README links the new study
    return runs, claim


def _reads_text(r: dict) -> str:
    """What the re-ranker of settings ``r`` (an ``LMRerankConfig`` as a dict) read and how it scored."""
    soft = f"{r.get('image_tokens', 1)} soft token(s)"
    if r.get("scoring", "head") == "likelihood":
        return f"scored each candidate by log P(query | its joint-space image embedding as {soft})"
    image = f" and its joint-space image embedding as {soft}" if r["image_token"] else " and nothing else"
    return f"read each query's prompt, the candidate's vokens{image}, and scored them with a head on the last token"


def recipe(r: dict) -> str:
    """The re-ranker's recipe in a few words, for a title that tells studies apart."""
    return f"{r.get('scoring', 'head')} scoring, {r.get('align_epochs', 0)} alignment + {r['epochs']} group epochs"


def _training_text(r: dict) -> str:
    align, epochs = r.get("align_epochs", 0), r["epochs"]
    groups = f"{epochs} epoch(s) on groups from AVG's beams, {r['negatives']} negatives per caption"
    if not align:
        return groups
    first = f"{align} epoch(s) captioning their images with the LM frozen"
    return f"{first}, then {groups}" if epochs else f"{first}; none on AVG's beams"


def _epoch_text(row: dict) -> str:
    if row.get("stage") == "align":
        val = f", validation {row['val_nll']:.2f}" if "val_nll" in row else ""
        return f"alignment epoch {row['epoch']}: caption loss {row['train_nll']:.2f}{val}"
    val = f", val_R@1 {row['val_R@1']:.2f}" if "val_R@1" in row else ""
    return f"epoch {row['epoch']}: train loss {row['train_loss']:.3f}{val}"


def main(argv=None) -> None:
    from .genjob import job_parser, run_job_command

    helps = {
        "export": "write AVG's beams and what the re-ranker reads (a few MB per seed)",
        "train": "train one LM re-ranker per exported seed and score its beams",
        "overrides": "LM re-ranker settings (avg_lib.lmrerank.LMRerankConfig), JSON",
        "compare": "recall and paired verdicts against AVG's order and the embedding re-ranker",
        "compare_out": "default: <the profile's results_dir>/lm_rerank",
    }
    ap, e = job_parser("python -m avg_lib.rerankjob", __doc__.split("\n\n")[0], helps)
    e.add_argument("--k", type=int, help="beams per query (default: the profile's rerank.k)")
    e.add_argument("--train-queries", type=int, default=2000, help="training captions it learns from (default 2000)")

    def export_seeds(run, seeds, a):
        export(run, seeds, a.out, a.k or run.cfg.rerank.k, a.train_queries, a.pseudo)

    run_job_command(ap.parse_args(argv), export_seeds, train, compare)


if __name__ == "__main__":
    main()
