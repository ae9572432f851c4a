"""Intervals and verdicts on cases with known answers."""

import numpy as np
import pytest

from avg_lib.evaluation import stats


def test_hits_matrix():
    ranked = np.array([[3, 1, 2], [0, 2, 1], [5, 6, 7]])
    h = stats.hits(ranked, np.array([1, 0, 9]), ks=(1, 2))
    assert h.tolist() == [[0, 1], [1, 1], [0, 0]]


def test_a_constant_metric_has_a_zero_width_interval():
    image = np.repeat(np.arange(50), 3)
    for value in (0.0, 1.0):
        (iv,) = stats.recall_interval(np.full(150, value), image)
        assert iv.low == iv.high == iv.estimate == 100 * value


def test_binomial_case_matches_the_normal_approximation():
    n, p = 4000, 0.3
    h = (np.random.default_rng(1).random(n) < p).astype(float)
    (iv,) = stats.recall_interval(h, np.arange(n), n_resamples=4000)
    expected = 100 * 1.96 * np.sqrt(p * (1 - p) / n)  # half width of the Wald interval, 1.42 points
    assert iv.half_width == pytest.approx(expected, rel=0.1)
    assert iv.low < iv.estimate < iv.high


def test_captions_of_one_image_are_resampled_together():
    """Five identical captions per image carry no more information than one: the interval must not shrink."""
    n = 2000
    h = (np.random.default_rng(2).random(n) < 0.4).astype(float)
    (one,) = stats.recall_interval(h, np.arange(n))
    (five,) = stats.recall_interval(np.repeat(h, 5), np.repeat(np.arange(n), 5))
    assert five.estimate == pytest.approx(one.estimate)
    assert five.half_width == pytest.approx(one.half_width, rel=0.1)
    (naive,) = stats.recall_interval(np.repeat(h, 5), np.arange(5 * n))  # as if captions were independent
    assert naive.half_width < 0.6 * one.half_width


def test_paired_difference_and_verdicts():
    rng = np.random.default_rng(3)
    n = 1000
    image = np.repeat(np.arange(n // 2), 2)
    a = (rng.random(n) < 0.3).astype(float)
    better = np.maximum(a, (rng.random(n) < 0.2).astype(float))  # B finds everything A finds, and more
    same = stats.paired_difference(a, a, image)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0) and stats.verdict(same) == "inconclusive"
    up = stats.paired_difference(a, better, image)
    assert up.estimate == pytest.approx(100 * (better.mean() - a.mean())) and up.low > 0
    assert stats.verdict(up) == "holds" and stats.verdict(stats.paired_difference(better, a, image)) == "does not hold"
    noise = (rng.random(n) < 0.3).astype(float)  # an unrelated system of the same quality
    assert stats.verdict(stats.paired_difference(a, noise, image)) == "inconclusive"
    with pytest.raises(ValueError, match="same queries"):
        stats.paired_difference(a, better[:-1], image)


def test_randomisation_test():
    rng = np.random.default_rng(4)
    image = np.arange(400)
    a = (rng.random(400) < 0.3).astype(float)
    assert stats.randomisation_test(a, a, image) == 1.0
    assert stats.randomisation_test(a, np.maximum(a, (rng.random(400) < 0.2).astype(float)), image) < 0.01
    assert stats.randomisation_test(a, (rng.random(400) < 0.3).astype(float), image) > 0.05


def test_verdict_margin():
    iv = stats.Interval(1.0, 0.2, 1.8)
    assert stats.verdict(iv) == "holds" and stats.verdict(iv, margin=0.5) == "inconclusive"
    assert str(iv) == "1.0 [0.2, 1.8]"
