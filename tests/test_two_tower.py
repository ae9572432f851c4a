import numpy as np
import pandas as pd
import pytest
import torch

from avg_lib.models import two_tower as tt
from avg_lib.retrieval.metrics import evaluate_scores


def clustered(n_images, seed, d_img=24, d_txt=12, caps=3):
    """Images and captions generated from a shared latent: a learnable cross-modal mapping."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_images, 6))
    a_img, a_txt = np.random.default_rng(99).normal(size=(6, d_img)), np.random.default_rng(98).normal(size=(6, d_txt))
    img = z @ a_img + 0.1 * rng.normal(size=(n_images, d_img))
    owner = np.repeat(np.arange(n_images), caps)
    txt = z[owner] @ a_txt + 0.3 * rng.normal(size=(len(owner), d_txt))
    return img.astype(np.float32), txt.astype(np.float32), owner


CFG = tt.TwoTowerConfig(dim=16, hidden=32, epochs=40, batch_size=64, lr=3e-3, patience=40, dropout=0.0)


def test_two_tower_learns_and_selects_on_val():
    train, val, test = clustered(300, 0), clustered(60, 1), clustered(60, 2)
    model, hist = tt.train_two_tower(train, val, CFG, progress=False)
    m = tt.evaluate(model, *test)
    assert m["R@1"] > 5 * 100 / 60  # chance is 1.7%
    best = max(hist, key=lambda h: (h["val_R@1"], h["val_rSum"]))
    assert tt.evaluate(model, *val)["R@1"] == pytest.approx(best["val_R@1"])


def test_same_seed_same_model():
    train, val = clustered(100, 0), clustered(30, 1)
    cfg = tt.TwoTowerConfig(dim=8, hidden=16, epochs=5, batch_size=32, patience=5)
    a, _ = tt.train_two_tower(train, val, cfg, progress=False)
    b, _ = tt.train_two_tower(train, val, cfg, progress=False)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_ridge_reference_beats_chance():
    train, test = clustered(300, 0), clustered(60, 2)
    m = evaluate_scores(tt.ridge_scores(train, test[1], test[0], alpha=1.0), test[2])
    assert m["R@1"] > 10


def test_fit_or_load_caches_and_round_trips(tmp_path):
    from avg_lib.data import CaptionedImages, Item
    from avg_lib.data.features import Features

    img, txt, owner = clustered(50, 3)
    items = [
        Item(f"i{i}", ("a", "b", "c"), "train" if i < 30 else "val" if i < 40 else "test", image="/x.png")
        for i in range(50)
    ]
    ds = CaptionedImages("toy", items)
    feats = Features(img, txt, owner, tmp_path)
    cfg = tt.TwoTowerConfig(dim=8, hidden=16, epochs=3, batch_size=16)
    m1, h1, d1 = tt.fit_or_load(ds, feats, cfg, progress=False)
    mtime = (d1 / "model.pt").stat().st_mtime_ns
    m2, _h2, d2 = tt.fit_or_load(ds, feats, cfg, progress=False)
    assert d1 == d2 and (d2 / "model.pt").stat().st_mtime_ns == mtime  # second call loaded, did not retrain
    g1, g2 = tt.embed(m1, img), tt.embed(m2, img)
    assert np.array_equal(g1, g2)
    assert np.allclose(np.load(d1 / "image.npy"), g1, atol=1e-6)
    torch.load(d1 / "model.pt", weights_only=True)  # plain state dict
    assert len(h1) == 3 and list(h1.columns)[:2] == ["epoch", "train_loss"]


def test_multi_positive_loss_equals_clip_loss_when_captions_are_distinct_images():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    s = torch.tensor(2.0)
    assert torch.allclose(tt.multi_positive_loss(img, txt, torch.arange(6), s), tt.clip_loss(img, txt, s), atol=1e-6)


def test_caption_sampling_trains_too():
    train, val, test = clustered(300, 0), clustered(60, 1), clustered(60, 2)
    import dataclasses

    model, _ = tt.train_two_tower(train, val, dataclasses.replace(CFG, sampling="caption"), progress=False)
    assert tt.evaluate(model, *test)["R@1"] > 5 * 100 / 60


def test_search_keeps_the_best_candidate_on_validation():
    train, val = clustered(200, 0), clustered(40, 1)
    cfg = tt.TwoTowerConfig(dim=8, hidden=0, epochs=8, batch_size=64, lr=3e-3, patience=8, dropout=0.0)
    grid = ({"lr": 1e-9}, {}, {"dim": 16})  # the first cannot learn
    model, _history, chosen, table = tt.search_settings(train, val, cfg, grid, progress=False)
    assert list(table["candidate"]) == [0, 1, 2] and table["chosen"].sum() == 1
    best = table.loc[table["chosen"]].iloc[0]
    assert best["val_R@1"] == table["val_R@1"].max() and best["candidate"] != 0
    assert tt.evaluate(model, *val)["R@1"] == pytest.approx(best["val_R@1"])
    assert chosen.dim == (16 if best["candidate"] == 2 else 8)
    swapped = tt.search_settings(train, val, cfg, ({"sampling": "swap"},), progress=False)[2]
    assert swapped.sampling == "caption"


def test_search_runs_on_user_data_and_not_on_built_in_data(tmp_path):
    from avg_lib.data import CaptionedImages, Item
    from avg_lib.data.features import Features

    img, txt, owner = clustered(50, 3)
    split = ["train" if i < 30 else "val" if i < 40 else "test" for i in range(50)]
    cfg = tt.TwoTowerConfig(dim=8, hidden=16, epochs=2, batch_size=16)
    dirs = {}
    for name in ("my-photos", "emoji"):
        ds = CaptionedImages(name, [Item(f"i{i}", ("a", "b", "c"), split[i], image="/x.png") for i in range(50)])
        _m, _h, dirs[name] = tt.fit_or_load(ds, Features(img, txt, owner, tmp_path / name), cfg, progress=False)
    assert len(pd.read_csv(dirs["my-photos"] / "search.csv")) == len(tt.SEARCH)
    assert not (dirs["emoji"] / "search.csv").exists()
    with pytest.raises(ValueError, match="search"):
        tt.TwoTowerConfig(search="sometimes")
