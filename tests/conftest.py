import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture()
def toy_js(tmp_path):
    """A joint space of 120 synthetic items with random 16-d embeddings (captions = noisy copies of their image)."""
    from avg_lib import stages
    from avg_lib.features import Features
    from avg_lib.synthetic import load_synthetic

    ds = load_synthetic(n_images=120)
    _texts, owner = ds.captions()
    rng = np.random.default_rng(0)
    img = rng.normal(size=(len(ds), 16)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt = (img[owner] + 0.3 * rng.normal(size=(len(owner), 16))).astype(np.float32)
    feats = Features(img, txt, owner, tmp_path)
    return stages.JointSpace(ds, feats, None, pd.DataFrame(), tmp_path, img, txt, owner, "toy", None)
