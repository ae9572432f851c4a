import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from avg_lib import report, tables
from avg_lib.efficiency import random_unique_codes


def test_mean_std_and_markdown():
    runs = pd.DataFrame(
        {
            "method": ["a", "a", "b"],
            "R@1": [1.0, 3.0, 5.0],
            "R@5": [2.0, 4.0, 6.0],
            "R@10": [3.0, 5.0, 7.0],
            "rSum": [6.0, 12.0, 18.0],
            "latency_ms": [1.0, 1.0, 2.0],
        }
    )
    t = tables.mean_std(runs, ["method"])
    a = t[t["method"] == "a"].iloc[0]
    assert a["R@1"] == 2.0 and a["R@1_std"] == pytest.approx(np.sqrt(2.0)) and a["n_seeds"] == 2
    assert t[t["method"] == "b"].iloc[0]["R@1_std"] == 0.0
    md = tables.markdown(tables.with_std(t)[["method", "R@1"]])
    assert md.splitlines()[0] == "| method | R@1 |" and "2.0 ± 1.4" in md and "| b | 5.0 |" in md


def test_random_unique_codes():
    c = random_unique_codes(1000, 3, 16, seed=1)
    assert c.shape == (1000, 3) and len(np.unique(c, axis=0)) == 1000 and c.max() < 16
    with pytest.raises(ValueError, match="cannot hold"):
        random_unique_codes(100, 2, 8)


def _write(d, name, rows):
    df = pd.DataFrame(rows)
    df["profile"], df["seed"], df["git_commit"], df["created_utc"] = "t", 0, "abc", "now"
    df.to_csv(d / name, index=False)


def test_results_readme_checks_claims_from_the_tables(tmp_path):
    _write(
        tmp_path,
        "main_table.csv",
        [
            {
                "method": "two-tower (CLIP-lite)",
                "family": "two-tower",
                "pseudo_queries": False,
                "R@1": 30.0,
                "latency_ms": 0.01,
            },
            {
                "method": "one-tower (cross-encoder)",
                "family": "one-tower",
                "pseudo_queries": False,
                "R@1": 20.0,
                "latency_ms": 1.0,
            },
            {
                "method": "generative: atomic ids",
                "family": "generative baseline",
                "pseudo_queries": False,
                "R@1": 5.0,
                "latency_ms": 3.0,
            },
            {
                "method": "generative: random ids",
                "family": "generative baseline",
                "pseudo_queries": False,
                "R@1": 9.0,
                "latency_ms": 3.0,
            },
            {"method": "AVG (minilm)", "family": "AVG", "pseudo_queries": False, "R@1": 12.0, "latency_ms": 3.0},
            {"method": "AVG (minilm)", "family": "AVG", "pseudo_queries": True, "R@1": 11.0, "latency_ms": 3.0},
        ],
    )
    _write(
        tmp_path,
        "ablation.csv",
        [
            {"variant": "AVG (full)", "R@1": 12.0, "rSum": 50.0, "delta_R@1": 0.0},
            {"variant": "without semantic alignment", "R@1": 10.0, "rSum": 45.0, "delta_R@1": -2.0},
            {"variant": "without k-means init", "R@1": 13.0, "rSum": 49.0, "delta_R@1": 1.0},
            {"variant": "unresolved collisions (string match)", "R@1": 12.5, "rSum": 51.0, "delta_R@1": 0.5},
        ],
    )
    _write(
        tmp_path,
        "efficiency.csv",
        [
            {"method": m, "gallery_size": n, "latency_ms_batch1": v, "queries_per_s_batched": 1.0}
            for m, vals in [("generative (trie beam search)", (10.0, 11.0)), ("two-tower (exact search)", (0.1, 5.0))]
            for n, v in zip((1000, 100000), vals)
        ],
    )
    pd.DataFrame(
        [
            {"notebook": "01.ipynb", "status": "ok", "wall_s": 60.0},
            {"notebook": "08.ipynb", "status": "ok", "wall_s": 5.0},
        ]
    ).to_csv(tmp_path / "provenance.csv", index=False)
    text = report.write_results_readme(tmp_path, "t").read_text()
    assert "| 08.ipynb | ok | 5.00 |" in text and "Sum of the wall times above: 1.1 min" in text
    claims = {c.split(":")[0]: c for c in text.splitlines() if c.startswith("- ")}
    assert (
        "holds here**: AVG R@1 12.0 vs best other 9.0 (random ids)"
        in claims["- AVG's identifiers beat the other generative identifiers (same generator)"]
    )
    assert "does not hold here" in claims["- Pseudo queries improve AVG (R@1)"]
    assert "undecided (one seed per variant" in claims["- Each ablation hurts (R@1)"]
    assert "not every point estimate is negative" in claims["- Each ablation hurts (R@1)"]
    assert "without k-means init +1.0 R@1 / -1.0 rSum" in text
    assert (
        "**holds here**: +0.50" in claims["- Ignoring identifier collisions inflates recall (the authors' evaluation)"]
    )
    assert "grows ×1.10" in text and "two-tower (exact search) ×50.00" in text
    assert "## Not produced in this run" in text and "`tokenizer.csv`" in text  # missing tables are named
    assert "| AVG (minilm) | True | 11.00 |" in text


def test_git_commit_ignores_rewritten_results_but_not_code(tmp_path, monkeypatch):
    import subprocess

    from avg_lib.results import git_commit

    monkeypatch.delenv("AVG_GIT_COMMIT", raising=False)

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "t.csv").write_text("a\n1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_commit(tmp_path)
    assert len(clean) == 12 and "+" not in clean
    (tmp_path / "results" / "t.csv").write_text("a\n2\n")  # a run rewriting its outputs
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")  # uncommitted code
    assert git_commit(tmp_path) == clean + "+dirty"
    monkeypatch.setenv("AVG_GIT_COMMIT", "0123456789ab")  # a copy run elsewhere names its source commit
    assert git_commit(tmp_path) == git_commit(tmp_path / "no-repo") == "0123456789ab"
    monkeypatch.delenv("AVG_GIT_COMMIT")
    assert git_commit(tmp_path / "no-repo") == "unknown"


def test_claims_compare_runs_on_the_same_seeds(tmp_path):
    """The main table averages AVG over 3 seeds but AVG + pseudo queries and the baselines may have run
    at one: the claims must compare seed 0 with seed 0, not a 3-seed mean with one run."""
    _write(
        tmp_path,
        "main_table.csv",
        [
            {
                "method": "generative: hkmeans ids",
                "family": "generative baseline",
                "pseudo_queries": False,
                "R@1": 15.0,
                "R@1_std": 0.0,
                "rSum": 80.0,
                "n_seeds": 1,
            },
            {
                "method": "AVG (minilm)",
                "family": "AVG",
                "pseudo_queries": False,
                "R@1": 14.0,
                "R@1_std": 1.7,
                "rSum": 90.0,
                "n_seeds": 3,
            },
            {
                "method": "AVG (minilm)",
                "family": "AVG",
                "pseudo_queries": True,
                "R@1": 15.0,
                "R@1_std": 0.0,
                "rSum": 95.0,
                "n_seeds": 1,
            },
        ],
    )
    runs = [
        {"method": "AVG (minilm)", "family": "AVG", "pseudo_queries": False, "seed": s, "R@1": r, "rSum": 90.0}
        for s, r in [(0, 16.0), (1, 13.0), (2, 13.0)]
    ]
    runs.append(
        {"method": "AVG (minilm)", "family": "AVG", "pseudo_queries": True, "seed": 0, "R@1": 15.0, "rSum": 95.0}
    )
    runs.append(
        {
            "method": "generative: hkmeans ids",
            "family": "generative baseline",
            "pseudo_queries": False,
            "seed": 0,
            "R@1": 15.0,
            "rSum": 80.0,
        }
    )
    pd.DataFrame(runs).to_csv(tmp_path / "main_table_runs.csv", index=False)
    found = report.claims(tmp_path)
    (pq,) = [c for c in found if c.startswith("Pseudo queries")]
    assert "does not hold here**: R@1 16.0 → 15.0, rSum 90.0 → 95.0 (seed 0)" in pq
    (ids,) = [c for c in found if c.startswith("AVG's identifiers")]
    assert "holds here**: AVG R@1 16.0 vs best other 15.0 (hkmeans ids) at seed 0" in ids
    assert "AVG's R@1 over 3 seeds: 14.0 ± 1.7." in ids


def test_write_csv_keeps_per_row_seeds_and_stamps_provenance(tmp_path):
    """A table with one row per training seed must not have its seed column replaced by the run's."""
    from avg_lib.results import write_csv

    path = write_csv(
        pd.DataFrame({"method": ["a", "a"], "seed": [1, 2], "R@1": [1.0, 2.0]}),
        tmp_path / "runs.csv",
        profile="p",
        seed="1,2",
    )
    back = pd.read_csv(path)
    assert back["seed"].tolist() == [1, 2] and (back["profile"] == "p").all() and back["git_commit"].notna().all()
    assert path.stat().st_mode & 0o044  # readable by others (mkstemp alone gives 0600), umask permitting
    assert not list(tmp_path.glob("*.partial"))
    path = write_csv(pd.DataFrame({"method": ["a"]}), tmp_path / "one.csv", profile="p", seed=0)
    assert pd.read_csv(path)["seed"].tolist() == [0]
    with pytest.raises(ValueError, match="reserved for provenance"):
        write_csv(pd.DataFrame({"profile": ["x"]}), tmp_path / "bad.csv", profile="p", seed=0)


def test_write_csv_saves_the_run_configuration_beside_the_table(tmp_path):
    from avg_lib import config
    from avg_lib.results import config_path, write_csv

    cfg = config.load_config("smoke")
    path = write_csv(pd.DataFrame({"a": [1]}), tmp_path / "t.csv", profile="smoke", seed=0, config=cfg.to_dict())
    meta = json.loads(config_path(path).read_text())
    assert config_path(path) == tmp_path / "config" / "t.json"
    assert meta["table"] == "t.csv" and meta["profile"] == "smoke" and meta["git_commit"]
    saved = {k: v for k, v in meta["config"].items() if k not in ("profile", "overrides")}
    for section in config.SEEDED:  # the run's seed is stored once, at the top
        assert saved[section].pop("seed") == saved["seed"]
    assert config.from_dict(saved) == dataclasses.replace(cfg, profile="custom")  # the JSON rebuilds the run
