"""Result files: written atomically (no partial file is ever left behind) and stamped with provenance.

Every CSV row carries ``profile``, ``seed`` (the row's own, for tables with one row per seed),
``git_commit`` (``+dirty`` when tracked files outside ``results/`` had uncommitted changes) and
``created_utc``; :mod:`avg_lib.runner` adds the wall time of each notebook to ``<results_dir>/provenance.csv``.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import uuid
from pathlib import Path

import pandas as pd

from .paths import REPO_ROOT, repo_path

PROVENANCE_COLUMNS = ("profile", "seed", "git_commit", "created_utc")


def git_commit(root: Path = REPO_ROOT) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        # outputs under results/ do not count: a run rewrites them as it goes, and they are not code
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads"


def _atomic(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial"))
    # created like open() would (mode 0666 less the umask); mkstemp would make an owner-only file
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_csv(df: pd.DataFrame, path: str | os.PathLike, profile: str, seed: int | str) -> Path:
    """Write ``df`` plus the provenance columns to ``path`` (relative paths: from the repo root).

    A table with its own ``seed`` column (one row per training seed) keeps it: a row's seed is more
    specific than the run's. Any other provenance column already in ``df`` is an error."""
    df = df.copy()
    for name, value in zip(PROVENANCE_COLUMNS, (profile, seed, git_commit(), utc_now())):
        if name not in df.columns:
            df[name] = value
        elif name != "seed":
            raise ValueError(f"{path}: column {name!r} is reserved for provenance")
    return _atomic(repo_path(path), lambda tmp: df.to_csv(tmp, index=False, float_format="%.4f"))


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file (markdown tables, reports) atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    return _atomic(repo_path(path), write)


def save_figure(fig, path: str | os.PathLike, dpi: int = 130) -> Path:
    """Save a matplotlib figure atomically as PNG."""
    return _atomic(repo_path(path), lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
