"""The paper's setting as committed profiles (profiles/flickr30k.yaml, profiles/coco.yaml): Karpathy-split data
from local paths, CLIP features and a pretrained T5 generator. No real weights or images exist offline, so the
chain runs end to end on a Karpathy-format fixture with a tiny random CLIP and T5 saved the way the profiles
expect them (``save_pretrained`` directories)."""

import json

import pytest
from helpers import save_tiny_clip, save_tiny_t5

from avg_lib.data.synthetic import load_synthetic
from avg_lib.runs import config, experiments, pipeline


@pytest.mark.parametrize("name", ["flickr30k", "coco"])
def test_the_paper_profiles_name_the_papers_setting(name):
    cfg = config.load_config(name)
    assert cfg.data.dataset == "karpathy" and f"dataset_{name}.json" in cfg.data.kwargs["json_path"]
    assert cfg.encoder.name == "clip" and "clip-vit-large-patch14-336" in cfg.encoder.path
    assert cfg.generator.backend == "t5" and cfg.generator.t5_path and cfg.generator.temperature == 0.5
    assert (cfg.tokenizer.codebook_size, cfg.tokenizer.levels) == (1024, 4)  # one shared codebook, 4 vokens
    assert cfg.results_dir == f"results/{name}"


def karpathy_fixture(root, n=24):
    """``n`` rendered scenes as JPEG files under ``root/images`` with a Karpathy-format JSON (16 train, 4 val, 4
    test images, their captions as ``raw`` sentences)."""
    ds = load_synthetic(n_images=n)
    (root / "images").mkdir(parents=True)
    images = []
    for i, item in enumerate(ds.items):
        ds.image(i).save(root / "images" / f"{i:03d}.jpg", quality=90)
        split = "train" if i < 16 else ("val" if i < 20 else "test")
        sents = [{"raw": c, "sentid": 5 * i + k} for k, c in enumerate(item.captions)]
        images.append({"filename": f"{i:03d}.jpg", "imgid": i, "split": split, "sentences": sents})
    path = root / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return path


def test_the_flickr30k_profile_runs_end_to_end_on_a_fixture(tmp_path, monkeypatch):
    monkeypatch.setenv("AVG_DATA_DIR", str(tmp_path / "data"))
    over = {
        "results_dir": str(tmp_path / "results"),
        "data": {"kwargs": {"json_path": str(karpathy_fixture(tmp_path)), "image_root": str(tmp_path / "images")}},
        "encoder": {"path": str(save_tiny_clip(tmp_path / "clip"))},
        "two_tower": {"epochs": 2, "search": "off"},
        "tokenizer": {"codebook_size": 4, "levels": 2, "e_dim": 8, "hidden": [16], "epochs": 3, "batch_size": 32},
        "generator": {"t5_path": str(save_tiny_t5(tmp_path / "t5")), "epochs": 1, "disc_epochs": 1},
        "retrieval": {"pseudo_per_image": 1},
    }
    run = pipeline.setup("flickr30k", over, progress=False)
    assert run.ds.report.kept == 24 and len(run.js.image) == 24
    two_tower = experiments.two_tower_result(run.js)
    avg = experiments.avg_result(run, 0)
    with_pseudo = experiments.avg_result(run, 1)
    for row in (two_tower, avg, with_pseudo):
        assert 0 <= row["R@1"] <= row["R@5"] <= row["R@10"] <= 100 and row["gallery_size"] == 4
    assert type(run.generator(0).model).__name__.startswith("T5")
