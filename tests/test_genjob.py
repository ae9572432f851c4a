"""Generator jobs: export what a generator needs, train it elsewhere, compare it with the run's own."""

import json

import numpy as np
import pytest
import torch
from helpers import save_tiny_llama

from avg_lib import experiments, genjob


def test_a_job_trained_with_the_exported_settings_reproduces_the_runs_own_generator(run, tmp_path):
    """Nothing is lost on export: the same settings on the exported pairs and splits give the very ranking the
    run's own generator stage gives."""
    genjob.export(run, [run.cfg.seed], tmp_path / "job")
    trained = genjob.train(tmp_path / "job", progress=False)
    own = experiments.avg_result(run, 0, return_ranked=True)[1]
    assert np.array_equal(np.load(trained / f"seed{run.cfg.seed}-ranked.npy"), own)
    info = json.loads((trained / f"seed{run.cfg.seed}.json").read_text())
    assert info["generator"]["backend"] == "minilm" and info["train_seconds"] >= 0  # recorded, not timed
    assert info["packages"]["torch"] == torch.__version__ and len(info["environment"]) == 12  # what it ran on
    assert not list(trained.glob("*checkpoint*"))  # kept while a seed trains (it resumes there), then removed
    assert info["train_pieces"] == 1


def test_compare_puts_another_backend_beside_the_runs_generator_with_a_verdict(run, tmp_path):
    """Trained by scripts/gpu_lm.sh as a lent GPU runs it (here on the CPU, the seed named: its own process,
    archive and log), unpacked into the job, compared with the run's own generator."""
    import os
    import subprocess
    import tarfile

    from avg_lib.paths import REPO_ROOT

    genjob.export(run, [run.cfg.seed], tmp_path / "job")
    lm = str(save_tiny_llama(tmp_path / "llama"))
    out, seed = tmp_path / "device", run.cfg.seed
    out.mkdir()
    env = {
        **os.environ,
        "AVG_LM_DEVICE": "cpu",
        "OUT": str(out),
        "AVG_LM_OVERRIDES": f'"lm_path": "{lm}", "disc_epochs": 0',
    }
    script = str(REPO_ROOT / "scripts" / "gpu_lm.sh")
    subprocess.run(
        ["bash", script, "generator", str(tmp_path / "job"), str(seed)], env=env, check=True, capture_output=True
    )
    with tarfile.open(out / f"job-trained-seed{seed}.tar.gz") as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "job", filter="data")
    assert names == {f"trained/seed{seed}{end}" for end in (".json", "-ranked.npy", "-history.csv")}
    runs, claim = genjob.compare(run, tmp_path / "job", out=tmp_path / "out")
    assert runs["model"].tolist() == ["MiniLM-L6 (frozen) + voken decoder", "causal LM (llama)"]
    assert (runs["R@1_low"] <= runs["R@1"]).all() and (runs["R@1"] <= runs["R@1_high"]).all()
    row = claim.iloc[0]
    assert (
        row["verdict"] in ("holds", "does not hold", "inconclusive") and row["low"] <= row["difference"] <= row["high"]
    )
    assert {"backend_runs.csv", "backend_claims.csv", "backend_history.csv", "README.md"} <= {
        p.name for p in (tmp_path / "out").iterdir()
    }
    assert "causal LM (llama)" in (tmp_path / "out" / "README.md").read_text()


def test_broken_or_foreign_jobs_are_named(run, tmp_path):
    job = tmp_path / "job"
    genjob.export(run, [run.cfg.seed], job)
    path = job / f"seed{run.cfg.seed}.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "train_texts": meta["train_texts"][:-1]}))
    with pytest.raises(ValueError, match=f"{path}: texts and arrays disagree"):
        genjob.load_job(path)
    (job / f"seed{run.cfg.seed}.npz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="not a generator job"):
        genjob.load_job(path)
    with pytest.raises(FileNotFoundError, match="no seed"):
        genjob.train(tmp_path / "empty", progress=False)
