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
    from avg_lib.data.features import Features
    from avg_lib.data.synthetic import load_synthetic
    from avg_lib.runs import stages

    ds = load_synthetic(n_images=120)
    _texts, owner = ds.captions()
    rng = np.random.default_rng(0)
    img = rng.normal(size=(len(ds), 16)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt = (img[owner] + 0.3 * rng.normal(size=(len(owner), 16))).astype(np.float32)
    feats = Features(img, txt, owner, tmp_path)
    return stages.JointSpace(ds, feats, None, pd.DataFrame(), tmp_path, img, txt, owner, "toy", None)


TOY_RUN = {
    "tokenizer": {"codebook_size": 4, "levels": 2, "e_dim": 8, "hidden": [16], "epochs": 3, "batch_size": 64},
    "generator": {"layers": 1, "decoder_width": 32, "epochs": 1, "disc_epochs": 1, "num_beams": 4, "batch_size": 64},
}


@pytest.fixture()
def run(toy_js, tmp_path):
    """The smoke profile's run with a tiny tokenizer and generator, on the toy joint space (which stands in for
    the data and the encoders)."""
    from avg_lib.runs import pipeline

    r = pipeline.setup("smoke", {**TOY_RUN, "results_dir": str(tmp_path / "results")}, progress=False)
    r.dataset, r.js = toy_js.ds, toy_js
    return r
