import numpy as np
import pytest
import torch

from avg_lib.retrieval.metrics import evaluate_scores, recall_at_k, top_k


def test_recall_hand_computed():
    ranked = np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2], [-1, -1, -1]])
    target = np.array([2, 0, 1, 0])
    m = recall_at_k(ranked, target, ks=(1, 2, 3))
    # query 0 hit at rank 1, query 1 at rank 3, query 2 at rank 2, query 3 never
    assert m == {"R@1": 25.0, "R@2": 50.0, "R@3": 75.0, "rSum": 150.0}


def test_short_lists_are_padded_not_wrong():
    m = recall_at_k(np.array([[3, -1], [-1, -1]]), np.array([3, 0]), ks=(1, 10))
    assert m["R@1"] == 50.0 and m["R@10"] == 50.0


def test_duplicate_image_in_ranked_list_is_an_error():
    with pytest.raises(ValueError, match="names an image twice"):
        recall_at_k(np.array([[1, 1, 2]]), np.array([1]))


def test_shape_errors():
    with pytest.raises(ValueError):
        recall_at_k(np.array([1, 2]), np.array([1]))


def test_top_k_chunks_equal_full():
    s = torch.randn(37, 50)
    assert (top_k(s, 7, chunk=5) == s.topk(7, dim=1).indices.numpy()).all()


def test_cross_check_with_torchmetrics():
    from torchmetrics.retrieval import RetrievalHitRate

    g = torch.Generator().manual_seed(0)
    n_q, n_g = 300, 80
    scores = torch.randn(n_q, n_g, generator=g)
    target = torch.randint(0, n_g, (n_q,), generator=g)
    scores[torch.arange(n_q), target] += 1.5  # better than chance, far from perfect
    ours = evaluate_scores(scores, target.numpy(), ks=(1, 5, 10))
    indexes = torch.arange(n_q).repeat_interleave(n_g)
    relevant = torch.zeros(n_q, n_g, dtype=torch.bool)
    relevant[torch.arange(n_q), target] = True
    for k in (1, 5, 10):
        ref = RetrievalHitRate(top_k=k)(scores.flatten(), relevant.flatten(), indexes=indexes).item() * 100
        assert ours[f"R@{k}"] == pytest.approx(ref, abs=1e-4)
    assert 0 < ours["R@1"] < ours["R@5"] < ours["R@10"] < 100
