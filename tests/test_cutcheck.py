"""The paired check of a settings change (avg_lib.tools.cutcheck), on the toy run of conftest."""

import pytest

from avg_lib.tools import cutcheck


def test_an_unchanged_setting_gives_a_zero_difference_and_no_verdict(run):
    """Changing a setting to the profile's own value is the same cached model: a difference of exactly zero, a
    zero-width interval, inconclusive."""
    runs, claim = cutcheck.check(run, [0], {"num_beams": run.cfg.generator.num_beams})
    assert runs["setting"].tolist() == ["profile", "changed"] and runs["cache"].nunique() == 1
    assert claim["difference"] == 0 and claim["low"] == claim["high"] == 0
    assert claim["verdict"] == "inconclusive" and claim["seeds"] == "0"


def test_a_real_change_trains_its_own_model_and_is_named_in_the_claim(run):
    runs, claim = cutcheck.check(run, [0], {"disc_epochs": 0})
    assert runs["cache"].nunique() == 2 and (runs["train_seconds"] >= 0).all()
    assert claim["b"] == "disc_epochs=0" and "disc_epochs=0 beats the profile" in claim["claim"]
    assert claim["low"] <= claim["difference"] <= claim["high"]
    with pytest.raises(ValueError, match="nothing to compare"):
        cutcheck.check(run, [0], {})
    with pytest.raises(ValueError, match="precison not generator settings"):
        cutcheck.check(run, [0], {"precison": "bf16"})


def test_the_readme_names_the_command_and_states_the_claim(run, tmp_path):
    from avg_lib.results import write_readme

    runs, claim = cutcheck.check(run, [0], {"num_beams": run.cfg.generator.num_beams})
    made_by, body = cutcheck.readme(runs.drop(columns=["cache"]), claim, "avg cut --seeds 0")
    text = write_readme(tmp_path / "cut", claim["claim"], made_by, body).read_text()
    assert text.startswith(f"# {claim['claim']}\n") and "do not edit by hand" in text
    assert "`avg cut --seeds 0`" in text and "**inconclusive**" in text
    assert text.count("| profile") == 1 and text.count("| changed") == 1
