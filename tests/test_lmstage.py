"""Notebook 09's stage: the profile section, the LM it loads, its resumable work directories and its table."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from avg_lib import cache, config, genjob, lmstage, pipeline, rerankjob
from avg_lib.lmrerank import LMRerankConfig
from avg_lib.studies import LM_RERANK_SETTINGS, LanguageModelsConfig

TINY = {
    "lm": "tiny-random",
    "generator": {"epochs": 1, "disc_epochs": 0},
    "reranker": {"negatives": 2, "epochs": 1, "batch_size": 8},
    "rerank_k": 4,
    "train_queries": 10,
}


def test_the_section_names_exactly_the_reranker_settings_a_profile_may_set():
    fields = {f.name for f in dataclasses.fields(LMRerankConfig)}
    assert set(LM_RERANK_SETTINGS) == fields - {"device", "lm_path", "seed"}  # the stage sets those three


@pytest.mark.filterwarnings("ignore:.*replace whole mappings")
@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"reranker": {"scorin": "head"}}, "reranker: scorin not settings of the LM reranker"),
        ({"generator": {"epoch": 2}}, "generator: epoch not settings"),
        ({"generator": {"backend": "t5"}}, "set the LM with `lm`"),
        ({"rerank_k": 1}, "rerank_k must be at least 2"),
        ({"seeds": []}, "seeds not empty"),
    ],
)
def test_bad_settings_are_named_with_the_profile(section, message):
    with pytest.raises(config.ConfigError, match="language_models") as e:
        config.load_config("smoke", {"language_models": section})
    assert message in str(e.value)


def test_the_profiles_switch_the_stage_on_only_where_it_fits():
    assert not config.load_config("default").language_models.enabled  # hours on a 2-core CPU
    lm, gpu = config.load_config("lm").language_models, config.load_config("lm-gpu").language_models
    assert lm.enabled and lm.lm == "smollm2" and lm.device == "cpu"
    assert lm.generator == {"lm_train_layers": 6, "lm_cache_frozen": True}
    assert gpu.enabled and gpu.device == "cuda" and gpu.generator == {}  # the whole LM on a GPU
    assert lm.reranker == config.load_config("default").language_models.reranker  # aligned only, on the CPU
    # on a GPU the recipe of results/lm/rerank_gpu: alignment, then group epochs on AVG's top 20 beams
    assert gpu.reranker == {**lm.reranker, "align_epochs": 8, "epochs": 3} and gpu.rerank_k == 20
    assert config.load_config("smoke").language_models.lm == "tiny-random"
    assert LanguageModelsConfig().enabled is False


def test_lm_path_builds_the_tiny_llama_once_and_names_a_missing_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("AVG_DATA_DIR", str(tmp_path))
    assert lmstage.lm_path("smollm2") is None  # the generator and the re-ranker load SmolLM2 themselves
    first = lmstage.lm_path("tiny-random")
    stamp = (tmp_path / "lm" / "tiny-random-llama" / "config.json").stat().st_mtime_ns
    assert lmstage.lm_path("tiny-random") == first
    assert (tmp_path / "lm" / "tiny-random-llama" / "config.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileNotFoundError, match="nowhere holds no causal LM"):
        lmstage.lm_path(str(tmp_path / "nowhere"))


def test_the_tiny_llama_is_the_same_model_every_time(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    a, b = (AutoModelForCausalLM.from_pretrained(lmstage.tiny_random_lm(tmp_path / n)) for n in "ab")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_work_directories_change_with_what_changes_them(run, tmp_path, monkeypatch):
    monkeypatch.setenv("AVG_DATA_DIR", str(tmp_path))
    base = lmstage.work_dirs(run)

    def dirs(**section):
        cfg = dataclasses.replace(run.cfg.language_models, **section)
        return lmstage.work_dirs(SimpleNamespace(cfg=dataclasses.replace(run.cfg, language_models=cfg)))

    more = dirs(reranker={"scoring": "head"})
    assert more["reranker"][0] == base["reranker"][0] and more["reranker"][1] != base["reranker"][1]
    assert more["generator"] == base["generator"]  # the re-ranker's settings leave the generator alone
    assert dirs(rerank_k=20)["reranker"][0] != base["reranker"][0]  # another export
    assert dirs(seeds=(0, 1)) == base  # one directory holds every seed: another seed trains only itself
    assert dirs(generator={"epochs": 5})["generator"][0] == base["generator"][0]  # same job, other training

    def chain_generator(**settings):  # the profile's own generator, whose beams and settings the jobs hold
        cfg = dataclasses.replace(run.cfg, generator=dataclasses.replace(run.cfg.generator, **settings))
        return lmstage.work_dirs(SimpleNamespace(cfg=cfg))

    for later, neutral in lmstage.KEYED_LATER.items():  # a setting added later leaves existing jobs' names alone
        plain = {s: v for s, v in dataclasses.asdict(run.cfg.generator).items() if s != later}
        key = cache.key({**{s: run.cfg.to_dict()[s] for s in lmstage.CHAIN}, "generator": plain})
        assert base["generator"][0].name == f"generator-{key}" and getattr(run.cfg.generator, later) == neutral
    assert chain_generator(patience=3)["generator"][0] != base["generator"][0]


@pytest.fixture()
def lm_run(run, tmp_path, monkeypatch):
    """The toy run (a random two-tower head over its joint space, as the re-ranker jobs' tests use) with the stage
    switched on for its seed, a tiny random Llama and its data cache in ``tmp_path``."""
    import torch

    from avg_lib.two_tower import TwoTower, TwoTowerConfig

    monkeypatch.setenv("AVG_DATA_DIR", str(tmp_path / "data"))
    torch.manual_seed(0)
    run.js = dataclasses.replace(run.js, model=TwoTower(16, 16, TwoTowerConfig(dim=8, dropout=0.0)))
    section = LanguageModelsConfig(enabled=True, seeds=(run.cfg.seed,), **TINY)
    run.cfg = dataclasses.replace(run.cfg, language_models=section)
    return run


def test_the_stage_trains_both_lms_writes_their_comparisons_and_resumes(lm_run, monkeypatch, capsys):
    assert set(lmstage.progress_table(lm_run)["state"]) == {"to export"}  # asking exports nothing
    gen_runs, gen_claims = lmstage.generator_rows(lm_run, progress=False)
    rr_runs, rr_claims = lmstage.reranker_rows(lm_run, progress=False)
    out = lmstage.repo_path(lm_run.cfg.results_dir) / "lm"
    assert {"backend_runs.csv", "backend_claims.csv", "README.md"} <= {p.name for p in out.iterdir()}
    assert (out.parent / "lm_rerank" / "rerank_claims.csv").is_file()
    assert gen_runs["model"].tolist() == ["MiniLM-L6 (frozen) + voken decoder", "causal LM (tiny-random-llama)"]
    assert (rr_runs["k"] == 4).all() and "LM" in set(rr_runs["reranker"])
    assert len(gen_claims) == 1 and len(rr_claims) == 3  # the paired tests of both comparisons

    job, trained = lmstage.work_dirs(lm_run)["generator"]
    with pytest.raises(FileNotFoundError, match="no trained"):  # compare reads the profile's seeds only
        genjob.compare(lm_run, job, trained, out, seeds=[lm_run.cfg.seed + 1])

    def no_training(*args, **kwargs):
        raise AssertionError("a finished seed was trained again")

    monkeypatch.setattr(genjob, "train", no_training)
    monkeypatch.setattr(rerankjob, "train", no_training)
    pd.testing.assert_frame_equal(lmstage.generator_rows(lm_run, progress=False)[0], gen_runs)
    again = lmstage.reranker_rows(lm_run, progress=False)[0]  # the embedding re-ranker is timed again
    pd.testing.assert_frame_equal(again.drop(columns="rerank_ms"), rr_runs.drop(columns="rerank_ms"))

    _, trained = lmstage.work_dirs(lm_run)["reranker"]
    (trained / f"seed{lm_run.cfg.seed}.json").unlink()  # an interrupted seed: only it is trained again
    calls = []
    monkeypatch.setattr(rerankjob, "train", lambda job, rr, out, progress, seeds: calls.append(seeds) or out)
    with pytest.raises(FileNotFoundError):  # the stand-in trained nothing, so compare finds no seed
        lmstage.reranker_rows(lm_run, progress=False)
    assert calls == [[lm_run.cfg.seed]]

    history = lmstage.generator_history(lm_run)  # both generators' epochs, as each trained them
    s = lm_run.cfg.seed
    lm_name, own_name = gen_runs["model"].iloc[1], gen_runs["model"].iloc[0]
    lm_hist = pd.read_csv(lmstage.work_dirs(lm_run)["generator"][1] / f"seed{s}-history.csv")
    pd.testing.assert_frame_equal(
        history[history["generator"] == lm_name].drop(columns=["model", "generator", "seed"]).reset_index(drop=True),
        lm_hist,
    )
    own = history[history["generator"] == own_name]
    assert own["val_R@1"].tolist() == lm_run.generator(0).history["val_R@1"].tolist()
    assert set(history["model"]) == {f"{lm_name}, seed {s}", f"{own_name}, seed {s}"} and set(history["seed"]) == {s}
    fig = lmstage.history_figure(lm_run, history)
    curves = [[line for line in ax.lines if not line.get_label().startswith("_")] for ax in fig.axes]
    assert [len(c) for c in (curves[0], curves[2])] == [2, 2]  # losses and validation R@1: a curve per generator
    assert len({line.get_color() for line in curves[0]}) == 2

    table = lmstage.table(gen_runs, rr_runs)
    assert table["role"].tolist() == ["generator"] * 2 + ["re-ranker"] * 5
    assert "AVG + LM re-ranker (top 4)" in set(table["system"])
    lmstage.figure(table, "t")

    # `python -m avg_lib.lmstage --status`: where each seed stands, read from the work directories
    import torch

    gen_trained = lmstage.work_dirs(lm_run)["generator"][1]
    info = json.loads((gen_trained / f"seed{s}.json").read_text())
    status = lmstage.progress_table(lm_run).set_index("role")
    assert status.loc["generator", "state"] == "trained" and status.loc["reranker", "state"] == "exported"
    assert status.loc["generator", "test_R@1"] == round(info["test"]["R@1"], 2)
    assert status.loc["generator", "train_s"] == round(info["train_seconds"])
    (gen_trained / f"seed{s}.json").unlink()  # a generator stopped after epoch 2 of 3 + 2 (the keys it reads)
    blob = {"config": {"epochs": 3, "disc_epochs": 2}, "epoch": 2, "seconds": 7.0, "pieces": 1}
    torch.save(blob, genjob.checkpoint_file(gen_trained, s))
    import numpy as np  # a re-ranker whose training ended, stopped after scoring 3 validation queries

    blob = {"epoch": 3, "epochs": 3, "seconds": 9.0, "pieces": 2, "scores": {"val": np.zeros((3, 4))}}
    torch.save(blob, genjob.checkpoint_file(lmstage.work_dirs(lm_run)["reranker"][1], s))
    monkeypatch.setattr(pipeline, "setup", lambda *args, **kwargs: lm_run)
    lmstage.main(["--profile", "lm", "--status"])
    printed = capsys.readouterr().out
    words = " ".join(printed.split())
    assert f"generator {s} interrupted 2 of 5 7 1" in words
    assert f"reranker {s} interrupted, 3 val queries scored 3 of 3 9 2" in words
    assert not {"<NA>", "NaN", "None"} & set(printed.split())


def test_the_table_averages_each_system_over_its_seeds():
    gen = pd.DataFrame(
        {"model": ["A", "B", "A", "B"], "seed": [0, 0, 1, 1], "R@1": [10.0, 4.0, 14.0, 6.0], "R@5": [20.0] * 4}
        | {"R@10": [30.0] * 4, "R@1_low": [8.0, 2.0, 12.0, 4.0], "R@1_high": [12.0, 6.0, 16.0, 8.0]}
    )
    rr = pd.DataFrame(
        {"reranker": ["AVG order", "LM"], "seed": [0, 0], "k": [10, 10], "ceiling": [40.0, 40.0]}
        | {"R@1": [12.0, 9.0], "R@5": [1.0, 1.0], "R@10": [2.0, 2.0], "R@1_low": [0.0, 0.0], "R@1_high": [20.0] * 2}
    )
    table = lmstage.table(gen, rr).set_index("system")
    a, b = table.loc["generator: A"], table.loc["generator: B"]
    assert a["R@1"] == 12.0 and a["R@1_low"] == 10.0 and b["seeds"] == "0,1" and b["R@1"] == 5.0
    assert a["R@1_std"] == pytest.approx(np.std([10.0, 14.0], ddof=1))
    assert table.loc["AVG + LM re-ranker (top 10)", "n_seeds"] == 1 and np.isnan(a["ceiling"])
    assert np.isnan(table.loc["AVG's top 10, its own order", "R@1_std"])  # one seed: no spread


def test_a_gpu_hand_off_trains_elsewhere_what_the_stage_then_only_compares(lm_run, tmp_path, monkeypatch):
    """``python -m avg_lib.lmstage``: the printed commands (here with the GPU script on the CPU) put each trained
    seed where the stage looks, so the stage trains nothing and compares."""
    import os
    import subprocess

    from avg_lib.paths import REPO_ROOT

    text = lmstage.hand_off(lm_run, tmp_path / "to-gpu", roles=["generator"])
    trained = lmstage.work_dirs(lm_run)["generator"][1]
    assert {p.name for p in (tmp_path / "to-gpu" / "generator").iterdir()} == {
        f"seed{lm_run.cfg.seed}.json",
        f"seed{lm_run.cfg.seed}.npz",
    }  # the export only: no trained model, no checkpoint travels
    (tmp_path / "to-gpu" / "generator" / "seed99.json").write_text("{}")  # an earlier hand-off's seed: dropped
    assert lmstage.hand_off(lm_run, tmp_path / "to-gpu", roles=["generator"]) == text
    assert len(list((tmp_path / "to-gpu" / "generator").iterdir())) == 2
    assert "# the LM at" in text  # a local LM (here the tiny Llama) must be found at the same path there
    commands = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert f"AVG_LM_TRAINED={trained.name} " in commands[0] and commands[-1].startswith("./run_all.sh --profile")
    env = {**os.environ, "OUT": str(tmp_path), "AVG_LM_DEVICE": "cpu", "AVG_LM_STAGE": str(tmp_path / "stage")}
    subprocess.run(["bash", "-c", commands[0]], cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    for tar in commands[1:-1]:
        subprocess.run(["bash", "-c", tar], cwd=tmp_path, check=True)
    assert lmstage.missing(trained, lm_run.cfg.language_models.seeds) == []
    info = json.loads((trained / f"seed{lm_run.cfg.seed}.json").read_text())
    assert f"AVG_GIT_COMMIT={info['git_commit']} " in commands[0]  # the copy there names this checkout's commit

    def no_training(*args, **kwargs):
        raise AssertionError("a seed trained on the GPU was trained again")

    monkeypatch.setattr(genjob, "train", no_training)
    runs, _ = lmstage.generator_rows(lm_run, progress=False)
    assert "causal LM (tiny-random-llama)" in set(runs["model"])
    assert "every seed trained" in lmstage.hand_off(lm_run, tmp_path / "to-gpu", roles=["generator"])
