"""The built-in offline evaluation suite, from data held out of every pool (schemas/tasks.py BUILTIN).

Fashion-MNIST test is the ImageNet analogue; five shifted copies of all its 10,000 images stand in
for ImageNet's distribution shifts; held-out openclipart topics (the topics with at least
``MIN_TOPIC_ITEMS`` held-out drawings) and emoji names (each emoji drawn ``EMOJI_VIEWS`` ways) are
extra classification tasks; held-out openclipart (image <-> title + keywords) and emoji (image <->
name) are retrieval tasks. Held out = ``held_out`` (10% of distinct contents, by hash), never drawn
into a pool. Every score comes with a bootstrap standard error (training/bootstrap.py).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from app.sample_pool import sources as src
from shardio.evaltask import write_retrieval_task, write_task

SHIFT_SIZE = 10_000  # every Fashion-MNIST test image
MIN_TOPIC_ITEMS = 20  # fewer held-out drawings than this: the topic is too small to score
EMOJI_VIEWS = 4  # each held-out emoji drawn at several sizes and places, so a class has several items
FMNIST_TEMPLATES = ["a photo of a {c}.", "a product photo of a {c}.", "a photo of the {c}.", "a {c}.",
                    "a black and white photo of a {c}.", "a low resolution photo of a {c}.",
                    "a cropped photo of a {c}."]
CLIPART_TEMPLATES = ["a clip art of {c}.", "a drawing of {c}.", "an illustration of {c}.", "{c}."]
EMOJI_TEMPLATES = ["an emoji of {c}.", "a {c} emoji.", "{c}."]


def shift(im: Image.Image, kind: str) -> Image.Image:
    if kind == "inverted":
        return ImageOps.invert(im)
    if kind == "rotated":
        return im.rotate(90)
    if kind == "low_contrast":
        return Image.eval(im, lambda v: int(96 + 0.25 * v))
    if kind == "edges":
        return ImageOps.invert(im.convert("L").filter(ImageFilter.FIND_EDGES)).convert("RGB")
    if kind == "cropped":
        w, h = im.size
        return im.crop((w // 5, h // 5, w - w // 5, h - h // 5)).resize((w, h), Image.BICUBIC)
    raise ValueError(f"unknown shift {kind!r}")


def emoji_views(ch: str) -> list[Image.Image]:
    """``EMOJI_VIEWS`` drawings of one emoji: as in the pool, then smaller and moved on a tinted ground."""
    base = src.emoji_image(ch)
    out = [base]
    for k in range(1, EMOJI_VIEWS):
        side = 64 - 10 * k
        ground = Image.new("RGB", (64, 64), (255 - 12 * k, 255 - 6 * k, 255))
        at = ((k * 7) % (64 - side + 1), (k * 11) % (64 - side + 1))
        ground.paste(base.resize((side, side), Image.LANCZOS), at)
        out.append(ground)
    return out


def holdout_clipart() -> list[tuple[str, Image.Image]]:
    out = []
    for p in src.openclipart_items():
        if src.held_out("openclipart", p):
            im, _ = src.openclipart_image(p)
            if im is not None:
                out.append((p, im))
    return out


def write_builtin_suite(eval_dir: str | Path, fmnist_test: tuple[np.ndarray, np.ndarray]) -> list[str]:
    """Write every built-in task except fashion_mnist itself (the pool builder writes it); returns names."""
    from schemas.tasks import SHIFTS

    eval_dir = Path(eval_dir)
    x, y = fmnist_test
    written = []
    for kind in SHIFTS:
        write_task(eval_dir / f"fashion_mnist_{kind}", src.FMNIST_CLASSES, FMNIST_TEMPLATES,
                   ((src.encode(shift(src.fmnist_image(a), kind), "PNG"), int(b))
                    for a, b in zip(x[:SHIFT_SIZE], y[:SHIFT_SIZE])))
        written.append(f"fashion_mnist_{kind}")
    status = src.real_data_status()
    if status["openclipart"]:
        clipart = holdout_clipart()
        per_topic = Counter(p.split("/")[0] for p, _ in clipart)
        topics = sorted(t for t, k in per_topic.items() if k >= MIN_TOPIC_ITEMS and t != "unsorted")
        write_task(eval_dir / "openclipart_topics", [t.replace("_", " ") for t in topics], CLIPART_TEMPLATES,
                   ((src.encode(im, "PNG"), topics.index(p.split("/")[0])) for p, im in clipart
                    if p.split("/")[0] in topics))
        write_retrieval_task(eval_dir / "openclipart_retrieval",
                             ((src.encode(im, "PNG"), [src.openclipart_caption(p)]) for p, im in clipart))
        written += ["openclipart_topics", "openclipart_retrieval"]
    if status["emoji"]:
        chars = [c for c in src.emoji_items() if src.held_out("emoji", c)]
        images = [src.encode(src.emoji_image(c), "PNG") for c in chars]
        write_task(eval_dir / "emoji_names", [src.emoji_name(c) for c in chars], EMOJI_TEMPLATES,
                   ((src.encode(v, "PNG"), i) for i, c in enumerate(chars) for v in emoji_views(c)))
        write_retrieval_task(eval_dir / "emoji_retrieval", zip(images, ([src.emoji_name(c)] for c in chars)))
        written += ["emoji_names", "emoji_retrieval"]
    return written
