"""Real offline image sources (Debian packages); every item is an id plus a way to load it.

- Fashion-MNIST (``dataset-fashion-mnist``): 28x28 grey product photos, upscaled to 64x64 RGB.
- openclipart (``openclipart-png`` + ``openclipart-svg``): drawings, captioned from their SVG metadata.
- Noto Color Emoji (``fonts-noto-color-emoji``) rendered with Pillow, named by the ``emoji`` package.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
OPENCLIPART_DIR = Path("/usr/share/openclipart")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
PACKAGES = {"fashion_mnist": "dataset-fashion-mnist", "openclipart": "openclipart-png openclipart-svg",
            "emoji": "fonts-noto-color-emoji"}
MAX_SOURCE_SIDE = 4096  # openclipart ships a 25,000 x 25,000 PNG; larger files are skipped
HOLDOUT_SHARE = 0.1


def available() -> dict[str, bool]:
    """Which real sources are installed."""
    return {"fashion_mnist": all((FMNIST_DIR / f"{p}-{k}-idx{d}-ubyte.gz").is_file()
                                 for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))),
            "openclipart": (OPENCLIPART_DIR / "png").is_dir(),
            "emoji": EMOJI_FONT.is_file()}


def is_holdout(item_id: str, seed: int = 0, share: float = HOLDOUT_SHARE) -> bool:
    """Whether an openclipart/emoji item (``openclipart:<rel path>``, ``emoji:U+1F600``) is kept out
    of the pool and the trusted split, for later evaluation tasks."""
    h = hashlib.sha256(f"{seed}/holdout/{item_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") < share * 2**64


def encode(im: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """JPEG at ``quality``, or PNG at zlib level 1 (twice as fast as the default, no bigger here)."""
    buf = io.BytesIO()
    im.save(buf, fmt, quality=quality) if fmt == "JPEG" else im.save(buf, fmt, compress_level=1)
    return buf.getvalue()


def on_white(im: Image.Image) -> Image.Image:
    """Flatten transparency onto a white background, as browsers show web images."""
    im = im.convert("RGBA")
    bg = Image.new("RGB", im.size, (255, 255, 255))
    bg.paste(im, mask=im.getchannel("A"))
    return bg


# --- Fashion-MNIST -------------------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """An idx file (big-endian: magic with the dim count in its last byte, dims, then uint8 data)."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = [int(d) for d in np.frombuffer(data[4:4 + 4 * ndim], ">i4")]
    return np.frombuffer(data[4 + 4 * ndim:], np.uint8).reshape(dims)


@lru_cache(maxsize=2)
def fmnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images [N, 28, 28], labels [N])`` of ``train`` (60,000) or ``test`` (10,000)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    return (read_idx(FMNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"),
            read_idx(FMNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"))


def fmnist_image(arr: np.ndarray) -> Image.Image:
    """28x28 grey -> 64x64 RGB (pool, trusted and eval images all go through this)."""
    return Image.fromarray(arr).resize((64, 64), Image.BICUBIC).convert("RGB")


# --- openclipart ---------------------------------------------------------------------------------

def openclipart_items() -> list[str]:
    """Relative PNG paths (``food/fruit/apple.png``), sorted; the first folder is the topic."""
    root = OPENCLIPART_DIR / "png"
    out = []
    for d, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(d, f), root) for f in files if f.endswith(".png")]
    return sorted(out)


def openclipart_caption(rel_png: str, max_keywords: int = 4) -> str:
    """The SVG's ``<dc:title>`` plus keywords from ``<dc:subject>``; the file name if the SVG says nothing."""
    title, keywords = "", []
    try:
        text = (OPENCLIPART_DIR / "svg" / (rel_png[:-4] + ".svg")).read_text(errors="replace")[:50_000]
        work = text.split("<cc:Agent", 1)[0]  # later titles name the author, not the work
        m = re.search(r"<dc:title>([^<]*)</dc:title>", work)
        title = m.group(1).strip() if m else ""
        subject = re.search(r"<dc:subject>(.*?)</dc:subject>", work, re.S)
        if subject:
            keywords = [k.strip() for k in re.findall(r"<rdf:li>([^<]*)</rdf:li>", subject.group(1))]
    except OSError:
        pass
    title = _unescape(title) or re.sub(r"[_-]+", " ", Path(rel_png).stem).strip()
    keywords = [_unescape(k) for k in keywords if k and k.lower() not in ("unsorted", title.lower())]
    return ", ".join([title] + keywords[:max_keywords])


def _unescape(s: str) -> str:
    return s.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').strip()


def openclipart_image(rel_png: str, max_side: int = 128) -> tuple[Image.Image | None, tuple[int, int] | None]:
    """``(thumbnail on white, source size)``; ``(None, size or None)`` for bombs and unreadable files."""
    size = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(OPENCLIPART_DIR / "png" / rel_png) as im:
                size = im.size
                if max(size) > MAX_SOURCE_SIDE:
                    return None, size
                im.thumbnail((max_side, max_side))
                return on_white(im), size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, size


# --- emoji ---------------------------------------------------------------------------------------

EMOJI_CANVAS = (136, 128)


@lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(EMOJI_FONT), 109)  # the bitmap size of Noto Color Emoji


def _render(ch: str) -> Image.Image:
    im = Image.new("RGBA", EMOJI_CANVAS, (255, 255, 255, 0))
    ImageDraw.Draw(im).text((0, 0), ch, font=_font(), embedded_color=True)
    return im


def emoji_items() -> list[str]:
    """Single-codepoint, fully-qualified emoji, sorted."""
    import emoji

    return sorted(c for c, v in emoji.EMOJI_DATA.items()
                  if len(c) == 1 and v.get("status") == emoji.STATUS["fully_qualified"])


def emoji_id(ch: str) -> str:
    return f"U+{ord(ch):04X}"


def emoji_name(ch: str, lang: str = "en") -> str:
    """``:grinning_face:`` -> ``grinning face`` (English if the language has no name)."""
    import emoji

    data = emoji.EMOJI_DATA[ch]
    return re.sub(r"\s+", " ", data.get(lang, data["en"]).strip(":").replace("_", " ")).strip()


def emoji_image(ch: str) -> Image.Image | None:
    """64x64 on white, or None when the font has no glyph (emoji newer than the font draw nothing)."""
    im = _render(ch)
    if im.getchannel("A").getbbox() is None:
        return None
    return on_white(im).resize((64, 64), Image.LANCZOS)
