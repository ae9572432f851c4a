"""Where things live. Every path a notebook parameter names is relative to the repository root."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_path(p: str | os.PathLike) -> Path:
    """Resolve ``p`` against the repository root unless it is already absolute."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def data_dir() -> Path:
    """Cache root for fetched data and computed features (``$AVG_DATA_DIR`` or ``<repo>/data``)."""
    return repo_path(os.environ.get("AVG_DATA_DIR", "data"))
