"""Stage growth between two dry-run sizes, on constructed timings with known answers."""

import pandas as pd
import pytest

from avg_lib.tools import growth


def stages(n, times, peaks):
    names = ["features", "tokenizer", "generator"]
    return pd.DataFrame({"stage": names, "wall_s": times, "peak_rss_mb_so_far": peaks, "n_images": n})


def test_exponents_and_extrapolation_recover_known_power_laws():
    """Linear, quadratic and constant stages timed at 1,000 and 4,000 images: exponents 1, 2, 0, and the
    estimates at 16,000 images follow them; the total sums the stages' estimates."""
    small = stages(1000, [10.0, 1.0, 5.0], [100.0, 100.0, 200.0])
    large = stages(4000, [40.0, 16.0, 5.0], [400.0, 400.0, 800.0])
    t = growth.growth(small, large, targets=(16000,)).set_index("stage")
    assert t.loc[["features", "tokenizer", "generator"], "time_exponent"].tolist() == pytest.approx([1, 2, 0])
    assert t.loc["features", "wall_s_at_16000"] == pytest.approx(160)
    assert t.loc["tokenizer", "wall_s_at_16000"] == pytest.approx(256)
    assert t.loc["generator", "wall_s_at_16000"] == pytest.approx(5)
    assert t.loc["total", "wall_s_at_16000"] == pytest.approx(160 + 256 + 5)
    assert t.loc["generator", "memory_exponent"] == pytest.approx(1) and t.loc["generator", "peak_mb_at_16000"] == 3200


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no stages.csv"):
        growth.read_stages(tmp_path)
    pd.DataFrame({"stage": ["a"]}).to_csv(tmp_path / "stages.csv", index=False)
    with pytest.raises(ValueError, match="columns"):
        growth.read_stages(tmp_path)
    with pytest.raises(ValueError, match="smaller one"):
        growth.growth(stages(4000, [1, 1, 1], [1, 1, 1]), stages(1000, [1, 1, 1], [1, 1, 1]))


def test_a_third_run_checks_the_law_the_two_before_it_gave():
    """Runs at 1,000, 4,000 and 16,000 images: the linear stage keeps its law (ratio 1); the one whose cost
    doubles beyond the trend at 16,000 shows a ratio of 2, and the total's ratio is measured / estimated sums."""
    small = stages(1000, [10.0, 1.0, 5.0], [100.0, 100.0, 200.0])
    large = stages(4000, [40.0, 16.0, 5.0], [400.0, 400.0, 800.0])
    full = stages(16000, [160.0, 512.0, 5.0], [1600.0, 1600.0, 3200.0])
    c = growth.check(small, large, full).set_index("stage")
    assert c.loc["features", "wall_ratio"] == pytest.approx(1) and c.loc["tokenizer", "wall_ratio"] == pytest.approx(2)
    assert c.loc["total", "wall_s_estimated"] == pytest.approx(160 + 256 + 5)
    assert c.loc["total", "wall_ratio"] == pytest.approx((160 + 512 + 5) / (160 + 256 + 5))
    assert c.loc["generator", "peak_ratio"] == pytest.approx(1)
    with pytest.raises(ValueError, match="no stage 'generator'"):
        growth.check(small, large, full[full["stage"] != "generator"])


def test_the_command_fits_the_two_largest_runs_and_writes_the_check(tmp_path):
    for name, n, times in (("a", 1000, [10.0, 1.0, 5.0]), ("b", 4000, [40.0, 16.0, 5.0]), ("c", 16000, [160, 512, 5])):
        (tmp_path / name).mkdir()
        stages(n, times, [1.0, 1.0, 1.0]).assign(profile="scale").to_csv(tmp_path / name / "stages.csv", index=False)
    out = tmp_path / "out" / "growth.csv"
    growth.main([str(tmp_path / d) for d in "abc"] + ["--to", "64000", "--out", str(out)])
    table = pd.read_csv(out).set_index("stage")
    assert table.loc["tokenizer", "time_exponent"] == pytest.approx(2.5)  # 16 -> 512 over 4,000 -> 16,000 images
    assert pd.read_csv(tmp_path / "out" / "growth_check.csv").set_index("stage").loc["tokenizer", "wall_ratio"] == 2
    assert "checked at 16,000 images" in (tmp_path / "out" / "README.md").read_text()
