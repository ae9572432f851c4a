"""The before/after comparison of two runs: shifts, their intervals and the seed-noise verdict on known cases."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from avg_lib.evaluation import rundiff


def runs(values: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"method": m, "pseudo_queries": p, "seed": s, "R@1": v}
            for (m, p), vs in values.items()
            for s, v in enumerate(vs)
        ]
    )


def test_a_constant_shift_is_exact_and_outside_noise():
    before = runs({("AVG", False): [10.0, 12.0, 14.0]})
    after = runs({("AVG", False): [11.0, 13.0, 15.0]})
    row = rundiff.shifts(before, after, ["method", "pseudo_queries"]).iloc[0]
    assert row["shift"] == 1.0 and row["low"] == row["high"] == 1.0  # zero spread of the differences
    assert not row["within_noise"]
    assert row["before_seed_std"] == pytest.approx(2.0) and row["seeds"] == 3


def test_the_interval_is_the_t_interval_of_seed_matched_differences():
    before = runs({("AVG", True): [10.0, 10.0, 10.0]})
    after = runs({("AVG", True): [9.0, 11.0, 13.0]})  # differences -1, 1, 3: mean 1, sd 2
    row = rundiff.shifts(before, after, ["method", "pseudo_queries"]).iloc[0]
    half = stats.t.ppf(0.975, 2) * 2 / np.sqrt(3)
    assert row["shift"] == pytest.approx(1.0)
    assert (row["low"], row["high"]) == pytest.approx((1 - half, 1 + half))
    assert row["within_noise"]


def test_rows_need_two_common_seeds_and_a_counterpart():
    before = runs({("AVG", False): [10.0, 11.0], ("atomic", False): [0.1]})
    after = runs({("AVG", False): [10.5], ("atomic", False): [0.2], ("new", False): [1.0, 2.0]})
    assert rundiff.shifts(before, after, ["method", "pseudo_queries"]).empty


def test_compare_reads_directories_and_labels_rows(tmp_path):
    for name, shift in (("before", 0.0), ("after", 0.5)):
        d = tmp_path / name
        d.mkdir()
        runs({("AVG", False): [10 + shift, 12 + shift], ("AVG", True): [15.0, 16 + shift]}).to_csv(
            d / "main_table_runs.csv", index=False
        )
        pd.DataFrame({"variant": ["AVG (full)"] * 2, "seed": [0, 1], "R@1": [10.0, 12 + shift]}).to_csv(
            d / "ablation_runs.csv", index=False
        )
    table = rundiff.compare(str(tmp_path / "before"), str(tmp_path / "after"))
    assert table["row"].tolist() == ["AVG", "AVG + pseudo queries", "AVG (full)"]
    assert table["table"].tolist() == ["main_table_runs", "main_table_runs", "ablation_runs"]
    assert "3 rows" in rundiff.summary(table) or "of 3 rows" in rundiff.summary(table)


def test_bad_sources_are_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="neither a directory"):
        rundiff.read_table(str(tmp_path / "missing"), "main_table_runs")
    assert rundiff.main([str(tmp_path), str(tmp_path)]) == 2
    assert "no row with two or more common seeds" in capsys.readouterr().err


def test_shared_rows_name_every_column_that_differs_and_ignore_timings():
    before = pd.DataFrame(
        [
            {"method": "AVG", "pseudo_queries": False, "seed": 0, "R@1": 10.0, "cache": "g-1", "latency_ms": 2.0},
            {"method": "AVG", "pseudo_queries": False, "seed": 1, "R@1": 11.0, "cache": "g-2", "latency_ms": 2.0},
            {"method": "only before", "pseudo_queries": False, "seed": 0, "R@1": 1.0, "cache": "x", "latency_ms": 1.0},
        ]
    )
    after = before.iloc[:2].copy()
    after["latency_ms"] = [3.0, 4.0]  # timed again: not a difference
    after.loc[1, ["R@1", "cache"]] = [11.5, "g-3"]
    after = pd.concat([after, after.iloc[[0]].assign(seed=3)])  # a seed only the second run has
    rows = rundiff.shared_rows(before, after, ["method", "pseudo_queries"])
    assert rows[["method", "seed", "differs"]].values.tolist() == [["AVG", "0", ""], ["AVG", "1", "R@1, cache"]]
    with pytest.raises(ValueError, match="appears twice"):
        rundiff.shared_rows(pd.concat([before, before]), after, ["method", "pseudo_queries"])
