"""Generator training under two CPU processes (torch.distributed, gloo) equals one process on the same global
batch, and a cached stage is written by rank 0 only."""

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import CountingEncoder

from avg_lib import cache
from avg_lib.data import features
from avg_lib.data.synthetic import load_synthetic
from avg_lib.models.generator import GeneratorConfig, build_generator, train_generator

CFG = GeneratorConfig(
    layers=1,
    decoder_width=32,
    heads=4,
    dropout=0.0,
    epochs=2,
    disc_epochs=1,
    batch_size=8,
    num_beams=4,
    disc_negatives=3,
    lr=3e-3,
)  # dropout 0: with dropout, each rank draws its own masks (as in any data-parallel run)


def _data():
    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, 8, size=(40, 2)), axis=0)[:12]
    words = ["red", "blue", "cat", "dog", "sun", "moon", "heart", "star", "tree", "car", "book", "fire"]
    texts = [f"{words[i]} {words[(i + k) % 12]}" for i in range(12) for k in (1, 2)]  # 2 captions per image
    owner = np.repeat(np.arange(12), 2)
    val = (texts[::3], owner[::3], codes)
    return (texts, codes[owner]), val, codes


def _train():
    torch.manual_seed(0)
    gen = build_generator(8, 2, CFG, None)
    train, val, codes = _data()
    gen, history = train_generator(gen, train, val, train_codes_all=codes, progress=False)
    return gen, history


def _worker(rank, world, init, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        gen, history = _train()
        if rank == 0:
            torch.save({k: v for k, v in gen.state_dict().items() if not k.startswith("encoder.")}, out / "state.pt")
            (out / "history.json").write_text(json.dumps(history))

        def build(tmp):
            (tmp / f"written_by_rank_{rank}.txt").write_text("x")

        cache.cached(out / "stage", build, {"stage": "test"})
        f = features.extract_features(load_synthetic(n_images=18), CountingEncoder(), CountingEncoder(), 4, out / "f")
        np.save(out / f"features_rank{rank}.npy", f.image)  # every rank gets the published features
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_train_like_one(tmp_path):
    torch.set_num_threads(1)
    one, hist_one = _train()
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", tmp_path), nprocs=2, join=True)
    two = torch.load(tmp_path / "state.pt", weights_only=True)
    ref = {k: v for k, v in one.state_dict().items() if not k.startswith("encoder.")}
    assert ref.keys() == two.keys()
    # The attention keys' biases have an exactly zero gradient (softmax ignores a constant added to every
    # score), so what they receive is rounding noise, which Adam scales up to full-size steps: they are the
    # one place where the summation order of two processes shows. Everything else agrees to float precision.
    d = CFG.decoder_width
    null = {"blocks.0.qkv.bias": slice(d, 2 * d), "blocks.0.kv.bias": slice(0, d)}
    for k in ref:
        a, b = ref[k].clone(), two[k].clone()
        if k in null:
            a[null[k]], b[null[k]] = 0, 0
        assert torch.allclose(a, b, atol=1e-5), (k, float((a - b).abs().max()))
    hist_two = json.loads((tmp_path / "history.json").read_text())
    for a, b in zip(hist_one, hist_two):
        assert a["train_gen_loss"] == pytest.approx(b["train_gen_loss"], rel=1e-5)
        assert a["val_R@1"] == b["val_R@1"]
    # the cached stage: published once, by rank 0, with no private folders left behind
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["stage.json", "written_by_rank_0.txt"]
    assert not list(tmp_path.glob("*.partial"))
    # features: the two ranks shared the chunks; both got what one process computes
    single = features.extract_features(
        load_synthetic(n_images=18), CountingEncoder(), CountingEncoder(), 4, tmp_path / "g"
    )
    for rank in (0, 1):
        assert np.array_equal(np.load(tmp_path / f"features_rank{rank}.npy"), single.image)
    assert not list((tmp_path / "f").rglob("*.stream"))


def test_torchrun_entry_point_trains_every_stage_like_one_process(tmp_path):
    """`torchrun --nproc_per_node 2 -m avg_lib.tools.train` on a tiny synthetic profile against one process with the
    same thread count (torchrun gives each process one thread): the stages that train whole on each rank are
    bit-identical, the data-parallel generator follows the same losses, and nothing is left half-written."""
    import os
    import subprocess
    import sys

    import pandas as pd

    over = json.dumps(
        {
            "data": {"kwargs": {"n_images": 120}},
            "two_tower": {"epochs": 10},
            "tokenizer": {"epochs": 5},
            "generator": {"epochs": 1, "disc_epochs": 1, "dropout": 0.0},
        }
    )
    args = ["-m", "avg_lib.tools.train", "--profile", "smoke", "--seeds", "0", "--pseudo", "0", "--overrides", over]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for name, launcher in (("one", []), ("two", torchrun)):
        timing = ["--timing", "--overrides", json.dumps({**json.loads(over), "results_dir": str(tmp_path / "res")})]
        cmd = [sys.executable, *launcher, *(args if name == "two" else args[:-2] + timing)]
        done = subprocess.run(cmd, env={**env, "AVG_DATA_DIR": str(tmp_path / name)}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        assert ("2 process(es)" if name == "two" else "1 process(es)") in done.stdout

    def files(name, pattern):
        return sorted((tmp_path / name).rglob(pattern))

    (one_tt,), (two_tt,) = files("one", "two_tower-*/model.pt"), files("two", "two_tower-*/model.pt")
    assert one_tt.relative_to(tmp_path / "one") == two_tt.relative_to(tmp_path / "two")  # the same cache keys
    assert one_tt.read_bytes() == two_tt.read_bytes()
    (one_h,), (two_h,) = files("one", "generator-*/history.csv"), files("two", "generator-*/history.csv")
    a, b = pd.read_csv(one_h), pd.read_csv(two_h)
    assert a["val_R@1"].tolist() == b["val_R@1"].tolist()
    assert np.allclose(a["train_gen_loss"], b["train_gen_loss"], rtol=1e-5)
    assert not files("two", "*.partial") and not files("two", "*.stream")
    stages = pd.read_csv(tmp_path / "res" / "stages.csv")  # --timing: one row per stage, with peak memory
    assert stages["stage"].tolist()[:3] == ["dataset", "features + two-tower joint space", "voken tokenizer"]
    assert len(stages) == 4 and (stages["wall_s"] >= 0).all() and (stages["peak_rss_mb_so_far"] > 100).all()
    assert (stages["n_images"] == 120).all() and (stages["profile"] == "smoke").all()
