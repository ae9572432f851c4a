"""avg_lib.data loaders (folder, karpathy, synthetic, dispatch) and the dataset abstraction.

Every fixture is built here under ``tmp_path``: tiny PIL images, a hand-written ``captions.jsonl`` and a
hand-written Karpathy-format JSON. No network, no models."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avg_lib import data
from avg_lib.data import (
    CaptionedImages,
    DataError,
    Item,
    LoadReport,
    clean_captions,
    images,
    load_dataset,
    stable_split,
)
from avg_lib.data.emoji import _key, build_captions
from avg_lib.data.synthetic import load_synthetic, split_of

# ------------------------------------------------------------------------------------ fixture helpers


def save_img(path: Path, color=(255, 0, 0), size=(4, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def save_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).bytes(200))
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows are dicts (dumped as JSON) or raw strings (written as they are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def esc(path: Path, line: int | None = None) -> str:
    return re.escape(f"{path}:{line}" if line is not None else str(path))


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "mydata"
    save_img(root / "images/a.png", (255, 0, 0))
    save_img(root / "images/b.png", (0, 255, 0))
    save_img(root / "images/sub/c.png", (0, 0, 255))
    save_img(root / "images/d.jpg", (128, 128, 128))
    write_jsonl(
        root / "captions.jsonl",
        [
            {
                "image": "images/a.png",
                "captions": ["  a   red\tsquare ", "", "A RED SQUARE", "   ", "second\n one"],
                "split": "train",
            },
            {"image": "images/b.png", "captions": ["green"], "split": "val", "id": "bee"},
            "",  # blank lines are ignored
            {"image": "images/sub/c.png", "captions": ["blue one", "Blue thing", "blue one"], "split": "test"},
            {"image": "images/d.jpg", "captions": ["gray"], "split": "train", "id": 7, "extra": "ignored"},
        ],
    )
    return root


# ------------------------------------------------------------------------------------ clean_captions


def test_clean_captions_rules():
    assert clean_captions(["  a \t b\n c ", "", "   ", "A B C", "x", "X", "y"]) == ("a b c", "x", "y")
    assert clean_captions([]) == ()
    assert clean_captions(["\u00a0nbsp\u00a0 space "]) == ("nbsp space",)


# ------------------------------------------------------------------------------------ folder: good case


def test_folder_good_case(folder):
    ds = data.load_folder(folder)
    assert ds.name == "mydata"
    assert len(ds) == 4
    assert ds.ids == ["images/a.png", "bee", "images/sub/c.png", "7"]  # default id = image path; explicit honoured
    assert [it.captions for it in ds.items] == [
        ("a red square", "second one"),
        ("green",),
        ("blue one", "Blue thing"),
        ("gray",),
    ]
    assert [it.split for it in ds.items] == ["train", "val", "test", "train"]
    assert ds.items[2].image == str((folder / "images/sub/c.png").resolve())
    assert all(Path(it.image).is_absolute() for it in ds.items)
    assert ds.n_captions() == 6
    assert ds.report.kept == 4 and ds.report.n_skipped == 0 and not ds.report.skipped
    assert "kept 4 items, skipped none" in str(ds.report)

    texts, owner = ds.captions()
    assert texts == ["a red square", "second one", "green", "blue one", "Blue thing", "gray"]
    assert owner.dtype == np.int64 and owner.tolist() == [0, 0, 1, 2, 2, 3]
    assert [ds.items[o].captions.count(t) for t, o in zip(texts, owner)] == [1] * 6

    assert ds.split_indices("train").tolist() == [0, 3]
    assert ds.split_indices("val").tolist() == [1]
    assert ds.split_indices("test").tolist() == [2]
    assert ds.split_indices("test").dtype == np.int64
    with pytest.raises(ValueError, match="unknown split"):
        ds.split_indices("dev")

    assert "4 images, 6 captions, train=2, val=1, test=1" in repr(ds)


def test_folder_images_decode_to_rgb(folder):
    ds = data.load_folder(folder)
    for i, colour in [(0, (255, 0, 0)), (1, (0, 255, 0)), (2, (0, 0, 255))]:
        img = ds.image(i)
        assert img.mode == "RGB" and img.size == (4, 3)
        assert np.all(np.asarray(img) == np.array(colour, dtype=np.uint8))
    assert np.all(np.abs(np.asarray(ds.image(3)).astype(int) - 128) <= 3)  # jpeg


def test_folder_summary(folder):
    pytest.importorskip("pandas")
    df = data.load_folder(folder).summary()
    assert df["split"].tolist() == ["train", "val", "test"]
    assert df["images"].tolist() == [2, 1, 1]
    assert df["captions"].tolist() == [3, 1, 2]
    assert df["captions_per_image"].tolist() == [1.5, 1.0, 2.0]


def test_folder_name_and_captions_file_options(folder):
    (folder / "captions.jsonl").rename(folder / "other.jsonl")
    ds = data.load_folder(folder, captions_file="other.jsonl", name="custom")
    assert ds.name == "custom" and len(ds) == 4


def test_folder_absolute_image_path(tmp_path):
    img = save_img(tmp_path / "elsewhere" / "x.png")
    root = tmp_path / "root"
    write_jsonl(root / "captions.jsonl", [{"image": str(img), "captions": ["x"], "split": "train", "id": "x"}])
    ds = data.load_folder(root)
    assert ds.items[0].image == str(img.resolve())


def test_folder_fingerprint_stable_and_sensitive(folder):
    fp = data.load_folder(folder).fingerprint()
    assert fp == data.load_folder(folder).fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", fp)

    path = folder / "captions.jsonl"
    original = path.read_text()
    path.write_text(original.replace('"green"', '"greenish"'))
    fp_caption = data.load_folder(folder).fingerprint()
    assert fp_caption != fp

    path.write_text(original.replace('"split": "val"', '"split": "test"'))
    fp_split = data.load_folder(folder).fingerprint()
    assert fp_split not in (fp, fp_caption)

    path.write_text(original)
    assert data.load_folder(folder).fingerprint() == fp
    assert data.load_folder(folder, name="renamed").fingerprint() != fp


def test_utf8_captions_and_bom(tmp_path):
    root = tmp_path / "u"
    save_img(root / "a.png")
    rows = [{"image": "a.png", "captions": ["café — 猫", "CAFÉ — 猫"], "split": "train"}]
    (root / "captions.jsonl").write_text("\ufeff" + json.dumps(rows[0], ensure_ascii=False) + "\n", encoding="utf-8")
    ds = data.load_folder(root)
    assert ds.items[0].captions == ("café — 猫",)


# ------------------------------------------------------------------------------------ folder: structural errors


def _bad_folder(tmp_path, rows) -> Path:
    root = tmp_path / "bad"
    save_img(root / "a.png")
    save_img(root / "b.png")
    write_jsonl(root / "captions.jsonl", rows)
    return root


GOOD = {"image": "a.png", "captions": ["ok"], "split": "train"}


@pytest.mark.parametrize(
    "line,pattern",
    [
        ('{"image": "b.png", "captions": ["x"], "split": "train"', "malformed JSON"),
        ("not json at all", "malformed JSON"),
        ('["b.png", ["x"], "train"]', "expected a JSON object, got list"),
        ('"just a string"', "expected a JSON object, got str"),
        ("42", "expected a JSON object, got int"),
        (json.dumps({"captions": ["x"], "split": "train"}), "missing field 'image'"),
        (json.dumps({"image": "b.png", "split": "train"}), "missing field 'captions'"),
        (json.dumps({"image": "b.png", "captions": ["x"]}), "missing field 'split'"),
        (json.dumps({"image": 5, "captions": ["x"], "split": "train"}), "field 'image' must be a string"),
        (
            json.dumps({"image": "b.png", "captions": "a single string", "split": "train"}),
            "'captions' must be a list of strings",
        ),
        (
            json.dumps({"image": "b.png", "captions": ["x", 3], "split": "train"}),
            "'captions' must be a list of strings",
        ),
        (
            json.dumps({"image": "b.png", "captions": ["x", None], "split": "train"}),
            "'captions' must be a list of strings",
        ),
        (
            json.dumps({"image": "b.png", "captions": {"a": "x"}, "split": "train"}),
            "'captions' must be a list of strings",
        ),
        (json.dumps({"image": "b.png", "captions": ["x"], "split": "dev"}), "unknown split 'dev'"),
        (json.dumps({"image": "b.png", "captions": ["x"], "split": "Train"}), "unknown split 'Train'"),
        (json.dumps({"image": "b.png", "captions": ["x"], "split": ["train"]}), r"unknown split \['train'\]"),
    ],
    ids=[
        "truncated-json",
        "not-json",
        "list",
        "string",
        "int",
        "no-image",
        "no-captions",
        "no-split",
        "image-int",
        "captions-str",
        "captions-int",
        "captions-null",
        "captions-dict",
        "split-dev",
        "split-case",
        "split-list",
    ],
)
def test_folder_structural_errors_name_file_and_line(tmp_path, line, pattern):
    # the bad row is on line 3 (line 2 is blank and still counts)
    root = _bad_folder(tmp_path, [GOOD, "", line, {"image": "b.png", "captions": ["y"], "split": "val"}])
    path = root / "captions.jsonl"
    with pytest.raises(DataError, match=esc(path, 3) + ": " + ".*" + pattern):
        data.load_folder(root)
    with pytest.raises(DataError, match=esc(path, 3)):
        data.load_folder(root, strict=True, verify_images=False)


def test_folder_duplicate_id_names_both_lines(tmp_path):
    root = _bad_folder(
        tmp_path,
        [
            GOOD,
            {"image": "b.png", "captions": ["x"], "split": "val", "id": "same"},
            {"image": "b.png", "captions": ["y"], "split": "test", "id": "other"},
            {"image": "a.png", "captions": ["z"], "split": "test", "id": "same"},
        ],
    )
    with pytest.raises(
        DataError, match=esc(root / "captions.jsonl", 4) + r": duplicate id 'same' \(first seen on line 2\)"
    ):
        data.load_folder(root)


def test_folder_duplicate_default_id(tmp_path):
    root = _bad_folder(tmp_path, [GOOD, GOOD])
    with pytest.raises(DataError, match=esc(root / "captions.jsonl", 2) + r": duplicate id 'a.png' .*line 1"):
        data.load_folder(root)


def test_folder_missing_captions_file(tmp_path):
    root = tmp_path / "empty_dir"
    root.mkdir()
    with pytest.raises(DataError, match=esc(root / "captions.jsonl") + ": captions file not found"):
        data.load_folder(root)
    with pytest.raises(DataError, match=esc(tmp_path / "nowhere" / "captions.jsonl")):
        data.load_folder(tmp_path / "nowhere")


def test_folder_empty_file_has_no_usable_items(tmp_path):
    root = _bad_folder(tmp_path, ["", "   "])
    with pytest.raises(DataError, match=esc(root / "captions.jsonl") + ": no usable items"):
        data.load_folder(root)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


# ------------------------------------------------------------------------------------ folder: per-item skips


@pytest.fixture
def messy(tmp_path) -> Path:
    root = tmp_path / "messy"
    save_img(root / "good1.png")
    save_img(root / "good2.png", (0, 0, 255))
    save_corrupt(root / "corrupt.png")
    save_corrupt(root / "corrupt2.jpg")
    src = root / "full.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(src)
    (root / "truncated.jpg").write_bytes(src.read_bytes()[:300])
    write_jsonl(
        root / "captions.jsonl",
        [
            {"image": "good1.png", "captions": ["fine"], "split": "train"},  # 1
            {"image": "gone.png", "captions": ["x"], "split": "train"},  # 2 missing
            {"image": "corrupt.png", "captions": ["x"], "split": "val"},  # 3 unreadable
            {"image": "good2.png", "captions": ["", "  \t "], "split": "test", "id": "blank"},  # 4 no captions
            {"image": "sub/gone.png", "captions": ["y"], "split": "test"},  # 5 missing
            {"image": "good2.png", "captions": ["also fine"], "split": "test"},  # 6
            {"image": "truncated.jpg", "captions": ["x"], "split": "train"},  # 7 unreadable
            {"image": "gone.png", "captions": [], "split": "val", "id": "nocap"},  # 8 no captions first
            {"image": "corrupt2.jpg", "captions": ["x"], "split": "train"},  # 9 unreadable
        ],
    )
    return root


def test_folder_per_item_problems_are_skipped_and_counted(messy, capsys):
    ds = data.load_folder(messy)
    assert ds.ids == ["good1.png", "good2.png"]
    assert [it.split for it in ds.items] == ["train", "test"]
    rep = ds.report
    assert rep.skipped == Counter({"missing image": 2, "unreadable image": 3, "no captions": 2})
    assert rep.n_skipped == 7 and rep.kept == 2
    assert rep.examples == {
        "missing image": ["gone.png", "sub/gone.png"],
        "unreadable image": ["corrupt.png", "truncated.jpg", "corrupt2.jpg"],
        "no captions": ["blank", "nocap"],
    }
    assert rep.source == str(messy / "captions.jsonl")
    out = capsys.readouterr().out
    assert "WARNING" in out and "kept 2 items, skipped 7" in out
    assert "2 missing image (e.g. gone.png, sub/gone.png)" in out


def test_folder_report_examples_capped_at_three(tmp_path):
    root = tmp_path / "many"
    save_img(root / "ok.png")
    write_jsonl(
        root / "captions.jsonl",
        [{"image": "ok.png", "captions": ["ok"], "split": "train"}]
        + [{"image": f"m{i}.png", "captions": ["x"], "split": "train"} for i in range(5)],
    )
    rep = data.load_folder(root).report
    assert rep.skipped == Counter({"missing image": 5})
    assert rep.examples["missing image"] == ["m0.png", "m1.png", "m2.png"]


def test_folder_without_verification_only_checks_existence(messy):
    ds = data.load_folder(messy, verify_images=False)
    assert ds.ids == ["good1.png", "corrupt.png", "good2.png", "truncated.jpg", "corrupt2.jpg"]
    assert ds.report.skipped == Counter({"missing image": 2, "no captions": 2})


def test_image_verdicts_are_kept_so_a_second_load_opens_no_image(messy, tmp_path, monkeypatch):
    """A dataset is verified once: the next load (the next notebook) reuses every verdict, skips the same items for
    the same reasons, and says how many images it opened; a changed file is checked again."""
    monkeypatch.setenv("AVG_DATA_DIR", str(tmp_path / "cache"))
    first = data.load_folder(messy)
    assert first.report.images_checked == 5  # the two good images and three unreadable ones; missing files never
    opened, real = [], images.check_readable
    monkeypatch.setattr(images, "check_readable", lambda p: opened.append(p) or real(p))
    second = data.load_folder(messy)
    assert opened == [] and second.report.images_checked == 0 and "0 now, 5 by an earlier load" in str(second.report)
    assert second.ids == first.ids and second.report.skipped == first.report.skipped
    save_corrupt(messy / "good1.png")  # the file changes (size and time): its old verdict no longer applies
    third = data.load_folder(messy)
    assert opened == [messy / "good1.png"] and third.ids == ["good2.png"]
    assert third.report.skipped["unreadable image"] == 4


def test_image_verdicts_survive_a_broken_verdict_file(messy, tmp_path, monkeypatch):
    monkeypatch.setenv("AVG_DATA_DIR", str(tmp_path / "cache"))
    data.load_folder(messy)
    (verdicts,) = (tmp_path / "cache" / "image_checks").glob("*.json")
    verdicts.write_text("{not json")  # e.g. a disk that filled up: the verdicts are redone, not trusted
    again = data.load_folder(messy)
    assert again.report.images_checked == 5 and again.ids == ["good1.png", "good2.png"]
    assert json.loads(verdicts.read_text())


@pytest.mark.parametrize(
    "bad_row,problem",
    [
        ({"image": "gone.png", "captions": ["x"], "split": "train", "id": "g"}, "missing image"),
        ({"image": "corrupt.png", "captions": ["x"], "split": "train", "id": "g"}, "unreadable image"),
        ({"image": "truncated.jpg", "captions": ["x"], "split": "train", "id": "g"}, "unreadable image"),
        ({"image": "good1.png", "captions": ["", " "], "split": "train", "id": "g"}, "no captions"),
        ({"image": "good1.png", "captions": [], "split": "train", "id": "g"}, "no captions"),
    ],
)
def test_folder_strict_turns_skips_into_errors(messy, bad_row, problem):
    write_jsonl(messy / "captions.jsonl", [{"image": "good2.png", "captions": ["fine"], "split": "train"}, bad_row])
    assert data.load_folder(messy).report.skipped == Counter({problem: 1})
    with pytest.raises(DataError, match=esc(messy / "captions.jsonl", 2) + f": {problem} for id 'g'"):
        data.load_folder(messy, strict=True)


def test_folder_all_rows_bad_raises(messy):
    write_jsonl(
        messy / "captions.jsonl",
        [
            {"image": "gone.png", "captions": ["x"], "split": "train"},
            {"image": "corrupt.png", "captions": ["x"], "split": "train"},
            {"image": "good1.png", "captions": [""], "split": "train"},
        ],
    )
    with pytest.raises(DataError, match=esc(messy / "captions.jsonl") + ": no usable items") as e:
        data.load_folder(messy)
    assert (
        "1 missing image" in str(e.value) and "1 unreadable image" in str(e.value) and "1 no captions" in str(e.value)
    )


# ------------------------------------------------------------------------------------ karpathy


def karpathy_json(path: Path, images) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "dataset": "test"}), encoding="utf-8")
    return path


def sents(*raws):
    return [{"raw": r, "tokens": r.lower().split(), "sentid": i} for i, r in enumerate(raws)]


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "coco_images"
    save_img(root / "train2014/t1.jpg")
    save_img(root / "train2014/t2.jpg")
    save_img(root / "val2014/v1.jpg")
    save_img(root / "val2014/v2.jpg")
    save_img(root / "val2014/r1.jpg")
    save_img(root / "val2014/r2.jpg")
    js = karpathy_json(
        tmp_path / "ann" / "dataset_coco.json",
        [
            {
                "filepath": "train2014",
                "filename": "t1.jpg",
                "split": "train",
                "imgid": 0,
                "cocoid": 101,
                "sentences": sents(
                    "A dog runs.", "a  dog runs.", "A dog on grass.", "Dog.", "Running dog.", "Sixth caption."
                ),
            },
            {
                "filepath": "val2014",
                "filename": "v1.jpg",
                "split": "val",
                "imgid": 1,
                "cocoid": 102,
                "sentences": sents("A cat."),
            },
            {
                "filepath": "val2014",
                "filename": "r1.jpg",
                "split": "restval",
                "imgid": 2,
                "cocoid": 103,
                "sentences": sents("A bird.", "Bird in sky."),
            },
            {
                "filepath": "val2014",
                "filename": "v2.jpg",
                "split": "test",
                "imgid": 3,
                "cocoid": 104,
                "sentences": sents("A car.", "A red car."),
            },
            {
                "filepath": "train2014",
                "filename": "t2.jpg",
                "split": "train",
                "imgid": 4,
                "cocoid": 105,
                "sentences": sents("A tree."),
            },
            {
                "filepath": "val2014",
                "filename": "r2.jpg",
                "split": "restval",
                "imgid": 5,
                "cocoid": 106,
                "sentences": sents("A boat."),
            },
        ],
    )
    return js, root


def test_karpathy_coco_style(coco):
    js, root = coco
    ds = data.load_karpathy(js, root)
    assert ds.name == "coco"
    assert ds.ids == ["101", "102", "103", "104", "105", "106"]  # cocoid wins over imgid
    assert [it.split for it in ds.items] == ["train", "val", "train", "test", "train", "train"]  # restval -> train
    assert ds.items[0].captions == ("A dog runs.", "A dog on grass.", "Dog.", "Running dog.", "Sixth caption.")
    assert ds.items[2].image == str(root / "val2014" / "r1.jpg")
    assert ds.items[0].image == str(root / "train2014" / "t1.jpg")
    assert ds.report.kept == 6 and not ds.report.skipped
    assert ds.image(1).mode == "RGB"
    assert ds.split_indices("train").tolist() == [0, 2, 4, 5]


@pytest.mark.parametrize("restval,expected", [("val", "val"), ("test", "test")])
def test_karpathy_restval_to_other_split(coco, restval, expected):
    ds = data.load_karpathy(*coco, restval=restval)
    assert [it.split for it in ds.items if it.id in ("103", "106")] == [expected, expected]


def test_karpathy_restval_skip_counts(coco):
    ds = data.load_karpathy(*coco, restval="skip")
    assert ds.ids == ["101", "102", "104", "105"]
    assert ds.report.skipped == Counter({"restval skipped": 2})
    assert ds.report.examples["restval skipped"] == ["r1.jpg", "r2.jpg"]
    assert ds.report.kept == 4


def test_karpathy_bad_restval_option(coco):
    with pytest.raises(ValueError, match="restval"):
        data.load_karpathy(*coco, restval="drop")


def test_karpathy_max_captions(coco):
    ds = data.load_karpathy(*coco, max_captions=2)
    # the first two raw sentences, then cleaned ("a  dog runs." duplicates the first)
    assert ds.items[0].captions == ("A dog runs.",)
    assert ds.items[3].captions == ("A car.", "A red car.")
    assert ds.items[1].captions == ("A cat.",)
    assert max(len(it.captions) for it in data.load_karpathy(*coco, max_captions=5).items) == 4
    assert len(data.load_karpathy(*coco).items[0].captions) == 5


def test_karpathy_flickr_style_and_id_fallbacks(tmp_path):
    root = tmp_path / "flickr30k-images"
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        save_img(root / name)
    js = karpathy_json(
        tmp_path / "dataset_flickr30k.json",
        [
            {"filename": "1.jpg", "split": "train", "imgid": 0, "sentences": sents("One.", "Uno.")},
            {"filename": "2.jpg", "split": "test", "sentences": sents("Two.")},  # no imgid -> filename
            {"filename": "3.jpg", "split": "val", "imgid": 2, "sentences": sents("Three.")},
        ],
    )
    ds = data.load_karpathy(js, root)
    assert ds.name == "flickr30k"
    assert ds.ids == ["0", "2.jpg", "2"]
    assert ds.items[0].image == str(root / "1.jpg")
    assert [it.split for it in ds.items] == ["train", "test", "val"]
    assert ds.items[0].captions == ("One.", "Uno.")


def test_karpathy_sentences_without_raw_or_missing(tmp_path):
    root = tmp_path / "imgs"
    save_img(root / "1.jpg")
    save_img(root / "2.jpg")
    js = karpathy_json(
        tmp_path / "k.json",
        [
            {"filename": "1.jpg", "split": "train", "sentences": [{"tokens": ["a"]}, "not a dict", {"raw": "kept"}]},
            {"filename": "2.jpg", "split": "train"},  # no sentences at all -> no captions
        ],
    )
    ds = data.load_karpathy(js, root)
    assert ds.ids == ["1.jpg"] and ds.items[0].captions == ("kept",)
    assert ds.report.skipped == Counter({"no captions": 1})


def test_karpathy_missing_and_unreadable_images_skipped(coco):
    js, root = coco
    (root / "val2014" / "v1.jpg").unlink()
    save_corrupt(root / "train2014" / "t2.jpg")
    ds = data.load_karpathy(js, root)
    assert ds.ids == ["101", "103", "104", "106"]
    assert ds.report.skipped == Counter({"missing image": 1, "unreadable image": 1})
    assert ds.report.examples == {"missing image": ["102"], "unreadable image": ["105"]}
    with pytest.raises(DataError, match=re.escape(f"{js}: images[1]: missing image for id '102'")):
        data.load_karpathy(js, root, strict=True)


def test_karpathy_malformed_json_names_file_and_line(tmp_path):
    (tmp_path / "imgs").mkdir()
    js = tmp_path / "dataset_x.json"
    js.write_text(
        '{"images": [\n  {"filename": "a.jpg", "split": "train"},\n  {"filename": "b.jpg" "split": "val"}\n]}\n'
    )
    with pytest.raises(DataError, match=esc(js, 3) + ": malformed JSON"):
        data.load_karpathy(js, tmp_path / "imgs")


@pytest.mark.parametrize("doc", [[], {"images": {}}, {"imgs": []}, "text", {"images": "x"}])
def test_karpathy_wrong_top_level(tmp_path, doc):
    (tmp_path / "imgs").mkdir()
    js = tmp_path / "k.json"
    js.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=esc(js) + ": expected an object with an 'images' list"):
        data.load_karpathy(js, tmp_path / "imgs")


def test_karpathy_missing_json_or_image_root(tmp_path):
    (tmp_path / "imgs").mkdir()
    with pytest.raises(DataError, match=esc(tmp_path / "none.json")):
        data.load_karpathy(tmp_path / "none.json", tmp_path / "imgs")
    js = karpathy_json(tmp_path / "k.json", [])
    with pytest.raises(DataError, match=esc(tmp_path / "no_root") + ": image root is not a directory"):
        data.load_karpathy(js, tmp_path / "no_root")


def test_karpathy_empty_images_list_has_no_usable_items(tmp_path):
    (tmp_path / "imgs").mkdir()
    js = karpathy_json(tmp_path / "k.json", [])
    with pytest.raises(DataError, match=esc(js) + ": no usable items"):
        data.load_karpathy(js, tmp_path / "imgs")


@pytest.mark.parametrize(
    "bad,pattern",
    [
        ({"filename": "b.jpg", "split": "dev", "sentences": sents("x")}, "unknown split 'dev'"),
        ({"filename": "b.jpg", "sentences": sents("x")}, "needs 'filename' and 'split'"),
        ({"split": "train", "sentences": sents("x")}, "needs 'filename' and 'split'"),
        ("b.jpg", "needs 'filename' and 'split'"),
        ({"filename": "b.jpg", "split": "train", "sentences": "x"}, "'sentences' must be a list"),
        ({"filename": 7, "split": "train", "sentences": sents("x")}, "'filename'"),
        ({"filename": "b.jpg", "split": ["train"], "sentences": sents("x")}, "unknown split"),
        ({"filename": "b.jpg", "filepath": 3, "split": "train", "sentences": sents("x")}, "'filepath'"),
    ],
)
def test_karpathy_structural_errors_name_file_and_entry(tmp_path, bad, pattern):
    root = tmp_path / "imgs"
    save_img(root / "a.jpg")
    save_img(root / "b.jpg")
    js = karpathy_json(tmp_path / "k.json", [{"filename": "a.jpg", "split": "train", "sentences": sents("a")}, bad])
    with pytest.raises(DataError, match=esc(js) + r": images\[1\]: .*" + pattern):
        data.load_karpathy(js, root)


def test_karpathy_duplicate_id(tmp_path):
    root = tmp_path / "imgs"
    save_img(root / "a" / "x.jpg")
    save_img(root / "b" / "x.jpg")
    js = karpathy_json(
        tmp_path / "k.json",
        [
            {"filepath": "a", "filename": "x.jpg", "split": "train", "cocoid": 9, "sentences": sents("a")},
            {"filepath": "b", "filename": "x.jpg", "split": "val", "cocoid": 10, "sentences": sents("b")},
            {"filepath": "b", "filename": "x.jpg", "split": "test", "cocoid": 9, "sentences": sents("c")},
        ],
    )
    with pytest.raises(DataError, match=esc(js) + r": images\[2\]: duplicate id '9' \(first at images\[0\]\)"):
        data.load_karpathy(js, root)


def test_karpathy_fingerprint_stable(coco):
    assert data.load_karpathy(*coco).fingerprint() == data.load_karpathy(*coco).fingerprint()
    assert data.load_karpathy(*coco).fingerprint() != data.load_karpathy(*coco, restval="val").fingerprint()


# ------------------------------------------------------------------------------------ dispatch


def test_load_dataset_dispatch(folder, coco):
    ds = load_dataset("folder", root=folder, name="viaDispatch")
    assert ds.name == "viaDispatch" and ds.ids == data.load_folder(folder).ids
    js, root = coco
    ds = load_dataset("karpathy", json_path=js, image_root=root, restval="skip", max_captions=1)
    assert ds.ids == ["101", "102", "104", "105"] and all(len(it.captions) == 1 for it in ds.items)
    ds = load_dataset("synthetic", n_images=5, seed=3)
    assert len(ds) == 5 and ds.name.startswith("synthetic-s3")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(TypeError):
        load_dataset("folder", root=folder, bogus_option=1)


# ------------------------------------------------------------------------------------ stable_split


def test_stable_split_counts_and_determinism():
    ids = [f"id{i}" for i in range(50)]
    s = stable_split(ids, n_val=5, n_test=7)
    assert set(s) == set(ids)
    assert Counter(s.values()) == Counter({"train": 38, "val": 5, "test": 7})
    assert stable_split(ids, n_val=5, n_test=7) == s
    rng = np.random.default_rng(0)
    for _ in range(3):
        shuffled = list(rng.permutation(ids))
        assert stable_split(shuffled, n_val=5, n_test=7) == s  # independent of input order


def test_stable_split_salt_changes_assignment():
    ids = [f"id{i}" for i in range(50)]
    a, b = stable_split(ids, 5, 7, salt="one"), stable_split(ids, 5, 7, salt="two")
    assert a != b
    assert Counter(b.values()) == Counter(a.values())


def test_stable_split_nested_counts():
    # the test set is a prefix of the hash order: growing n_test keeps the old test ids in test
    ids = [f"x{i}" for i in range(40)]
    small, big = stable_split(ids, 0, 3), stable_split(ids, 0, 6)
    assert {i for i, s in small.items() if s == "test"} <= {i for i, s in big.items() if s == "test"}
    assert Counter(stable_split(ids, 0, 0).values()) == Counter({"train": 40})


@pytest.mark.parametrize("n,n_val,n_test", [(10, 5, 5), (10, 4, 7), (0, 0, 0), (3, 0, 3)])
def test_stable_split_needs_training_images(n, n_val, n_test):
    with pytest.raises(ValueError, match="leaves no training images"):
        stable_split([f"i{k}" for k in range(n)], n_val=n_val, n_test=n_test)


def test_stable_split_smallest_legal():
    assert Counter(stable_split(["a", "b", "c"], 1, 1).values()) == Counter({"train": 1, "val": 1, "test": 1})


# ------------------------------------------------------------------------------------ synthetic


def _pixels(ds, i):
    img = ds.image(i)
    assert img.mode == "RGB"
    return np.asarray(img)


def test_synthetic_same_seed_identical():
    a, b = load_synthetic(n_images=12, seed=5), load_synthetic(n_images=12, seed=5)
    assert a.ids == b.ids and [it.captions for it in a.items] == [it.captions for it in b.items]
    for i in range(12):
        assert np.array_equal(_pixels(a, i), _pixels(b, i))
    assert a.fingerprint() == b.fingerprint()


def test_synthetic_prefix_stable_when_growing():
    small, big = load_synthetic(n_images=20, seed=1), load_synthetic(n_images=50, seed=1)
    assert big.items[:20] == small.items
    for i in range(20):
        assert np.array_equal(_pixels(small, i), _pixels(big, i))


def test_synthetic_different_seeds_differ():
    a, b = load_synthetic(n_images=20, seed=0), load_synthetic(n_images=20, seed=1)
    assert a.ids == b.ids
    assert [it.captions for it in a.items] != [it.captions for it in b.items]
    assert sum(not np.array_equal(_pixels(a, i), _pixels(b, i)) for i in range(20)) >= 15
    assert a.name != b.name and a.fingerprint() != b.fingerprint()


def test_synthetic_split_rule_and_shape():
    ds = load_synthetic(n_images=35, seed=2, image_size=24, captions_per_image=2)
    assert [it.split for it in ds.items] == [split_of(i) for i in range(35)]
    assert ds.split_indices("test").tolist() == [0, 10, 20, 30]
    assert ds.split_indices("val").tolist() == [1, 11, 21, 31]
    assert len(ds.split_indices("train")) == 27
    assert ds.ids[0] == "syn0000000" and ds.ids[34] == "syn0000034"
    assert all(len(it.captions) == 2 and it.image is None for it in ds.items)
    assert ds.image(7).size == (24, 24)
    assert ds.name == "synthetic-s2-24px"
    texts, owner = ds.captions()
    assert len(texts) == 70 and owner.tolist() == [i // 2 for i in range(70)]


def test_synthetic_captions_describe_the_scene():
    from avg_lib.data.synthetic import scene

    ds = load_synthetic(n_images=10, seed=4, captions_per_image=4)
    for i, it in enumerate(ds.items):
        sc = scene(4, i)
        assert len(it.captions) == 4 and len({c.lower() for c in it.captions}) == 4
        for o in sc["objects"]:
            assert all(o["color"] in c and o["shape"] in c for c in it.captions)
        assert sc["background"] in it.captions[0] and sc["background"] in it.captions[1]


# ------------------------------------------------------------------------------------ CaptionedImages


def _item(i, **kw):
    return Item(**{"id": f"i{i}", "captions": ("c",), "split": "train", "image": f"/x/{i}.png", **kw})


def test_captioned_images_rejects_bad_items():
    with pytest.raises(DataError, match="duplicate item id 'i1'"):
        CaptionedImages("n", [_item(0), _item(1), _item(1, split="val")])
    with pytest.raises(DataError, match="unknown split 'dev'"):
        CaptionedImages("n", [_item(0), _item(1, split="dev")])
    with pytest.raises(DataError, match="'i1' has no captions"):
        CaptionedImages("n", [_item(0), _item(1, captions=())])
    with pytest.raises(DataError, match="no image path and the dataset has no renderer"):
        CaptionedImages("n", [_item(0, image=None)])


def test_captioned_images_renderer_and_default_report():
    ds = CaptionedImages(
        "r",
        [_item(0, image=None), _item(1, image=None)],
        renderer=lambda it: Image.new("RGB", (2, 2), (int(it.id[1:]) * 100, 0, 0)),
    )
    assert np.asarray(ds.image(1))[0, 0].tolist() == [100, 0, 0]
    assert isinstance(ds.report, LoadReport) and ds.report.kept == 2 and ds.report.n_skipped == 0
    assert len(ds) == 2 and ds.ids == ["i0", "i1"]


def test_captioned_images_image_error_for_missing_file(tmp_path):
    from avg_lib.data.images import ImageError

    ds = CaptionedImages("m", [_item(0, image=str(tmp_path / "gone.png"))])
    with pytest.raises(ImageError, match=re.escape(str(tmp_path / "gone.png"))):
        ds.image(0)


# ------------------------------------------------------------------------------------ emoji helpers (offline)


def test_emoji_key():
    assert _key("1f600") == "1F600"
    assert _key("2764-FE0F") == "2764"
    assert _key("1f3f3-fe0f-200d-1f308") == "1F3F3-200D-1F308"
    assert _key("0023-FE0F-20E3") == _key("0023-20E3") == "0023-20E3"


def test_emoji_build_captions():
    cldr = {"label": "nerd face", "tags": ["brainy", "clever", "geek"]}
    src = {"name": "NERD FACE", "short_names": ["nerd_face", "face-with-glasses"]}
    caps = build_captions(cldr, src)
    assert caps == ["nerd face", "nerd face", "nerd face", "face with glasses", "brainy, clever, geek"]
    assert clean_captions(caps) == ("nerd face", "face with glasses", "brainy, clever, geek")
    # mixed-case names are kept as written; no CLDR entry -> only the source fields
    assert build_captions(None, {"name": "Flag of Egypt", "short_names": ["flag-eg"]}) == ["Flag of Egypt", "flag eg"]
    assert build_captions({"label": "x"}, {}) == ["x"]
    assert build_captions({"label": "x", "tags": []}, {"name": None, "short_names": []}) == ["x"]


def test_null_and_non_string_captions_are_dropped_not_stringified():
    assert clean_captions(["a cat", None, 3, "  "]) == ("a cat",)


def test_synthetic_karpathy_style_split():
    from collections import Counter

    from avg_lib.data.synthetic import load_synthetic

    ds = load_synthetic(60, n_val=5, n_test=7, captions_per_image=5)
    assert Counter(it.split for it in ds.items) == {"train": 48, "val": 5, "test": 7}
    assert [it.split for it in ds.items[:8]] == ["test"] * 7 + ["val"]
    assert Counter(it.split for it in load_synthetic(60).items) == {"train": 48, "val": 6, "test": 6}  # unchanged
    with pytest.raises(ValueError, match="both n_val and n_test"):
        load_synthetic(60, n_val=5)
    with pytest.raises(ValueError, match="leaves no training images"):
        load_synthetic(10, n_val=5, n_test=5)
