"""avg_lib.data.images: every PIL mode becomes 8-bit RGB by the module's rules; bad files raise ImageError naming them.

All fixtures are tiny images built here with PIL (in memory or under ``tmp_path``)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from avg_lib.data.images import ImageError, check_readable, load_rgb, to_rgb

WHITE, BLACK = [255, 255, 255], [0, 0, 0]


def px(img: Image.Image) -> np.ndarray:
    """Pixels of an RGB result as an int array (after checking mode, dtype and shape)."""
    assert img.mode == "RGB"
    arr = np.asarray(img)
    assert arr.dtype == np.uint8
    assert arr.shape == (img.height, img.width, 3)
    return arr.astype(int)


def row(mode: str, values: list) -> Image.Image:
    """A 1-pixel-high image of ``mode`` whose pixels are ``values``, left to right."""
    img = Image.new(mode, (len(values), 1))
    for x, v in enumerate(values):
        img.putpixel((x, 0), v)
    return img


def palette_img(transparency=None) -> Image.Image:
    """Pixels [index 0 (red), index 1 (blue), index 0]."""
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 0, 255])
    img.putpixel((1, 0), 1)
    if transparency is not None:
        img.info["transparency"] = transparency
    return img


# ------------------------------------------------------------------------------------ palette (P)


def test_palette_without_transparency_keeps_palette_colours():
    assert px(to_rgb(palette_img())).tolist() == [[[255, 0, 0], [0, 0, 255], [255, 0, 0]]]


def test_palette_transparent_index_becomes_white():
    assert px(to_rgb(palette_img(transparency=0))).tolist() == [[WHITE, [0, 0, 255], WHITE]]


def test_palette_transparent_index_on_custom_background():
    out = px(to_rgb(palette_img(transparency=1), background=(10, 20, 30)))
    assert out.tolist() == [[[255, 0, 0], [10, 20, 30], [255, 0, 0]]]


def test_palette_per_index_alpha_bytes():
    # tRNS as bytes: index 0 fully transparent, index 1 half transparent blue over white
    out = px(to_rgb(palette_img(transparency=b"\x00\x80")))
    assert out[0, 0].tolist() == WHITE and out[0, 2].tolist() == WHITE
    r, g, b = out[0, 1]
    assert abs(r - 127) <= 1 and abs(g - 127) <= 1 and b == 255


def test_palette_with_rgba_palette_in_memory():
    # a palette whose entries carry alpha (no "transparency" key): index 0 is transparent red
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 0, 255, 255], "RGBA")
    img.putpixel((1, 0), 1)
    assert px(to_rgb(img)).tolist() == [[WHITE, [0, 0, 255]]]


def test_palette_png_round_trip(tmp_path):
    path = tmp_path / "p.png"
    palette_img(transparency=0).save(path)
    assert Image.open(path).mode == "P"
    assert px(load_rgb(path)).tolist() == [[WHITE, [0, 0, 255], WHITE]]
    path2 = tmp_path / "p_opaque.png"
    palette_img().save(path2)
    assert px(load_rgb(path2)).tolist() == [[[255, 0, 0], [0, 0, 255], [255, 0, 0]]]


# ------------------------------------------------------------------------------------ alpha modes


def test_rgba_transparent_becomes_white_opaque_keeps_colour():
    img = row("RGBA", [(255, 0, 0, 0), (0, 200, 0, 255), (0, 0, 0, 128), (12, 34, 56, 255)])
    out = px(to_rgb(img))
    assert out[0, 0].tolist() == WHITE  # transparent red -> white, not red and not black
    assert out[0, 1].tolist() == [0, 200, 0]
    assert np.all(np.abs(out[0, 2] - 127) <= 1)  # half-transparent black over white
    assert out[0, 3].tolist() == [12, 34, 56]


def test_rgba_custom_background():
    out = px(to_rgb(row("RGBA", [(255, 0, 0, 0), (1, 2, 3, 255)]), background=(0, 0, 0)))
    assert out.tolist() == [[BLACK, [1, 2, 3]]]


def test_la_transparent_becomes_white_opaque_gray_replicated():
    out = px(to_rgb(row("LA", [(0, 0), (100, 255), (0, 255)])))
    assert out.tolist() == [[WHITE, [100, 100, 100], BLACK]]


def test_pa_mode():
    img = Image.new("PA", (2, 1))
    img.putpalette([255, 0, 0, 0, 255, 0])
    img.putpixel((0, 0), (0, 0))
    img.putpixel((1, 0), (1, 255))
    assert px(to_rgb(img)).tolist() == [[WHITE, [0, 255, 0]]]


@pytest.mark.parametrize(
    "mode,values,expected",
    [
        ("RGBA", [(255, 0, 0, 0), (0, 0, 255, 255)], [WHITE, [0, 0, 255]]),
        ("LA", [(0, 0), (100, 255)], [WHITE, [100, 100, 100]]),
    ],
)
def test_alpha_png_round_trip(tmp_path, mode, values, expected):
    path = tmp_path / f"{mode}.png"
    row(mode, values).save(path)
    assert Image.open(path).mode == mode
    assert px(load_rgb(path)).tolist() == [expected]


@pytest.mark.parametrize(
    "mode,values,key",
    [
        ("RGB", [(0, 0, 0), (10, 200, 30)], (0, 0, 0)),
        ("L", [0, 90], 0),
    ],
)
def test_colour_key_transparency_becomes_white(tmp_path, mode, values, key):
    # PNG tRNS colour key on an RGB / L image: pixels equal to the key are transparent
    path = tmp_path / f"key_{mode}.png"
    row(mode, values).save(path, transparency=key)
    with Image.open(path) as img:
        assert img.mode == mode and "transparency" in img.info
    out = px(load_rgb(path))
    assert out[0, 0].tolist() == WHITE
    expected = list(values[1]) if mode == "RGB" else [values[1]] * 3
    assert out[0, 1].tolist() == expected


# ------------------------------------------------------------------------------------ gray and bit depths


def test_l_replicated_to_three_channels():
    assert px(to_rgb(row("L", [0, 77, 255]))).tolist() == [[BLACK, [77, 77, 77], WHITE]]


def test_mode_1_replicated_to_black_and_white():
    assert px(to_rgb(row("1", [0, 1, 0]))).tolist() == [[BLACK, WHITE, BLACK]]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_i16_rescaled_from_16_bits(mode):
    img = row(mode, [65535, 0, 32768, 257])
    assert px(to_rgb(img))[0, :, 0].tolist() == [255, 0, 128, 1]
    assert np.all(px(to_rgb(img)) == px(to_rgb(img))[:, :, :1])  # gray: equal channels


def test_i16_fromarray_and_png_round_trip(tmp_path):
    img = Image.fromarray(np.array([[65535, 0, 32768]], dtype=np.uint16))
    assert img.mode == "I;16"
    assert px(to_rgb(img)).tolist() == [[WHITE, BLACK, [128, 128, 128]]]
    path = tmp_path / "deep.png"
    img.save(path)
    assert Image.open(path).mode.startswith("I")
    assert px(load_rgb(path)).tolist() == [[WHITE, BLACK, [128, 128, 128]]]


def test_i32_within_16_bit_range_scaled_like_16_bit():
    img = Image.fromarray(np.array([[0, 65535, 32768]], dtype=np.int32))
    assert img.mode == "I"
    assert px(to_rgb(img))[0, :, 0].tolist() == [0, 255, 128]


def test_i32_beyond_16_bits_scaled_by_its_max_and_negative_clipped():
    img = Image.fromarray(np.array([[0, 70000, 140000, -5]], dtype=np.int32))
    assert px(to_rgb(img))[0, :, 0].tolist() == [0, 128, 255, 0]


def test_f_in_unit_range():
    img = Image.fromarray(np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32))
    assert img.mode == "F"
    assert px(to_rgb(img))[0, :, 0].tolist() == [0, 128, 255, 64]


def test_f_out_of_range_uses_min_max():
    img = Image.fromarray(np.array([[-1.0, 0.0, 3.0]], dtype=np.float32))
    assert px(to_rgb(img))[0, :, 0].tolist() == [0, 64, 255]
    img = Image.fromarray(np.array([[100.0, 300.0]], dtype=np.float32))
    assert px(to_rgb(img))[0, :, 0].tolist() == [0, 255]


def test_f_constant_out_of_range_does_not_divide_by_zero():
    out = px(to_rgb(Image.fromarray(np.full((2, 2), 5.0, dtype=np.float32))))
    assert len(np.unique(out)) == 1


@pytest.mark.parametrize(
    "mode,values,fmt",
    [
        ("F", [0.0, 0.5, 1.0], "tiff"),
        ("I", [0, 32768, 65535], "tiff"),
    ],
)
def test_deep_modes_file_round_trip(tmp_path, mode, values, fmt):
    path = tmp_path / f"deep_{mode}.{fmt}"
    row(mode, values).save(path)
    assert Image.open(path).mode == mode
    assert px(load_rgb(path))[0, :, 0].tolist() == [0, 128, 255]


# ------------------------------------------------------------------------------------ colour spaces


def test_cmyk_converted():
    img = row("CMYK", [(0, 0, 0, 0), (255, 0, 0, 0), (0, 255, 255, 0), (0, 0, 0, 255)])
    assert px(to_rgb(img)).tolist() == [[WHITE, [0, 255, 255], [255, 0, 0], BLACK]]


@pytest.mark.parametrize("ext", ["jpg", "tiff"])
def test_cmyk_file_round_trip(tmp_path, ext):
    path = tmp_path / f"cmyk.{ext}"
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(path)
    assert Image.open(path).mode == "CMYK"
    out = px(load_rgb(path))
    assert np.all(np.abs(out - np.array([0, 255, 255])) <= 4)


def test_ycbcr_converted():
    img = Image.new("RGB", (2, 2), (200, 30, 60)).convert("YCbCr")
    out = px(to_rgb(img))
    assert np.all(np.abs(out - np.array([200, 30, 60])) <= 3)


def test_rgb_returns_an_equal_copy():
    img = row("RGB", [(1, 2, 3), (250, 251, 252)])
    out = to_rgb(img)
    assert out is not img
    assert px(out).tolist() == [[[1, 2, 3], [250, 251, 252]]]
    out.putpixel((0, 0), (9, 9, 9))
    assert img.getpixel((0, 0)) == (1, 2, 3)


ALL_MODES = {
    "P": lambda: palette_img(),
    "P+trns": lambda: palette_img(transparency=0),
    "RGBA": lambda: Image.new("RGBA", (3, 2), (1, 2, 3, 4)),
    "LA": lambda: Image.new("LA", (3, 2), (5, 6)),
    "L": lambda: Image.new("L", (3, 2), 7),
    "1": lambda: Image.new("1", (3, 2), 1),
    "I;16": lambda: Image.new("I;16", (3, 2), 1000),
    "I": lambda: Image.new("I", (3, 2), 123456),
    "F": lambda: Image.new("F", (3, 2), 0.3),
    "CMYK": lambda: Image.new("CMYK", (3, 2), (1, 2, 3, 4)),
    "YCbCr": lambda: Image.new("YCbCr", (3, 2), (100, 120, 140)),
    "RGB": lambda: Image.new("RGB", (3, 2), (1, 2, 3)),
}


@pytest.mark.parametrize("name", sorted(ALL_MODES))
def test_every_mode_gives_rgb_uint8_same_size(name):
    img = ALL_MODES[name]()
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == img.size
    assert np.asarray(out).dtype == np.uint8 and np.asarray(out).shape == (img.height, img.width, 3)


# ------------------------------------------------------------------------------------ bad files


def test_missing_file_raises_image_error_naming_path(tmp_path):
    path = tmp_path / "nope" / "missing.png"
    with pytest.raises(ImageError, match=re.escape(str(path))):
        load_rgb(path)
    assert issubclass(ImageError, ValueError)
    assert check_readable(path) == "missing image"


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match=re.escape(str(tmp_path))):
        load_rgb(tmp_path)
    assert check_readable(tmp_path) == "missing image"


@pytest.mark.parametrize("content", [np.random.default_rng(0).bytes(300), b""], ids=["random", "empty"])
def test_corrupt_file_raises_image_error_naming_path(tmp_path, content):
    path = tmp_path / "corrupt.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=re.escape(str(path))) as e:
        load_rgb(str(path))  # str paths work too
    assert "cannot decode" in str(e.value)
    assert check_readable(path) == "unreadable image"


def _noise(size=48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file_is_unreadable_and_raises(tmp_path, ext):
    good = tmp_path / f"good.{ext}"
    _noise().save(good)
    data = good.read_bytes()
    bad = tmp_path / f"truncated.{ext}"
    bad.write_bytes(data[: len(data) // 2])
    assert check_readable(good) is None
    assert px(load_rgb(good)).shape == (48, 48, 3)
    with pytest.raises(ImageError, match=re.escape(str(bad))):
        load_rgb(bad)
    # check_readable must agree with load_rgb, or a loader keeps an image that later crashes
    assert check_readable(bad) == "unreadable image"


def test_jpeg_with_trailing_bytes_is_still_readable(tmp_path):
    path = tmp_path / "trailing.jpg"
    _noise().save(path)
    path.write_bytes(path.read_bytes() + b"\x00" * 16)
    assert px(load_rgb(path)).shape == (48, 48, 3)
    assert check_readable(path) is None


def test_load_rgb_returns_loaded_image_independent_of_file(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (2, 2), (9, 8, 7)).save(path)
    img = load_rgb(path)
    path.unlink()  # the returned image must not need the file any more
    assert px(img).tolist() == [[[9, 8, 7]] * 2] * 2


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes())
    assert load_rgb(path).size == (20, 40)


def test_load_rgb_reduces_large_images_and_leaves_small_ones(tmp_path):
    from avg_lib.data.images import load_rgb

    big = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 2000, 3), dtype=np.uint8)).save(big, quality=90)
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 40), (10, 20, 30)).save(small)
    out = load_rgb(big, min_side=300)
    assert out.mode == "RGB" and out.size == (500, 300)  # shorter side 300, aspect kept
    assert load_rgb(big).size == (2000, 1200)
    assert load_rgb(small, min_side=300).tobytes() == load_rgb(small).tobytes()


def test_thumbnails_decode_once_then_read_the_cache(tmp_path, monkeypatch):
    from avg_lib.data import images

    big = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (900, 1200, 3), dtype=np.uint8)).save(big)
    small = tmp_path / "small.png"
    Image.new("RGBA", (50, 50), (255, 0, 0, 0)).save(small)
    thumbs = images.Thumbnails(tmp_path / "cache", 200)
    first = thumbs.get(big)
    assert first.size == (267, 200) and len(list((tmp_path / "cache").rglob("*.png"))) == 1
    decoded = []
    real = images.load_rgb
    monkeypatch.setattr(images, "load_rgb", lambda *a, **k: decoded.append(a) or real(*a, **k))
    again = thumbs.get(big)
    assert decoded == [] and again.tobytes() == first.tobytes()  # read back from the cache, lossless
    assert thumbs.get(small).getpixel((0, 0)) == (255, 255, 255)  # small: decoded as usual, never copied
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 1
    big.write_bytes(b"")  # a changed file is a new key, and a broken one the usual error naming it
    with pytest.raises(images.ImageError, match="big.jpg"):
        thumbs.get(big)


def test_dataset_images_come_through_the_thumbnail_cache(tmp_path, monkeypatch):
    from avg_lib.data.dataset import CaptionedImages, Item

    monkeypatch.setenv("AVG_DATA_DIR", str(tmp_path / "data"))
    p = tmp_path / "photo.jpg"
    Image.new("RGB", (1000, 800), (0, 128, 255)).save(p)
    ds = CaptionedImages("t", [Item("a", ("a caption",), "train", p)])
    assert ds.image(0).size == (1000, 800) and ds.image(0, 400).size == (500, 400)
    assert len(list((tmp_path / "data" / "thumbnails").rglob("*.png"))) == 1
