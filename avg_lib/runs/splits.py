"""Queries, galleries and training pairs, built from a joint space (``js``: :class:`avg_lib.runs.stages.JointSpace`)
and identifiers (``vt``: :class:`avg_lib.runs.stages.VokenTokenizer`, or any
:class:`avg_lib.models.identifiers.Identifiers`).

The protocol (docs/paper.md §8): the queries of a split are the captions of its images, and the gallery is
those images with their identifiers. Pseudo queries (§7) are made from the captions of the most similar
*training* images, so no caption of the split they point to is ever read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avg_lib.models import identifiers

__all__ = ["PSEUDO_RECIPES", "RetrievalSplit", "generator_training_pairs", "pseudo_queries", "retrieval_split"]


@dataclass
class RetrievalSplit:
    texts: list[str]  # queries (captions of the split's images)
    targets: np.ndarray  # gallery position of each query's image
    gallery_codes: np.ndarray  # (n_gallery, depth) identifiers of the split's images
    image_index: np.ndarray  # dataset index of each gallery position


def retrieval_split(js, vt, split: str) -> RetrievalSplit:
    """Queries = the captions of ``split``'s images; gallery = those images with their identifiers
    (``vt`` a tokenizer, or any :class:`~avg_lib.models.identifiers.Identifiers`)."""
    ids = vt if isinstance(vt, identifiers.Identifiers) else vt.ids
    texts, owner = js.ds.captions()
    idx = js.ds.split_indices(split)
    pos = np.full(len(js.ds), -1)
    pos[idx] = np.arange(len(idx))
    keep = pos[owner] >= 0
    return RetrievalSplit([t for t, k in zip(texts, keep) if k], pos[owner[keep]], ids.codes[idx], idx)


PSEUDO_RECIPES = ("composed", "borrowed")


def pseudo_queries(
    js,
    split: str = "test",
    per_image: int = 2,
    recipe: str = "composed",
    neighbours: int = 5,
    words: int = 6,
) -> tuple[list[str], np.ndarray]:
    """Pseudo queries for the images of ``split``, built from *training* captions only (a caption of
    ``split`` is never read). Each image's most similar training images (cosine of joint-space image
    embeddings) lend their words:

    * ``composed`` (default): query ``r`` lists the words of the ``r``-th nearest training image's captions,
      ordered by a consensus weight over the ``neighbours`` nearest (sum of similarity x tf-idf, vocabulary
      and idf from the training captions, English stop words removed), the first ``words`` of them. A string
      that equals a training caption or another image's pseudo query gets the next consensus word until it
      is new; one that cannot be made new is dropped. So no string has two targets, and none is a training
      caption whose own image is a target elsewhere (``tests/test_splits.py``).
    * ``borrowed`` (the earlier recipe, kept for comparison): the first caption of each of the ``per_image``
      nearest training images, verbatim. The same string then also trains its own image's identifier, and
      the discriminative stage can mine that image as a negative for it: a contradictory target.

    Returns (texts, dataset index of the image each text points to)."""
    if recipe not in PSEUDO_RECIPES:
        raise ValueError(f"unknown pseudo-query recipe {recipe!r}; expected one of {PSEUDO_RECIPES}")
    train = js.ds.split_indices("train")
    target = js.ds.split_indices(split)
    sims = js.image[target] @ js.image[train].T
    order = np.argsort(-sims, axis=1, kind="stable")
    if recipe == "borrowed":
        texts = [js.ds.items[train[j]].captions[0] for row in order[:, :per_image] for j in row]
        return texts, np.repeat(target, per_image).astype(np.int64)
    return _composed(js, train, target, sims, order, per_image, max(neighbours, per_image), words)


def _composed(js, train, target, sims, order, per_image: int, neighbours: int, words: int):
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = [" ".join(js.ds.items[i].captions) for i in train]
    vec = TfidfVectorizer(stop_words="english", token_pattern=r"(?u)\b[^\W\d_][\w'-]*\b")
    tfidf = vec.fit_transform(docs).tocsr()
    vocab = vec.get_feature_names_out()
    taken = {c.lower() for i in train for c in js.ds.items[i].captions}
    texts, owner = [], []
    for t, sim, row in zip(target, sims, order):
        near = row[:neighbours]
        consensus = np.asarray(tfidf[near].multiply(np.maximum(sim[near], 0)[:, None]).sum(0)).ravel()
        ranked = np.argsort(-consensus, kind="stable")
        ranked = ranked[consensus[ranked] > 0]
        for r in range(per_image):
            own = set(tfidf[row[r]].indices)
            chosen = [w for w in ranked if w in own][:words]
            rest = [w for w in ranked if w not in chosen]
            text = ", ".join(vocab[chosen])
            while text.lower() in taken and rest:
                chosen.append(rest.pop(0))
                text = ", ".join(vocab[chosen])
            if not chosen or text.lower() in taken:
                continue  # nothing new to say: dropped (counted by the caller as fewer queries)
            taken.add(text.lower())
            texts.append(text)
            owner.append(t)
    return texts, np.asarray(owner, dtype=np.int64)


def generator_training_pairs(js, vt, pseudo: int = 0, **recipe) -> tuple[list[str], np.ndarray]:
    """(caption, identifier) pairs of the training images, plus ``pseudo`` queries per test image made by
    :func:`pseudo_queries` (``recipe``: its ``recipe``, ``neighbours`` and ``words``)."""
    tr = retrieval_split(js, vt, "train")
    texts, codes = list(tr.texts), vt.ids.codes[tr.image_index[tr.targets]]
    if pseudo:
        ptexts, powner = pseudo_queries(js, "test", pseudo, **recipe)
        texts += ptexts
        codes = np.concatenate([codes, vt.ids.codes[powner]])
    return texts, codes
