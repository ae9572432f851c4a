"""Image decoding: every PIL mode becomes 8-bit RGB the same way, or a clear error names the file.

Rules (tested in tests/test_images.py); files are first rotated by their EXIF orientation tag:
  * transparency (RGBA, LA, palette with a transparent index or alpha, PNG colour key on L / RGB) is
    composited onto a white background, because emoji and icons are drawn on transparent canvases
    and a black fill would change them;
  * grayscale (L, 1) is replicated to three channels;
  * 16/32-bit integer images (I;16*, I) are rescaled from their own bit depth to 0..255, and float
    images (F) from 0..1 when they lie in that range, otherwise from their min..max;
  * CMYK / YCbCr / LAB go through PIL's own conversion to RGB.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from avg_lib.paths import data_dir


class ImageError(ValueError):
    """A file that cannot be turned into an RGB image; the message names the file."""


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Return an 8-bit RGB copy of ``img`` following the module rules."""
    mode = img.mode
    if mode in ("P", "L", "RGB") and img.has_transparency_data:
        # a transparent palette index, a palette with alpha, or a PNG tRNS colour key on L / RGB
        img, mode = img.convert("RGBA"), "RGBA"
    elif mode == "P":
        img, mode = img.convert("RGB"), "RGB"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() <= 65535 else float(arr.max())
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img, mode = Image.fromarray(arr, mode="L"), "L"
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = (0.0, 1.0) if arr.min() >= 0 and arr.max() <= 1 else (float(arr.min()), float(arr.max()))
        arr = np.clip((arr - lo) / max(hi - lo, 1e-12) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img, mode = Image.fromarray(arr, mode="L"), "L"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode == "RGB":
        return img.copy()
    return img.convert("RGB")


def load_rgb(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Open ``path`` and return it as RGB; raise :class:`ImageError` naming the file otherwise.

    ``min_side``: an image whose shorter side is longer is reduced to that shorter side (Lanczos), and a JPEG
    is already decoded at 1/2, 1/4 or 1/8 scale where that keeps the shorter side at least ``min_side``
    (PIL's ``draft``): a 100-Mpixel photo is never decoded at full size. Smaller images are unchanged."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file is missing")
    try:
        with warnings.catch_warnings():  # a large image is expected (and read reduced with min_side)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if min_side and min(img.size) > min_side:
                    scale = min_side / min(img.size)
                    img.draft("RGB", (max(1, int(img.width * scale)), max(1, int(img.height * scale))))
                img.load()
                out = to_rgb(ImageOps.exif_transpose(img))  # camera photos: honour the EXIF orientation
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    if min_side and min(out.size) > min_side:
        scale = min_side / min(out.size)
        out = out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))), Image.LANCZOS)
    return out


class Thumbnails:
    """Images reduced to ``min_side`` pixels on their shorter side (:func:`load_rgb`), decoded once and kept as
    lossless PNG under ``root``, keyed by the file's path, size and modification time. Images that need no
    reduction are not copied: they are decoded directly, as cheaply. Feature extraction and figures read
    large images through this cache (``CaptionedImages.image(i, min_side=...)``)."""

    def __init__(self, root: str | Path, min_side: int):
        self.root, self.min_side = Path(root) / f"min{min_side}", min_side

    def get(self, path: str | Path) -> Image.Image:
        path = Path(path)
        try:
            st = path.stat()
        except OSError:
            return load_rgb(path)  # the same clear error as without the cache
        key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
        thumb = self.root / key[:2] / f"{key}.png"
        if thumb.is_file():  # read without opening the original again
            with Image.open(thumb) as img:
                return img.convert("RGB")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    size = img.size
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
            return load_rgb(path)  # the same clear error as without the cache
        if min(size) <= self.min_side:
            return load_rgb(path)
        out = load_rgb(path, self.min_side)
        thumb.parent.mkdir(parents=True, exist_ok=True)
        tmp = thumb.with_name(f".{thumb.name}.{os.getpid()}.partial")
        out.save(tmp, format="PNG")
        os.replace(tmp, thumb)  # atomic: a reader never sees half a file
        return out


def check_readable(path: str | Path) -> str | None:
    """Return ``None`` if ``path`` is a decodable image, else a short reason (for counted skips). A file over
    PIL's decompression-bomb limit is refused with that reason; a large image under it is checked without PIL's
    warning (images are read reduced, :func:`load_rgb`)."""
    path = Path(path)
    if not path.is_file():
        return "missing image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                fmt = img.format
                img.verify()
            if fmt != "PNG" and not (fmt == "JPEG" and _ends_with_jpeg_eoi(path)):
                # verify() checks PNG chunks but next to nothing elsewhere (a truncated JPEG passes it):
                # decode such files, so that a kept image is one load_rgb can read
                with Image.open(path) as img:
                    img.load()
    except Image.DecompressionBombError:
        return "image over PIL's decompression-bomb pixel limit"
    except Exception:
        return "unreadable image"
    return None


class ImageChecks:
    """:func:`check_readable`'s verdicts, kept in one JSON file (``path``) keyed by each image's path, size and
    modification time, so that a dataset is verified once, not by every notebook that loads it: an unchanged file
    keeps its verdict, a changed or new one is checked again. :meth:`save` writes the file atomically (two runs
    sharing it at worst both check an image)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checked = self.reused = 0  # files opened by this object, and files whose earlier verdict it reused
        try:
            self.verdicts: dict[str, str | None] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.verdicts = {}
        self._dirty = False

    @classmethod
    def for_dataset(cls, source: str | Path) -> ImageChecks:
        """The verdicts of the dataset described by ``source`` (its captions or split file), kept under
        ``<data dir>/image_checks/`` so that every notebook after the first reuses them."""
        key = hashlib.sha1(str(Path(source).resolve()).encode()).hexdigest()[:16]
        return cls(data_dir() / "image_checks" / f"{key}.json")

    def problem(self, image: str | Path) -> str | None:
        """``None`` for a readable image, else the reason it is skipped (a missing file is never cached)."""
        image = Path(image)
        try:
            st = image.stat()
        except OSError:
            return "missing image"
        key = f"{image}|{st.st_size}|{st.st_mtime_ns}"
        if key in self.verdicts:
            self.reused += 1
        else:
            self.verdicts[key] = check_readable(image)
            self.checked += 1
            self._dirty = True
        return self.verdicts[key]

    def save(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        tmp.write_text(json.dumps(self.verdicts))
        os.replace(tmp, self.path)
        self._dirty = False


def _ends_with_jpeg_eoi(path: Path) -> bool:
    """Cheap completeness test for the usual JPEG: the file ends with the end-of-image marker."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        if f.tell() < 2:
            return False
        f.seek(-2, 2)
        return f.read(2) == b"\xff\xd9"
