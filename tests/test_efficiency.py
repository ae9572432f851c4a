"""The efficiency study's parts on cases with known answers, and the study itself on tiny galleries."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from avg_lib.evaluation import efficiency
from avg_lib.models.generator import GeneratorConfig, build_generator
from avg_lib.retrieval import ann


def test_random_unique_codes_are_distinct_in_range_and_seeded():
    for n, depth, vocab in ((4000, 3, 16), (1000, 2, 40), (50, 30, 2)):  # the last: 2**30 identifiers
        c = efficiency.random_unique_codes(n, depth, vocab, seed=2)
        assert c.shape == (n, depth) and c.min() >= 0 and c.max() < vocab
        assert len(np.unique(c, axis=0)) == n
        assert (c == efficiency.random_unique_codes(n, depth, vocab, seed=2)).all()
    with pytest.raises(ValueError, match="cannot hold"):
        efficiency.random_unique_codes(100, 2, 8)


def test_gallery_distribution_recovers_the_covariance_it_was_fitted_on():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 8)) * np.array([[3.0], [1.0], [0.3]])  # rank 3 in 8 dimensions
    emb = rng.normal(size=(20000, 3)) @ basis + 5.0
    dist = efficiency.GalleryDistribution.from_embeddings(emb)
    z = dist.mean.numpy() + rng.normal(size=(20000, 3)) @ dist.basis.numpy()[:3]
    assert np.allclose(np.cov(z.T), np.cov(emb.T), atol=0.15 * np.abs(np.cov(emb.T)).max())
    x = dist.sample(500, seed=1)
    assert x.shape == (500, 8) and torch.allclose(x.norm(dim=1), torch.ones(500), atol=1e-5)
    assert torch.equal(x, dist.sample(500, seed=1))
    assert efficiency.GalleryDistribution.power_law(16).sample(10).shape == (10, 16)


def test_exact_top_scans_in_chunks_like_one_top_k():
    g = torch.nn.functional.normalize(torch.randn(1000, 16), dim=1)
    q = torch.nn.functional.normalize(torch.randn(7, 16), dim=1)
    assert torch.equal(ann.exact_top(q, g, k=10, chunk=64), (q @ g.T).topk(10, dim=1).indices)


def test_recall_at_counts_the_shared_neighbours():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, 9], [5, 6, 7, 8]])  # 2 of 4, then 4 of 4
    assert ann.recall_at(found, truth) == pytest.approx(0.75)


@pytest.mark.parametrize("kind, target", [("hnsw", 0.9), ("ivfpq", 0.8), ("ivfpq", 1.0)])
def test_faiss_index_is_tuned_to_the_target_recall(kind, target):
    """The cheapest setting that reaches the target; when none does (product codes cannot reach recall 1),
    the most accurate setting tried, left set on the index, with its recall."""
    dist = efficiency.GalleryDistribution.power_law(16, seed=0)
    g, q = dist.sample(3000, seed=0), dist.sample(20, seed=1)
    truth = ann.exact_top(q, g).numpy()
    index, setting, recall, build = ann.faiss_index(kind, g.numpy(), q.numpy(), truth, target=target)
    assert build >= 0 and setting
    assert recall >= target or (target == 1.0 and 0.5 < recall < 1.0)
    assert ann.recall_at(index.search(q.numpy(), 10)[1], truth) == pytest.approx(recall)
    assert ann.faiss_bytes(index) > 0
    with pytest.raises(ValueError, match="unknown approximate index"):
        ann.faiss_index("lsh", g.numpy(), q.numpy(), truth)


def test_crossovers_interpolate_on_log_log_axes():
    sizes = [1e3, 1e4, 1e5]
    latency = [10, 10, 10, 1, 5, 100, 20, 20, 20, 1, 1, 1]
    table = pd.DataFrame(
        {
            "method": [efficiency.GENERATIVE] * 3 + ["linear"] * 3 + ["always slower"] * 3 + ["always faster"] * 3,
            "gallery_size": sizes * 4,
            "latency_ms_batch1": latency,
            "queries_per_s_batched": [1000 / x for x in latency],  # throughput: higher is better
        }
    )
    c = efficiency.crossovers(table)
    assert set(c["method"]) == {efficiency.GENERATIVE}  # no CUDA-graph line in this table
    for metric in efficiency.METRICS.values():
        m = c[c["metric"] == metric].set_index("against")
        # ours/theirs: 10, 2, 0.1 -> the log ratio crosses zero between 1e4 and 1e5 at log(2) / (log(2) + log(10))
        expect = 10 ** (4 + math.log10(2) / (math.log10(2) + 1))
        assert m.loc["linear", "crossover"] == pytest.approx(expect)
        assert m.loc["always slower", "crossover"] == 1e3 and "smallest" in m.loc["always slower", "status"]
        assert math.isnan(m.loc["always faster", "crossover"])


def test_study_times_every_method_with_memory_build_time_and_recall():
    torch.manual_seed(0)
    cfg = GeneratorConfig(backend="minilm", layers=1, decoder_width=32, heads=4, num_beams=4)
    gen = build_generator(16, 3, cfg, None).eval()
    dist = efficiency.GalleryDistribution.power_law(8, seed=0)
    from avg_lib.models.baselines import CrossEncoder

    table = efficiency.study(
        gen,
        ["a red heart", "rain"],
        dist.sample(2, seed=3).numpy(),
        [200, 2000],
        depth=3,
        vocab=16,
        cross_encoder=CrossEncoder(8, 8, 8, 16, 0.0),
        num_beams=4,
        batch_size=4,
        ann=("hnsw",),
        ann_max=500,
        distribution=dist,
        rerank_k=8,
        progress=False,
        cuda_graphs=True,  # on the CPU: the padded, static-shape search the graph would capture
    )
    per_size = table.groupby("gallery_size")["method"].apply(set)
    assert per_size[200] == {
        efficiency.GENERATIVE,
        efficiency.GENERATIVE_GRAPH,
        "generative + embedding re-rank (top 8)",
        efficiency.EXACT,
        efficiency.HNSW,
        efficiency.ONE_TOWER,
    }
    assert efficiency.HNSW not in per_size[2000]  # above ann_max
    assert (table["latency_ms_batch1"] > 0).all() and (table["queries_per_s_batched"] > 0).all()
    assert (table["bytes_per_image"] > 0).all() and table["recall_at_10"].between(0, 1).all()
    exact = table[table["method"] == efficiency.EXACT]
    assert (exact["bytes_per_image"] == 4 * 8).all()  # 8 float32 per image, measured from the tensor
    with pytest.raises(ValueError, match="8-d"):
        efficiency.study(gen, ["x"], np.zeros((1, 4)), [10], 3, 16, distribution=dist, progress=False)


def test_speed_command_writes_both_studies_with_provenance(tmp_path, capsys):
    """`python -m avg_lib.tools.speed` (what scripts/gpu_efficiency.sh runs on a GPU) on a tiny gallery, on the CPU; the
    generated README of the folder above links the new study."""
    from avg_lib.tools import speed

    with pytest.raises(SystemExit) as e:
        speed.main(["--help"])
    assert e.value.code == 0 and "random-weight generator" in capsys.readouterr().out
    (tmp_path / "README.md").write_text("# Results\n\nGenerated; do not edit by hand.\n")
    parent, tmp_path = tmp_path, tmp_path / "timing"
    speed.main(["--profile", "smoke", "--sizes", "300", "--device", "cpu", "--out", str(tmp_path)])
    bench = pd.read_csv(tmp_path / "decoding_benchmark.csv")
    assert (bench["identical_rankings"] == 1.0).all() and set(bench["batch_size"]) == {1, 64}
    eff = pd.read_csv(tmp_path / "efficiency.csv")
    assert set(eff["gallery_size"]) == {300} and eff["hardware"].notna().all()
    assert {"profile", "git_commit", "created_utc"} <= set(eff.columns)
    assert (tmp_path / "efficiency_crossovers.csv").is_file()
    assert (tmp_path / "config" / "efficiency.json").is_file()
    assert (tmp_path / "figures" / "efficiency.png").stat().st_size > 5_000
    readme = (tmp_path / "README.md").read_text()
    assert "# Timing studies: profile `smoke`" in readme and "Our trie decoding is at least 10" in readme
    assert "`efficiency_crossovers.csv`" in readme and "![efficiency.png](figures/efficiency.png)" in readme
    assert "- [`timing/`](timing/README.md): Timing studies: profile `smoke`" in (parent / "README.md").read_text()


def test_decode_profile_counts_operations_per_query_at_each_batch_size():
    from torch.utils.flop_counter import FlopCounterMode

    from avg_lib.evaluation import benchmark
    from avg_lib.retrieval.trie import VokenTrie
    from avg_lib.tools import speed

    torch.manual_seed(0)
    gen = build_generator(16, 3, GeneratorConfig(layers=1, decoder_width=32, heads=4), None).eval()
    trie = VokenTrie(efficiency.random_unique_codes(300, 3, 16))
    prof = benchmark.decode_profile(gen, speed.synthetic_queries(8), trie, num_beams=4, batch_sizes=(1, 8))
    assert prof["batch_size"].tolist() == [1, 8]
    one, eight = prof.iloc[0], prof.iloc[1]
    assert one["ops_per_query"] > 8 * eight["ops_per_query"] * 0.9  # batching shares every operation by 8
    assert one["matmul_calls_per_query"] >= 1 and (prof["other_ops_ms"] > 0).all()
    parts = prof["matmul_ms"] + prof["attention_ms"] + prof["other_ops_ms"]
    assert np.allclose(parts, prof["ms_per_query_profiled"])
    # the decoder's products: 1 row per query at the first step, then 4 beams at each of the other 2 + end steps
    d, k = 32, 16
    per_row = 2 * (d * 3 * d + d * d + d * d + d * 4 * d + 4 * d * d + d * d) + 2 * d * (k + 1)  # one block + logits
    assert prof["mflop_per_query"].iloc[0] == prof["mflop_per_query"].iloc[1]
    counted = []  # the profile counts once: the work per query does not depend on the batch size
    for bs in (1, 8):
        with FlopCounterMode(display=False) as flops:
            gen.retrieve(speed.synthetic_queries(8), trie, 4, bs)
        counted.append(flops.get_total_flops())
    assert counted[0] == counted[1] == prof["mflop_per_query"].iloc[0] * 8e6
    assert prof["mflop_per_query"].iloc[0] * 1e6 >= (1 + 3 * 4) * per_row
    assert (prof["floor_ms"] < prof["ms_per_query"]).all() and (prof["over_floor"] > 1).all()
