"""Re-ranking AVG's beams: permutations of the beam list, validation-only fusion weights, the ceiling."""

import numpy as np
import pytest
import torch

from avg_lib.models import baselines, rerank
from avg_lib.models.two_tower import TwoTower, TwoTowerConfig
from avg_lib.retrieval.metrics import recall_at_k


def _case(n=40, gallery=30, k=6, seed=0):
    rng = np.random.default_rng(seed)
    items = np.stack([rng.choice(gallery, k, replace=False) for _ in range(n)])
    items[:3, -2:] = -1  # fewer hypotheses than beams for a few queries
    logprob = np.sort(rng.normal(size=(n, k)), axis=1)[:, ::-1].copy()
    logprob[items < 0] = -np.inf
    targets = rng.integers(0, gallery, n)
    inp = rerank.RerankInputs(
        [f"q{i}" for i in range(n)],
        rng.normal(size=(n, 8)).astype(np.float32),
        rng.normal(size=(gallery, 12)).astype(np.float32),
        rng.integers(0, 4, (gallery, 2)),
        targets,
    )
    return inp, rerank.Candidates(items, logprob)


class _Fixed:
    """A re-ranker with given scores (to construct cases)."""

    name = "fixed"

    def __init__(self, scores):
        self.scores = scores

    def score(self, inputs, cand):
        return self.scores


def test_reranked_list_is_a_permutation_of_the_beams():
    inp, cand = _case()
    torch.manual_seed(0)
    model = TwoTower(12, 8, TwoTowerConfig(dim=16, dropout=0.0))
    ce = baselines.CrossEncoder(12, 8, dim=16, hidden=32, dropout=0.0)
    for r in [rerank.EmbeddingReranker(model), rerank.CrossEncoderReranker(ce)]:
        for variant in (r, rerank.FusionReranker(r).fit(inp, cand)):
            items, ms = rerank.rerank(variant, inp, cand)
            assert ms >= 0
            assert all(sorted(a) == sorted(b) for a, b in zip(items.tolist(), cand.items.tolist()))
            assert (items[:3, -2:] == -1).all(), "empty slots stay last"


def test_reorder_is_stable_and_keeps_empty_slots_last():
    items = np.array([[5, 6, 7, -1], [1, 2, 3, 4]])
    scores = np.array([[0.0, 1.0, 0.0, 99.0], [1.0, 1.0, 1.0, 2.0]])
    assert rerank.reorder(items, scores).tolist() == [[6, 5, 7, -1], [4, 1, 2, 3]]


def test_embedding_reranker_is_exact_search_within_the_candidates():
    inp, cand = _case()
    model = TwoTower(12, 8, TwoTowerConfig(dim=16, dropout=0.0))
    from avg_lib.models.two_tower import embed

    g, q = embed(model, inp.image_feats, inp.text_feats)
    full = q @ g.T
    items, _ = rerank.rerank(rerank.EmbeddingReranker(model), inp, cand)
    for row, orig, s in zip(items, cand.items, full):
        valid = orig[orig >= 0]
        assert row[: len(valid)].tolist() == valid[np.argsort(-s[valid], kind="stable")].tolist()


def test_cross_encoder_reranker_scores_the_pairs_the_one_tower_model_scores():
    inp, cand = _case()
    torch.manual_seed(0)
    ce = baselines.CrossEncoder(12, 8, dim=16, hidden=32, dropout=0.0)
    full = ce.score(inp.image_feats, inp.text_feats)
    got = rerank.CrossEncoderReranker(ce).score(inp, cand)
    valid = cand.items >= 0
    want = np.take_along_axis(full, np.maximum(cand.items, 0), axis=1)
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-5, atol=1e-5)


def test_fusion_weight_is_chosen_on_the_split_it_is_fitted_on():
    """On 'validation' AVG's order is right and the other score wrong: a weight that keeps AVG's order (>= 0.5
    here; ties keep AVG's order). Scoring 'test' (where the other score is right) does not move it. Fitted on the
    test-like split instead, the weight would be 0."""
    inp, cand = _case(k=5)
    cand.items[:] = np.stack([np.roll(np.arange(5), i) for i in range(len(cand.items))]) + 10
    cand.logprob[:] = -np.arange(5.0)
    val_targets = cand.items[:, 0].copy()  # AVG's first beam is right
    test_targets = cand.items[:, -1].copy()  # the other re-ranker's favourite is right
    other = np.tile(np.arange(5.0), (len(cand.items), 1))  # prefers the last beam
    fused = rerank.FusionReranker(_Fixed(other)).fit(inp, cand, val_targets)
    assert fused.weight >= 0.5
    items, _ = rerank.rerank(fused, inp, cand)
    assert recall_at_k(items, test_targets)["R@1"] == 0.0 and recall_at_k(items, val_targets)["R@1"] == 100.0
    assert rerank.FusionReranker(_Fixed(other)).fit(inp, cand, test_targets).weight == 0.0


def test_ceiling_is_recall_at_k_of_the_beams():
    inp, cand = _case()
    found = np.mean([t in row for row, t in zip(cand.items.tolist(), inp.targets.tolist())])
    assert rerank.ceiling(cand, inp.targets) == pytest.approx(100 * found)
    for r in [_Fixed(np.random.default_rng(1).normal(size=cand.items.shape))]:
        items, _ = rerank.rerank(r, inp, cand)
        assert recall_at_k(items, inp.targets, ks=(cand.k,))[f"R@{cand.k}"] == pytest.approx(100 * found)


def test_inputs_line_up_with_the_split(toy_js):
    from avg_lib.models import identifiers
    from avg_lib.runs import splits

    codes = np.stack([np.arange(len(toy_js.ds)) // 16, np.arange(len(toy_js.ds)) % 16], axis=1)
    ids = identifiers.Identifiers(toy_js.ds.ids, codes, codes, 16, "toy")
    sp = splits.retrieval_split(toy_js, ids, "val")
    inp = rerank.inputs(toy_js, sp)
    owner = toy_js.feats.text_owner[np.isin(toy_js.feats.text_owner, sp.image_index)]
    assert (sp.image_index[inp.targets] == owner).all()
    np.testing.assert_array_equal(inp.image_feats, toy_js.feats.image[sp.image_index])
