"""The cached stages on a toy joint space (no encoders needed; ``toy_js`` is in conftest.py)."""

import dataclasses

import numpy as np

from avg_lib.models import tokenizer
from avg_lib.runs import stages

CFG = tokenizer.TokenizerConfig(codebook_size=4, levels=2, e_dim=8, hidden=(16,), epochs=3, batch_size=64)


def test_tokenizer_rows_pair_each_training_caption_with_its_image(toy_js):
    x, _t = stages.tokenizer_rows(toy_js, "train")
    train = set(toy_js.ds.split_indices("train").tolist())
    owners = toy_js.text_owner[np.isin(toy_js.text_owner, list(train))]
    assert len(x) == len(owners) and np.array_equal(x, toy_js.image[owners])
    assert set(owners.tolist()) == train


def test_voken_tokenizer_caches_and_ids_are_unique(toy_js):
    vt = stages.voken_tokenizer(toy_js, CFG, progress=False)
    assert vt.ids.codes.shape[0] == len(toy_js.ds)
    # K=4, L=2: at most 16 distinct raw codes for 120 images, so collisions must have been resolved
    assert vt.ids.disambiguated and len({tuple(c) for c in vt.ids.codes}) == len(toy_js.ds)
    stamp = (vt.directory / "vokens.json").stat().st_mtime_ns
    again = stages.voken_tokenizer(toy_js, CFG, progress=False)
    assert (again.directory / "vokens.json").stat().st_mtime_ns == stamp
    assert np.array_equal(again.ids.codes, vt.ids.codes)
    assert vt.codebooks.shape == (1, 4, 8)
    other = stages.voken_tokenizer(toy_js, dataclasses.replace(CFG, align_weight=0.0), progress=False)
    assert other.directory != vt.directory


def test_report_has_every_number_the_issue_asks_for(toy_js):
    vt = stages.voken_tokenizer(toy_js, CFG, progress=False)
    r = stages.tokenizer_report(toy_js, vt)
    for key in (
        "recon_mse_val",
        "align_cos_val",
        "used_l1",
        "perplexity_l2",
        "identifier_entropy_bits",
        "collision_rate_all",
        "collision_rate_after",
    ):
        assert key in r
    assert r["collision_rate_all"] > 0 and r["collision_rate_after"] == 0
    assert 0 < r["identifier_entropy_bits"] <= r["max_entropy_bits"]
    assert 1 <= r["used_l1"] <= 4
