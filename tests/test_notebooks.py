"""Committed-notebook policy: outputs and execution counts stripped, tags kept, one literal-only
``parameters`` cell, a kernelspec, and profiles that only name declared parameters.
nbval itself runs the notebooks (pytest collects notebooks/*.ipynb with --nbval-lax)."""

import nbformat
import pytest

from avg_lib.runner import NOTEBOOK_DIR, PROFILE_DIR, declared_parameters, load_profile, notebooks

NOTEBOOKS = notebooks()


def test_notebooks_exist_and_are_numbered():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, len(NOTEBOOKS) + 1)]
    assert NOTEBOOKS[0].name == "01_data_preparation.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_output_policy(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", "papermill needs a kernelspec"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i}: outputs must be stripped before committing"
            assert cell.execution_count is None, f"{path.name} cell {i}: execution count must be stripped"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_are_literals_with_results_and_profile(path):
    params = declared_parameters(path)
    assert {"profile", "results_dir", "seed"} <= set(params)
    assert params["results_dir"].startswith("results/scratch"), "stored defaults must not overwrite real results"


@pytest.mark.parametrize("profile", sorted(PROFILE_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_profiles_name_only_declared_parameters(profile):
    prof = load_profile(profile.stem)  # as run_all.sh resolves it (a profile may extend another)
    declared = {nb.stem: set(declared_parameters(nb)) for nb in NOTEBOOKS}
    everything = set().union(*declared.values())
    assert set(prof["common"]) <= everything, set(prof["common"]) - everything
    for stem, overrides in (prof.get("notebooks") or {}).items():
        assert stem in declared, f"{profile.name}: no notebook {stem}"
        assert set(overrides) <= declared[stem], set(overrides) - declared[stem]


def test_notebook_dir_has_no_stray_notebooks():
    assert sorted(NOTEBOOK_DIR.glob("*.ipynb")) == NOTEBOOKS
