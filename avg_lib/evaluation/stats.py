"""Uncertainty of recall, and paired comparisons with a three-valued verdict.

Recall@K over a test gallery is a mean over queries, but the queries are not independent: the captions
of one image share its difficulty. Every interval here therefore **resamples images, not captions**
(a cluster bootstrap): an image is drawn with all its queries, and recall is recomputed as hits over
queries of the drawn images. The bootstrap is :func:`scipy.stats.bootstrap` (percentile intervals,
vectorised) on per-image sums.

A comparison of two systems is *paired*: both are scored on the same queries, so the same resampled
images are used for both, and the interval is that of the difference. :func:`verdict` turns it into
**holds** (the whole interval is above zero), **does not hold** (the whole interval is below zero) or
**inconclusive** (it contains zero). :func:`randomisation_test` is the paired sign-flip test over images,
for a p-value next to the interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats

KS = (1, 5, 10)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return f"{self.estimate:.1f} [{self.low:.1f}, {self.high:.1f}]"


def hits(ranked: np.ndarray, target: np.ndarray, ks=KS) -> np.ndarray:
    """``(n_queries, len(ks))`` 0/1 matrix: is query q's target among its first ``k`` ranked items."""
    ranked, target = np.asarray(ranked), np.asarray(target)
    return np.stack([(ranked[:, :k] == target[:, None]).any(1) for k in ks], axis=1).astype(np.float64)


def _per_image(h: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image sums of hit columns ``(n_images, ...)`` and query counts ``(n_images,)``."""
    _, inv = np.unique(np.asarray(image), return_inverse=True)
    sums = np.zeros((inv.max() + 1, *h.shape[1:]))
    np.add.at(sums, inv, h)
    return sums, np.bincount(inv).astype(np.float64)


def _bootstrap(samples: tuple[np.ndarray, ...], statistic, confidence: float, n_resamples: int, seed: int):
    res = _scipy_stats.bootstrap(
        samples,
        statistic,
        paired=True,
        vectorized=True,
        method="percentile",
        confidence_level=confidence,
        n_resamples=n_resamples,
        rng=np.random.default_rng(seed),
    )
    return res.confidence_interval.low, res.confidence_interval.high


def recall_interval(
    h: np.ndarray, image: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> list[Interval]:
    """Recall (percent) of each column of the hit matrix ``h`` with its cluster-bootstrap interval;
    ``image[q]`` is the image query q belongs to."""
    h = np.asarray(h, dtype=np.float64).reshape(len(h), -1)
    sums, counts = _per_image(h, image)
    out = []
    for j in range(h.shape[1]):
        est = 100.0 * sums[:, j].sum() / counts.sum()
        if np.all(sums[:, j] == sums[0, j] * counts / counts[0]):  # constant per query: nothing to resample
            out.append(Interval(est, est, est))
            continue
        low, high = _bootstrap(
            (sums[:, j], counts), lambda s, c, axis=-1: 100.0 * s.sum(axis) / c.sum(axis), confidence, n_resamples, seed
        )
        out.append(Interval(est, float(low), float(high)))
    return out


def interval_columns(h: np.ndarray, image: np.ndarray, ks=KS, **kw) -> dict[str, float]:
    """:func:`recall_interval` of each column of ``h`` as table columns: ``R@k_low``, ``R@k_high`` for each k."""
    out = {}
    for k, iv in zip(ks, recall_interval(h, image, **kw)):
        out[f"R@{k}_low"], out[f"R@{k}_high"] = iv.low, iv.high
    return out


def paired_difference(
    h_a: np.ndarray,
    h_b: np.ndarray,
    image: np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Recall of B minus recall of A (percentage points; one hit column each, same queries in the same
    order), with the cluster-bootstrap interval of the difference (the same images drawn for both)."""
    a, b = (np.asarray(x, dtype=np.float64).ravel() for x in (h_a, h_b))
    if a.shape != b.shape or a.shape != np.shape(image):
        raise ValueError(f"paired hits must cover the same queries: {a.shape}, {b.shape}, images {np.shape(image)}")
    sums, counts = _per_image(b - a, image)
    est = 100.0 * sums.sum() / counts.sum()
    if not sums.any():
        return Interval(est, est, est)
    low, high = _bootstrap(
        (sums, counts), lambda s, c, axis=-1: 100.0 * s.sum(axis) / c.sum(axis), confidence, n_resamples, seed
    )
    return Interval(est, float(low), float(high))


def randomisation_test(
    h_a: np.ndarray, h_b: np.ndarray, image: np.ndarray, n_resamples: int = 10000, seed: int = 0
) -> float:
    """Two-sided p-value of the paired randomisation (sign-flip) test over images: under the null, A and
    B are exchangeable within every image, so each image's difference keeps or flips its sign."""
    a, b = (np.asarray(x, dtype=np.float64).ravel() for x in (h_a, h_b))
    sums, _ = _per_image(b - a, image)
    observed = abs(sums.sum())
    if observed == 0:
        return 1.0
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(n_resamples, len(sums)))
    extreme = (np.abs(signs @ sums) >= observed - 1e-9).sum()
    return float((extreme + 1) / (n_resamples + 1))


def verdict(interval: Interval, margin: float = 0.0) -> str:
    """**holds** when the whole interval of a difference is above ``margin``, **does not hold** when it
    is below ``-margin``, else **inconclusive**."""
    if interval.low > margin:
        return "holds"
    if interval.high < -margin:
        return "does not hold"
    return "inconclusive"
