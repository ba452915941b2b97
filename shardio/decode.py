"""Pillow decoding with errors as values: a bad image is a recorded reason, never a crash.

Plain JPEGs (YCbCr or grey) are decoded by simplejpeg when it is installed: the same libjpeg-turbo
settings and scale as Pillow's, so the same pixels, without Pillow's per-image Python work (~2x
faster on 256 px images). Anything else, and any JPEG simplejpeg warns about, takes Pillow's path,
so the outcome and reason are Pillow's. The annotate pass (``reduce``) also lets libjpeg-turbo scale
by any M/8, not only Pillow's 1/2, 1/4, 1/8: the smallest image its consumers can use, decoded
directly (other pixels than a full decode and a resize, within the score tolerance bench/annotate.py
measures).

A reason reads ``"<kind>: <detail>"`` with kind ``no_image`` (nothing to decode), ``format`` (bytes
that are no image format Pillow reads) or ``decode`` (a known format whose data is broken or too
large). Any mode comes out RGB: alpha is laid on white, 16-bit and float images are scaled to 8 bits,
CMYK and palette images converted, animated images give their first frame.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

try:
    import simplejpeg
except ImportError:  # Pillow alone gives the same results, slower
    simplejpeg = None

# Pool images above this many pixels are refused as decompression bombs (Pillow's own default
# is ~89M; openclipart ships a 20,990 x 29,700 PNG).
MAX_PIXELS = 64_000_000
MAX_ASPECT = 16  # longer side / shorter side beyond which the model input is cut before resizing (pixels.py)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode as RGB; transparency is laid on white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(a * (255.0 / hi), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "RGBa", "La", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")


def draft_scale(w: int, h: int, side: int | None) -> int:
    """Pillow's ``Image.draft`` choice: the largest of 8, 4, 2, 1 keeping both sides >= ``side``."""
    k = min(w // side, h // side) if side else 1
    return next(a for a in (8, 4, 2, 1) if k >= a or a == 1)


def fine_scale(w: int, h: int, side: int | None) -> int:
    """libjpeg-turbo's finer choice: the smallest M of 1..8 whose M/8 scale keeps both sides >= ``side``
    (a 256 px JPEG for a 224 px model input decodes at 7/8, straight to 224 px, with no resize after)."""
    if not side:
        return 8
    return next((m for m in range(1, 8) if -(-w * m // 8) >= side and -(-h * m // 8) >= side), 8)


def _fast_jpeg(data: bytes, max_side: int | None, fine: bool = False) -> tuple[Image.Image, tuple[int, int]] | None:
    """A plain JPEG through simplejpeg at Pillow's draft scale (``fine``: at ``fine_scale``); None hands
    it to Pillow."""
    if simplejpeg is None or data[:3] != b"\xff\xd8\xff":  # Pillow's JPEG signature
        return None
    try:
        h, w, space, _ = simplejpeg.decode_jpeg_header(data)
        if space not in ("YCbCr", "Gray") or w * h > MAX_PIXELS or w < 1 or h < 1:
            return None
        if fine:
            m = fine_scale(w, h, max_side)
            want = (-(-h * m // 8), -(-w * m // 8))  # libjpeg's scaled size: ceil(side * M / 8)
        else:
            a = draft_scale(w, h, max_side)
            want = (-(-h // a), -(-w // a))  # Pillow's drafted size
        arr = simplejpeg.decode_jpeg(data, "RGB", min_height=want[0], min_width=want[1], strict=True)
    except Exception:  # noqa: BLE001 - warnings and errors: Pillow decides and words the reason
        return None
    if arr.shape[:2] != want:
        return None
    return Image.frombuffer("RGB", (want[1], want[0]), arr, "raw", "RGB", 0, 1), (w, h)


def decode_image(data: bytes | None, max_side: int | None = None) -> tuple[Image.Image | None, str | None]:
    """Return ``(RGB image, None)`` or ``(None, reason)``. ``max_side``: a JPEG may be decoded at 1/2,
    1/4 or 1/8 scale inside libjpeg (``Image.draft``) while both sides stay >= max_side."""
    im, _, reason = open_image(data, max_side)
    return im, reason


def open_image(data: bytes | None, max_side: int | None = None, reduce: bool = False
               ) -> tuple[Image.Image | None, tuple[int, int] | None, str | None]:
    """``(RGB image, stored size from the header, None)`` or ``(None, size if known, reason)``.

    ``max_side``: a JPEG is decoded at 1/2, 1/4 or 1/8 scale inside libjpeg (``Image.draft``) while
    both sides stay >= max_side; with ``reduce`` (the annotate pass), a plain JPEG that simplejpeg
    decodes takes any M/8 scale (``fine_scale``), and any image whose shorter side is still
    >= 2 * max_side is then box-reduced by the largest integer factor that keeps both sides >= max_side.
    The size returned is the header's, before any reduction: a full decode's size."""
    if data is None:
        return None, None, "no_image: the sample has no image member"
    if len(data) == 0:
        return None, None, "decode: the image member is empty (0 bytes)"
    fast = _fast_jpeg(data, max_side, fine=reduce)
    if fast is not None:
        im, size = fast
        return _reduce(im, max_side) if reduce else im, size, None
    size = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            size = im.size
            w, h = size
            if w * h > MAX_PIXELS:
                return None, size, f"decode: decompression bomb, {w}x{h} pixels > {MAX_PIXELS}"
            if w < 1 or h < 1:
                return None, size, f"decode: image has no pixels ({w}x{h})"
            if max_side and im.format in ("JPEG", "MPO"):
                im.draft("RGB", (max_side, max_side))
            im.load()
        im = to_rgb(im)
        return _reduce(im, max_side) if reduce else im, size, None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return None, size, f"decode: decompression bomb, {e}"
    except Image.UnidentifiedImageError:
        return None, size, "format: the bytes are not an image format Pillow reads"
    except (OSError, SyntaxError, ValueError) as e:  # truncated / broken data
        return None, size, f"decode: broken image data ({e})"
    except Exception as e:  # noqa: BLE001 - any decoder bug is a recorded reason
        return None, size, f"decode: {type(e).__name__}: {e}"


def _reduce(im: Image.Image, side: int | None) -> Image.Image:
    """Box-reduce by the largest integer factor keeping both sides >= side (none below 2x side)."""
    if side and min(im.size) >= 2 * side:
        return im.reduce(min(im.size) // side)
    return im
