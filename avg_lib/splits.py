"""Queries, galleries and training pairs, built from a joint space (``js``: :class:`avg_lib.stages.JointSpace`)
and identifiers (``vt``: :class:`avg_lib.stages.VokenTokenizer`, or any :class:`avg_lib.identifiers.Identifiers`).

The protocol (docs/paper.md §8): the queries of a split are the captions of its images, and the gallery is
those images with their identifiers. Pseudo queries (§7) are borrowed from the most similar *training*
images, so no caption of the split they point to is ever read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import identifiers

__all__ = ["RetrievalSplit", "generator_training_pairs", "pseudo_queries", "retrieval_split"]


@dataclass
class RetrievalSplit:
    texts: list[str]  # queries (captions of the split's images)
    targets: np.ndarray  # gallery position of each query's image
    gallery_codes: np.ndarray  # (n_gallery, depth) identifiers of the split's images
    image_index: np.ndarray  # dataset index of each gallery position


def retrieval_split(js, vt, split: str) -> RetrievalSplit:
    """Queries = the captions of ``split``'s images; gallery = those images with their identifiers
    (``vt`` a tokenizer, or any :class:`~avg_lib.identifiers.Identifiers`)."""
    ids = vt if isinstance(vt, identifiers.Identifiers) else vt.ids
    texts, owner = js.ds.captions()
    idx = js.ds.split_indices(split)
    pos = np.full(len(js.ds), -1)
    pos[idx] = np.arange(len(idx))
    keep = pos[owner] >= 0
    return RetrievalSplit([t for t, k in zip(texts, keep) if k], pos[owner[keep]], ids.codes[idx], idx)


def pseudo_queries(js, split: str = "test", per_image: int = 2) -> tuple[list[str], np.ndarray]:
    """Pseudo queries for the images of ``split`` that never read that split's captions: each image
    borrows the first caption of each of its ``per_image`` most similar *training* images (cosine of
    joint-space image embeddings). Returns (texts, dataset index of the image each text points to)."""
    train = js.ds.split_indices("train")
    target = js.ds.split_indices(split)
    sims = js.image[target] @ js.image[train].T
    nn_ = np.argsort(-sims, axis=1)[:, :per_image]
    texts, owner = [], []
    for t, row in zip(target, nn_):
        for j in row:
            texts.append(js.ds.items[train[j]].captions[0])
            owner.append(t)
    return texts, np.asarray(owner, dtype=np.int64)


def generator_training_pairs(js, vt, pseudo: int = 0) -> tuple[list[str], np.ndarray]:
    """(caption, identifier) pairs of the training images, plus ``pseudo`` borrowed captions per test image."""
    tr = retrieval_split(js, vt, "train")
    texts, codes = list(tr.texts), vt.ids.codes[tr.image_index[tr.targets]]
    if pseudo:
        ptexts, powner = pseudo_queries(js, "test", pseudo)
        texts += ptexts
        codes = np.concatenate([codes, vt.ids.codes[powner]])
    return texts, codes
