"""Seeded web noise, planted the way web pools are noisy; every change is recorded per sample.

A record is a dict: source, item, label, clean_caption, caption, image (bytes), ext, orig_w, orig_h,
noise (None when clean), detail, noise_of (index of the original record, or an eval-set reference).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from app.sample_pool.sources import EMOJI_LANGS, TRANSLATIONS, emoji_name, encode

# Share of the pool per noise type, per preset. The first group changes existing samples; ADDED ones
# are extra copies that count toward the pool size.
# ``clean``: a mostly clean pool (~71% clean), the one the first benchmarks used.
# ``web``: at most 30% clean, shaped like web alt-text pools: LAION's CLIP filter kept ~10% of the
# Common Crawl pairs it scored (Schuhmann et al. 2021), Conceptual Captions kept ~3% of alt-texts
# after its text filters (Sharma et al. 2018), DataComp's best small-scale filters keep ~30% of
# CommonPool and its basic filter ~25% (Gadre et al. 2023). Captions that do not describe the image
# are the largest share, then boilerplate (file names, "click here", SEO keyword lists), non-English
# text, copies of popular images (SemDeDup found ~50% of LAION-440M removable as semantic
# duplicates, Abbas et al. 2023), tiny / extreme images and corrupt files.
PRESETS = {
    "clean": {"swapped_caption": 0.10, "junk_caption": 0.05, "non_english": 0.03, "corrupt_image": 0.005,
              "truncated_image": 0.005, "tiny_image": 0.01, "extreme_aspect": 0.01,
              "exact_duplicate": 0.04, "near_duplicate": 0.04, "eval_copy": 0.003},
    "web": {"unrelated_caption": 0.30, "swapped_caption": 0.04, "junk_caption": 0.12, "non_english": 0.06,
            "corrupt_image": 0.01, "truncated_image": 0.01, "tiny_image": 0.02, "extreme_aspect": 0.02,
            "exact_duplicate": 0.08, "near_duplicate": 0.06, "eval_copy": 0.003},
}
POPULAR = {"clean": 0, "web": 20}  # exact copies drawn from few popular originals: about this many copies each
ADDED = ("exact_duplicate", "near_duplicate", "eval_copy")
JUNK = ["IMG_{n}.JPG", "DSC{n:05d}.jpg", "click here", "", "image", "untitled", "download now", "photo.jpg",
        "https://cdn.shop-{n}.com/img/p/{n}.jpg", "thumbnail", "Image may contain: 1 item", "{n}", "null",
        "Lorem ipsum dolor sit amet", "see more", "no description available",
        "cheap flights hotels car rental best deals {n}", "free shipping best price top rated sale outlet",
        "wallpaper hd 4k free download", "home | about | contact | blog", "buy now pay later no credit check",
        "Copyright {n} All rights reserved"]


def counts_for(n: int, preset: str = "clean") -> dict[str, int]:
    """Planted count per type: ``round(share * n)``, at least 1 (2 for swaps) from 300 samples up."""
    if preset not in PRESETS:
        raise ValueError(f"unknown pool preset {preset!r}: one of {', '.join(PRESETS)}")
    out = {k: int(round(f * n)) for k, f in PRESETS[preset].items()}
    if n >= 300:
        out = {k: max(v, 2 if k == "swapped_caption" else 1) for k, v in out.items()}
    out["swapped_caption"] -= out["swapped_caption"] % 2  # swaps come in pairs
    return out


def _image(rec: dict) -> Image.Image:
    return Image.open(io.BytesIO(rec["image"])).convert("RGB")


def _fmt(rec: dict) -> str:
    return "JPEG" if rec["ext"] == "jpg" else "PNG"


def plant(base: list[dict], counts: dict[str, int], rng: np.random.Generator, eval_copies: list[dict],
          popular: int = 0) -> list[dict]:
    """Return base records (some changed) + added copies, noise recorded on each. ``popular`` > 0: exact
    copies come from few originals, about that many copies each (Zipf-like, as popular web images)."""
    recs = [{**r, "noise": None, "detail": None, "noise_of": None} for r in base]
    order = [int(i) for i in rng.permutation(len(recs))]
    taken: set[int] = set()

    def take(k: int, ok=lambda r: True) -> list[int]:
        got = [i for i in order if i not in taken and ok(recs[i])][:k]
        taken.update(got)
        return got

    # swapped captions: pairs of different labels exchange captions
    pairs, used = [], set()
    for i in order:
        if len(pairs) * 2 >= counts["swapped_caption"]:
            break
        if i in used:
            continue
        j = next((j for j in order if j not in used and j != i and recs[j]["label"] != recs[i]["label"]), None)
        if j is None:
            break
        used.update((i, j))
        pairs.append((i, j))
    taken.update(used)
    for i, j in pairs:
        recs[i]["caption"], recs[j]["caption"] = recs[j]["clean_caption"], recs[i]["clean_caption"]
        for a, b in ((i, j), (j, i)):
            recs[a].update(noise="swapped_caption", detail=f"caption of record {b} ({recs[b]['label']})")
    for i in take(counts.get("unrelated_caption", 0)):
        j = int(rng.integers(len(recs)))
        while recs[j]["label"] == recs[i]["label"]:
            j = int(rng.integers(len(recs)))
        recs[i].update(caption=recs[j]["clean_caption"], noise="unrelated_caption",
                       detail=f"alt-text of record {j} ({recs[j]['label']})")
    for i in take(counts["junk_caption"]):
        junk = JUNK[rng.integers(len(JUNK))].format(n=int(rng.integers(1, 99999)))
        recs[i].update(caption=junk, noise="junk_caption", detail=repr(junk))
    for i in take(counts["non_english"], lambda r: r["source"] in ("fashion_mnist", "emoji")):
        r, k = recs[i], int(rng.integers(len(EMOJI_LANGS)))
        text = TRANSLATIONS[r["label"]][k] if r["source"] == "fashion_mnist" else emoji_name(r["item"], EMOJI_LANGS[k])
        r.update(caption=text, noise="non_english", detail=EMOJI_LANGS[k])
    for i in take(counts["corrupt_image"]):
        recs[i].update(image=rng.integers(0, 256, int(rng.integers(200, 2000)), dtype=np.uint8).tobytes(),
                       noise="corrupt_image", detail="random bytes")
    for i in take(counts["truncated_image"]):
        r = recs[i]
        r.update(image=r["image"][: len(r["image"]) // 2], noise="truncated_image", detail="first half of the bytes")
    for i in take(counts["tiny_image"]):
        s = int(rng.integers(6, 15))
        recs[i].update(image=encode(_image(recs[i]).resize((s, s)), _fmt(recs[i])), noise="tiny_image",
                       detail=f"{s}x{s}")
    for i in take(counts["extreme_aspect"]):
        size = [(64, 5), (5, 64), (96, 6), (6, 96)][rng.integers(4)]
        recs[i].update(image=encode(_image(recs[i]).resize(size), _fmt(recs[i])), noise="extreme_aspect",
                       detail=f"{size[0]}x{size[1]}")

    clean = [i for i in order if recs[i]["noise"] is None]
    added = []
    exact, used = _originals(clean, counts["exact_duplicate"], popular, rng)
    for j, i in enumerate(exact):
        added.append({**recs[i], "noise": "exact_duplicate", "detail": "byte-identical copy", "noise_of": i,
                      "copy": f"exact{j}"})
    for j, i in enumerate(clean[used: used + counts["near_duplicate"]]):
        image, detail = near_copy(recs[i], rng)
        added.append({**recs[i], "image": image, "ext": "jpg", "noise": "near_duplicate", "detail": detail,
                      "noise_of": i, "copy": f"near{j}"})
    for r in eval_copies[: counts["eval_copy"]]:
        added.append({**r, "noise": "eval_copy", "detail": "image from the evaluation set"})
    return recs + added


def _originals(clean: list[int], n: int, popular: int, rng: np.random.Generator) -> tuple[list[int], int]:
    """The original of each of ``n`` exact copies - distinct clean records, or (``popular``) the first
    few with Zipf-distributed copy counts - and how many of ``clean`` that used up."""
    if not popular or not clean or not n:
        return clean[:n], min(n, len(clean))
    k = max(1, min(len(clean), n // popular))
    weights = 1.0 / np.arange(1, k + 1)
    return [clean[int(i)] for i in rng.choice(k, size=n, p=weights / weights.sum())], k


def near_copy(rec: dict, rng: np.random.Generator) -> tuple[bytes, str]:
    """Re-encoded, resized or cropped copy (always JPEG, so bytes differ from the original)."""
    im = _image(rec)
    w, h = im.size
    kind = ["reencode", "resize", "crop"][rng.integers(3)]
    q = int(rng.integers(40, 80))
    if kind == "resize":
        f = float(rng.uniform(0.6, 0.85))
        im = im.resize((max(8, int(w * f)), max(8, int(h * f))), Image.BICUBIC)
        return encode(im, "JPEG", q), f"resized x{f:.2f}, JPEG q{q}"
    if kind == "crop":
        f = float(rng.uniform(0.85, 0.95))
        cw, ch = int(w * f), int(h * f)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return encode(im.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC), "JPEG", q), \
            f"crop {f:.2f} at ({x},{y}), JPEG q{q}"
    return encode(im, "JPEG", q), f"re-encoded JPEG q{q}"
