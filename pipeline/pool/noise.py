"""Seeded web noise. Each noisy sample records its type, a detail and (for copies) its original.

Most types change a base sample in place; ``ADDED`` types are extra samples (copies of pool samples,
or evaluation images) that count toward the pool size.
"""
from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
from PIL import Image

from pipeline.pool import captions as cap
from pipeline.pool.record import Record, make_uid
from pipeline.pool.sources import emoji_name, encode

FRACTIONS = {"swapped_caption": 0.10, "junk_caption": 0.05, "non_english": 0.03, "corrupt_image": 0.005,
             "truncated_image": 0.005, "tiny_image": 0.01, "extreme_aspect": 0.01,
             "exact_duplicate": 0.04, "near_duplicate": 0.04, "eval_copy": 0.003}
ADDED = ("exact_duplicate", "near_duplicate", "eval_copy")
FOREIGN = {"de": "Bild herunterladen", "fr": "image libre de droits", "es": "imagen gratis",
           "it": "immagine gratuita", "pt": "imagem grátis"}  # for items with no translated name


def counts_for(n: int) -> dict[str, int]:
    """Samples per noise type: ``round(fraction * n)``, at least 1 (2 swaps) from n = 300; swaps are pairs."""
    out = {k: int(round(f * n)) for k, f in FRACTIONS.items()}
    if n >= 300:
        out = {k: max(v, 2 if k == "swapped_caption" else 1) for k, v in out.items()}
    out["swapped_caption"] -= out["swapped_caption"] % 2
    return out


def plant(base: list[Record], counts: dict[str, int], rng: np.random.Generator, seed: int,
          eval_copies: list[Record]) -> list[Record]:
    """Return ``base`` (some samples changed, each at most once) + the added copies."""
    recs = [replace(r) for r in base]
    order = [int(i) for i in rng.permutation(len(recs))]
    for a, b in _pairs(recs, order, counts["swapped_caption"] // 2):
        ra, rb = recs[a], recs[b]
        ra.caption, rb.caption = rb.clean_caption, ra.clean_caption
        ra.noise = rb.noise = "swapped_caption"
        ra.noise_detail, rb.noise_detail = f"swapped with uid {rb.uid}", f"swapped with uid {ra.uid}"
    free = iter([i for i in order if recs[i].noise is None])
    for kind in ("junk_caption", "non_english", "corrupt_image", "truncated_image", "tiny_image", "extreme_aspect"):
        for _ in range(counts[kind]):
            r = recs[next(free)]
            r.noise = kind
            CHANGE[kind](r, rng)
    clean = list(free)  # untouched samples, in random order: the originals of the copies
    n_exact, n_near = counts["exact_duplicate"], counts["near_duplicate"]
    if n_exact + n_near > len(clean):
        raise ValueError(f"too few clean samples ({len(clean)}) to copy {n_exact + n_near}")
    added = []
    for j, i in enumerate(clean[:n_exact]):
        r = recs[i]
        added.append(replace(r, uid=make_uid(seed, r.source, r.item, f"exact{j}"), url=f"{r.url}#copy{j}",
                             noise="exact_duplicate", noise_detail="byte-identical copy", noise_of=r.uid))
    for j, i in enumerate(clean[n_exact:n_exact + n_near]):
        r = recs[i]
        image, detail = near_copy(r.image, rng)
        added.append(replace(r, uid=make_uid(seed, r.source, r.item, f"near{j}"), url=f"{r.url}#copy{j}",
                             caption=cap.vary(r.caption, rng), image=image, ext="jpg",
                             noise="near_duplicate", noise_detail=detail, noise_of=r.uid))
    return recs + added + eval_copies[:counts["eval_copy"]]


def _pairs(recs: list[Record], order: list[int], k: int) -> list[tuple[int, int]]:
    """Up to ``k`` disjoint pairs of samples with different labels, in the random ``order``."""
    pairs: list[tuple[int, int]] = []
    waiting: list[int] = []  # unpaired samples, all of one label
    for i in order:
        if len(pairs) == k:
            break
        if waiting and recs[waiting[-1]].label != recs[i].label:
            pairs.append((waiting.pop(), i))
        else:
            waiting.append(i)
    return pairs


def _junk(r: Record, rng: np.random.Generator) -> None:
    r.caption = cap.junk_caption(rng)
    r.noise_detail = repr(r.caption)


def _non_english(r: Record, rng: np.random.Generator) -> None:
    if r.source == "fashion_mnist":
        r.caption, lang = cap.translated_product(r.label, rng)
    else:
        lang = cap.LANGS[int(rng.integers(len(cap.LANGS)))]
        name = emoji_name(chr(int(r.item[2:], 16)), lang) if r.source == "emoji" else ""
        r.caption = name if name and name != r.label else FOREIGN[lang]
    r.noise_detail = lang


def _corrupt(r: Record, rng: np.random.Generator) -> None:
    r.image = b"\x00" + rng.integers(0, 256, int(rng.integers(200, 2000)), dtype=np.uint8).tobytes()
    r.noise_detail = f"{len(r.image)} random bytes"


def _truncate(r: Record, rng: np.random.Generator) -> None:
    r.image = r.image[: len(r.image) // 2]
    r.noise_detail = f"first half ({len(r.image)} bytes)"


def _tiny(r: Record, rng: np.random.Generator) -> None:
    side = int(rng.choice([6, 8, 10, 12]))
    _resize(r, (side, side))


def _extreme(r: Record, rng: np.random.Generator) -> None:
    _resize(r, [(64, 6), (6, 64), (96, 5), (5, 80), (128, 8)][int(rng.integers(5))])


def _resize(r: Record, size: tuple[int, int]) -> None:
    im = Image.open(io.BytesIO(r.image)).convert("RGB").resize(size, Image.BICUBIC)
    r.image = encode(im, "JPEG" if r.ext == "jpg" else "PNG")
    r.noise_detail = f"resized to {size[0]}x{size[1]}"


CHANGE = {"junk_caption": _junk, "non_english": _non_english, "corrupt_image": _corrupt,
          "truncated_image": _truncate, "tiny_image": _tiny, "extreme_aspect": _extreme}


def near_copy(image: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """A re-encoded, resized or slightly cropped JPEG copy (never byte-identical to the original)."""
    im = Image.open(io.BytesIO(image)).convert("RGB")
    w, h = im.size
    q = int(rng.integers(40, 80))
    kind = int(rng.integers(3))
    if kind == 1:
        f = float(rng.uniform(0.5, 0.85))
        im, detail = im.resize((max(8, round(w * f)), max(8, round(h * f))), Image.BICUBIC), f"resized {f:.2f}"
    elif kind == 2:
        f = float(rng.uniform(0.85, 0.95))
        cw, ch = round(w * f), round(h * f)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im, detail = im.crop((x, y, x + cw, y + ch)), f"cropped {f:.2f} at ({x},{y})"
    else:
        detail = "re-encoded"
    return encode(im, "JPEG", q), f"{detail}, JPEG quality {q}"
