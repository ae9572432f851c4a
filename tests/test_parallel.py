"""Training every model first in worker processes (avg_lib.parallel): the plan lists each notebook's models
once, in dependency order; what the pool trains is what a notebook then loads, not retrains."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from avg_lib import config, experiments, parallel


def _labels(jobs):
    return [j.label() for j in jobs]


def test_plan_lists_every_notebook_model_once_in_dependency_order():
    cfg = config.load_config("full")  # every study on
    jobs = parallel.plan(cfg)
    assert len(set(jobs)) == len(jobs) and len(set(_labels(jobs))) == len(jobs)
    phases = [j.phase for j in jobs]
    assert phases == sorted(phases)  # joint spaces, then one-towers and tokenizers, then generators
    seeds = set(cfg.main_table.seeds)
    assert {j.seed for j in jobs if j.kind == "joint"} == seeds | set(cfg.ablations.seeds) | {cfg.seed}
    gens = [j for j in jobs if j.kind == "generator"]
    p = cfg.retrieval.pseudo_per_image
    for s in seeds:  # notebook 06: AVG with and without pseudo queries, the borrowed recipe, the unaligned RQ ids
        assert parallel.Job("generator", s, 3, 3.0) in gens
        assert parallel.Job("generator", s, 3, 3.0, p) in gens
        assert parallel.Job("generator", s, 3, 3.0, p, "recipe", "borrowed") in gens
        assert parallel.Job("generator", s, 3, 3.0, 0, "baseline", experiments.UNALIGNED) in gens
    assert {j.name for j in gens if j.family == "baseline" and j.seed == 0} == set(
        experiments.baseline_names(cfg.main_table)
    )
    # the "without semantic alignment" ablation is the unaligned baseline (one model: one job per seed, labelled
    # as the baseline where the main table has that seed), and the "without discriminative training" one is AVG's
    # own generative stage (no job of its own)
    unaligned = [j.seed for j in gens if (j.family, j.name) == ("baseline", experiments.UNALIGNED)]
    unaligned += [j.seed for j in gens if (j.family, j.name) == ("ablation", "without semantic alignment")]
    assert sorted(unaligned) == sorted(seeds | set(cfg.ablations.seeds))  # one job per seed, whichever label
    assert {(j.seed, j.name) for j in gens if j.family == "ablation"} == {
        (s, n) for s in cfg.ablations.seeds for n in ("without codebook-embedding init", "without k-means init")
    } | {(s, "without semantic alignment") for s in set(cfg.ablations.seeds) - seeds}
    sweeps = {j.name for j in gens if j.family == "sweep"}
    assert sweeps == {(64, 3), (1024, 3), (256, 2), (256, 4)}  # the profile's own (256, 3) is AVG itself
    assert gens[0].name == "t5"  # the longest job starts first
    tokenizers = {j.changes for j in jobs if j.kind == "tokenizer" and j.seed == cfg.seed}
    assert {(("codebook_size", k), ("levels", n)) for k, n in sweeps} <= tokenizers


def test_plan_follows_the_profile_switches():
    over = {
        "ablations": {"variants": [], "codebook_sizes": [], "voken_lengths": []},
        "backends": {"compare": False},
        "main_table": {"seeds": [0], "seed_pseudo": False, "pseudo_recipes_compared": []},
    }
    jobs = parallel.plan(config.load_config("default", over))
    families = {j.family for j in jobs if j.kind == "generator"}
    assert families == {"avg", "baseline"}
    assert {j.seed for j in jobs} == {0}
    assert not [j for j in jobs if j.kind == "tokenizer" and ("kmeans_init", False) in j.changes]


def test_parallel_settings_are_checked_and_share_the_cores():
    with pytest.raises(ValueError, match="workers must be at least 1"):
        config.ParallelConfig(workers=0)
    cores = os.cpu_count() or 1
    assert config.ParallelConfig(workers=2).threads_per_worker() == max(1, cores // 2)
    assert config.ParallelConfig(workers=1, threads=3).threads_per_worker(4) == 3
    assert config.load_config("smoke").parallel.workers == 1  # nbval and the smoke run train as they go
    with pytest.raises(config.ConfigError, match="parallel"):
        config.load_config("smoke", {"parallel": {"worker": 2}})


TINY = {
    "data": {"kwargs": {"n_images": 120}},
    "two_tower": {"epochs": 5},
    "tokenizer": {"epochs": 5},
    "generator": {"epochs": 1, "disc_epochs": 1},
    "one_tower": {"epochs": 1},
    "backends": {"compare": False},
    "main_table": {"seeds": [0], "pseudo_recipes_compared": []},
    "ablations": {"variants": [], "codebook_sizes": [16], "voken_lengths": []},
}


def test_the_pool_trains_what_the_notebooks_then_load(tmp_path, monkeypatch):
    """Two worker processes train the plan of a tiny profile; this process then finds every model cached (any
    training here fails the test), and the job table records each job's worker and threads. A job that fails
    stops the command with an error naming it."""
    over = {**TINY, "results_dir": str(tmp_path / "res")}
    env = {**os.environ, "AVG_DATA_DIR": str(tmp_path / "data")}
    cmd = [sys.executable, "-m", "avg_lib.parallel", "--profile", "smoke", "--workers", "2", "--threads", "1"]
    done = subprocess.run([*cmd, "--overrides", json.dumps(over)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(tmp_path / "res" / "training_jobs.csv")
    cfg = config.load_config("smoke", over)
    jobs = parallel.plan(cfg)
    assert len(table) == len(jobs) + 1 and table["job"].iloc[0].startswith("features")
    assert set(table["threads_per_worker"]) == {1} and table.loc[1:, "worker"].nunique() == 2

    from avg_lib import baselines, generator, pipeline, tokenizer, two_tower

    def no_training(*a, **k):
        raise AssertionError("trained again in the notebook's process")

    monkeypatch.setenv("AVG_DATA_DIR", str(tmp_path / "data"))
    for module, name in [
        (generator, "train_generator"),
        (tokenizer, "train_tokenizer"),
        (two_tower, "train_two_tower"),
        (baselines, "train_cross_encoder"),
    ]:
        monkeypatch.setattr(module, name, no_training)
    run = pipeline.setup(cfg, progress=False)
    for job in jobs:
        parallel.run_job(run, job)
    experiments.sweep_result(run, 16, cfg.tokenizer.levels)  # notebook 07's own call, loaded

    bad = {**over, "generator": {**TINY["generator"], "backend": "decoder", "lm_path": str(tmp_path / "no-lm")}}
    failed = subprocess.run([*cmd, "--overrides", json.dumps(bad)], env=env, capture_output=True, text=True)
    assert failed.returncode != 0 and "parallel training: generator seed 0" in failed.stderr


def test_a_worker_stops_when_its_parent_is_gone(monkeypatch):
    parents, exits = iter([10, 10, 1]), []
    monkeypatch.setattr(parallel.os, "getppid", lambda: next(parents))
    parallel.watch_parent(10, poll_s=0.0, exit=exits.append)
    assert exits == [1]


def test_plan_lists_where_notebook_09s_language_models_stand(tmp_path, monkeypatch, capsys):
    """The pool does not train notebook 09's LMs; ``--plan`` says so and lists each role and seed's state."""
    monkeypatch.setenv("AVG_DATA_DIR", str(tmp_path / "data"))
    lms = {"enabled": True, "seeds": [0, 1], "lm": "tiny-random"}
    over = {**TINY, "results_dir": str(tmp_path / "res"), "language_models": lms}
    assert parallel.main(["--profile", "smoke", "--overrides", json.dumps(over), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "not by this pool" in out
    for role in ("generator", "reranker"):
        for s in (0, 1):
            assert f"  {role} seed {s}: to export\n" in out
    off = {**over, "language_models": {**lms, "enabled": False}}
    assert parallel.main(["--profile", "smoke", "--overrides", json.dumps(off), "--plan"]) == 0
    assert "notebook 09" not in capsys.readouterr().out
