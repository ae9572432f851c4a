"""Committed-notebook policy: outputs and execution counts stripped, tags kept, one literal-only
``parameters`` cell naming the smoke profile (so nbval runs exactly what ``run_all.sh --profile smoke``
runs), a kernelspec, the paper section quoted at the top, and no block of code repeated across notebooks.
nbval itself runs the notebooks (pytest collects notebooks/*.ipynb with --nbval-lax)."""

import itertools
import subprocess
from pathlib import Path

import nbformat
import pytest

from avg_lib.paths import REPO_ROOT
from avg_lib.runs.runner import NOTEBOOK_DIR, declared_parameters, notebooks, parameters_for

NOTEBOOKS = notebooks()
BLOCK = 6  # lines: a block this long appearing in two notebooks belongs in avg_lib


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
def test_stored_parameters_are_the_smoke_profile(path):
    """The stored notebook runs the smoke profile, unchanged: what nbval runs is what
    ``run_all.sh --profile smoke`` runs, which injects nothing but the profile's name."""
    assert declared_parameters(path) == {"profile": "smoke", "overrides": {}}
    assert parameters_for(path, "smoke") == {"profile": "smoke"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_thin_and_quotes_the_paper(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "docs/paper.md" in first.source and "> **Paper**" in first.source
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert sum("pipeline.setup(profile, overrides)" in c for c in code) == 1, "one setup call"
    for i, src in enumerate(code):
        assert len(src.splitlines()) <= 30, f"{path.name} code cell {i} has {len(src.splitlines())} lines (30 at most)"
    assert "run.done(" in code[-1], "the last cell records the notebook's numbers"


def _code_lines(path):
    nb = nbformat.read(path, as_version=4)
    lines = []
    for c in nb.cells:
        if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", []):
            lines += [s.strip() for s in c.source.splitlines() if s.strip() and not s.strip().startswith("#")]
    return lines


def _blocks(lines):
    return {tuple(lines[i : i + BLOCK]) for i in range(len(lines) - BLOCK + 1)}


def test_no_block_of_code_is_repeated_across_notebooks():
    blocks = {p.name: _blocks(_code_lines(p)) for p in NOTEBOOKS}
    for (a, ba), (b, bb) in itertools.combinations(blocks.items(), 2):
        shared = ba & bb
        assert not shared, f"{a} and {b} share a block of {BLOCK} code lines:\n" + "\n".join(sorted(shared)[0])


def test_the_duplicate_check_can_fail():
    lines = [f"x{i} = {i}" for i in range(BLOCK)]
    assert _blocks(lines) & _blocks(["import os", *lines, "print(1)"])
    assert not _blocks(lines[:-1]) & _blocks(["import os", *lines[:-1]])


def test_notebook_dir_has_no_stray_notebooks():
    assert sorted(NOTEBOOK_DIR.glob("*.ipynb")) == NOTEBOOKS


def test_nothing_in_the_repository_points_outside_it():
    """A clone must be readable on its own: no file refers to a folder beside the repository."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    outside = "../" + "shared"  # spelled in two parts so that this file does not match itself
    offenders = [
        f
        for f in files
        if (REPO_ROOT / f).is_file()
        and Path(f).suffix in {".py", ".ipynb", ".md", ".yaml"}
        and outside in (REPO_ROOT / f).read_text(errors="ignore")
    ]
    assert not offenders


# words about the environment a project is built in, not about the product (split so this file does not match)
NOT_PRODUCT = [
    r"\blent\b",
    "sess" + "ion",
    "device " + "call",
    "warm " + "window",
    "hand-" + "off",
    "this " + "machine",
    r"\bissue [0-9#]",
    "carry " + "limit",
]


def test_text_speaks_of_the_product_only():
    """README, docs, notebooks, library, scripts, profiles and tests say nothing about where the project was
    developed (borrowed machines, their calls and limits, issue numbers)."""
    import re

    roots = ["README.md", "docs", "notebooks", "avg_lib", "scripts", "profiles", "tests"]
    files = []
    for r in roots:
        p = REPO_ROOT / r
        files += (
            [p] if p.is_file() else [f for f in p.rglob("*") if f.suffix in {".py", ".ipynb", ".md", ".yaml", ".sh"}]
        )
    found = [
        f"{f.relative_to(REPO_ROOT)}: {m.group(0)!r}"
        for f in files
        for m in re.finditer("|".join(NOT_PRODUCT), f.read_text(errors="ignore"), flags=re.IGNORECASE)
    ]
    assert not found, found
