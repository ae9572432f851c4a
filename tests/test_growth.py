"""Stage growth between two dry-run sizes, on constructed timings with known answers."""

import pandas as pd
import pytest

from avg_lib import growth


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
