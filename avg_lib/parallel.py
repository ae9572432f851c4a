"""Train every model a profile's notebooks use before they run, in several worker processes at once.

The notebooks train what they need as they go, one model after another, through the cache
(:mod:`avg_lib.cache`). With ``parallel.workers`` > 1, ``run_all.sh`` first runs :func:`train_all`: it lists the
models of every notebook (:func:`plan`), trains them in a pool of worker processes, and the notebooks then load
them from the cache. The notebooks stay the source of truth: a model the plan missed is trained by its notebook
as before, only later. Two processes never build one artefact twice (the cache's lock,
:func:`avg_lib.cache.building`).

Whether it pays depends on the machine. On the 2-core CPU it does not: in a fresh default run, two workers with
one thread each trained each model 1.6-2.1x slower than one two-thread process trains it alone, so the pool's
throughput was within about 10% of the notebooks' (``docs/run_time.md``); the default profile keeps one worker.
``python -m avg_lib.parallel --plan`` lists what a profile trains either way, and where notebook 09's language models
stand (:func:`avg_lib.lmstage.progress_table`), which this pool does not train.

The number of torch threads a model trained with changes its floating-point rounding, so the threads per
worker are a profile setting (``parallel.threads``; 0: the machine's cores divided among the workers) and are
recorded with each job in ``<results_dir>/training_jobs.csv``.

    python -m avg_lib.parallel --profile default       # what run_all.sh does first when workers > 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import pandas as pd

from .progress import tqdm


@dataclass(frozen=True)
class Job:
    """One model to train. ``kind``: ``joint`` (two-tower joint space), ``one_tower``, ``tokenizer`` (with
    ``changes`` to the profile's tokenizer settings) or ``generator`` (``family``/``name`` say which of the
    notebooks' variants: :func:`generator_changes`). ``phase``: jobs of one phase depend only on earlier
    phases; ``cost``: a rough relative cost, longest first within a phase."""

    kind: str
    seed: int
    phase: int
    cost: float = 1.0
    pseudo: int = 0
    family: str = "avg"
    name: object = None
    changes: tuple = ()  # (setting, value) pairs

    def label(self) -> str:
        what = {"generator": f"{self.family} {self.name or ''}".strip(), "tokenizer": dict(self.changes) or "AVG"}
        extra = what.get(self.kind, "")
        return f"{self.kind} seed {self.seed}" + (f" pseudo {self.pseudo}" if self.pseudo else "") + f" {extra}"


def plan(cfg) -> list[Job]:
    """Every model the notebooks of ``cfg`` (a :class:`avg_lib.config.RunConfig`) train, without duplicates:
    the joint spaces and one-tower models of every seed, the tokenizers (AVG's, the ablations', the sweeps'),
    and the generators of notebooks 04 (backend comparison, AVG with and without pseudo queries), 06 (AVG per
    seed and pseudo-query setting and recipe, the identifier baselines) and 07 (ablations and sweeps). The
    identifier baseline notebook 06 repeats over every seed is assumed to be the unaligned RQ ids (the one
    chosen on validation in every run so far); were it another, notebook 06 trains that one itself."""
    from . import experiments

    mt, ab, tok, p = cfg.main_table, cfg.ablations, cfg.tokenizer, cfg.retrieval.pseudo_per_image
    ablation_seeds = list(ab.seeds) if ab.variants else []
    seeds = sorted({cfg.seed, *mt.seeds, *mt.baseline_seeds, *ablation_seeds})
    jobs = [Job("joint", s, 1) for s in seeds]
    jobs += [Job("one_tower", s, 2) for s in mt.seeds]
    unaligned_ablation = ablation_seeds if "semantic_alignment" in ab.variants else []
    unaligned = sorted({*mt.baseline_seeds, *mt.seeds, *unaligned_ablation})  # the unaligned RQ ids' tokenizer
    tokenizers = [(s, ()) for s in seeds] + [(s, (("align_weight", 0.0),)) for s in unaligned]
    tokenizers += [(s, (("kmeans_init", False),)) for s in ablation_seeds if "kmeans_init" in ab.variants]
    sweep = [(k, tok.levels) for k in ab.codebook_sizes] + [(tok.codebook_size, n) for n in ab.voken_lengths]
    sweep = [kl for kl in dict.fromkeys(sweep) if kl != (tok.codebook_size, tok.levels)]
    tokenizers += [(cfg.seed, (("codebook_size", k), ("levels", n))) for k, n in sweep]
    jobs += [Job("tokenizer", s, 2, changes=c) for s, c in dict.fromkeys(tokenizers)]

    def gen(seed, family="avg", name=None, pseudo=0, cost=3.0):
        return Job("generator", seed, 3, cost, pseudo, family, name)

    gens = []
    if cfg.backends.compare:
        gens += [gen(cfg.seed, "backend", b, cost=6.0 if b == "t5" else 1.0) for b in ("minilm", "t5")]
    gens += [gen(cfg.seed, pseudo=p)]
    for s in mt.seeds:
        gens.append(gen(s))
        if s == cfg.seed or mt.seed_pseudo:
            gens.append(gen(s, pseudo=p))
            gens += [gen(s, "recipe", r, p) for r in mt.pseudo_recipes_compared if r != cfg.retrieval.pseudo_recipe]
    names = experiments.baseline_names(mt)
    for s in mt.baseline_seeds:
        gens += [gen(s, "baseline", n, q) for n in names for q in ([0, p] if mt.baseline_pseudo else [0])]
    gens += [gen(s, "baseline", experiments.UNALIGNED) for s in mt.seeds]
    for s in ablation_seeds:
        gens += [gen(s)] + [gen(s, "ablation", n) for n in ABLATIONS_TRAINED if n in ab.names]
    gens += [gen(cfg.seed, "sweep", kl, cost=1.0) for kl in sweep]
    same = {("ablation", "without semantic alignment"): ("baseline", experiments.UNALIGNED)}  # one model
    unique = {}
    for j in gens:
        unique.setdefault((j.seed, j.pseudo, *same.get((j.family, j.name), (j.family, j.name))), j)
    jobs += list(unique.values())
    return sorted(jobs, key=lambda j: (j.phase, -j.cost))


# the ablations that train a model of their own ("without discriminative training" is AVG's generative stage)
ABLATIONS_TRAINED = ("without semantic alignment", "without codebook-embedding init", "without k-means init")


def generator_changes(run, job: Job) -> dict:
    """What :meth:`avg_lib.pipeline.Run.generator` takes for a generator job, by the notebooks' own functions."""
    from . import experiments

    if job.family == "avg":
        return {}
    if job.family == "recipe":
        return {"pseudo_recipe": job.name}
    if job.family == "backend":
        return run.cfg.backends.changes(job.name)
    if job.family == "baseline":
        return experiments.identifier_baselines(run)[job.name]
    if job.family == "ablation":
        return experiments.ablation_variants(run)[job.name]
    if job.family == "sweep":
        return experiments.sweep_changes(run, *job.name)
    raise ValueError(f"unknown generator family {job.family!r}")


def run_job(run, job: Job) -> None:
    """Train (or find cached) the model of ``job`` for ``run`` (a :class:`avg_lib.pipeline.Run`)."""
    from . import baselines

    r = run.with_seed(job.seed)
    if job.kind == "joint":
        _ = r.js
    elif job.kind == "one_tower":
        baselines.cross_encoder_fit_or_load(r.js.ds, r.js.feats, r.cfg.one_tower, progress=False)
    elif job.kind == "tokenizer":
        r.tokenizer(**dict(job.changes))
    elif job.kind == "generator":
        r.generator(job.pseudo, **generator_changes(r, job))
    else:
        raise ValueError(f"unknown job kind {job.kind!r}")


_RUN = None  # the worker process's run


def watch_parent(parent: int, poll_s: float = 2.0, exit=os._exit) -> None:
    """Return only by calling ``exit(1)`` once this process's parent is no longer ``parent``: a worker whose
    parent was killed stops at once instead of training on for minutes with nobody to collect its result."""
    while os.getppid() == parent:
        time.sleep(poll_s)
    exit(1)


def _start_worker(cfg, threads: int) -> None:
    global _RUN
    import threading

    import torch

    from . import pipeline

    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
    torch.set_num_threads(threads)
    _RUN = pipeline.Run(cfg, progress=False)


def _work(job: Job) -> tuple[float, int]:
    t0 = time.perf_counter()
    run_job(_RUN, job)
    return time.perf_counter() - t0, os.getpid()


def train_all(run, workers: int | None = None, threads: int | None = None) -> pd.DataFrame:
    """Train :func:`plan`'s models for ``run`` in ``workers`` processes (default: the profile's), ``threads`` torch
    threads each, phase by phase, longest first. The frozen features are extracted first, here, with every
    core. Returns one row per job (its wall time and worker) and records it as ``training_jobs.csv``. A failed
    job cancels the jobs not yet started and, once those running have finished, raises an error naming it; what
    finished stays cached."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    from . import features

    par = run.cfg.parallel
    workers = workers or par.workers
    threads = threads or par.threads_per_worker(workers)
    enc = run.cfg.encoder
    t0 = time.perf_counter()
    features.extract_features(
        run.ds, *features.load_encoders(enc.name, path=enc.path, image_size=enc.image_size), progress=run.progress
    )
    rows = [{"job": "features (frozen encoders)", "phase": 0, "wall_s": time.perf_counter() - t0, "worker": 0}]
    jobs = plan(run.cfg)
    bar = tqdm(total=len(jobs), desc=f"training ({workers} workers x {threads} threads)", disable=not run.progress)
    ctx = mp.get_context("spawn")  # fresh interpreters: no torch thread pool inherited across a fork
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker, initargs=(run.cfg, threads)) as pool:
        for phase in sorted({j.phase for j in jobs}):
            todo = {pool.submit(_work, j): j for j in jobs if j.phase == phase}
            done, _ = wait(todo, return_when=FIRST_EXCEPTION)
            for fut in done:
                job = todo[fut]
                if fut.exception() is not None:
                    pool.shutdown(cancel_futures=True)
                    raise RuntimeError(f"parallel training: {job.label()} failed: {fut.exception()!r}") from None
                wall, pid = fut.result()
                rows.append({"job": job.label(), "phase": phase, "wall_s": wall, "worker": pid})
                bar.update()
                bar.set_postfix_str(job.label()[:40], refresh=False)
    bar.close()
    table = pd.DataFrame(rows).assign(workers=workers, threads_per_worker=threads)
    total = time.perf_counter() - t0
    print(f"trained {len(jobs)} models in {total:.0f} s ({workers} workers x {threads} threads)", flush=True)
    run.record(table.round({"wall_s": 1}), "training_jobs")
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m avg_lib.parallel", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default", help="profiles/<name>.yaml (default: default)")
    ap.add_argument("--overrides", default="{}", help="settings merged over the profile, as JSON")
    ap.add_argument("--workers", type=int, help="processes (default: the profile's parallel.workers)")
    ap.add_argument("--threads", type=int, help="torch threads per process (default: parallel.threads)")
    ap.add_argument("--plan", action="store_true", help="list the models it would train, then exit")
    args = ap.parse_args(argv)
    import json

    from . import pipeline

    run = pipeline.setup(args.profile, json.loads(args.overrides))
    if args.plan:
        for j in plan(run.cfg):
            print(f"phase {j.phase}: {j.label()}")
        if run.cfg.language_models.enabled:
            from . import lmstage

            print("notebook 09's LMs (trained by the notebook or `python -m avg_lib.lmstage`, not by this pool):")
            for row in lmstage.progress_table(run).itertuples():
                at = f", epoch {row.epochs}" if row.state == "interrupted" else ""
                print(f"  {row.role} seed {row.seed}: {row.state}{at}")
        return 0
    train_all(run, args.workers, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
