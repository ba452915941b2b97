"""Pillow decoding with errors as values: a bad image is a recorded reason, never a crash."""
from __future__ import annotations

import io
import warnings

from PIL import Image

# Pool images above this many pixels are refused as decompression bombs (Pillow's own default
# is ~89M; openclipart ships a 25,000 x 25,000 PNG).
MAX_PIXELS = 64_000_000


def decode_image(data: bytes | None) -> tuple[Image.Image | None, str | None]:
    """Return ``(RGB image, None)`` or ``(None, reason)``; the reason names the failure."""
    if data is None:
        return None, "no_image: sample has no jpg/png/webp member"
    if len(data) == 0:
        return None, "empty_image: 0 bytes"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > MAX_PIXELS:
                return None, f"decompression_bomb: {w}x{h} pixels > {MAX_PIXELS}"
            im.load()
        if im.mode != "RGB":
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGB", im.size, (255, 255, 255))
                bg.paste(im, mask=im.getchannel("A"))
                im = bg
            else:
                im = im.convert("RGB")
        return im, None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return None, f"decompression_bomb: {e}"
    except Image.UnidentifiedImageError:
        return None, "unidentified_image: bytes are not a known image format"
    except OSError as e:  # truncated / broken data
        return None, f"broken_image: {e}"
    except Exception as e:  # noqa: BLE001 - any decoder bug is a recorded reason
        return None, f"decode_failed: {type(e).__name__}: {e}"
