"""Paired claims: verdicts on constructed inputs, seed handling, and the README sentence."""

import numpy as np
import pandas as pd
import pytest

from avg_lib.evaluation import claims, findings


def _lists(hit_rows, n_images=60, per_image=2):
    """Ranked lists (n, 1) where query q hits its image iff hit_rows[q]."""
    targets = np.repeat(np.arange(n_images), per_image)
    ranked = np.where(np.asarray(hit_rows, bool), targets, (targets + 1) % n_images)[:, None]
    return ranked, targets


def test_clear_win_holds_and_clear_loss_does_not():
    n = 120
    worse, targets = _lists(np.arange(n) % 4 == 0)
    better, _ = _lists(np.arange(n) % 4 != 3)
    row = claims.compare("B beats A", "A", {0: worse}, "B", {0: better}, targets, n_resamples=500)
    assert row["verdict"] == "holds" and row["low"] > 0 and row["difference"] == pytest.approx(50.0)
    row = claims.compare("A beats B", "B", {0: better}, "A", {0: worse}, targets, n_resamples=500)
    assert row["verdict"] == "does not hold" and row["high"] < 0


def test_identical_systems_are_inconclusive_with_a_zero_width_interval():
    ranked, targets = _lists(np.arange(120) % 3 == 0)
    row = claims.compare("same", "A", {0: ranked, 1: ranked}, "B", {0: ranked, 1: ranked}, targets)
    assert row["verdict"] == "inconclusive" and row["low"] == row["high"] == 0.0 and row["p_value"] == 1.0


def test_only_shared_seeds_are_compared_and_none_is_an_error():
    good, targets = _lists(np.ones(120))
    bad, _ = _lists(np.zeros(120))
    row = claims.compare("c", "A", {0: bad, 1: bad, 2: bad}, "B", {1: good}, targets, n_resamples=200)
    assert row["seeds"] == "1" and row["per_seed_differences"] == "+100.00"
    with pytest.raises(ValueError, match="share no seed"):
        claims.compare("c", "A", {0: bad}, "B", {1: good}, targets)


def test_seed_mean_is_the_mean_of_the_seeds():
    a0, targets = _lists(np.arange(120) % 2 == 0)
    a1, _ = _lists(np.zeros(120))
    b, _ = _lists(np.ones(120))
    row = claims.compare("c", "A", {0: a0, 1: a1}, "B", {0: b, 1: b}, targets, n_resamples=200)
    assert row["a_recall"] == pytest.approx(25.0) and row["difference"] == pytest.approx(75.0)
    assert row["per_seed_differences"] == "+50.00;+100.00"


def test_readme_states_difference_interval_and_verdict(tmp_path):
    row = {
        "claim": "Pseudo queries improve AVG",
        "a": "AVG",
        "b": "AVG + pseudo queries",
        "metric": "R@1",
        "seeds": "0,1,2",
        "a_recall": 13.5,
        "b_recall": 15.9,
        "difference": 2.4,
        "low": 0.9,
        "high": 3.8,
        "p_value": 0.002,
        "per_seed_differences": "+2.10;+2.90;+2.20",
        "verdict": "holds",
    }
    pd.DataFrame([row]).to_csv(tmp_path / "claims.csv", index=False)
    ablation = {**row, "claim": "AVG (full) beats AVG without alignment", "verdict": "inconclusive"}
    pd.DataFrame([ablation]).to_csv(tmp_path / "ablation_claims.csv", index=False)
    text = findings.claims(tmp_path)
    assert text[1].startswith("AVG (full) beats AVG without alignment: **inconclusive**. ")
    assert text[:1] == [
        "Pseudo queries improve AVG: **holds**. AVG + pseudo queries 15.90 vs AVG 13.50 R@1: difference +2.40 points, "
        "95% interval [+0.90, +3.80] (paired bootstrap over test images, mean over seeds 0, 1, 2; per seed +2.10, "
        "+2.90, +2.20; sign-flip p = 0.002)."
    ]


def test_intervals_are_added_for_rows_with_lists_and_cover_the_estimate():
    ranked_a, targets = _lists(np.arange(120) % 3 == 0)
    table = pd.DataFrame(
        [
            {"method": "A", "pseudo_queries": False, "R@1": 100 / 3},
            {"method": "one-tower", "pseudo_queries": False, "R@1": 20.0},
        ]
    )
    out = claims.add_intervals(table, {("A", False): {0: ranked_a, 1: ranked_a}}, targets, ks=(1,), n_resamples=500)
    a = out.iloc[0]
    assert a["R@1_low"] < a["R@1"] < a["R@1_high"]
    assert np.isnan(out.iloc[1]["R@1_low"])
    constant, _ = _lists(np.ones(120))
    out = claims.add_intervals(table.iloc[:1], {("A", False): {0: constant}}, targets, ks=(1,))
    assert out.iloc[0]["R@1_low"] == out.iloc[0]["R@1_high"] == 100.0


def test_ablation_table_deltas_are_paired_over_the_same_seeds():
    from avg_lib.evaluation import tables

    runs = pd.DataFrame(
        [
            {"variant": "AVG (full)", "seed": 0, "R@1": 10.0},
            {"variant": "AVG (full)", "seed": 1, "R@1": 14.0},
            {"variant": "without x", "seed": 0, "R@1": 9.0},
            {"variant": "without x", "seed": 1, "R@1": 11.0},
            {"variant": "without y", "seed": 1, "R@1": 15.0},
        ]
    ).assign(**{"R@5": 0.0, "R@10": 0.0, "rSum": 0.0, "latency_ms": 1.0, "val_R@1": 0.0})
    t = tables.ablation_table(runs).set_index("variant")
    assert t.loc["without x", "delta_R@1"] == pytest.approx(-2.0)
    assert t.loc["without y", "delta_R@1"] == pytest.approx(1.0)  # only seed 1 is shared
    assert t.loc["AVG (full)", "R@1_std"] == pytest.approx(np.std([10, 14], ddof=1))


def _claim(claim, verdict, low, high, seeds="0,1,2"):
    return {
        "claim": claim,
        "seeds": seeds,
        "difference": (low + high) / 2,
        "low": low,
        "high": high,
        "verdict": verdict,
    }


def test_agreement_names_how_two_runs_verdicts_relate():
    three = pd.DataFrame(
        [
            _claim("same", "holds", 1.0, 3.0),
            _claim("decided by five seeds", "inconclusive", -0.5, 2.0),
            _claim("decided by three only", "does not hold", -3.0, -1.0),
            _claim("clash", "holds", 0.5, 1.5),
            _claim("only in the default run", "holds", 1.0, 2.0),
        ]
    )
    five = pd.DataFrame(
        [
            _claim("same", "holds", 1.5, 2.5, "0,1,2,3,4"),
            _claim("decided by five seeds", "holds", 0.2, 1.8, "0,1,2,3,4"),
            _claim("decided by three only", "inconclusive", -2.0, 0.1, "0,1,2,3,4"),
            _claim("clash", "does not hold", -1.0, -0.1, "0,1,2,3,4"),
        ]
    )
    got = claims.agreement(three, five).set_index("claim")["relation"].to_dict()
    assert got == {
        "same": "same verdict",
        "decided by five seeds": "decided in b",
        "decided by three only": "decided in a",
        "clash": "contradiction",
    }
    assert claims.agreement(three, five.iloc[:0]).empty
