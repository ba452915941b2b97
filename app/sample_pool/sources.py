"""Real offline image-text sources for the sample pool (Debian packages), and a synthetic fallback.

- Fashion-MNIST (``dataset-fashion-mnist``): product photos, captions from shop-like templates.
- openclipart (``openclipart-png`` + ``-svg``): drawings captioned by their SVG title and keywords.
- Noto Color Emoji (``fonts-noto-color-emoji``) rendered with Pillow, captioned by ``emoji`` names.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from shardio.decode import to_rgb

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
OPENCLIPART_DIR = Path("/usr/share/openclipart")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
PACKAGES = "dataset-fashion-mnist openclipart-png openclipart-svg fonts-noto-color-emoji"

FMNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                  "ankle boot"]
SYNONYMS = {"t-shirt": ["t-shirt", "tee", "top", "t-shirt"], "trouser": ["trousers", "pants", "trouser"],
            "pullover": ["pullover", "sweater", "jumper"], "dress": ["dress"], "coat": ["coat", "jacket"],
            "sandal": ["sandals", "sandal"], "shirt": ["shirt", "button-down shirt"],
            "sneaker": ["sneakers", "sneaker", "trainers"], "bag": ["bag", "handbag", "tote bag"],
            "ankle boot": ["ankle boots", "ankle boot", "boots"]}
TEMPLATES = ["{c}", "photo of a {c}", "women's {c} - free shipping", "men's {c} on sale", "classic {c} for everyday wear",
             "{c} | size M | new with tags", "buy {c} online", "cheap {c} sale 50% off", "black and white {c}",
             "vintage {c}, barely worn", "the perfect {c} for summer", "{c} (unisex)", "new arrivals: {c}",
             "product image: {c}", "a {c} on a black background", "best-selling {c} 2019",
             "our favourite {c}", "{c} - item 4821", "comfortable {c}", "designer {c} outlet"]
TRANSLATIONS = {  # non-English captions for Fashion-MNIST items (de, fr, es, it, pt)
    "t-shirt": ["T-Shirt Herren", "tee-shirt femme", "camiseta de algodón", "maglietta", "camiseta"],
    "trouser": ["Hose schwarz", "pantalon homme", "pantalones", "pantaloni", "calças"],
    "pullover": ["Pullover Damen", "pull en laine", "jersey de punto", "maglione", "suéter"],
    "dress": ["Kleid", "robe d'été", "vestido largo", "vestito", "vestido"],
    "coat": ["Mantel", "manteau d'hiver", "abrigo", "cappotto", "casaco"],
    "sandal": ["Sandalen", "sandales", "sandalias", "sandali", "sandálias"],
    "shirt": ["Hemd", "chemise", "camisa de vestir", "camicia", "camisa social"],
    "sneaker": ["Turnschuhe", "baskets", "zapatillas", "scarpe da ginnastica", "tênis"],
    "bag": ["Tasche", "sac à main", "bolso", "borsa", "bolsa"],
    "ankle boot": ["Stiefeletten", "bottines", "botines", "stivaletti", "botas de cano curto"]}
EMOJI_LANGS = ["de", "fr", "es", "it", "pt"]  # the order of TRANSLATIONS


def cache_dir() -> Path:
    """Where work shared by every pool is kept (``$CURATE_CACHE``, default ~/.cache/curate)."""
    return Path(os.environ.get("CURATE_CACHE", Path.home() / ".cache" / "curate"))


def real_data_status() -> dict[str, bool]:
    return {"fashion_mnist": (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
            "openclipart": (OPENCLIPART_DIR / "png").is_dir() and (OPENCLIPART_DIR / "svg").is_dir(),
            "emoji": EMOJI_FONT.is_file()}


def is_holdout(item_id: str, share: float = 0.1) -> bool:
    """Items kept out of every pool for evaluation tasks (stable across seeds and pool sizes)."""
    return int(hashlib.sha256(item_id.encode()).hexdigest()[:8], 16) < share * 2**32


def held_out(source: str, item: str) -> bool:
    """Hold out by content, not by name: openclipart ships the same drawing under several paths
    (905 groups of byte-identical files), so a path-based split leaks evaluation images."""
    return is_holdout(f"{source}:{content_key(source, item)}")


@functools.lru_cache(maxsize=None)
def content_key(source: str, item: str) -> str:
    if source == "openclipart":
        return hashlib.sha256((OPENCLIPART_DIR / "png" / item).read_bytes()).hexdigest()
    if source == "emoji":
        return hashlib.sha256(_render(item).tobytes()).hexdigest()
    raise ValueError(f"no content key for source {source!r}")


def unique_by_content(source: str, items: list[str]) -> list[str]:
    """First item (in sorted order) of each group of identical content."""
    seen, out = set(), []
    for it in items:
        k = content_key(source, it)
        if k not in seen:
            seen.add(k)
            out.append(it)
    return out


def encode(im: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


# --- Fashion-MNIST -------------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    data = gzip.open(path).read()
    ndim = data[3]
    dims = np.frombuffer(data[4:4 + 4 * ndim], ">i4")
    return np.frombuffer(data[4 + 4 * ndim:], np.uint8).reshape(dims)


def fmnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    return read_idx(FMNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"), read_idx(FMNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")


def fmnist_image(arr: np.ndarray) -> Image.Image:
    """28x28 grey -> 64x64 RGB, the size web thumbnails of products come in here."""
    return Image.fromarray(arr).resize((64, 64), Image.BICUBIC).convert("RGB")


def product_caption(label: str, rng: np.random.Generator) -> str:
    word = SYNONYMS[label][rng.integers(len(SYNONYMS[label]))]
    text = TEMPLATES[rng.integers(len(TEMPLATES))].format(c=word)
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


# --- openclipart ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def openclipart_items() -> list[str]:
    """Relative PNG paths (``topic/.../name.png``), sorted, one per distinct drawing."""
    root = OPENCLIPART_DIR / "png"
    out = []
    for d, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(d, f), root) for f in files if f.endswith(".png")]
    return distinct_drawings(unique_by_content("openclipart", sorted(out)))


# openclipart ships near-identical variants of one drawing (colour variants, numbered series): at
# 32 px grey, 20% of its drawings have another within 3 grey levels RMS. Such variants count as one
# drawing (the first in sorted order is kept), so "distinct" in the ground truth means distinct.
VARIANT_RMS = 6.0  # the trough of the nearest-neighbour RMS histogram (32 px grey, no alignment)


def _grey32(rel_png: str) -> np.ndarray | None:
    im, _ = openclipart_image(rel_png)
    return None if im is None else np.asarray(im.convert("L").resize((32, 32), Image.BOX), np.float32).ravel()


def distinct_drawings(items: list[str]) -> list[str]:
    """Drop near-identical variants (cached per item contents under ~/.cache/curate)."""
    from pipeline.neardup import groups
    from shardio.shards import atomic_write_bytes

    ident = [[it, content_key("openclipart", it)] for it in items]
    key = hashlib.sha256(json.dumps([ident, VARIANT_RMS]).encode()).hexdigest()[:16]
    cache = cache_dir() / f"openclipart-{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(8, os.cpu_count() or 1)) as ex:
        thumbs = list(ex.map(_grey32, items, chunksize=64))
    ok = [i for i, t in enumerate(thumbs) if t is not None]
    a = np.stack([thumbs[i] for i in ok]) if ok else np.zeros((0, 1024), np.float32)
    sq = (a ** 2).sum(1)
    pairs = []
    for s in range(0, len(ok), 1024):  # all pairs of ~7k drawings, in blocks
        d = sq[s:s + 1024, None] + sq[None] - 2 * a[s:s + 1024] @ a.T
        i, j = np.nonzero(np.maximum(d, 0) < VARIANT_RMS ** 2 * a.shape[1])
        pairs.append(np.stack([i + s, j], 1))
    rep = groups(len(ok), np.concatenate(pairs) if pairs else np.zeros((0, 2), int), np.arange(len(ok), dtype=float))
    # the first of each group (sorted order) stays; unreadable files stay listed (the builder counts them)
    out = sorted([it for i, it in enumerate(items) if thumbs[i] is None]
                 + [items[ok[i]] for i in range(len(ok)) if rep[i] == i])
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cache, json.dumps(out).encode())
    return out


def openclipart_caption(rel_png: str) -> str:
    """SVG ``<dc:title>`` of the work + its keywords; the file name when the SVG says nothing."""
    svg = OPENCLIPART_DIR / "svg" / (rel_png[:-4] + ".svg")
    title, keywords = "", []
    try:
        head = svg.read_text(errors="replace")[:20000]
        work = head.split("<cc:Agent", 1)[0]  # titles after this belong to authors
        m = re.search(r"<dc:title>([^<]*)</dc:title>", work)
        title = m.group(1).strip() if m else ""
        subject = re.search(r"<dc:subject>(.*?)</dc:subject>", work, re.S)
        if subject:
            keywords = [k.strip() for k in re.findall(r"<rdf:li>([^<]*)</rdf:li>", subject.group(1))
                        if k.strip() and k.strip() != "unsorted"]
    except OSError:
        pass
    title = title or Path(rel_png).stem.replace("_", " ").replace("-", " ")
    return ", ".join([title] + keywords[:4])


def openclipart_image(rel_png: str, max_side: int = 128) -> tuple[Image.Image | None, tuple[int, int] | None]:
    """Thumbnail on white, or None for the unreadable and the decompression bombs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(OPENCLIPART_DIR / "png" / rel_png)
            size = im.size
            if size[0] * size[1] > 4096 * 4096:
                return None, size
            im.draft("RGB", (max_side, max_side))
            im = im.convert("RGBA")
        im.thumbnail((max_side, max_side))
        return to_rgb(im), size
    except Exception:  # noqa: BLE001 - unreadable source files are skipped and counted
        return None, None


# --- emoji ---------------------------------------------------------------------------------------

def emoji_items() -> list[str]:
    """Single-codepoint fully-qualified emoji that the installed font draws (the newest render blank)."""
    import emoji

    chars = sorted(c for c, v in emoji.EMOJI_DATA.items()
                   if len(c) == 1 and v.get("status") == emoji.STATUS["fully_qualified"])
    blank = hashlib.sha256(Image.new("RGBA", (136, 128), (255, 255, 255, 0)).tobytes()).hexdigest()
    return [c for c in unique_by_content("emoji", chars) if content_key("emoji", c) != blank]


def emoji_name(ch: str, lang: str = "en") -> str:
    import emoji

    return emoji.EMOJI_DATA[ch].get(lang, emoji.EMOJI_DATA[ch]["en"]).strip(":").replace("_", " ")


_FONT = None


def _render(ch: str) -> Image.Image:
    from PIL import ImageFont

    global _FONT
    if _FONT is None:
        _FONT = ImageFont.truetype(str(EMOJI_FONT), 109)
    im = Image.new("RGBA", (136, 128), (255, 255, 255, 0))
    ImageDraw.Draw(im).text((0, 0), ch, font=_FONT, embedded_color=True)
    return im


def emoji_image(ch: str) -> Image.Image:
    return to_rgb(_render(ch)).resize((64, 64), Image.LANCZOS)


# --- synthetic fallback --------------------------------------------------------------------------

SHAPES = ["circle", "square", "triangle", "cross", "ring", "stripes", "diamond", "dots", "star", "bar"]
SHAPE_COLOURS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "orange": (240, 140, 20),
                 "purple": (140, 50, 170), "black": (20, 20, 20)}


def shape_image(label: int, rng: np.random.Generator) -> Image.Image:
    """A 64x64 drawing of shape ``label`` at a random place, size and colour."""
    im = Image.new("RGB", (64, 64), tuple(int(x) for x in rng.integers(200, 256, 3)))
    d = ImageDraw.Draw(im)
    col = list(SHAPE_COLOURS.values())[rng.integers(len(SHAPE_COLOURS))]
    r = int(rng.integers(12, 24))
    cx, cy = (int(v) for v in rng.integers(r + 2, 62 - r, 2))
    box = (cx - r, cy - r, cx + r, cy + r)
    name = SHAPES[label]
    if name == "circle":
        d.ellipse(box, fill=col)
    elif name == "square":
        d.rectangle(box, fill=col)
    elif name == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=col)
    elif name == "cross":
        d.rectangle((cx - r, cy - 3, cx + r, cy + 3), fill=col)
        d.rectangle((cx - 3, cy - r, cx + 3, cy + r), fill=col)
    elif name == "ring":
        d.ellipse(box, outline=col, width=4)
    elif name == "stripes":
        for x in range(0, 64, 8):
            d.rectangle((x, 0, x + 3, 63), fill=col)
    elif name == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=col)
    elif name == "dots":
        for _ in range(6):
            x, y = (int(v) for v in rng.integers(4, 60, 2))
            d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=col)
    elif name == "star":
        pts = [(cx + (r if i % 2 == 0 else r // 2) * np.cos(i * np.pi / 5 - np.pi / 2),
                cy + (r if i % 2 == 0 else r // 2) * np.sin(i * np.pi / 5 - np.pi / 2)) for i in range(10)]
        d.polygon(pts, fill=col)
    else:
        d.rectangle((cx - r, cy - 4, cx + r, cy + 4), fill=col)
    return im


def shape_caption(label: int, rng: np.random.Generator) -> str:
    return ["a {c}", "a drawing of a {c}", "{c} icon", "{c} shape, vector art", "simple {c}"][
        rng.integers(5)].format(c=SHAPES[label])
