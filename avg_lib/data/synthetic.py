"""Procedurally rendered captioned scenes: deterministic, any size, no files.

Item ``i`` of ``load_synthetic(seed=s)`` is a function of ``(s, i)`` only, so a gallery can grow
without changing earlier items. A scene has a background colour and one to three shapes, each
with a colour, a size and a position; captions come from a small grammar that describes the same
scene in different words and orders (the way several annotators would). Split by index:
``i % 10 == 0`` is test, ``i % 10 == 1`` is val, the rest train. Used for smoke runs, tests and
scaling studies, never for the headline tables.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from avg_lib.data.dataset import CaptionedImages, Item

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "black": (20, 20, 20),
    "pink": (240, 130, 190),
}
BACKGROUNDS = {"white": (250, 250, 250), "gray": (150, 150, 150), "beige": (235, 220, 190), "sky": (190, 225, 245)}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.16, "large": 0.3}
POSITIONS = {
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
    "center": (0.5, 0.5),
}


def scene(seed: int, index: int) -> dict:
    rng = np.random.default_rng([seed, index])
    n = int(rng.integers(1, 4))
    positions = rng.choice(list(POSITIONS), size=n, replace=False)
    objs = [
        {
            "shape": str(rng.choice(SHAPES)),
            "color": str(rng.choice(list(COLORS))),
            "size": str(rng.choice(list(SIZES))),
            "position": str(p),
        }
        for p in positions
    ]
    return {"background": str(rng.choice(list(BACKGROUNDS))), "objects": objs, "variant": int(rng.integers(1 << 30))}


def render(sc: dict, size: int = 64) -> Image.Image:
    img = Image.new("RGB", (size, size), BACKGROUNDS[sc["background"]])
    d = ImageDraw.Draw(img)
    for o in sc["objects"]:
        cx, cy = (v * size for v in POSITIONS[o["position"]])
        r = SIZES[o["size"]] * size / 2 * 1.6
        box = [cx - r, cy - r, cx + r, cy + r]
        fill = COLORS[o["color"]]
        if o["shape"] == "circle":
            d.ellipse(box, fill=fill)
        elif o["shape"] == "square":
            d.rectangle(box, fill=fill)
        elif o["shape"] == "triangle":
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        else:
            d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    return img


def captions(sc: dict, seed: int, index: int, n: int = 3) -> tuple[str, ...]:
    rng = np.random.default_rng([seed, index, 1])
    objs = list(sc["objects"])
    phrases = [f"a {o['size']} {o['color']} {o['shape']}" for o in objs]
    placed = [
        f"{p} at the {o['position']}" if o["position"] != "center" else f"{p} in the center"
        for p, o in zip(phrases, objs)
    ]
    bg = sc["background"]
    out = [
        " and ".join(placed) + f" on a {bg} background",
        f"{bg} background with " + ", ".join(f"{o['color']} {o['shape']}" for o in objs),
    ]
    order = rng.permutation(len(objs))
    out.append("there is " + " and ".join(placed[k] for k in order))
    out.append(f"{len(objs)} shape{'s' if len(objs) > 1 else ''}: " + ", ".join(phrases[k] for k in order))
    return tuple(out[:n])


def split_of(index: int) -> str:
    return "test" if index % 10 == 0 else "val" if index % 10 == 1 else "train"


def load_synthetic(
    n_images: int = 500,
    seed: int = 0,
    image_size: int = 64,
    captions_per_image: int = 3,
    n_val: int | None = None,
    n_test: int | None = None,
) -> CaptionedImages:
    """``n_images`` rendered scenes with ``captions_per_image`` grammar captions each. Splits: every tenth image is
    test and the next one val (:func:`split_of`), or, with ``n_val`` and ``n_test``, the first ``n_test`` images
    are test, the next ``n_val`` val and the rest train (a Karpathy-style split: 29,783 / 1,000 / 1,000)."""
    if (n_val is None) != (n_test is None):
        raise ValueError("give both n_val and n_test, or neither")
    if n_val is not None and n_val + n_test >= n_images:
        raise ValueError(f"n_val + n_test = {n_val + n_test} leaves no training images of {n_images}")

    def split(i: int) -> str:
        if n_test is None:
            return split_of(i)
        return "test" if i < n_test else "val" if i < n_test + n_val else "train"

    def renderer(item: Item) -> Image.Image:
        return render(scene(seed, int(item.id.removeprefix("syn"))), image_size)

    items = []
    for i in range(n_images):
        sc = scene(seed, i)
        items.append(Item(id=f"syn{i:07d}", captions=captions(sc, seed, i, captions_per_image), split=split(i)))
    return CaptionedImages(f"synthetic-s{seed}-{image_size}px", items, renderer=renderer)
