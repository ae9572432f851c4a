"""Notebook 09: the profile section, the LM it loads, both LM roles trained in-process through cached, resumable
stages, and the table that sums them up."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from avg_lib.models import lmrerank
from avg_lib.models.lmrerank import LMRerankConfig
from avg_lib.runs import config, lmroles
from avg_lib.runs.studies import LM_RERANK_SETTINGS, LanguageModelsConfig

TINY = {
    "lm": "tiny-random",
    "generator": {"epochs": 1, "disc_epochs": 0},
    "reranker": {"negatives": 2, "epochs": 1, "batch_size": 8},
    "rerank_k": 4,
    "train_queries": 10,
}


def test_the_section_names_exactly_the_reranker_settings_a_profile_may_set():
    fields = {f.name for f in dataclasses.fields(LMRerankConfig)}
    assert set(LM_RERANK_SETTINGS) == fields - {"device", "lm_path", "seed"}  # the notebook sets those three


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


def test_the_profiles_switch_the_notebook_on_only_where_it_fits():
    assert not config.load_config("default").language_models.enabled  # hours on a 2-core CPU
    lm, gpu = config.load_config("lm").language_models, config.load_config("lm-gpu").language_models
    assert lm.enabled and lm.lm == "smollm2" and lm.device == "cpu"
    assert lm.generator == {"lm_train_layers": 6, "lm_cache_frozen": True}
    assert gpu.enabled and gpu.device == "cuda" and gpu.generator == {}  # the whole LM on a GPU
    assert lm.reranker == config.load_config("default").language_models.reranker  # aligned only, on the CPU
    # on a GPU: alignment, then group epochs on AVG's top 20 beams
    assert gpu.reranker == {**lm.reranker, "align_epochs": 8, "epochs": 3} and gpu.rerank_k == 20
    assert config.load_config("smoke").language_models.lm == "tiny-random"
    assert LanguageModelsConfig().enabled is False


def test_lm_path_builds_the_tiny_llama_once_and_names_a_missing_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("AVG_DATA_DIR", str(tmp_path))
    assert lmroles.lm_path("smollm2") is None  # the generator and the re-ranker load SmolLM2 themselves
    first = lmroles.lm_path("tiny-random")
    stamp = (tmp_path / "lm" / "tiny-random-llama" / "config.json").stat().st_mtime_ns
    assert lmroles.lm_path("tiny-random") == first
    assert (tmp_path / "lm" / "tiny-random-llama" / "config.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileNotFoundError, match="nowhere holds no causal LM"):
        lmroles.lm_path(str(tmp_path / "nowhere"))


def test_the_tiny_llama_is_the_same_model_every_time(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    a, b = (AutoModelForCausalLM.from_pretrained(lmroles.tiny_random_lm(tmp_path / n)) for n in "ab")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture()
def lm_run(run, tmp_path, monkeypatch):
    """The toy run (a random two-tower head over its joint space) with notebook 09 switched on for its seed, a
    tiny random Llama and its data cache in ``tmp_path``."""
    import torch

    from avg_lib.models.two_tower import TwoTower, TwoTowerConfig

    monkeypatch.setenv("AVG_DATA_DIR", str(tmp_path / "data"))
    torch.manual_seed(0)
    run.js = dataclasses.replace(run.js, model=TwoTower(16, 16, TwoTowerConfig(dim=8, dropout=0.0)))
    section = LanguageModelsConfig(enabled=True, seeds=(run.cfg.seed,), **TINY)
    run.cfg = dataclasses.replace(run.cfg, language_models=section)
    return run


def test_both_roles_train_once_in_the_cache_and_compare_on_the_same_seeds(lm_run, monkeypatch):
    gen_runs, gen_claims = lmroles.generator_rows(lm_run)
    rr_runs, rr_claims = lmroles.reranker_rows(lm_run, progress=False)
    assert gen_runs["model"].tolist() == ["MiniLM-L6 (frozen) + voken decoder", "causal LM (tiny-random-llama)"]
    assert (gen_runs["R@1_low"] <= gen_runs["R@1"]).all() and (gen_runs["R@1"] <= gen_runs["R@1_high"]).all()
    assert rr_runs["reranker"].tolist() == ["AVG order", "embedding", "fusion (embedding)", "LM", "fusion (LM)"]
    assert (rr_runs["k"] == 4).all() and len(gen_claims) == 1 and len(rr_claims) == 3
    lm = lmroles.trained_reranker(lm_run)
    assert lm.info["k"] == 4 and lm.info["train_queries"] == 10 and lm.info["train_pieces"] == 1
    assert lm.info["model"] == "causal LM (tiny-random-llama)" and lm.info["history"]
    assert rr_runs.loc[rr_runs["reranker"] == "LM", "rerank_ms"].item() == lm.info["score_ms_per_query"]
    # each re-ranked list is a permutation of AVG's beams, so the ceiling bounds every R@K at K = 4
    assert (rr_runs["R@1"] <= rr_runs["ceiling"] + 1e-9).all()

    def no_training(*args, **kwargs):
        raise AssertionError("a trained model was trained again")

    monkeypatch.setattr(lmrerank.LMReranker, "fit", no_training)
    monkeypatch.setattr(lmroles.generator, "train_generator", no_training)
    pd.testing.assert_frame_equal(lmroles.generator_rows(lm_run)[0], gen_runs)
    again = lmroles.reranker_rows(lm_run, progress=False)[0]  # the embedding re-ranker is timed again
    pd.testing.assert_frame_equal(again.drop(columns="rerank_ms"), rr_runs.drop(columns="rerank_ms"))

    history = lmroles.generator_history(lm_run)  # both generators' epochs, as each trained them
    s = lm_run.cfg.seed
    lm_name, own_name = gen_runs["model"].iloc[1], gen_runs["model"].iloc[0]
    own = history[history["generator"] == own_name]
    assert own["val_R@1"].tolist() == lm_run.generator(0).history["val_R@1"].tolist()
    assert set(history["model"]) == {f"{lm_name}, seed {s}", f"{own_name}, seed {s}"} and set(history["seed"]) == {s}
    fig = lmroles.history_figure(lm_run, history)
    curves = [[line for line in ax.lines if not line.get_label().startswith("_")] for ax in fig.axes]
    assert [len(c) for c in (curves[0], curves[2])] == [2, 2]  # losses and validation R@1: a curve per generator

    table = lmroles.table(gen_runs, rr_runs)
    assert table["role"].tolist() == ["generator"] * 2 + ["re-ranker"] * 5
    assert "AVG + LM re-ranker (top 4)" in set(table["system"])
    lmroles.figure(table, "t")
    assert "tiny-random" in lmroles.settings_text(lm_run)


def test_an_interrupted_reranker_resumes_from_its_checkpoint(lm_run, monkeypatch):
    """Stopped after its first training epoch, the re-ranker stage leaves a checkpoint beside its folder; the next
    call continues there and stores the scores one uninterrupted call stores."""
    import torch

    run2 = lm_run
    section = dataclasses.replace(run2.cfg.language_models, reranker={**TINY["reranker"], "epochs": 2})
    run2.cfg = dataclasses.replace(run2.cfg, language_models=section)
    want = lmroles.trained_reranker(run2, progress=False)
    torch.manual_seed(0)
    fit, calls = lmrerank.LMReranker._epoch, []

    def stop_after_one(self, *args, **kw):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return fit(self, *args, **kw)

    import shutil

    folder = next(run2.generator(0).directory.glob("lm-reranker-*"))
    shutil.rmtree(folder)
    monkeypatch.setattr(lmrerank.LMReranker, "_epoch", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        lmroles.trained_reranker(run2, progress=False)
    monkeypatch.setattr(lmrerank.LMReranker, "_epoch", fit)
    assert folder.with_name(folder.name + ".checkpoint.pt").is_file() and not folder.exists()
    got = lmroles.trained_reranker(run2, progress=False)
    assert got.info["train_pieces"] == 2 and not folder.with_name(folder.name + ".checkpoint.pt").exists()
    for split in ("val", "test"):
        np.testing.assert_array_equal(got._by[split][1], want._by[split][1])


def test_stored_scores_refuse_other_beams(lm_run):
    from avg_lib.models.rerank import Candidates

    lm = lmroles.trained_reranker(lm_run, progress=False)
    items, _ = lm._by["test"]
    with pytest.raises(ValueError, match="not the ones its stage scored"):
        lm.score(None, Candidates(items[:, ::-1].copy(), np.zeros(items.shape)))


def test_the_table_averages_each_system_over_its_seeds():
    gen = pd.DataFrame(
        {"model": ["A", "B", "A", "B"], "seed": [0, 0, 1, 1], "R@1": [10.0, 4.0, 14.0, 6.0], "R@5": [20.0] * 4}
        | {"R@10": [30.0] * 4, "R@1_low": [8.0, 2.0, 12.0, 4.0], "R@1_high": [12.0, 6.0, 16.0, 8.0]}
    )
    rr = pd.DataFrame(
        {"reranker": ["AVG order", "LM"], "seed": [0, 0], "k": [10, 10], "ceiling": [40.0, 40.0]}
        | {"R@1": [12.0, 9.0], "R@5": [1.0, 1.0], "R@10": [2.0, 2.0], "R@1_low": [0.0, 0.0], "R@1_high": [20.0] * 2}
    )
    table = lmroles.table(gen, rr).set_index("system")
    a, b = table.loc["generator: A"], table.loc["generator: B"]
    assert a["R@1"] == 12.0 and a["R@1_low"] == 10.0 and b["seeds"] == "0,1" and b["R@1"] == 5.0
    assert a["R@1_std"] == pytest.approx(np.std([10.0, 14.0], ddof=1))
    assert table.loc["AVG + LM re-ranker (top 10)", "n_seeds"] == 1 and np.isnan(a["ceiling"])
    assert np.isnan(table.loc["AVG's top 10, its own order", "R@1_std"])  # one seed: no spread
