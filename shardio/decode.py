"""Pillow decoding with errors as values: a bad image is a recorded reason, never a crash.

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

# Pool images above this many pixels are refused as decompression bombs (Pillow's own default
# is ~89M; openclipart ships a 20,990 x 29,700 PNG).
MAX_PIXELS = 64_000_000


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


def decode_image(data: bytes | None, max_side: int | None = None) -> tuple[Image.Image | None, str | None]:
    """Return ``(RGB image, None)`` or ``(None, reason)``. ``max_side``: a JPEG may be decoded at 1/2,
    1/4 or 1/8 scale inside libjpeg (``Image.draft``) while both sides stay >= max_side."""
    im, _, reason = open_image(data, max_side)
    return im, reason


def open_image(data: bytes | None, max_side: int | None = None
               ) -> tuple[Image.Image | None, tuple[int, int] | None, str | None]:
    """``(RGB image, stored size from the header, None)`` or ``(None, size if known, reason)``."""
    if data is None:
        return None, None, "no_image: the sample has no image member"
    if len(data) == 0:
        return None, None, "decode: the image member is empty (0 bytes)"
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
            if max_side and im.format == "JPEG":
                im.draft("RGB", (max_side, max_side))
            im.load()
        return to_rgb(im), size, None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return None, size, f"decode: decompression bomb, {e}"
    except Image.UnidentifiedImageError:
        return None, size, "format: the bytes are not an image format Pillow reads"
    except (OSError, SyntaxError, ValueError) as e:  # truncated / broken data
        return None, size, f"decode: broken image data ({e})"
    except Exception as e:  # noqa: BLE001 - any decoder bug is a recorded reason
        return None, size, f"decode: {type(e).__name__}: {e}"
