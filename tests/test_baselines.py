import numpy as np
import pytest
import torch

from avg_lib.models import baselines
from avg_lib.models.identifiers import collision_groups
from avg_lib.retrieval.metrics import evaluate_scores
from avg_lib.retrieval.trie import VokenTrie

IDS = [f"img{i:03d}" for i in range(120)]


def test_atomic_ids_are_one_token_per_image():
    ids = baselines.atomic_ids(IDS)
    assert ids.depth == 1 and ids.codebook_size == 120 and ids.scheme == "atomic"
    assert sorted(ids.codes[:, 0].tolist()) == list(range(120))


def test_random_ids_are_unique_fixed_length_digits_and_seeded():
    a, b = baselines.random_ids(IDS, base=10, seed=1), baselines.random_ids(IDS, base=10, seed=1)
    assert a.depth == 3 and a.codes.max() < 10 and a.codes.min() >= 0  # 10**3 >= 120 > 10**2
    assert not collision_groups(a.codes)
    assert np.array_equal(a.codes, b.codes)
    assert not np.array_equal(a.codes, baselines.random_ids(IDS, base=10, seed=2).codes)
    VokenTrie(a.codes)  # usable by the decoder as is


def test_hkmeans_ids_follow_the_cluster_hierarchy_and_are_unique():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 8)) * 10
    emb = np.concatenate([c + rng.normal(size=(30, 8)) for c in centers])  # 4 well separated blobs
    ids = baselines.hkmeans_ids(IDS, emb, branching=4, levels=2, seed=0)
    assert ids.scheme == "hkmeans" and np.array_equal(ids.codes[:, :2], ids.raw)  # + disambiguation digits
    assert not collision_groups(ids.codes)
    # the first level recovers the blobs
    for blob in range(4):
        assert len(set(ids.codes[blob * 30 : (blob + 1) * 30, 0].tolist())) == 1
    assert len(set(ids.codes[:, 0].tolist())) == 4
    again = baselines.hkmeans_ids(IDS, emb, branching=4, levels=2, seed=0)
    assert np.array_equal(ids.codes, again.codes)


def test_unresolved_collision_recall_counts_collided_neighbours():
    raw = np.array([[1, 1], [1, 1], [2, 2], [3, 3]])  # items 0 and 1 collide
    ranked = np.array([[1, 2, -1], [0, 1, 3], [3, 2, 0]])
    target = np.array([0, 1, 2])
    out = baselines.unresolved_collision_recall(ranked, target, raw)
    # q0: returns item 1, same raw string as its target 0 -> hit at 1; q1: hit at 1; q2: hit at rank 2
    assert out["R@1"] == pytest.approx(200 / 3)
    assert out["R@5"] == pytest.approx(100.0)


def test_cross_encoder_scores_every_pair_and_learns():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(60, 12)).astype(np.float32)
    proj = rng.normal(size=(12, 8)).astype(np.float32)
    txt = np.repeat(img @ proj, 2, axis=0) + 0.05 * rng.normal(size=(120, 8)).astype(np.float32)
    owner = np.repeat(np.arange(60), 2)
    cfg = baselines.OneTowerConfig(epochs=15, batch_size=20)
    model, _hist = baselines.train_cross_encoder((img, txt, owner), (img, txt, owner), cfg, progress=False)
    scores = model.score(img, txt)
    assert scores.shape == (120, 60)
    # pair_scores on one pair equals the matrix entry
    i, t = model.project(torch.tensor(img[3:4]), torch.tensor(txt[7:8]))
    with torch.no_grad():
        one = float(model.pair_scores(t, i))
    assert one == pytest.approx(float(scores[7, 3]), abs=1e-5)
    assert evaluate_scores(scores, owner)["R@1"] > 50  # chance is 1.7%


def test_unresolved_ranked_scores_like_the_string_match_evaluation():
    from avg_lib.retrieval.metrics import recall_at_k

    rng = np.random.default_rng(0)
    raw = rng.integers(0, 3, size=(40, 2))  # 9 strings for 40 images: many collisions
    ranked = np.stack([rng.choice(40, 12, replace=False) for _ in range(60)])
    ranked[:5, -3:] = -1
    target = rng.integers(0, 40, 60)
    u = baselines.unresolved_ranked(ranked, target, raw)
    assert recall_at_k(u, target) == baselines.unresolved_collision_recall(ranked, target, raw)
    assert recall_at_k(u, target)["R@1"] >= recall_at_k(ranked, target)["R@1"]


def test_cross_encoder_is_cached_next_to_the_features(tmp_path, monkeypatch):
    """Trained once per (features, settings): a second call loads the same model and its training time."""
    rng = np.random.default_rng(0)
    img = rng.normal(size=(40, 12)).astype(np.float32)
    txt = np.repeat(img @ rng.normal(size=(12, 8)).astype(np.float32), 2, axis=0)
    owner = np.repeat(np.arange(40), 2)

    class Feats:
        directory, image, text = tmp_path / "features", img, txt

        def split(self, ds, name):
            return np.arange(40), img, txt, owner

    calls = []
    real = baselines.train_cross_encoder
    monkeypatch.setattr(baselines, "train_cross_encoder", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = baselines.OneTowerConfig(epochs=2, batch_size=20)
    a, hist_a, secs_a = baselines.cross_encoder_fit_or_load(None, Feats(), cfg, progress=False)
    b, hist_b, secs_b = baselines.cross_encoder_fit_or_load(None, Feats(), cfg, progress=False)
    assert len(calls) == 1 and secs_a == secs_b > 0 and hist_a == hist_b and len(hist_a) == 2
    assert np.array_equal(a.score(img, txt), b.score(img, txt))
    baselines.cross_encoder_fit_or_load(None, Feats(), baselines.OneTowerConfig(epochs=1), progress=False)
    assert len(calls) == 2  # other settings: another cache entry
    assert len(list((tmp_path / "features").glob("one_tower-*"))) == 2
