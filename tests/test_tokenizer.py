import dataclasses

import numpy as np
import pytest
import torch

from avg_lib.models import identifiers, tokenizer
from avg_lib.models.tokenizer import ResidualQuantizer, TokenizerConfig, kmeans, train_tokenizer

TINY = TokenizerConfig(codebook_size=8, levels=3, e_dim=8, hidden=(32,), epochs=6, batch_size=64, patience=50)


def pairs(n, seed=0, d=16):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(1234).normal(size=(6, d))  # one distribution; seed draws the sample
    lab = rng.integers(0, 6, n)
    x = centers[lab] + 0.1 * rng.normal(size=(n, d))
    t = centers[lab] + 0.3 * rng.normal(size=(n, d))
    return x.astype(np.float32), t.astype(np.float32)


@pytest.mark.parametrize("shared", [True, False])
def test_decode_from_indices_equals_quantised_vector(shared):
    torch.manual_seed(0)
    q = ResidualQuantizer(levels=4, codebook_size=16, dim=8, shared=shared)
    z = torch.randn(50, 8)
    z_q, idx, loss = q(z)
    assert idx.shape == (50, 4) and loss.item() > 0
    assert torch.allclose(q.decode_indices(idx), z_q, atol=1e-5)
    # residual quantisation: each level picks the nearest entry to what is left
    residual = z.clone()
    for level in range(4):
        book = q.codebook(level)
        assert torch.equal(torch.cdist(residual, book).argmin(1), idx[:, level])
        residual = residual - book[idx[:, level]]


def test_kmeans_sees_all_rows():
    # 200 rows near the origin, then 5 rows far away: a first-batch initialisation would miss them
    x = torch.cat([0.01 * torch.randn(200, 4), torch.full((5, 4), 50.0)])
    c = kmeans(x, k=4, seed=0)
    assert (c - 50.0).abs().max(1).values.min() < 1.0


def test_training_initialises_kmeans_on_every_training_row(monkeypatch):
    seen = []
    real = tokenizer.kmeans

    def spy(x, k, seed=0, iters=25):
        seen.append(len(x))
        return real(x, k, seed, iters)

    monkeypatch.setattr(tokenizer, "kmeans", spy)
    train, val = pairs(300, 0), pairs(50, 1)
    train_tokenizer(train, val, dataclasses.replace(TINY, epochs=1), progress=False)
    assert seen == [300]  # shared codebook: one k-means over all 300 rows
    seen.clear()
    train_tokenizer(train, val, dataclasses.replace(TINY, epochs=1, shared_codebook=False), progress=False)
    assert seen == [300, 300, 300]  # one per level, each on all rows' residuals


def test_same_seed_same_vokens_and_save_load_round_trip(tmp_path):
    train, val = pairs(300, 0), pairs(50, 1)
    a, ha = train_tokenizer(train, val, TINY, progress=False)
    b, _ = train_tokenizer(train, val, TINY, progress=False)
    x = torch.as_tensor(val[0])
    assert torch.equal(a.encode(x), b.encode(x))
    tokenizer.save(a, tmp_path)
    c = tokenizer.load(tmp_path)  # torch.load(weights_only=True) inside
    assert torch.equal(a.encode(x), c.encode(x))
    assert torch.allclose(a.decode(a.encode(x)), c.decode(c.encode(x)))
    assert len(ha) == TINY.epochs and {"val_recon", "val_align", "val_vq", "val_used_l1"} <= set(ha[0])


def test_alignment_is_one_switch():
    x, t = (torch.as_tensor(a) for a in pairs(40))
    on = tokenizer.RQVAE(16, TINY).eval()
    off = tokenizer.RQVAE(16, dataclasses.replace(TINY, align_weight=0.0)).eval()
    off.load_state_dict(on.state_dict())
    lon, loff = on.losses(x, t), off.losses(x, t)
    assert torch.allclose(lon["align"], loff["align"]) and lon["align"] > 0
    assert torch.allclose(loff["total"], loff["recon"] + loff["vq"])
    assert torch.allclose(lon["total"], lon["recon"] + lon["vq"] + lon["align"])


def test_alignment_pulls_reconstruction_towards_captions():
    x, t = pairs(400, 0)
    cfg = dataclasses.replace(TINY, epochs=40, restart_dead_codes=False)
    on, _ = train_tokenizer((x, t), pairs(60, 1), cfg, progress=False)
    off, _ = train_tokenizer((x, t), pairs(60, 1), dataclasses.replace(cfg, align_weight=0.0), progress=False)
    xv, tv = (torch.as_tensor(a) for a in pairs(60, 1))

    def gap(m):
        return ((m.decode(m.encode(xv)) - tv) ** 2).mean().item()

    assert gap(on) < gap(off)


def test_bad_align_setting_is_rejected():
    with pytest.raises(ValueError, match="align_on"):
        TokenizerConfig(align_on="somewhere")


# ------------------------------------------------------------------------------------ identifiers


def test_resolution_makes_ids_unique_by_the_documented_rule():
    raw = np.array([[1, 2], [1, 2], [3, 4], [1, 2], [3, 5]])
    err = np.array([0.5, 0.1, 0.0, 0.5, 0.2])
    ids = ["a", "b", "c", "d", "e"]
    res = identifiers.resolve_collisions(ids, raw, err, codebook_size=8)
    # group {a, b, d}: b has the smallest error -> 0; a and d tie on error -> by id: a 1, d 2
    assert res.codes.tolist() == [[1, 2, 1], [1, 2, 0], [3, 4, 0], [1, 2, 2], [3, 5, 0]]
    assert identifiers.collision_rate(raw) == pytest.approx(3 / 5)
    assert identifiers.collision_rate(res.codes) == 0.0 and res.disambiguated and res.depth == 3


def test_resolution_is_stable_under_reordering():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 3, size=(200, 2))  # many collisions
    err = rng.random(200)
    ids = [f"i{k}" for k in range(200)]
    a = identifiers.resolve_collisions(ids, raw, err, codebook_size=128)
    perm = rng.permutation(200)
    b = identifiers.resolve_collisions([ids[p] for p in perm], raw[perm], err[perm], codebook_size=128)
    assert dict(zip(a.ids, map(tuple, a.codes))) == dict(zip(b.ids, map(tuple, b.codes)))
    assert len({tuple(c) for c in a.codes}) == 200


def test_groups_larger_than_the_codebook_get_more_positions():
    raw = np.zeros((10, 2), dtype=int)
    res = identifiers.resolve_collisions([str(i) for i in range(10)], raw, np.arange(10.0), codebook_size=3)
    assert res.depth == 2 + 3  # 3**2 = 9 < 10 <= 27
    assert len({tuple(c) for c in res.codes}) == 10
    assert res.codes[9, 2:].tolist() == [1, 0, 0]  # rank 9 in base 3


def test_no_collision_no_extra_position():
    raw = np.array([[0, 1], [1, 0]])
    res = identifiers.resolve_collisions(["a", "b"], raw, np.zeros(2), 4)
    assert res.depth == 2 and not res.disambiguated


def test_statistics_hand_computed():
    codes = np.array([[0, 1], [0, 2], [1, 1], [1, 1]])
    assert identifiers.entropy_bits(codes) == pytest.approx(1.5)  # probabilities 1/4, 1/4, 1/2
    s = identifiers.level_stats(codes, codebook_size=4)
    assert s[0]["used"] == 2 and s[0]["usage"] == 0.5 and s[0]["perplexity"] == pytest.approx(2.0)
    assert s[1]["used"] == 2 and s[1]["perplexity"] == pytest.approx(
        np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    )
