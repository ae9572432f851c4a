"""Retrieval metrics over ranked lists (text -> image, one relevant image per query).

Everything takes a ranked list per query: ``ranked[q]`` holds gallery positions, best first,
padded with -1 when a method returns fewer than K (a constrained beam search with 10 beams, for
example). Recall@K is the percentage of queries whose relevant image is among the first K;
rSum is the sum of the Recall@K values asked for (R@1 + R@5 + R@10 by default), as is usual in
image-text retrieval papers. Cross-checked against torchmetrics in tests/test_metrics.py.
"""

from __future__ import annotations

import numpy as np
import torch

KS = (1, 5, 10)


def top_k(scores: torch.Tensor | np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """Indices of the ``k`` highest scores per row (exact search), in chunks of rows to bound memory."""
    scores = torch.as_tensor(scores)
    k = min(k, scores.shape[1])
    return torch.cat([scores[s : s + chunk].topk(k, dim=1).indices for s in range(0, len(scores), chunk)]).cpu().numpy()


def recall_at_k(ranked: np.ndarray, target: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """``{"R@1": .., "R@5": .., "R@10": .., "rSum": ..}`` in percent.

    ``ranked``: (n_queries, depth) gallery positions, best first, -1 = no answer.
    ``target``: (n_queries,) the relevant gallery position of each query.
    A ranked list that names the same image twice is an error (it would hide a ranking bug).
    """
    ranked, target = np.asarray(ranked), np.asarray(target)
    if ranked.ndim != 2 or target.shape != (len(ranked),):
        raise ValueError(f"ranked must be (n, depth) and target (n,), got {ranked.shape} and {target.shape}")
    if len(ranked) == 0:
        raise ValueError("no queries")
    srt = np.sort(ranked, axis=1)
    dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    if dup.any():
        q = int(np.nonzero(dup.any(1))[0][0])
        raise ValueError(f"query {q}: ranked list names an image twice: {ranked[q].tolist()}")
    hit = ranked == target[:, None]
    first = np.where(hit.any(1), hit.argmax(1), np.iinfo(np.int64).max)
    out = {f"R@{k}": 100.0 * float(np.mean(first < k)) for k in ks}
    out["rSum"] = float(sum(out[f"R@{k}"] for k in ks))
    return out


def evaluate_scores(scores, target: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Recall@K of an exact dense score matrix (n_queries, gallery)."""
    return recall_at_k(top_k(scores, max(ks)), target, ks)
