"""Choose and load the pool's base samples, the trusted split, eval copies, and write the eval task.

Items are chosen first (sorted ids + a seeded permutation) and only the chosen ones are decoded, so a
small pool is quick even though openclipart decodes at ~200 images/s.
"""
from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from pipeline.pool import captions as cap
from pipeline.pool import sources as src
from pipeline.pool.evaltask import write_task
from pipeline.pool.record import Record, new_record
from pipeline.pool.synthetic import SHAPES, shape_caption, shape_image

SHARE = {"openclipart": 0.12, "emoji": 0.08}  # of the pool and of the trusted split; the rest is Fashion-MNIST
SYNTHETIC_TEST = 2000


@dataclass
class Collected:
    base: list[Record]
    trusted: list[Record]
    eval_copies: list[Record]
    eval_task: str
    holdout: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


def stream(seed: int, name: str) -> np.random.Generator:
    """An independent random stream per purpose, so one part's draws never shift another's."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _decoded(items: Iterable[str], k: int, load: Callable[[str], Record | None]) -> tuple[list[Record], int]:
    """The first ``k`` items that load, and how many were skipped on the way."""
    out, skipped = [], 0
    for item in items:
        if len(out) == k:
            break
        rec = load(item)
        if rec is None:
            skipped += 1
        else:
            out.append(rec)
    return out, skipped


def real(seed: int, n_base: int, n_trusted: int, n_eval_copy: int, eval_dir: Path) -> Collected:
    """Fashion-MNIST train + openclipart + emoji (less holdouts); writes the Fashion-MNIST test task."""
    have = src.available()
    oc_all = src.openclipart_items() if have["openclipart"] else []
    em_all = src.emoji_items() if have["emoji"] else []
    oc = [p for p in oc_all if not src.is_holdout(f"openclipart:{p}", seed)]
    em = [c for c in em_all if not src.is_holdout(f"emoji:{src.emoji_id(c)}", seed)]
    images, labels = src.fmnist("train")
    if n_base > len(images) + len(oc) + len(em):
        raise ValueError(f"a pool of {n_base} base samples needs more than the {len(images) + len(oc) + len(em)} "
                         "real items available (Fashion-MNIST train + openclipart + emoji, less holdouts)")
    want = {k: min(round(SHARE[k] * n_base), len(v)) for k, v in (("openclipart", oc), ("emoji", em))}
    for k, v in (("openclipart", oc), ("emoji", em)):  # Fashion-MNIST alone too small: use more of the rest
        want[k] += min(max(0, n_base - sum(want.values()) - len(images)), len(v) - want[k])
    want_t = {k: min(round(SHARE[k] * n_trusted), len(v) - want[k]) for k, v in (("openclipart", oc), ("emoji", em))}

    def clipart(p: str) -> Record | None:
        im, size = src.openclipart_image(p)
        return None if im is None else new_record(
            seed, "openclipart", p, p.split("/")[0], src.openclipart_caption(p), src.encode(im, "PNG"), "png",
            size, f"file://{src.OPENCLIPART_DIR / 'png' / p}")

    emoji_rng = stream(seed, "emoji captions")

    def emoji(ch: str) -> Record | None:
        im, name = src.emoji_image(ch), src.emoji_name(ch)
        return None if im is None else new_record(
            seed, "emoji", src.emoji_id(ch), name, cap.emoji_caption(name, emoji_rng), src.encode(im, "PNG"), "png",
            src.EMOJI_CANVAS, f"emoji:{src.emoji_id(ch)}")

    got, skipped = {}, {}
    for k, items, load in (("openclipart", oc, clipart), ("emoji", em, emoji)):
        order = (items[int(i)] for i in stream(seed, k).permutation(len(items)))
        got[k], skipped[k] = _decoded(order, want[k] + want_t[k], load)
    pool_extra = [r for k in got for r in got[k][:want[k]]]
    trusted_extra = [r for k in got for r in got[k][want[k]:]]
    n_fm, n_fm_t = n_base - len(pool_extra), n_trusted - len(trusted_extra)
    if n_fm > len(images):
        raise ValueError(f"too few real items for {n_base} base samples ({sum(skipped.values())} unreadable)")
    if n_fm + n_fm_t > len(images):
        n_fm_t = len(images) - n_fm
        print(f"note: only {n_fm_t} Fashion-MNIST train images left for the trusted split "
              f"({len(trusted_extra) + n_fm_t} trusted samples instead of {n_trusted})", file=sys.stderr)
    perm = stream(seed, "fashion_mnist").permutation(len(images))
    caption_rng = stream(seed, "fashion_mnist captions")

    def product(i: int, split: str, x: np.ndarray, y: int) -> Record:
        label = cap.FMNIST_CLASSES[y]
        return new_record(seed, "fashion_mnist", f"{split}/{i}", label, cap.product_caption(label, caption_rng),
                          src.encode(src.fmnist_image(x)), "jpg", (28, 28), f"fashion-mnist:{split}/{i}")

    base = [product(int(i), "train", images[i], int(labels[i])) for i in perm[:n_fm]] + pool_extra
    trusted = [product(int(i), "train", images[i], int(labels[i])) for i in perm[n_fm:n_fm + n_fm_t]] + trusted_extra
    test_x, test_y = src.fmnist("test")
    write_task(eval_dir / "fashion_mnist", cap.FMNIST_CLASSES,
               ((src.encode(src.fmnist_image(x), "PNG"), int(y)) for x, y in zip(test_x, test_y)))
    copies = []
    for i in stream(seed, "eval copies").choice(len(test_x), n_eval_copy, replace=False):
        r = product(int(i), "test", test_x[i], int(test_y[i]))
        r.noise, r.noise_detail, r.noise_of = "eval_copy", f"Fashion-MNIST test image {i}", f"fashion_mnist_test:{i}"
        copies.append(r)
    if sum(skipped.values()):
        print(f"note: skipped source images (unreadable, over {src.MAX_SOURCE_SIDE} px, or an emoji the font "
              f"cannot draw): {skipped}", file=sys.stderr)
    holdout = {"openclipart": len(oc_all) - len(oc), "emoji": len(em_all) - len(em)}
    return Collected(base, trusted, copies, "fashion_mnist", holdout, skipped)


def synthetic(seed: int, n_base: int, n_trusted: int, n_eval_copy: int, eval_dir: Path) -> Collected:
    """Drawn shapes for everything; writes the ``synthetic_shapes`` task (2,000 images)."""
    rng = stream(seed, "synthetic")

    def shape(split: str, i: int) -> tuple[Record, Image.Image]:
        y = int(rng.integers(len(SHAPES)))
        im = shape_image(y, rng)
        return new_record(seed, "synthetic", f"{split}/{i}", SHAPES[y], shape_caption(y, rng), src.encode(im),
                          "jpg", (64, 64), f"synthetic:{split}/{i}"), im

    base = [shape("pool", i)[0] for i in range(n_base)]
    trusted = [shape("trusted", i)[0] for i in range(n_trusted)]
    test = [shape("test", i) for i in range(SYNTHETIC_TEST)]
    write_task(eval_dir / "synthetic_shapes", SHAPES,
               ((src.encode(im, "PNG"), SHAPES.index(r.label)) for r, im in test))
    copies = []
    for i in stream(seed, "eval copies").choice(len(test), n_eval_copy, replace=False):
        r = test[int(i)][0]
        r.noise, r.noise_detail, r.noise_of = "eval_copy", f"synthetic test image {i}", f"synthetic_shapes_test:{i}"
        copies.append(r)
    return Collected(base, trusted, copies, "synthetic_shapes")
