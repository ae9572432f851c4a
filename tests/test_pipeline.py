"""``pipeline.setup``: the run a notebook gets, on a toy joint space (tiny tokenizer and generator)."""

import json

import pandas as pd
import pytest

from avg_lib.runs import experiments, pipeline


def test_setup_validates_the_profile_and_prints_the_run(capsys, tmp_path):
    r = pipeline.setup("smoke", {"generator": {"epochs": 5}})
    assert r.cfg.generator.epochs == 5 and r.cfg.overrides == {"generator": {"epochs": 5}}
    assert "Run(profile='smoke'" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown setting"):
        pipeline.setup("smoke", {"generator": {"epoch": 5}})


def test_with_seed_reseeds_and_reuses(run):
    assert run.with_seed(run.cfg.seed) is run
    other = run.with_seed(5)
    assert other is run.with_seed(5) and other.with_seed(run.cfg.seed) is run  # one run per seed
    assert other.cfg.tokenizer.seed == other.cfg.generator.seed == 5
    assert other.text_states is run.text_states and other.dataset is run.dataset and other.out == run.out


def test_tokenizer_variants_and_generators_are_cached_stages(run):
    assert run.tokenizer() is run.vt
    noalign = run.tokenizer(align_weight=0.0)
    assert noalign.directory != run.vt.directory and noalign.model.cfg.align_weight == 0.0
    tg = run.generator(0)
    assert tg.directory.parent == run.vt.directory and (tg.directory / "stage.json").is_file()
    stamp = (tg.directory / "generator.pt").stat().st_mtime_ns
    again = run.generator(0)
    assert again.directory == tg.directory and (tg.directory / "generator.pt").stat().st_mtime_ns == stamp
    assert run.text_states.size > 0  # the run's shared state cache, not a process global
    assert run.generator(0, init_from_codebook=False).directory != tg.directory
    assert run.generator(0, stage="generative").history["stage"].eq("generative").all()
    summary = tg.summary()
    assert summary["train_pairs"] == tg.meta["train_pairs"] and summary["backend"] == "minilm"
    assert summary["epochs"] == 2 and summary["selected_stage"] in ("generative", "discriminative")


def test_experiment_rows_come_from_the_runs_stages(run):
    row = experiments.avg_result(run, 0, unresolved=True)
    assert {"R@1", "R@5", "R@10", "rSum", "latency_ms", "unresolved_R@1", "cache"} <= set(row)
    assert row["gallery_size"] == len(run.split("test").gallery_codes) and row["num_beams"] == 4
    assert experiments.avg_result(run, 0, num_beams=2)["num_beams"] == 2
    with_iv = experiments.avg_result(run, 0, intervals=True)
    for k in (1, 5, 10):  # the same model: the same recall, now inside its bootstrap interval over test images
        assert with_iv[f"R@{k}"] == row[f"R@{k}"]
        assert with_iv[f"R@{k}_low"] <= with_iv[f"R@{k}"] <= with_iv[f"R@{k}_high"]
    k, n = run.cfg.tokenizer.codebook_size, run.cfg.tokenizer.levels
    assert experiments.sweep_result(run, k, n)["cache"] == run.generator(0).directory.name  # the reference point
    other = experiments.sweep_result(run, 3, n)
    assert "collision_rate_raw" in other and other["vocabulary"] == 3


def test_record_writes_the_table_and_its_configuration(run, capsys):
    path = run.record(pd.DataFrame({"R@1": [1.0]}), "t")
    back = pd.read_csv(path)
    assert back["profile"].tolist() == ["smoke"] and back["seed"].tolist() == [0]
    meta = json.loads((run.out / "config" / "t.json").read_text())
    assert meta["config"]["generator"]["layers"] == 1 and meta["config"]["overrides"]["tokenizer"]["levels"] == 2
    run.done(answer=42)
    assert '"answer": 42' in capsys.readouterr().out


def test_best_by_validation_picks_the_best_mean_validation_recall_never_test():
    from avg_lib.evaluation import tables

    runs = pd.DataFrame(
        {
            "method": ["a", "a", "b", "c"],
            "val_R@1": [10.0, 14.0, 11.0, 12.0],  # means: a 12, b 11, c 12 (a first: ties keep row order)
            "R@1": [0.0, 0.0, 99.0, 50.0],  # test recall plays no part
        }
    )
    assert tables.best_by_validation(runs) == "a"
    assert tables.best_by_validation(runs[runs["method"] != "a"]) == "c"
    with pytest.raises(ValueError, match="no rows"):
        tables.best_by_validation(runs.iloc[:0])


def test_the_training_device_is_not_part_of_a_generators_cache_key(run, monkeypatch):
    """A generator trained with generator.device = cuda (under torchrun, say) is the one a CPU run then loads."""
    from avg_lib.models import generator

    monkeypatch.setattr(generator, "training_device", lambda cfg: __import__("torch").device("cpu"))
    assert run.generator(0, device="cuda").directory == run.generator(0).directory


def test_an_interrupted_generator_stage_resumes_at_its_last_epoch(run, tmp_path, monkeypatch):
    """The cached generator stage keeps a checkpoint beside its folder while it trains: a run interrupted after
    the first epoch, called again, continues there and publishes what one uninterrupted call publishes (the
    checkpoint gone); ``force`` starts afresh."""
    import torch

    from avg_lib.models import generator

    want = run.generator(0, epochs=2, disc_epochs=1, seed=5)
    evaluate, calls = generator.training.evaluate, []

    def stop_after_one(*args, **kw):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return evaluate(*args, **kw)

    monkeypatch.setattr(generator.training, "evaluate", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        run.generator(0, epochs=2, disc_epochs=1, seed=5, force=True)
    monkeypatch.setattr(generator.training, "evaluate", evaluate)
    (ckpt,) = run.vt.directory.glob("generator-*.checkpoint.pt")
    assert ckpt.name == f"{want.directory.name}.checkpoint.pt" and not want.directory.exists()
    got = run.generator(0, epochs=2, disc_epochs=1, seed=5)
    assert not ckpt.exists() and got.meta["train_pieces"] == 2 and want.meta["train_pieces"] == 1
    assert got.history.drop(columns="val_latency_ms").equals(want.history.drop(columns="val_latency_ms"))
    for (name, a), b in zip(want.model.state_dict().items(), got.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_two_runs_sharing_one_empty_data_dir_both_finish_with_the_same_models(tmp_path):
    """Two processes set up the same profile on one empty data directory at once and train the whole chain (data,
    features, joint space, tokenizer, generator, one table row): both finish, with identical rows and histories
    (each cached stage is built once, under its lock, and read by the other)."""
    import subprocess
    import sys

    over = {
        "data": {"kwargs": {"n_images": 60}},
        "two_tower": {"epochs": 3},
        "tokenizer": {"codebook_size": 8, "epochs": 5},
        "generator": {"epochs": 1, "disc_epochs": 1, "layers": 1, "decoder_width": 32},
    }
    code = (
        "import json, sys\n"
        "from avg_lib.runs import experiments, pipeline\n"
        f"run = pipeline.setup('smoke', {over!r}, progress=False)\n"
        "row = experiments.avg_result(run, 0)\n"
        "keep = {k: row[k] for k in ('R@1', 'R@5', 'R@10', 'val_R@1', 'selected_epoch', 'cache')}\n"
        "hist = run.generator(0).history.drop(columns='val_latency_ms').to_dict('list')\n"
        "json.dump({'row': keep, 'history': hist}, open(sys.argv[1], 'w'))\n"
    )
    env = {**__import__("os").environ, "AVG_DATA_DIR": str(tmp_path / "data"), "TQDM_DISABLE": "1"}
    outs = [tmp_path / f"{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(o)], env=env, stderr=subprocess.PIPE) for o in outs]
    errors = [p.communicate(timeout=600)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    a, b = (json.loads(o.read_text()) for o in outs)
    assert a == b and 0 <= a["row"]["R@1"] <= 100
    assert not list((tmp_path / "data").rglob("*.partial")) and not list((tmp_path / "data").rglob("*.stream"))
