"""Re-ranking AVG's beams: the second stage of the paper's Table 1 system (docs/paper.md §9).

AVG's constrained beam search returns its top-``K`` beams (:class:`Candidates`); a re-ranker scores
**only those K** (query, image) pairs and reorders them, so the ranked list stays independent of the
gallery size. Nothing outside the K beams can enter the list: recall@K of the beams is the ceiling no
re-ranker can pass (:func:`ceiling`).

A re-ranker is any object with a ``name`` and ``score(inputs, candidates) -> (n, K)`` scores (higher is
better); one that learns something from validation also has ``fit(inputs, candidates, targets)``, and one with
index-time work (computed once per gallery, not per query) a ``prepare(inputs)``. Three
ship here:

==================  ================================================================================
``embedding``       cosine of the query and each candidate in the two-tower joint space
``fusion``          ``w`` · AVG's sequence log-probability + ``(1 - w)`` · another re-ranker's score,
                    each min-max normalised within the query's K candidates (the ``wsum`` fusion of
                    IR toolkits such as ranx); ``w`` is chosen on the validation split only
``cross-encoder``   the one-tower matcher (:class:`avg_lib.models.baselines.CrossEncoder`) on each pair
==================  ================================================================================

:class:`RerankInputs` carries everything a re-ranker may read about one split: the query strings, the
frozen text features, the gallery's frozen image features and its voken identifiers (what a language-model
re-ranker, the paper's own kind, would read).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from avg_lib.models import generator, two_tower
from avg_lib.retrieval.metrics import recall_at_k
from avg_lib.retrieval.trie import VokenTrie

__all__ = [
    "Candidates",
    "CrossEncoderReranker",
    "EmbeddingReranker",
    "FusionReranker",
    "RerankInputs",
    "Reranker",
    "candidates",
    "ceiling",
    "inputs",
    "rerank",
]


@dataclass
class Candidates:
    items: np.ndarray  # (n, K) gallery positions, AVG's order; -1 where the beam search found fewer
    logprob: np.ndarray  # (n, K) AVG's sequence log-probabilities (-inf where items is -1)
    latency_ms: float = 0.0  # mean per-query decoding time

    @property
    def k(self) -> int:
        return self.items.shape[1]


@dataclass
class RerankInputs:
    texts: list[str]  # the queries
    text_feats: np.ndarray  # (n, d_txt) frozen text features of the queries
    image_feats: np.ndarray  # (gallery, d_img) frozen image features of the gallery
    gallery_codes: np.ndarray  # (gallery, depth) voken identifiers of the gallery
    targets: np.ndarray  # (n,) gallery position of each query's image (for fit and evaluation only)


class Reranker(Protocol):
    name: str

    def score(self, inputs: RerankInputs, cand: Candidates) -> np.ndarray: ...


def inputs(js, sp) -> RerankInputs:
    """The re-ranking inputs of a :class:`~avg_lib.runs.splits.RetrievalSplit` ``sp`` of joint space ``js``."""
    keep = np.isin(js.feats.text_owner, sp.image_index)
    text_feats = js.feats.text[keep]
    if len(text_feats) != len(sp.texts):
        raise ValueError(f"{len(sp.texts)} queries but {len(text_feats)} caption features for this split")
    return RerankInputs(list(sp.texts), text_feats, js.feats.image[sp.image_index], sp.gallery_codes, sp.targets)


def candidates(gen: generator.VokenGenerator, inp: RerankInputs, k: int, batch_size: int = 64) -> Candidates:
    """AVG's top-``k`` beams for every query of ``inp`` (constrained beam search with ``k`` beams)."""
    res, latency = generator.timed_retrieve(gen, inp.texts, VokenTrie(inp.gallery_codes), k, batch_size)
    return Candidates(res.items.cpu().numpy(), res.scores.cpu().numpy(), latency)


def ceiling(cand: Candidates, targets: np.ndarray) -> float:
    """Recall@K (percent) of the beam list itself: the share of queries a re-ranker can place first."""
    return recall_at_k(cand.items, targets, ks=(cand.k,))[f"R@{cand.k}"]


def rerank(reranker: Reranker, inp: RerankInputs, cand: Candidates) -> tuple[np.ndarray, float]:
    """The candidates reordered by ``reranker`` (ties keep AVG's order; empty slots stay last) and its mean
    per-query time in ms. Each row of the result is a permutation of the same row of ``cand.items``. Index-time
    work (a re-ranker's optional ``prepare(inputs)``, e.g. embedding the gallery once) is done before the clock
    starts, as the voken identifiers are built before decoding is timed."""
    if hasattr(reranker, "prepare"):
        reranker.prepare(inp)
    t0 = time.perf_counter()
    s = np.asarray(reranker.score(inp, cand), dtype=np.float64)
    latency = 1000.0 * (time.perf_counter() - t0) / max(1, len(cand.items))
    return reorder(cand.items, s), latency


def reorder(items: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Sort each row of ``items`` by ``scores`` (descending, stable), with -1 slots last whatever their score."""
    s = np.where(items >= 0, scores, -np.inf)
    s = np.where(np.isnan(s), -np.inf, s)
    empty = (items < 0).astype(np.int64)
    order = np.lexsort((np.arange(items.shape[1])[None, :].repeat(len(items), 0), -s, empty), axis=1)
    return np.take_along_axis(items, order, axis=1)


def _gather(gallery: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(n, K, d) rows of ``gallery`` at ``items`` (-1 reads row 0; those slots are masked by the caller)."""
    return gallery[np.maximum(items, 0)]


class EmbeddingReranker:
    """Cosine of query and candidate in the two-tower joint space (``model``:
    :class:`avg_lib.models.two_tower.TwoTower`). The gallery's image embeddings are part of the index (computed once,
    like the voken identifiers)."""

    name = "embedding"

    def __init__(self, model: two_tower.TwoTower):
        self.model = model
        self._index: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # per gallery: (its features, embeddings)

    def prepare(self, inputs: RerankInputs) -> None:
        self._images(inputs.image_feats)

    def _images(self, feats: np.ndarray) -> np.ndarray:
        """The gallery's joint-space embeddings, computed once per gallery (index time, not query time)."""
        if id(feats) not in self._index:
            self._index[id(feats)] = (feats, two_tower.embed(self.model, image_feats=feats))  # keeps feats alive
        return self._index[id(feats)][1]

    def score(self, inputs: RerankInputs, cand: Candidates) -> np.ndarray:
        img = self._images(inputs.image_feats)
        q = two_tower.embed(self.model, text_feats=inputs.text_feats)
        return np.einsum("nkd,nd->nk", _gather(img, cand.items), q)


class CrossEncoderReranker:
    """The one-tower matcher reads each (query, candidate) pair (:class:`avg_lib.models.baselines.CrossEncoder`)."""

    name = "cross-encoder"

    def __init__(self, model):
        self.model = model.eval()

    @torch.no_grad()
    def score(self, inputs: RerankInputs, cand: Candidates) -> np.ndarray:
        i, t = self.model.project(
            torch.as_tensor(np.asarray(inputs.image_feats), dtype=torch.float32),
            torch.as_tensor(np.asarray(inputs.text_feats), dtype=torch.float32),
        )
        ii = i[torch.from_numpy(np.maximum(cand.items, 0))]  # (n, K, dim)
        return self.model.score_pairs(t.unsqueeze(1).expand_as(ii), ii).numpy()


def _minmax(s: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Min-max normalise each row over its valid slots (a constant row becomes 0)."""
    lo = np.where(valid, s, np.inf).min(1, keepdims=True)
    hi = np.where(valid, s, -np.inf).max(1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.where(valid, (s - lo) / span, 0.0)


class FusionReranker:
    """``weight`` · AVG's log-probability + ``(1 - weight)`` · ``base``'s score, both min-max normalised per
    query. :meth:`fit` picks ``weight`` from ``grid`` by R@1 (then rSum, then the smaller weight) on the
    split it is given, which must be validation."""

    def __init__(self, base: Reranker, weight: float = 0.5, grid=tuple(np.round(np.linspace(0, 1, 21), 2))):
        self.base, self.weight, self.grid = base, float(weight), tuple(float(w) for w in grid)
        self.name = f"fusion ({base.name})"
        self.fit_table: list[dict] = []

    def prepare(self, inputs: RerankInputs) -> None:
        if hasattr(self.base, "prepare"):
            self.base.prepare(inputs)

    def _fused(self, base_scores: np.ndarray, cand: Candidates, weight: float) -> np.ndarray:
        valid = cand.items >= 0
        return weight * _minmax(cand.logprob, valid) + (1 - weight) * _minmax(base_scores, valid)

    def fit(self, inputs: RerankInputs, cand: Candidates, targets: np.ndarray | None = None) -> FusionReranker:
        targets = inputs.targets if targets is None else targets
        base = np.asarray(self.base.score(inputs, cand), dtype=np.float64)
        self.fit_table = []
        for w in self.grid:
            m = recall_at_k(reorder(cand.items, self._fused(base, cand, w)), targets)
            self.fit_table.append({"weight": w, **m})
        best = max(self.fit_table, key=lambda r: (r["R@1"], r["rSum"], -r["weight"]))
        self.weight = best["weight"]
        return self

    def score(self, inputs: RerankInputs, cand: Candidates) -> np.ndarray:
        return self._fused(np.asarray(self.base.score(inputs, cand), dtype=np.float64), cand, self.weight)
