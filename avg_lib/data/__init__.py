"""Every data source behind one call: ``load_dataset(name, **kwargs)`` returns a
:class:`~avg_lib.data.dataset.CaptionedImages` (items with a stable id, several captions and a split).

The abstraction and the file-based loaders (``karpathy``, ``folder``) live in :mod:`avg_lib.data.dataset`;
:mod:`avg_lib.data.emoji` and :mod:`avg_lib.data.synthetic` build on it, and this module only dispatches, so
the imports run one way: dataset <- emoji, synthetic <- data.
"""

from __future__ import annotations

from avg_lib.data.dataset import (
    SPLITS,
    CaptionedImages,
    DataError,
    Item,
    LoadReport,
    clean_captions,
    load_folder,
    load_karpathy,
    stable_split,
)
from avg_lib.data.emoji import load_emoji
from avg_lib.data.synthetic import load_synthetic

LOADERS = {"emoji": load_emoji, "synthetic": load_synthetic, "karpathy": load_karpathy, "folder": load_folder}

__all__ = [
    "LOADERS",
    "SPLITS",
    "CaptionedImages",
    "DataError",
    "Item",
    "LoadReport",
    "clean_captions",
    "load_dataset",
    "load_folder",
    "load_karpathy",
    "stable_split",
]


def load_dataset(name: str, /, **kwargs) -> CaptionedImages:
    """``load_dataset("emoji")``, ``("synthetic", n_images=500)``, ``("karpathy", json_path=..., image_root=...)``,
    ``("folder", root=...)``. ``name`` is positional-only, so ``name=`` in kwargs reaches the loader."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(LOADERS)}")
    return LOADERS[name](**kwargs)
