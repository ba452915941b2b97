"""The synthetic fallback: ten classes of shapes drawn at random places, sizes and colours."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle", "cross", "ring", "stripes", "diamond", "dots", "star", "bar"]
COLOURS = [(210, 40, 40), (40, 170, 60), (40, 70, 210), (240, 140, 20), (140, 50, 170), (20, 20, 20)]
CAPTIONS = ["a {c}", "a drawing of a {c}", "{c} icon", "{c} shape, vector art", "simple {c}", "clip art {c}",
            "a {c} on a light background", "{c} pattern"]


def shape_image(label: int, rng: np.random.Generator) -> Image.Image:
    """A 64x64 drawing of ``SHAPES[label]``."""
    im = Image.new("RGB", (64, 64), tuple(int(x) for x in rng.integers(200, 256, 3)))
    d = ImageDraw.Draw(im)
    col = COLOURS[int(rng.integers(len(COLOURS)))]
    r = int(rng.integers(12, 24))
    cx, cy = (int(v) for v in rng.integers(r + 2, 62 - r, 2))
    name = SHAPES[label]
    if name == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=col)
    elif name == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=col)
    elif name == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=col)
    elif name == "cross":
        d.rectangle((cx - r, cy - 3, cx + r, cy + 3), fill=col)
        d.rectangle((cx - 3, cy - r, cx + 3, cy + r), fill=col)
    elif name == "ring":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=col, width=4)
    elif name == "stripes":
        for x in range(int(rng.integers(0, 8)), 64, 8):
            d.rectangle((x, 0, x + 3, 63), fill=col)
    elif name == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=col)
    elif name == "dots":
        for x, y in rng.integers(4, 60, (6, 2)):
            d.ellipse((int(x) - 3, int(y) - 3, int(x) + 3, int(y) + 3), fill=col)
    elif name == "star":
        angles = np.arange(10) * np.pi / 5 - np.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, r, r / 2)
        d.polygon([(cx + float(a * np.cos(t)), cy + float(a * np.sin(t))) for a, t in zip(radii, angles)], fill=col)
    else:  # bar
        d.rectangle((cx - r, cy - 4, cx + r, cy + 4), fill=col)
    return im


def shape_caption(label: int, rng: np.random.Generator) -> str:
    return CAPTIONS[int(rng.integers(len(CAPTIONS)))].format(c=SHAPES[label])
