import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from avg_lib.evaluation import findings, report, tables


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
    bullets = [c for c in text.splitlines() if c.startswith("- ")]
    # no claims.csv / ablation_claims.csv: recall claims are not decided from point estimates, only named
    assert "- The claims of notebook 06: not checked (`claims.csv` is missing; rerun notebook 06)." in bullets
    assert "- The claims of notebook 07: not checked (`ablation_claims.csv` is missing; rerun notebook 07)." in bullets
    assert not any("holds" in c for c in bullets if "latency" not in c)
    assert "One-tower R@1 20.0 vs two-tower 30.0" in text
    assert "grows ×1.10" in text and "two-tower (exact search) ×50.00" in text
    assert "## Not produced in this run" in text and "`tokenizer.csv`" in text  # missing tables are named
    assert "| AVG (minilm) | True | 11.00 |" in text


def test_git_commit_ignores_rewritten_results_but_not_code(tmp_path):
    import subprocess

    from avg_lib.results import git_commit

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
    assert git_commit(tmp_path / "no-repo") == "unknown"


def test_paired_claims_and_efficiency_claims_are_stated_from_their_tables(tmp_path):
    from avg_lib.evaluation import claims

    row = dict.fromkeys(claims.COLUMNS, 0.0) | {
        "claim": "Pseudo queries improve AVG",
        "a": "AVG (minilm)",
        "b": "AVG (minilm) + pseudo queries",
        "metric": "R@1",
        "seeds": "0,1,2",
        "a_recall": 13.49,
        "b_recall": 16.55,
        "difference": 3.06,
        "low": 1.57,
        "high": 4.74,
        "p_value": 0.001,
        "per_seed_differences": "+2.0;+3.1;+4.1",
        "verdict": "holds",
    }
    claims.table([row]).to_csv(tmp_path / "claims.csv", index=False)
    _write(
        tmp_path,
        "efficiency_crossovers.csv",
        [
            {
                "method": "generative (trie beam search)",
                "metric": "batch-1 latency",
                "against": "two-tower (exact search)",
            }
            | {"sizes": "1,000-100,000", "crossover": 23456.0, "status": "crossover"},
            {
                "method": "generative (trie beam search)",
                "metric": "batch-1 latency",
                "against": "two-tower (FAISS HNSW)",
            }
            | {"sizes": "1,000-100,000", "crossover": float("nan"), "status": "not better up to 100,000"},
        ],
    )
    dec = [
        {"method": m, "batch_size": bs, "speedup_vs_transformers": x, "identical_rankings": 1.0}
        | {"ms_per_query": 1.0, "batch1_over_batched": r}
        for m, bs, x, r in [
            ("batched trie (avg_lib)", 1, 2.5, 1.0),
            ("batched trie (avg_lib)", 64, 12.0, 5.5),
            ("prefix_allowed_tokens_fn (transformers)", 1, 1.0, 1.0),
        ]
    ]
    _write(tmp_path, "decoding_benchmark.csv", dec)
    found = findings.claims(tmp_path)
    assert found[0].startswith("Pseudo queries improve AVG: **holds**. AVG (minilm) + pseudo queries 16.55 vs")
    assert "difference +3.06 points, 95% interval [+1.57, +4.74]" in found[0]
    (cross,) = [c for c in found if c.startswith("Where generative")]
    assert "batch-1 latency against two-tower (exact search): from about 23,456 images" in cross
    assert "against two-tower (FAISS HNSW): not better up to 100,000" in cross
    (speed,) = [c for c in found if c.startswith("Our trie decoding")]
    assert "**does not hold here**: ×2.5 at batch 1 (batched trie (avg_lib)), ×12.0 at batch 64" in speed
    assert "best batch-1 time over best batched time per query: ×1.0" in speed  # every ms_per_query is 1.0 here


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
    from avg_lib.results import config_path, write_csv
    from avg_lib.runs import config

    cfg = config.load_config("smoke")
    path = write_csv(pd.DataFrame({"a": [1]}), tmp_path / "t.csv", profile="smoke", seed=0, config=cfg.to_dict())
    meta = json.loads(config_path(path).read_text())
    assert config_path(path) == tmp_path / "config" / "t.json"
    assert meta["table"] == "t.csv" and meta["profile"] == "smoke" and meta["git_commit"]
    saved = {k: v for k, v in meta["config"].items() if k not in ("profile", "overrides")}
    for section in config.SEEDED:  # the run's seed is stored once, at the top
        assert saved[section].pop("seed") == saved["seed"]
    assert config.from_dict(saved) == dataclasses.replace(cfg, profile="custom")  # the JSON rebuilds the run


def test_notebook_09s_claims_and_table_appear_only_when_it_ran(tmp_path):
    from avg_lib.evaluation import claims

    row = dict.fromkeys(claims.COLUMNS, 0.0) | {"claim": "The LM re-ranker beats AVG's own order", "a": "AVG order"}
    row |= {"b": "LM", "metric": "R@1", "seeds": "0", "per_seed_differences": "-3.1", "verdict": "does not hold"}
    text = report.write_results_readme(tmp_path, "t").read_text()
    assert "lm_table" not in text and "lm_claims" not in text  # switched off: not missing either
    claims.table([row]).to_csv(tmp_path / "lm_claims.csv", index=False)
    text = report.write_results_readme(tmp_path, "t").read_text()
    assert "- The LM re-ranker beats AVG's own order: **does not hold**" in text
    (tmp_path / "lm_claims.csv").unlink()
    _write(tmp_path, "lm_table.csv", [{"system": "AVG + LM re-ranker (top 10)", "role": "re-ranker", "R@1": 10.4}])
    text = report.write_results_readme(tmp_path, "t").read_text()
    assert "## Language models as generator and re-ranker (notebook 09)" in text
    assert "The claims of notebook 09: not checked (`lm_claims.csv` is missing; rerun notebook 09)." in text


def test_the_readme_says_whether_the_notebooks_ran_with_one_set_of_packages(tmp_path):
    row = {"notebook": "01_a.ipynb", "status": "ok", "wall_s": 1.0, "profile": "t", "seed": 0, "git_commit": "abc"}
    pd.DataFrame([row, row | {"notebook": "02_b.ipynb"}]).to_csv(tmp_path / "provenance.csv", index=False)
    text = report.write_results_readme(tmp_path, "t").read_text()  # an older provenance.csv: nothing recorded
    assert "did not all run with one recorded set of installed packages" in text
    rows = [row | {"environment": "aaa"}, row | {"notebook": "02_b.ipynb", "environment": "aaa"}]
    pd.DataFrame(rows).to_csv(tmp_path / "provenance.csv", index=False)
    text = report.write_results_readme(tmp_path, "t").read_text()
    assert "Every notebook ran with the same installed packages (`environment.csv`, hash `aaa`)." in text
    rows[1]["environment"] = "bbb"
    pd.DataFrame(rows).to_csv(tmp_path / "provenance.csv", index=False)
    assert "did not all run with one" in report.write_results_readme(tmp_path, "t").read_text()


def test_a_new_study_is_linked_from_the_generated_readme_beside_it_and_nothing_else_changes(tmp_path):
    """``refresh_study_index`` rewrites only the index at the end of a generated README (also one written before
    the index had its heading), and leaves a hand-written README alone."""
    from avg_lib.results import refresh_study_index

    for name, title in (("gpu", "Timing studies"), ("new", "A new study")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "README.md").write_text(f"# {title}\n\nbody\n")
    body = "# Results\n\nGenerated; do not edit by hand.\n\n| a |\n|---|\n| 1 |\n"
    for old_index in ("\n- [`gpu/`](gpu/README.md): Timing studies\n", "\n## Other studies in this folder\n\n- x\n"):
        readme = tmp_path / "README.md"
        readme.write_text(body + old_index)
        refresh_study_index(readme)
        assert readme.read_text() == body + (
            "\n## Other studies in this folder\n\n"
            "- [`gpu/`](gpu/README.md): Timing studies\n- [`new/`](new/README.md): A new study\n"
        )
    hand = tmp_path / "new" / "README.md"
    assert refresh_study_index(hand) is None and hand.read_text() == "# A new study\n\nbody\n"
    assert refresh_study_index(tmp_path / "missing.md") is None


def test_the_paired_profiles_readme_sets_shared_claims_side_by_side(tmp_path):
    """The default run's README lists its claims beside the full run's: the verdicts, which ones five seeds
    decided, and a contradiction flagged, never hidden."""
    from avg_lib.evaluation import claims

    def claim_rows(d, rows):
        d.mkdir(parents=True, exist_ok=True)
        full = [dict.fromkeys(claims.COLUMNS, 0.0) | {"a": "A", "b": "B", "metric": "R@1"} | r for r in rows]
        claims.table(full).to_csv(d / "claims.csv", index=False)
        _write(d, "provenance.csv", [{"notebook": "06_main_table.ipynb", "status": "ok", "wall_s": 1.0}])

    default, full = tmp_path / "results", tmp_path / "results" / "full"
    claim_rows(default, [{"claim": "X beats Y", "seeds": "0,1,2", "low": -0.5, "high": 1.0, "verdict": "inconclusive"}])
    claim_rows(full, [{"claim": "X beats Y", "seeds": "0,1,2,3,4", "low": 0.2, "high": 1.0, "verdict": "holds"}])
    text = report.write_results_readme(default, "default", (full, "full")).read_text()
    assert "## The same claims in the `full` profile's run" in text
    assert "inconclusive here, decided in `full`" in text
    assert "Inconclusive here but decided in the `full` run (more seeds): X beats Y (holds, seeds 0,1,2,3,4)." in text
    text = report.write_results_readme(full, "full", (default, "default")).read_text()
    assert "decided here, inconclusive in `default`" in text
    claim_rows(
        full, [{"claim": "X beats Y", "seeds": "0,1,2,3,4", "low": -2.0, "high": -1.0, "verdict": "does not hold"}]
    )
    claim_rows(default, [{"claim": "X beats Y", "seeds": "0,1,2", "low": 0.1, "high": 1.0, "verdict": "holds"}])
    assert "**contradiction**" in report.write_results_readme(default, "default", (full, "full")).read_text()


def test_the_readme_headline_is_the_committed_default_runs():
    """README.md's headline block is exactly what the default run's tables give (run_all.sh rewrites it)."""
    from avg_lib.paths import REPO_ROOT

    start, end = findings.HEADLINE_MARKERS
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split(start, 1)[1].split(end, 1)[0]
    assert block == "\n" + findings.headline(REPO_ROOT / "results")
    assert "**holds**" in block or "**does not hold**" in block or "**inconclusive**" in block


def test_the_headline_block_is_rewritten_in_place(tmp_path):
    from avg_lib.paths import REPO_ROOT

    start, end = findings.HEADLINE_MARKERS
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n\nbefore\n{start}\nstale\n{end}\nafter\n")
    assert report.write_readme_headline(readme, REPO_ROOT / "results")
    text = readme.read_text()
    assert "stale" not in text and text.startswith("# t\n\nbefore\n") and text.endswith(f"{end}\nafter\n")
    assert not report.write_readme_headline(readme, REPO_ROOT / "results")  # nothing changes a second time
    readme.write_text("# no block\n")
    with pytest.raises(ValueError, match="no headline block"):
        report.write_readme_headline(readme, REPO_ROOT / "results")


def test_every_generated_readme_says_so_and_is_linked_from_the_generated_readme_above(tmp_path):
    """One writer for generated READMEs: heading, how it was made, body; the generated README of the folder above
    gains a link to it; a text that does not say it is generated is refused."""
    from avg_lib.results import write_readme

    write_readme(tmp_path, "Results", "Generated by a test; do not edit by hand.", ["body"])
    study = write_readme(tmp_path / "study", "A study", "Generated by another; do not edit by hand.", ["rows"])
    assert study.read_text().startswith("# A study\n\nGenerated by another; do not edit by hand.\n\nrows")
    assert "- [`study/`](study/README.md): A study" in (tmp_path / "README.md").read_text()
    with pytest.raises(ValueError, match="must say 'do not edit by hand'"):
        write_readme(tmp_path / "x", "X", "Made by hand.", [])
