"""Figures whose drawing encodes something a reader relies on (which curve is which)."""

import pandas as pd

from avg_lib.evaluation import viz


def _history(generator: str, seed: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_gen_loss": [3.0, 2.0, 1.5],
            "train_listwise_loss": [0.0, 0.0, 1.0],
            "val_R@1": [1.0, 2.0, 3.0],
            "model": f"{generator}, seed {seed}",
            "generator": generator,
        }
    )


def test_generator_curves_give_a_generator_one_colour_and_its_seeds_line_styles():
    hist = pd.concat([_history(g, s) for g in ("A", "B") for s in (0, 1)])
    fig = viz.generator_curves(hist, disc_start=2, colour_by="generator")
    lines = {line.get_label(): line for line in fig.axes[2].lines if not line.get_label().startswith("_")}
    assert set(lines) == {"A, seed 0", "A, seed 1", "B, seed 0", "B, seed 1"}
    assert lines["A, seed 0"].get_color() == lines["A, seed 1"].get_color() != lines["B, seed 0"].get_color()
    assert lines["A, seed 0"].get_linestyle() != lines["A, seed 1"].get_linestyle()
    assert lines["A, seed 0"].get_linestyle() == lines["B, seed 0"].get_linestyle()
    assert len([x for x in fig.axes[1].lines if not x.get_label().startswith("_")]) == 4  # one listwise epoch each


def test_generator_curves_without_colour_by_give_each_model_its_own_colour():
    fig = viz.generator_curves(pd.concat([_history(g, 0) for g in ("A", "B", "C")]))
    assert len({line.get_color() for line in fig.axes[0].lines}) == 3
