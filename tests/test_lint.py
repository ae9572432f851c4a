"""ruff (lint and format check) over the library, the tests and the notebooks, as configured in pyproject.toml."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from avg_lib.paths import REPO_ROOT


def _ruff() -> str:
    found = Path(sys.executable).with_name("ruff")
    return (
        str(found)
        if found.exists()
        else shutil.which("ruff") or pytest.fail("ruff is not installed (requirements.txt)")
    )


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean(args):
    out = subprocess.run([_ruff(), *args, "--no-cache", "."], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
