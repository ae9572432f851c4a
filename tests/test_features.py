import numpy as np
import pytest
from helpers import save_tiny_clip

from avg_lib.data import CaptionedImages, Item, features
from avg_lib.data.synthetic import load_synthetic


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_clip_path_loads_a_saved_model_through_the_same_interface(tiny_clip, tmp_path):
    img_enc, txt_enc = features.load_encoders("clip", path=tiny_clip, device="cpu")
    ds = load_synthetic(n_images=12)
    f = features.extract_features(ds, img_enc, txt_enc, batch_size=5, root=tmp_path, progress=False)
    assert f.image.shape == (12, 16) and f.text.shape == (ds.n_captions(), 16)
    assert np.isfinite(f.image).all() and np.isfinite(f.text).all()
    texts, owner = ds.captions()
    assert np.array_equal(f.text_owner, owner)
    # batching does not change features
    direct = img_enc.encode_images([ds.image(i) for i in range(12)])
    assert np.allclose(direct, f.image, atol=1e-5)
    assert np.allclose(txt_enc.encode_texts(texts[:3]), f.text[:3], atol=1e-5)


def test_clip_needs_a_directory(tmp_path):
    with pytest.raises(ValueError, match="needs `path`"):
        features.load_encoders("clip")
    with pytest.raises(FileNotFoundError, match="config.json"):
        features.CLIP(tmp_path)
    with pytest.raises(ValueError, match="unknown encoder"):
        features.load_encoders("resnet")


def test_feature_cache_is_keyed_and_reused(tiny_clip, tmp_path):
    enc, _ = features.load_encoders("clip", path=tiny_clip, device="cpu")
    ds = load_synthetic(n_images=6)
    f1 = features.extract_features(ds, enc, enc, root=tmp_path, progress=False)
    stamp = (f1.directory / "image.npy").stat().st_mtime_ns
    f2 = features.extract_features(ds, enc, enc, root=tmp_path, progress=False)
    assert f2.directory == f1.directory and (f2.directory / "image.npy").stat().st_mtime_ns == stamp
    f3 = features.extract_features(ds, enc, enc, root=tmp_path, progress=False, force=True)
    assert (f3.directory / "image.npy").stat().st_mtime_ns != stamp
    # a different dataset (one caption changed) gets a different cache entry
    items = list(ds.items)
    items[0] = Item(items[0].id, ("changed caption",) + items[0].captions[1:], items[0].split)
    ds2 = CaptionedImages(ds.name, items, renderer=ds._renderer)
    assert features.feature_dir(ds2, enc, enc, tmp_path) != f1.directory
    assert not list(tmp_path.rglob("*.partial"))


def test_features_split_views():
    ds = load_synthetic(n_images=30)
    texts, owner = ds.captions()
    f = features.Features(np.arange(30, dtype=np.float32)[:, None], np.zeros((len(texts), 2), np.float32), owner, None)
    idx, img, txt, own = f.split(ds, "test")
    assert list(idx) == [0, 10, 20]
    assert img[:, 0].tolist() == [0, 10, 20] and len(txt) == 3 * 3
    assert own.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_offline_default_encoders_are_real_pretrained_models():
    """EfficientNet-Lite0 and MiniLM load from their wheels and behave like trained models."""
    img_enc, txt_enc = features.load_encoders("effnet-minilm", device="cpu", image_size=96)
    t = txt_enc.encode_texts(["a dog playing in the park", "a puppy running on grass", "a stock market report"])
    assert t.shape == (3, 384) and np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    assert t[0] @ t[1] > t[0] @ t[2] + 0.2  # semantics, not random weights
    ds = load_synthetic(n_images=4)
    x = img_enc.encode_images([ds.image(i) for i in range(4)])
    assert x.shape == (4, 1280) and np.isfinite(x).all() and x.std() > 0


def test_efficientnet_encodes_a_batch_in_micro_batches_with_the_same_features():
    """The offline image encoder runs 4 images per forward pass on a CPU (faster: activations stay in cache);
    a batch gives the features of one big pass (bit for bit on the CPUs measured, docs/run_time.md)."""
    enc = features.EfficientNetLite0(image_size=64, device="cpu")
    ds = load_synthetic(n_images=10)
    images = [ds.image(i) for i in range(10)]
    micro = enc.encode_images(images)
    enc.cpu_micro_batch = 10
    whole = enc.encode_images(images)
    assert micro.shape == (10, 1280) and np.allclose(micro, whole, rtol=1e-5, atol=1e-6)
