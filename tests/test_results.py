"""Committed results (``results/``, produced by ``./run_all.sh`` on the default profile): schema, ranges,
provenance and cross-file consistency. These check that the files are whole and were made by the
pipeline from committed code; they do not re-derive any number."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from avg_lib import results
from avg_lib.paths import REPO_ROOT
from avg_lib.runs import config
from avg_lib.runs.runner import notebooks

RESULTS = REPO_ROOT / "results"
# the committed profile runs of the notebooks: the default (the paper's questions) and full (everything else too)
RUNS = {"default": RESULTS, "full": RESULTS / "full"}
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
    "generator_training",
    "evaluation",
    "decoding_benchmark",
    "decode_profile",
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


def tables(profile):
    """The tables a run of ``profile`` writes: the backend comparison only where the profile switches it on."""
    return TABLES + (["generator_backends"] if config.load_config(profile).backends.compare else [])


def read(name, profile="default"):
    return pd.read_csv(RUNS[profile] / f"{name}.csv")


@pytest.mark.parametrize(("profile", "name"), [(p, n) for p in RUNS for n in tables(p)])
def test_table_has_provenance_from_a_clean_run_of_its_profile(profile, name):
    df = read(name, profile)
    assert len(df) > 0
    for col in ("profile", "seed", "git_commit", "created_utc"):
        assert col in df.columns
    assert set(df["profile"]) == {profile}
    commits = set(df["git_commit"].astype(str))
    assert not any(c.endswith("+dirty") or c == "unknown" for c in commits), commits


@pytest.mark.parametrize("profile", RUNS)
def test_provenance_covers_every_notebook_and_names_the_cpu(profile):
    prov = read("provenance", profile)
    assert sorted(prov["notebook"]) == [p.name for p in notebooks()]
    assert set(prov["status"]) == {"ok"} and (prov["wall_s"] > 0).all()
    assert set(prov["profile"]) == {profile}
    assert prov["hardware"].str.contains(r"CPU \(", regex=True).all()  # "AMD EPYC CPU (AVX512), 2 cores, ..."


@pytest.mark.parametrize("profile", RUNS)
def test_every_notebook_ran_with_the_listed_packages(profile):
    """One set of installed packages for the whole committed run, the one environment.csv lists."""
    prov, env = read("provenance", profile), pd.read_csv(RUNS[profile] / "environment.csv", dtype=str)
    assert set(prov["environment"]) == {results.environment_hash(env)}


@pytest.mark.parametrize(("profile", "name"), [(p, n) for p in RUNS for n in RECALL_TABLES])
def test_recall_columns_are_consistent(profile, name):
    df = read(name, profile)
    for k in ("R@1", "R@5", "R@10"):
        assert df[k].between(0, 100).all()
    assert (df["R@1"] <= df["R@5"] + 1e-9).all() and (df["R@5"] <= df["R@10"] + 1e-9).all()
    assert ((df["R@1"] + df["R@5"] + df["R@10"] - df["rSum"]).abs() < 0.01).all()
    df = read(PER_RUN.get(name, name), profile)
    assert df["gallery_size"].nunique() == 1 and df["queries"].nunique() == 1
    assert df["gallery_size"].iloc[0] == read("two_tower", profile)["gallery_size"].iloc[0]


@pytest.mark.parametrize("profile", RUNS)
def test_evaluation_two_tower_row_matches_notebook_01(profile):
    ev, tt = read("evaluation", profile), read("two_tower", profile)
    assert ev["method"].str.startswith("AVG").sum() >= 2 and ev["pseudo_queries"].any()
    two = ev[ev["method"] == "two-tower (CLIP-lite)"].iloc[0]
    ref = tt[tt["method"] == "two-tower (CLIP-lite)"].iloc[0]
    assert abs(two["R@1"] - ref["R@1"]) < 1e-3  # the same model scored twice gives the same number
    assert (ev["latency_ms"] > 0).all()


@pytest.mark.parametrize("profile", RUNS)
def test_main_table_has_every_family_and_three_seeds_for_avg_and_two_tower(profile):
    main, runs = read("main_table", profile), read("main_table_runs", profile)
    assert {"one-tower", "two-tower", "generative baseline", "AVG", "AVG + re-rank"} <= set(main["family"])
    assert ("AVG backend" in set(main["family"])) == config.load_config(profile).backends.compare
    # three seeds for two-tower and for AVG in both settings (the profiles set 06's seed_pseudo)
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


@pytest.mark.parametrize("profile", RUNS)
def test_rerank_rows_stay_under_their_candidate_ceiling(profile):
    rr, cfg = read("rerank", profile), config.load_config(profile).rerank
    assert set(rr["k"]) == set(cfg.ks) and (rr["n_seeds"] >= 1).all()  # the K sweep: the run's seed
    names = {"none (AVG order)", *cfg.rerankers, *(f"fusion ({r})" for r in cfg.rerankers)}
    assert set(rr["reranker"]) == names
    for _k, g in rr.groupby(["k", "pseudo_queries"]):
        assert (g[["R@1", "R@5", "R@10"]].max(axis=1) <= g["ceiling"] + 1e-9).all()  # a permutation of the beams
        assert g["ceiling"].nunique() == 1  # one beam list per (K, seed, setting) behind every re-ranker
    fused = rr[rr["reranker"].str.startswith("fusion")]
    assert fused["fusion_weight"].between(0, 1).all()
    main = read("main_table", profile)
    reranked = main[main["family"] == "AVG + re-rank"]
    assert len(reranked) == 2 * 2 * len(cfg.rerankers) and (reranked["n_seeds"] >= 3).all()  # x fusion x setting


@pytest.mark.parametrize(("profile", "name"), [(p, n) for p in RUNS for n in ("claims", "ablation_claims")])
def test_every_claim_has_a_difference_an_interval_and_a_verdict(profile, name):
    c = read(name, profile)
    assert len(c) and set(c["verdict"]) <= {"holds", "does not hold", "inconclusive"}
    assert ((c["low"] <= c["difference"] + 1e-9) & (c["difference"] <= c["high"] + 1e-9)).all()
    assert ((c["verdict"] == "holds") == (c["low"] > 0)).all()
    assert ((c["verdict"] == "does not hold") == (c["high"] < 0)).all()
    assert ((c["b_recall"] - c["a_recall"] - c["difference"]).abs() < 1e-3).all()  # CSVs keep 4 decimals
    assert (c["seeds"].astype(str).str.count(",") >= 2).all()  # three seeds behind every claim


@pytest.mark.parametrize("profile", RUNS)
def test_main_table_rows_used_by_claims_carry_intervals(profile):
    main, claims = read("main_table", profile), read("claims", profile)
    labels = main["method"] + main["pseudo_queries"].map({True: " + pseudo queries", False: ""})
    used = set(claims["a"]) | set(claims["b"])
    rows = main[labels.isin(used)]
    assert len(rows) == len(used)
    for k in ("R@1", "R@5", "R@10"):
        assert (rows[f"{k}_low"] <= rows[k] + 1e-9).all() and (rows[k] <= rows[f"{k}_high"] + 1e-9).all()


@pytest.mark.parametrize("profile", RUNS)
def test_ablation_table_names_every_ablation_of_its_profile(profile):
    abl, ab = read("ablation", profile), config.load_config(profile).ablations
    assert set(abl["variant"]) == {"AVG (full)", *ab.names, "unresolved collisions (string-match evaluation of AVG)"}
    full = abl[abl["variant"] == "AVG (full)"].iloc[0]
    assert ((abl["R@1"] - full["R@1"] - abl["delta_R@1"]).abs() < 1e-3).all()
    assert (abl["n_seeds"] == len(ab.seeds)).all()
    claimed = set(read("ablation_claims", profile)["claim"])
    assert {f"AVG (full) beats AVG {n}" for n in ab.names} <= claimed


def test_the_paper_claims_of_the_default_run_never_contradict_the_full_run():
    """The default's three seeds and the full profile's five answer the same questions: no claim holds in one and
    does not hold in the other, and where more seeds decided one, the default's README says so."""
    from avg_lib.evaluation import claims

    for name in ("claims", "ablation_claims"):
        both = claims.agreement(read(name, "default"), read(name, "full"))
        assert len(both) >= (4 if name == "claims" else 3), f"{name}: too few shared claims"
        assert not (both["relation"] == "contradiction").any(), both[both["relation"] == "contradiction"]
        text = (RESULTS / "README.md").read_text()
        for claim in both.loc[both["relation"] == "decided in b", "claim"]:
            assert claim in text.split("Inconclusive here but decided in the `full` run")[1]


@pytest.mark.parametrize(
    ("name", "keys"), [("main_table_runs", ["method", "pseudo_queries"]), ("ablation_runs", ["variant"])]
)
def test_per_seed_rows_the_two_runs_share_are_identical(name, keys):
    """A model both profiles train is one cached model, so its per-seed row is the same in both runs (timings
    and provenance aside)."""
    from avg_lib.evaluation import rundiff

    shared = rundiff.shared_rows(read(name, "default"), read(name, "full"), keys)
    assert len(shared) >= 10, f"{name}: the two runs share only {len(shared)} rows"
    assert (shared["differs"] == "").all(), shared[shared["differs"] != ""]


@pytest.mark.parametrize("profile", RUNS)
def test_efficiency_covers_every_method_up_to_100k_images(profile):
    eff = read("efficiency", profile)
    assert eff["method"].str.startswith(("generative", "two-tower", "one-tower")).all()
    assert {"two-tower (FAISS HNSW)", "two-tower (FAISS IVF-PQ)", "two-tower (exact search)"} <= set(eff["method"])
    assert eff["gallery_size"].max() >= 100_000 and eff["gallery_size"].min() <= 1_000
    assert (eff["latency_ms_batch1"] > 0).all() and eff["hardware"].notna().all()
    assert (eff["bytes_per_image"] > 0).all() and eff["recall_at_10"].between(0, 1).all()
    ann = eff[eff["method"].str.contains("FAISS")]
    # the target recall is either reached or the setting says it was missed
    assert ((ann["recall_at_10"] >= 0.95) | ann["setting"].str.contains("misses")).all()
    cross = read("efficiency_crossovers", profile)
    assert set(cross["against"]) == set(eff["method"]) - {m for m in eff["method"] if m.startswith("generative")}


@pytest.mark.parametrize("profile", RUNS)
def test_results_readme_is_generated_and_lists_every_table(profile):
    text = (RUNS[profile] / "README.md").read_text()
    assert f"profile `{profile}`" in text and "## The paper's claims, checked on this run" in text
    assert "## Not produced in this run" not in text
    other = {"default": "full", "full": "default"}[profile]
    assert f"## The same claims in the `{other}` profile's run" in text
    for name in ("main_table", "ablation", "efficiency"):
        assert f"`{name}.csv`" in text


@pytest.mark.parametrize("profile", RUNS)
def test_tokenizer_report_resolves_every_collision(profile):
    tok = read("tokenizer", profile)
    assert (tok["collision_rate_after"] == 0).all()
    assert tok["collision_rate_all"].between(0, 1).all()
    assert (tok["identifier_entropy_bits"] <= tok["max_entropy_bits"] + 1e-9).all()
    assert set(tok["align_weight"]) == {0.0, 1.0}  # the alignment ablation is reported next to the full model


@pytest.mark.parametrize("profile", RUNS)
def test_decoding_benchmark_compares_both_decoders_on_identical_rankings(profile):
    b = read("decoding_benchmark", profile)
    assert set(b["method"]) == {"batched trie (avg_lib)", "prefix_allowed_tokens_fn (transformers)"}
    assert (b["identical_rankings"] == 1.0).all()
    assert (b["queries_per_s"] > 0).all() and set(b["batch_size"]) == {1, 64}
    # the benchmark times the generator that produced the results: its configuration is the run's
    meta = json.loads((RUNS[profile] / "config" / "decoding_benchmark.json").read_text())
    assert meta["config"]["generator"]["temperature"] == config.load_config(profile).generator.temperature


@pytest.mark.parametrize("table", ["efficiency", "decoding_benchmark"])
def test_gpu_results_name_the_gpu_and_a_commit(table):
    gpu = pd.read_csv(RESULTS / "gpu" / f"{table}.csv")
    assert gpu["hardware"].str.contains("NVIDIA").all() and (gpu["device"] == "cuda").all()
    assert gpu["git_commit"].astype(str).str.fullmatch(r"[0-9a-f]{12}").all() and (gpu["profile"] == "gpu").all()
    if table == "decoding_benchmark":
        assert (gpu["identical_rankings"] == 1.0).all()
    else:
        assert gpu["gallery_size"].max() >= 10_000_000


@pytest.mark.parametrize(("profile", "name"), [(p, n) for p in RUNS for n in FIGURES])
def test_figure_exists(profile, name):
    path = RUNS[profile] / "figures" / f"{name}.png"
    assert path.is_file() and path.stat().st_size > 5_000


ONLY_FEEDS = {
    "benchmark": {"decoding_benchmark"},
    "efficiency": {"efficiency", "efficiency_crossovers"},
    "language_models": {"lm_claims", "lm_table"},  # notebook 09's, which the default profile switches off
    "ablations": set(NOTEBOOK_07_TABLES),  # read by notebook 07 alone
}


def test_the_ablation_settings_are_read_by_notebook_07_alone():
    """ONLY_FEEDS exempts every other table from the ablations section; that holds while nothing else reads it."""
    files = [*REPO_ROOT.glob("avg_lib/**/*.py"), *REPO_ROOT.glob("notebooks/*.ipynb")]
    readers = sorted(p.name for p in files if ".ablations" in p.read_text())
    # experiments.py: ablation_variants, which notebook 07 calls
    assert readers == ["07_ablations_analyses.ipynb", "experiments.py"]
    called = [p.name for p in files if "ablation_variants(" in p.read_text()]
    assert sorted(called) == ["07_ablations_analyses.ipynb", "experiments.py"]


@pytest.mark.parametrize(("profile", "name"), [(p, n) for p in RUNS for n in tables(p)])
def test_each_table_has_the_run_configuration_that_made_it(profile, name):
    """``<run>/config/<table>.json`` (written with the table) holds the configuration of the run; every setting
    it shares with today's profile has the same value, so a profile change without a rerun is caught."""
    meta = json.loads((RUNS[profile] / "config" / f"{name}.json").read_text())
    assert meta["table"] == f"{name}.csv" and meta["profile"] == profile
    assert meta["git_commit"] in set(read(name, profile)["git_commit"].astype(str))
    now = config.load_config(profile).to_dict()
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


@pytest.mark.parametrize(
    ("profile", "name"),
    [(p, n) for p in RUNS for n in ("analysis_codebook_size", "analysis_voken_length", "analysis_beam_size")],
)
def test_analysis_recalls_carry_their_bootstrap_intervals(profile, name):
    df = read(name, profile)
    for k in (1, 5, 10):
        assert (df[f"R@{k}_low"] <= df[f"R@{k}"] + 1e-9).all() and (df[f"R@{k}"] <= df[f"R@{k}_high"] + 1e-9).all()


@pytest.mark.parametrize("where", ["lm_gpu_profile/lm"])
def test_lm_backend_claim_rests_on_the_same_seeds_with_an_interval(where):
    """results/lm_gpu_profile/lm: the decoder-only generator against the profile's generator on the same seeds and
    test queries, made by notebook 09 of ``./run_all.sh --profile lm-gpu``."""
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
    """results/lm_gpu_profile: ``./run_all.sh --profile lm-gpu`` whole (its LMs trained on a GPU from jobs that
    an earlier version of notebook 09 exported), every LM claim over the same three seeds."""
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


def test_scale_growth_extrapolates_every_stage_to_flickr30k_and_coco_sizes():
    g = pd.read_csv(RESULTS / "scale" / "growth.csv").set_index("stage")
    assert {"features + two-tower joint space", "voken tokenizer", "total"} <= set(g.index)
    assert (g["n_images_small"] < g["n_images_large"]).all()
    for n in (31783, 123287):  # a size beyond the largest run is an extrapolation; the largest run's own, itself
        at = g[f"wall_s_at_{n}"]
        grows = at > g["wall_s_large"] if n > g["n_images_large"].max() else np.isclose(at, g["wall_s_large"])
        assert grows.all() and (g[f"peak_mb_at_{n}"] > 0).all()
    assert g["git_commit"].astype(str).str.fullmatch(r"[0-9a-f]{12}").all()


def test_the_default_runs_executed_notebooks_are_committed_with_their_outputs():
    """results/notebooks: every notebook as the default run executed it (profile injected, outputs and figures
    kept, no error), naming no absolute path of the machine that ran it."""
    import json

    for nb in notebooks():
        done = RESULTS / "notebooks" / nb.name
        assert done.is_file(), f"{done.name}: not committed"
        book = json.loads(done.read_text())
        assert book["metadata"]["papermill"]["parameters"]["profile"] == "default"
        outputs = [o for c in book["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
        assert outputs and not [o for o in outputs if o["output_type"] == "error"], done.name
        text = done.read_text()
        assert str(REPO_ROOT) not in text and not re.search(r'"(input|output)_path": "/', text), done.name
    figures = [o for c in json.loads((RESULTS / "notebooks" / "06_main_table.ipynb").read_text())["cells"]
               for o in c.get("outputs", []) if "image/png" in o.get("data", {})]  # fmt: skip
    assert figures
