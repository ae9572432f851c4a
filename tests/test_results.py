"""Committed results (``results/``, produced by ``./run_all.sh`` on the default profile): schema, ranges,
provenance and cross-file consistency. These check that the files are whole and were made by the
pipeline from committed code; they do not re-derive any number."""

import json

import numpy as np
import pandas as pd
import pytest

from avg_lib import config, results
from avg_lib.paths import REPO_ROOT
from avg_lib.runner import PARALLEL_STEP, notebooks

RESULTS = REPO_ROOT / "results"
NOTEBOOK_07_TABLES = [
    "ablation",
    "ablation_runs",
    "ablation_claims",
    "analysis_codebook_size",
    "analysis_voken_length",
    "analysis_beam_size",
]
TABLES = [
    "two_tower",
    "tokenizer",
    "generator_backends",
    "generator_training",
    "evaluation",
    "decoding_benchmark",
    "main_table",
    "main_table_runs",
    "rerank",
    "claims",
    *NOTEBOOK_07_TABLES,
    "efficiency",
    "efficiency_crossovers",
]
FIGURES = [
    "dataset_samples",
    "two_tower_training",
    "two_tower_recall",
    "tokenizer_training",
    "voken_codebook_usage",
    "voken_prefix1_grid",
    "voken_prefix2_grid",
    "voken_map",
    "voken_queries",
    "generator_training",
    "evaluation_recall",
    "main_recall",
    "rerank",
    "ablation",
    "analysis_codebook_size",
    "analysis_voken_length",
    "analysis_beam_size",
    "efficiency",
]
RECALL_TABLES = [
    "two_tower",
    "evaluation",
    "main_table",
    "main_table_runs",
    "ablation",
    "ablation_runs",
    "analysis_codebook_size",
    "analysis_voken_length",
    "analysis_beam_size",
]
PER_RUN = {"ablation": "ablation_runs"}  # mean ± std tables whose gallery and query counts are in their per-seed runs


def read(name):
    return pd.read_csv(RESULTS / f"{name}.csv")


@pytest.mark.parametrize("name", TABLES)
def test_table_has_provenance_from_a_clean_default_run(name):
    df = read(name)
    assert len(df) > 0
    for col in ("profile", "seed", "git_commit", "created_utc"):
        assert col in df.columns
    assert set(df["profile"]) == {"default"}
    commits = set(df["git_commit"].astype(str))
    assert not any(c.endswith("+dirty") or c == "unknown" for c in commits), commits


def test_provenance_covers_every_notebook():
    prov = read("provenance")
    parallel = config.load_config("default").parallel.workers > 1
    steps = [PARALLEL_STEP] if parallel else []  # every model trained first, in parallel
    assert sorted(prov["notebook"]) == steps + [p.name for p in notebooks()]
    assert set(prov["status"]) == {"ok"} and (prov["wall_s"] > 0).all()
    assert set(prov["profile"]) == {"default"}


def test_every_notebook_ran_with_the_listed_packages():
    """One set of installed packages for the whole committed run, the one environment.csv lists."""
    prov, env = read("provenance"), pd.read_csv(RESULTS / "environment.csv", dtype=str)
    assert set(prov["environment"]) == {results.environment_hash(env)}


@pytest.mark.parametrize("name", RECALL_TABLES)
def test_recall_columns_are_consistent(name):
    df = read(name)
    for k in ("R@1", "R@5", "R@10"):
        assert df[k].between(0, 100).all()
    assert (df["R@1"] <= df["R@5"] + 1e-9).all() and (df["R@5"] <= df["R@10"] + 1e-9).all()
    assert ((df["R@1"] + df["R@5"] + df["R@10"] - df["rSum"]).abs() < 0.01).all()
    df = read(PER_RUN.get(name, name))
    assert df["gallery_size"].nunique() == 1 and df["queries"].nunique() == 1
    assert df["gallery_size"].iloc[0] == read("two_tower")["gallery_size"].iloc[0]


def test_evaluation_two_tower_row_matches_notebook_01():
    ev, tt = read("evaluation"), read("two_tower")
    assert ev["method"].str.startswith("AVG").sum() >= 2 and ev["pseudo_queries"].any()
    two = ev[ev["method"] == "two-tower (CLIP-lite)"].iloc[0]
    ref = tt[tt["method"] == "two-tower (CLIP-lite)"].iloc[0]
    assert abs(two["R@1"] - ref["R@1"]) < 1e-3  # the same model scored twice gives the same number
    assert (ev["latency_ms"] > 0).all()


def test_main_table_has_every_family_and_three_seeds_for_avg_and_two_tower():
    main, runs = read("main_table"), read("main_table_runs")
    assert {"one-tower", "two-tower", "generative baseline", "AVG"} <= set(main["family"])
    # three seeds for two-tower and for AVG in both settings (the default profile sets 06's seed_pseudo)
    assert (main[main["family"] == "two-tower"]["n_seeds"] >= 3).all()
    assert (main[main["family"] == "AVG"]["n_seeds"] >= 3).all()
    assert set(main[main["family"] == "AVG"]["pseudo_queries"]) == {True, False}
    assert (main[main["n_seeds"] == 1][[c for c in main.columns if c.endswith("_std")]] == 0).all().all()
    # the per-seed runs keep their own seeds and average to the table
    for pq in (False, True):
        avg = runs[(runs["family"] == "AVG") & (runs["pseudo_queries"] == pq)]
        row = main[(main["family"] == "AVG") & (main["pseudo_queries"] == pq)].iloc[0]
        assert avg["seed"].astype(int).nunique() == len(avg) == int(row["n_seeds"])
        assert abs(avg["R@1"].mean() - row["R@1"]) < 1e-3


def test_rerank_rows_stay_under_their_candidate_ceiling():
    rr = read("rerank")
    assert set(rr["k"]) >= {10, 50, 100} and (rr["n_seeds"] >= 1).all()  # the K sweep: the run's seed
    assert {"none (AVG order)", "embedding", "fusion (embedding)", "cross-encoder"} <= set(rr["reranker"])
    for _k, g in rr.groupby(["k", "pseudo_queries"]):
        assert (g[["R@1", "R@5", "R@10"]].max(axis=1) <= g["ceiling"] + 1e-9).all()  # a permutation of the beams
        assert g["ceiling"].nunique() == 1  # one beam list per (K, seed, setting) behind every re-ranker
    fused = rr[rr["reranker"].str.startswith("fusion")]
    assert fused["fusion_weight"].between(0, 1).all()
    main = read("main_table")
    assert (main["family"] == "AVG + re-rank").sum() >= 4 and (
        main[main["family"] == "AVG + re-rank"]["n_seeds"] >= 3
    ).all()


@pytest.mark.parametrize("name", ["claims", "ablation_claims"])
def test_every_claim_has_a_difference_an_interval_and_a_verdict(name):
    c = read(name)
    assert len(c) and set(c["verdict"]) <= {"holds", "does not hold", "inconclusive"}
    assert ((c["low"] <= c["difference"] + 1e-9) & (c["difference"] <= c["high"] + 1e-9)).all()
    assert ((c["verdict"] == "holds") == (c["low"] > 0)).all()
    assert ((c["verdict"] == "does not hold") == (c["high"] < 0)).all()
    assert ((c["b_recall"] - c["a_recall"] - c["difference"]).abs() < 1e-3).all()  # CSVs keep 4 decimals
    assert (c["seeds"].astype(str).str.count(",") >= 2).all()  # three seeds behind every claim


def test_main_table_rows_used_by_claims_carry_intervals():
    main, claims = read("main_table"), read("claims")
    labels = main["method"] + main["pseudo_queries"].map({True: " + pseudo queries", False: ""})
    used = set(claims["a"]) | set(claims["b"])
    rows = main[labels.isin(used)]
    assert len(rows) == len(used)
    for k in ("R@1", "R@5", "R@10"):
        assert (rows[f"{k}_low"] <= rows[k] + 1e-9).all() and (rows[k] <= rows[f"{k}_high"] + 1e-9).all()


def test_ablation_table_names_every_ablation():
    abl = read("ablation")
    want = {
        "AVG (full)",
        "without semantic alignment",
        "without discriminative training",
        "without codebook-embedding init",
        "without k-means init",
    }
    assert want <= set(abl["variant"]) and abl["variant"].str.startswith("unresolved").any()
    full = abl[abl["variant"] == "AVG (full)"].iloc[0]
    assert ((abl["R@1"] - full["R@1"] - abl["delta_R@1"]).abs() < 1e-3).all()
    assert (abl["n_seeds"] >= 3).all()


def test_efficiency_covers_every_method_up_to_100k_images():
    eff = read("efficiency")
    assert eff["method"].str.startswith(("generative", "two-tower", "one-tower")).all()
    assert {"two-tower (FAISS HNSW)", "two-tower (FAISS IVF-PQ)", "two-tower (exact search)"} <= set(eff["method"])
    assert eff["gallery_size"].max() >= 100_000 and eff["gallery_size"].min() <= 1_000
    assert (eff["latency_ms_batch1"] > 0).all() and eff["hardware"].notna().all()
    assert (eff["bytes_per_image"] > 0).all() and eff["recall_at_10"].between(0, 1).all()
    ann = eff[eff["method"].str.contains("FAISS")]
    # the target recall is either reached or the setting says it was missed
    assert ((ann["recall_at_10"] >= 0.95) | ann["setting"].str.contains("misses")).all()
    cross = read("efficiency_crossovers")
    assert set(cross["against"]) == set(eff["method"]) - {m for m in eff["method"] if m.startswith("generative")}


def test_results_readme_is_generated_and_lists_every_table():
    text = (RESULTS / "README.md").read_text()
    assert "profile `default`" in text and "## The paper's claims, checked on this run" in text
    assert "## Not produced in this run" not in text
    for name in ("main_table", "ablation", "efficiency"):
        assert f"`{name}.csv`" in text


def test_tokenizer_report_resolves_every_collision():
    tok = read("tokenizer")
    assert (tok["collision_rate_after"] == 0).all()
    assert tok["collision_rate_all"].between(0, 1).all()
    assert (tok["identifier_entropy_bits"] <= tok["max_entropy_bits"] + 1e-9).all()
    assert set(tok["align_weight"]) == {0.0, 1.0}  # the alignment ablation is reported next to the full model


def test_decoding_benchmark_compares_both_decoders_on_identical_rankings():
    b = read("decoding_benchmark")
    assert set(b["method"]) == {"batched trie (avg_lib)", "prefix_allowed_tokens_fn (transformers)"}
    assert (b["identical_rankings"] == 1.0).all()
    assert (b["queries_per_s"] > 0).all() and set(b["batch_size"]) == {1, 64}
    # the benchmark times the generator that produced the results: its configuration is the run's
    meta = json.loads((RESULTS / "config" / "decoding_benchmark.json").read_text())
    assert meta["config"]["generator"]["temperature"] == config.load_config("default").generator.temperature


@pytest.mark.parametrize("table", ["efficiency", "decoding_benchmark"])
def test_gpu_results_name_the_gpu_and_a_commit(table):
    gpu = pd.read_csv(RESULTS / "gpu" / f"{table}.csv")
    assert gpu["hardware"].str.contains("NVIDIA").all() and (gpu["device"] == "cuda").all()
    assert gpu["git_commit"].astype(str).str.fullmatch(r"[0-9a-f]{12}").all() and (gpu["profile"] == "gpu").all()
    if table == "decoding_benchmark":
        assert (gpu["identical_rankings"] == 1.0).all()
    else:
        assert gpu["gallery_size"].max() >= 10_000_000


@pytest.mark.parametrize("name", FIGURES)
def test_figure_exists(name):
    path = RESULTS / "figures" / f"{name}.png"
    assert path.is_file() and path.stat().st_size > 5_000


ONLY_FEEDS = {
    "benchmark": {"decoding_benchmark"},
    "efficiency": {"efficiency", "efficiency_crossovers"},
    "language_models": {"lm_claims", "lm_table"},  # notebook 09's, which the default profile switches off
    "ablations": set(NOTEBOOK_07_TABLES),  # read by notebook 07 alone (and the pool's plan, which only trains ahead)
}


def test_the_ablation_settings_are_read_by_notebook_07_alone():
    """ONLY_FEEDS exempts every other table from the ablations section; that holds while nothing else reads it."""
    files = [*REPO_ROOT.glob("avg_lib/**/*.py"), *REPO_ROOT.glob("notebooks/*.ipynb")]
    readers = sorted(p.name for p in files if ".ablations" in p.read_text())
    assert readers == ["07_ablations_analyses.ipynb", "parallel.py"]


@pytest.mark.parametrize("name", TABLES)
def test_each_table_has_the_run_configuration_that_made_it(name):
    """``results/config/<table>.json`` (written with the table) holds the configuration of the run; every setting
    it shares with today's default profile has the same value, so a profile change without a rerun is caught."""
    meta = json.loads((RESULTS / "config" / f"{name}.json").read_text())
    assert meta["table"] == f"{name}.csv" and meta["profile"] == "default"
    assert meta["git_commit"] in set(read(name)["git_commit"].astype(str))
    now = config.load_config("default").to_dict()
    for section, values in meta["config"].items():
        if section in ONLY_FEEDS and name not in ONLY_FEEDS[section]:
            continue  # a timing study's (or notebook 07's or 09's) settings change its own tables only
        if isinstance(values, dict) and section in now:
            shared = set(values) & set(now[section])
            stale = {k: (values[k], now[section][k]) for k in shared if _plain(values[k]) != _plain(now[section][k])}
            assert not stale, f"{name}: {section} settings changed since the committed run: {stale}"


def _plain(v):
    return json.loads(json.dumps(v))  # tuples and lists compare equal


def test_gpu_training_speed_compares_the_gpu_with_a_cpu_baseline_of_the_same_run():
    t = pd.read_csv(RESULTS / "gpu" / "training_speed.csv")
    assert t[["device", "precision"]].iloc[0].tolist() == ["cpu", "fp32"] and t["speedup"].iloc[0] == 1.0
    assert t.loc[t["device"] == "cuda", "hardware"].str.contains("NVIDIA").all() and (t["device"] == "cuda").any()
    assert t["created_utc"].nunique() == 1 and (t["generator_s"] > 0).all()


@pytest.mark.parametrize("name", ["analysis_codebook_size", "analysis_voken_length", "analysis_beam_size"])
def test_analysis_recalls_carry_their_bootstrap_intervals(name):
    df = pd.read_csv(RESULTS / f"{name}.csv")
    for k in (1, 5, 10):
        assert (df[f"R@{k}_low"] <= df[f"R@{k}"] + 1e-9).all() and (df[f"R@{k}"] <= df[f"R@{k}_high"] + 1e-9).all()


@pytest.mark.parametrize("where", ["lm", "lm_gpu_profile/lm"])
def test_lm_backend_claim_rests_on_the_same_seeds_with_an_interval(where):
    """results/lm: the decoder-only generator (trained on a GPU from an exported job) against the default
    generator on the same seeds and test queries (``python -m avg_lib.genjob compare``); results/lm_gpu_profile/lm:
    the same comparison made by notebook 09 of ``./run_all.sh --profile lm-gpu``."""
    runs = pd.read_csv(RESULTS / where / "backend_runs.csv")
    claim = pd.read_csv(RESULTS / where / "backend_claims.csv").iloc[0]
    models = runs["model"].unique().tolist()
    assert len(models) == 2 and all(set(runs.loc[runs["model"] == m, "seed"]) == {0, 1, 2} for m in models)
    assert claim["seeds"] == "0,1,2" and claim["low"] <= claim["difference"] <= claim["high"]
    assert claim["verdict"] in ("holds", "does not hold", "inconclusive")
    trained = runs[runs["model"] == claim["b"]]
    assert trained["hardware"].str.contains("NVIDIA").all() and (trained["train_seconds"] > 0).all()
    for k in (1, 5, 10):
        assert (runs[f"R@{k}_low"] <= runs[f"R@{k}"]).all() and (runs[f"R@{k}"] <= runs[f"R@{k}_high"]).all()
    for table in ("backend_runs", "backend_claims", "backend_history"):
        commits = pd.read_csv(RESULTS / where / f"{table}.csv")["git_commit"].astype(str)
        assert commits.str.fullmatch(r"[0-9a-f]{12}").all(), f"{table}: not from committed code"


def test_the_lm_gpu_profile_ran_every_notebook_from_committed_code_and_its_lms_on_a_gpu():
    """results/lm_gpu_profile: ``./run_all.sh --profile lm-gpu`` whole, its LMs trained on a lent GPU through the
    hand-off (``python -m avg_lib.lmstage --profile lm-gpu``), every LM claim over the same three seeds."""
    where = RESULTS / "lm_gpu_profile"
    prov = pd.read_csv(where / "provenance.csv")
    assert sorted(prov["notebook"]) == [p.name for p in notebooks()] and set(prov["status"]) == {"ok"}
    assert set(prov["profile"]) == {"lm-gpu"} and prov["git_commit"].astype(str).str.fullmatch(r"[0-9a-f]{12}").all()
    claims = pd.read_csv(where / "lm_claims.csv")
    assert len(claims) == 4 and set(claims["seeds"]) == {"0,1,2"} and set(claims["profile"]) == {"lm-gpu"}
    assert claims["verdict"].isin(["holds", "does not hold", "inconclusive"]).all()
    assert ((claims["low"] <= claims["difference"]) & (claims["difference"] <= claims["high"])).all()
    rr = pd.read_csv(where / "lm_rerank" / "rerank_runs.csv")
    assert set(rr["k"]) == {20} and all(set(g["seed"]) == {0, 1, 2} for _, g in rr.groupby("reranker"))
    assert "LM" in set(rr["reranker"]) and (rr["R@1"] <= rr["ceiling"]).all()


@pytest.mark.parametrize("where", ["cpu", "gpu"])
def test_lm_training_cost_is_a_ratio_to_the_default_generator_of_the_same_run(where):
    t = pd.read_csv(RESULTS / "lm" / where / "training_speed.csv")
    assert t["backend"].tolist()[0] == "minilm" and t["speedup"].iloc[0] == 1.0 and "decoder" in set(t["backend"])
    assert t["created_utc"].nunique() == 1 and t["hardware"].nunique() == 1 and (t["generator_s"] > 0).all()


def test_scale_growth_extrapolates_every_stage_to_flickr30k_and_coco_sizes():
    g = pd.read_csv(RESULTS / "scale" / "growth.csv").set_index("stage")
    assert {"features + two-tower joint space", "voken tokenizer", "total"} <= set(g.index)
    assert (g["n_images_small"] < g["n_images_large"]).all()
    for n in (31783, 123287):  # a size beyond the largest run is an extrapolation; the largest run's own, itself
        at = g[f"wall_s_at_{n}"]
        grows = at > g["wall_s_large"] if n > g["n_images_large"].max() else np.isclose(at, g["wall_s_large"])
        assert grows.all() and (g[f"peak_mb_at_{n}"] > 0).all()
    assert g["git_commit"].astype(str).str.fullmatch(r"[0-9a-f]{12}").all()
