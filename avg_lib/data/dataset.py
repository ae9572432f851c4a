"""One small dataset abstraction for every source: images, several captions each, a split, stable ids.

``CaptionedImages`` is a list of :class:`Item` plus a way to get each item's image. Four loaders
build it (:func:`avg_lib.data.load_dataset` dispatches by name):

==============  ==================================================================================
``emoji``       real Noto emoji + their real text fields (see :mod:`avg_lib.data.emoji`)
``synthetic``   procedurally rendered captioned scenes (see :mod:`avg_lib.data.synthetic`)
``karpathy``    ``dataset_flickr30k.json`` / ``dataset_coco.json`` + an image root (the paper's data)
``folder``      ``<root>/captions.jsonl`` rows ``{"image", "captions", "split"}`` (bring your own)
==============  ==================================================================================

Bad input policy (tested in tests/test_data.py): structural problems of a file (malformed JSON or
JSONL, a duplicate id, an unknown split, a wrong field type) raise :class:`DataError` naming the
file and line; problems of a single item (missing or unreadable image, no usable caption) are
skipped, counted per reason in ``dataset.report`` and printed, unless ``strict=True`` turns them
into errors too.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from avg_lib.data.images import ImageChecks, Thumbnails, load_rgb
from avg_lib.paths import data_dir

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """Bad input that cannot be skipped safely; the message names the file (and line)."""


@dataclass(frozen=True)
class Item:
    id: str
    captions: tuple[str, ...]
    split: str
    image: str | None = None  # absolute path, or None when the dataset renders images itself


@dataclass
class LoadReport:
    """Counts of skipped items per reason, with a few example ids each."""

    source: str
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    images_checked: int | None = None  # images opened to verify them in this load (None: verification off)
    images_reused: int = 0  # images whose verdict an earlier load had kept (avg_lib.data.images.ImageChecks)

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(example)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        checks = ""
        if self.images_checked is not None:
            checks = f"; images verified: {self.images_checked} now, {self.images_reused} by an earlier load"
        if not self.skipped:
            return f"{self.source}: kept {self.kept} items, skipped none{checks}"
        parts = [
            f"{n} {reason} (e.g. {', '.join(self.examples[reason])})" for reason, n in sorted(self.skipped.items())
        ]
        return f"{self.source}: kept {self.kept} items, skipped {self.n_skipped}: " + "; ".join(parts) + checks


def clean_captions(captions: Iterable[str]) -> tuple[str, ...]:
    """Strip, collapse white space, drop empties, non-strings (``null`` in JSON) and case-insensitive
    duplicates (order kept)."""
    out, seen = [], set()
    for c in captions:
        if not isinstance(c, str):
            continue
        c = re.sub(r"\s+", " ", c).strip()
        if c and c.lower() not in seen:
            seen.add(c.lower())
            out.append(c)
    return tuple(out)


class CaptionedImages:
    """Items in a fixed order; ``image(i)`` returns item ``i`` as an RGB PIL image."""

    def __init__(
        self,
        name: str,
        items: list[Item],
        report: LoadReport | None = None,
        renderer: Callable[[Item], Image.Image] | None = None,
    ):
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            dup = next(i for i, c in Counter(ids).items() if c > 1)
            raise DataError(f"{name}: duplicate item id {dup!r}")
        for it in items:
            if it.split not in SPLITS:
                raise DataError(f"{name}: item {it.id!r} has unknown split {it.split!r} (expected one of {SPLITS})")
            if not it.captions:
                raise DataError(f"{name}: item {it.id!r} has no captions")
            if it.image is None and renderer is None:
                raise DataError(f"{name}: item {it.id!r} has no image path and the dataset has no renderer")
        self.name = name
        self.items = list(items)
        self.report = report or LoadReport(source=name, kept=len(items))
        self._renderer = renderer
        self._thumbnails: dict[int, Thumbnails] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        counts = Counter(it.split for it in self.items)
        return (
            f"CaptionedImages({self.name!r}, {len(self)} images, {self.n_captions()} captions, "
            + ", ".join(f"{s}={counts.get(s, 0)}" for s in SPLITS)
            + ")"
        )

    @property
    def ids(self) -> list[str]:
        return [it.id for it in self.items]

    def image(self, i: int, min_side: int | None = None) -> Image.Image:
        """Item ``i``'s image as RGB. ``min_side``: reduced to that shorter side if larger, decoded once and then
        read from the thumbnail cache (``<data dir>/thumbnails``, :class:`avg_lib.data.images.Thumbnails`)."""
        it = self.items[i]
        if it.image is None:
            return self._renderer(it)
        if min_side is None:
            return load_rgb(it.image)
        if min_side not in self._thumbnails:
            self._thumbnails[min_side] = Thumbnails(data_dir() / "thumbnails", min_side)
        return self._thumbnails[min_side].get(it.image)

    def split_indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return np.array([i for i, it in enumerate(self.items) if it.split == split], dtype=np.int64)

    def n_captions(self) -> int:
        return sum(len(it.captions) for it in self.items)

    def captions(self) -> tuple[list[str], np.ndarray]:
        """All captions flattened, and for each the index of its image (the row order of text features)."""
        texts, owner = [], []
        for i, it in enumerate(self.items):
            texts.extend(it.captions)
            owner.extend([i] * len(it.captions))
        return texts, np.asarray(owner, dtype=np.int64)

    def fingerprint(self) -> str:
        """Hash of ids, splits, captions and image locations: the cache key of anything derived."""
        h = hashlib.sha256(self.name.encode())
        for it in self.items:
            h.update(
                json.dumps([it.id, it.split, list(it.captions), it.image is not None and Path(it.image).name]).encode()
            )
        return h.hexdigest()[:16]

    def summary(self):
        import pandas as pd

        rows = []
        for s in SPLITS:
            idx = self.split_indices(s)
            n_cap = [len(self.items[i].captions) for i in idx]
            rows.append(
                {
                    "split": s,
                    "images": len(idx),
                    "captions": int(sum(n_cap)),
                    "captions_per_image": round(float(np.mean(n_cap)), 2) if n_cap else 0.0,
                }
            )
        return pd.DataFrame(rows)


def stable_split(ids: list[str], n_val: int, n_test: int, salt: str = "avg") -> dict[str, str]:
    """Deterministic split by a hash of each id, independent of input order, with exact counts.

    Ids are ranked by hash: the ``n_test`` first are test, the next ``n_val`` val. An id's split depends
    on its rank, so adding or removing other ids can move it (the counts stay exact)."""
    if n_val + n_test >= len(ids):
        raise ValueError(f"n_val + n_test = {n_val + n_test} leaves no training images out of {len(ids)}")
    order = sorted(ids, key=lambda i: hashlib.sha1(f"{salt}:{i}".encode()).hexdigest())
    return {i: ("test" if r < n_test else "val" if r < n_test + n_val else "train") for r, i in enumerate(order)}


# ----------------------------------------------------------------------------------------- folder


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    with open(path, encoding="utf-8-sig") as f:  # -sig: tolerate a byte-order mark (Windows editors)
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def load_folder(
    root: str | Path,
    captions_file: str = "captions.jsonl",
    name: str | None = None,
    verify_images: bool = True,
    strict: bool = False,
) -> CaptionedImages:
    """A directory of images plus ``captions.jsonl``: one row per image,
    ``{"image": "relative/or/absolute.png", "captions": ["...", ...], "split": "train"|"val"|"test"}``
    and optionally ``"id"`` (default: the image path relative to ``root``)."""
    root = Path(root)
    path = root / captions_file
    if not path.is_file():
        raise DataError(f"{path}: captions file not found")
    report = LoadReport(source=str(path))
    items, seen, checks = [], {}, ImageChecks.for_dataset(path) if verify_images else None
    for lineno, row in _read_jsonl(path):
        where = f"{path}:{lineno}"
        for key in ("image", "captions", "split"):
            if key not in row:
                raise DataError(f"{where}: missing field {key!r}")
        if not isinstance(row["image"], str):
            raise DataError(f"{where}: field 'image' must be a string path")
        caps = row["captions"]
        if isinstance(caps, str) or not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise DataError(f"{where}: field 'captions' must be a list of strings")
        if row["split"] not in SPLITS:
            raise DataError(f"{where}: unknown split {row['split']!r} (expected one of {', '.join(SPLITS)})")
        item_id = str(row.get("id", row["image"]))
        if item_id in seen:
            raise DataError(f"{where}: duplicate id {item_id!r} (first seen on line {seen[item_id]})")
        seen[item_id] = lineno
        image = (root / row["image"]).resolve()
        _add_item(items, report, item_id, row["captions"], row["split"], image, checks, strict, where)
    return _finish(name or root.name, items, report, path, checks)


def _add_item(items, report, item_id, captions, split, image: Path, checks, strict, where) -> None:
    caps = clean_captions(captions)
    problem = None if caps else "no captions"
    if problem is None:
        problem = checks.problem(image) if checks is not None else (None if image.is_file() else "missing image")
    if problem is not None:
        if strict:
            raise DataError(f"{where}: {problem} for id {item_id!r} ({image})")
        report.skip(problem, item_id)
        return
    items.append(Item(id=item_id, captions=caps, split=split, image=str(image)))


def _finish(
    name: str, items: list[Item], report: LoadReport, path: Path, checks: ImageChecks | None
) -> CaptionedImages:
    report.kept = len(items)
    if checks is not None:
        checks.save()
        report.images_checked, report.images_reused = checks.checked, checks.reused
    if not items:
        raise DataError(f"{path}: no usable items ({report})")
    if report.skipped:
        print(f"[avg_lib.data] WARNING {report}")
    return CaptionedImages(name, items, report)


# --------------------------------------------------------------------------------------- karpathy


def load_karpathy(
    json_path: str | Path,
    image_root: str | Path,
    name: str | None = None,
    restval: str = "train",
    max_captions: int | None = None,
    verify_images: bool = True,
    strict: bool = False,
) -> CaptionedImages:
    """Karpathy-split JSON (Flickr30K / MS-COCO) with images under ``image_root``.

    Uses each image's ``split`` field; ``restval`` (MS-COCO's extra training images) becomes
    ``restval`` (``"train"`` by default, the usual 113,287-image protocol, or ``"skip"``). Captions are
    the ``raw`` sentences. Images live at ``image_root/filepath/filename`` (COCO) or
    ``image_root/filename`` (Flickr30K); ids are ``cocoid``/``imgid`` when present, else the filename.
    """
    json_path, image_root = Path(json_path), Path(image_root)
    if not json_path.is_file():
        raise DataError(f"{json_path}: Karpathy split file not found")
    if not image_root.is_dir():
        raise DataError(f"{image_root}: image root is not a directory")
    try:
        with open(json_path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{json_path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(f"{json_path}: expected an object with an 'images' list (Karpathy format)")
    split_map = {"train": "train", "val": "val", "test": "test", "restval": restval}
    if restval not in ("train", "val", "test", "skip"):
        raise ValueError(f"restval must be train, val, test or skip, not {restval!r}")
    report = LoadReport(source=str(json_path))
    items, seen, checks = [], {}, ImageChecks.for_dataset(json_path) if verify_images else None
    for k, img in enumerate(doc["images"]):
        where = f"{json_path}: images[{k}]"
        if not isinstance(img, dict) or "filename" not in img or "split" not in img:
            raise DataError(f"{where}: each image needs 'filename' and 'split'")
        if not isinstance(img["filename"], str) or not isinstance(img.get("filepath", ""), str):
            raise DataError(f"{where}: 'filename' and 'filepath' must be strings")
        split = split_map.get(img["split"]) if isinstance(img["split"], str) else None
        if split is None:
            raise DataError(f"{where}: unknown split {img['split']!r} (expected train, val, test or restval)")
        if split == "skip":
            report.skip("restval skipped", img["filename"])
            continue
        item_id = str(img.get("cocoid", img.get("imgid", img["filename"])))
        if item_id in seen:
            raise DataError(f"{where}: duplicate id {item_id!r} (first at images[{seen[item_id]}])")
        seen[item_id] = k
        sents = img.get("sentences", [])
        if not isinstance(sents, list):
            raise DataError(f"{where}: 'sentences' must be a list")
        caps = [s.get("raw", "") if isinstance(s, dict) else "" for s in sents][:max_captions]
        image = image_root / img.get("filepath", "") / img["filename"]
        _add_item(items, report, item_id, caps, split, image, checks, strict, where)
    return _finish(name or json_path.stem.replace("dataset_", ""), items, report, json_path, checks)
