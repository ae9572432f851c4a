"""Pseudo queries: built from training captions only, and no query string with two targets."""

import collections
import dataclasses

import numpy as np
import pytest

from avg_lib.models import identifiers
from avg_lib.runs import splits


class _Untouchable(tuple):
    """A caption tuple that fails the test when anything reads it."""

    def __iter__(self):
        raise AssertionError("a test caption was read")

    def __getitem__(self, i):
        raise AssertionError("a test caption was read")

    def __len__(self):
        raise AssertionError("a test caption was read")


def _hide_test_captions(js):
    for i in js.ds.split_indices("test"):
        js.ds.items[i] = dataclasses.replace(js.ds.items[i], captions=_Untouchable(("secret",)))
    return js


def _ids(js):
    codes = np.stack([np.arange(len(js.ds)) // 16, np.arange(len(js.ds)) % 16], axis=1)
    return identifiers.Identifiers(js.ds.ids, codes, codes, 16, "toy")


def test_no_test_caption_is_read(toy_js):
    js = _hide_test_captions(toy_js)
    for recipe in splits.PSEUDO_RECIPES:
        texts, owner = splits.pseudo_queries(js, "test", per_image=2, recipe=recipe)
        assert len(texts) and set(owner) <= set(js.ds.split_indices("test"))


@pytest.mark.parametrize("per_image", [1, 2, 3])
def test_composed_queries_have_one_target_and_are_new(toy_js, per_image):
    texts, owner = splits.pseudo_queries(toy_js, "test", per_image=per_image, neighbours=4, words=3)
    train_captions = {c.lower() for i in toy_js.ds.split_indices("train") for c in toy_js.ds.items[i].captions}
    targets = collections.defaultdict(set)
    for t, o in zip(texts, owner):
        targets[t.lower()].add(int(o))
    assert all(len(v) == 1 for v in targets.values()), "a pseudo query string points to two images"
    assert not set(targets) & train_captions, "a pseudo query repeats a training caption"
    assert len(texts) <= per_image * len(toy_js.ds.split_indices("test"))
    assert len(texts) >= 0.9 * per_image * len(toy_js.ds.split_indices("test"))  # drops are rare


def test_training_pairs_have_no_contradictory_pseudo_targets(toy_js):
    """Every pseudo pair's string maps to one identifier in the whole training set, and that identifier is a
    test image's: the discriminative stage mines negatives among training images, so never its own target."""
    vt_ids = _ids(toy_js)
    vt = type("VT", (), {"ids": vt_ids})()
    n_train = len(splits.retrieval_split(toy_js, vt, "train").texts)
    texts, codes = splits.generator_training_pairs(toy_js, vt, pseudo=2)
    pseudo_texts, pseudo_codes = texts[n_train:], codes[n_train:]
    seen = collections.defaultdict(set)
    for t, c in zip(texts, map(tuple, codes)):
        seen[t].add(c)
    assert all(len(seen[t]) == 1 for t in pseudo_texts)
    train_codes = {tuple(c) for c in vt_ids.codes[toy_js.ds.split_indices("train")]}
    assert not {tuple(c) for c in pseudo_codes} & train_codes


def test_borrowed_recipe_is_the_old_one(toy_js):
    """The earlier recipe is kept verbatim for comparison, contradictions included."""
    texts, _owner = splits.pseudo_queries(toy_js, "test", per_image=2, recipe="borrowed")
    train = toy_js.ds.split_indices("train")
    first_captions = {toy_js.ds.items[i].captions[0] for i in train}
    assert set(texts) <= first_captions and len(texts) == 2 * len(toy_js.ds.split_indices("test"))


def test_unknown_recipe_is_an_error(toy_js):
    with pytest.raises(ValueError, match="recipe"):
        splits.pseudo_queries(toy_js, "test", recipe="invented")
