"""JPEG decoding on the model's device, a batch at a time (torchvision.io.decode_jpeg: nvJPEG on a
GPU, libjpeg-turbo on the CPU, where tests run the same code).

The CPU side only reads each JPEG's header (``plain_jpeg``): the size, and whether the device may take
it (signature, Huffman-coded baseline, extended or progressive frame, YCbCr or grey, an end-of-image
marker, at most DEVICE_MAX_PIXELS, sides within MAX_ASPECT of each other). Baseline JPEGs are decoded
in one batched call; progressive ones one at a time (nvJPEG's hardware path takes baseline only). Anything else (PNG,
WebP, GIF, CMYK, truncated data, huge images) and any JPEG the device decoder refuses goes to the CPU
path (shardio/decode.py) by its caller, so the outcome and the drop reason are the CPU path's.
Images come out full size, (3, H, W) uint8 on the device; shardio/pixels.py resizes them there.
"""
from __future__ import annotations

import io
from functools import lru_cache

from shardio.decode import MAX_ASPECT, MAX_PIXELS, simplejpeg

DEVICE_MAX_PIXELS = 1 << 22  # larger JPEGs take the CPU path, decoded at a reduced scale (M/8)
MODES = ("auto", "cpu", "device")


SOF_BASELINE, SOF_EXTENDED, SOF_PROGRESSIVE = 0xC0, 0xC1, 0xC2


def frame_marker(data: bytes) -> int | None:
    """A JPEG's start-of-frame marker (0xC0 baseline, 0xC1 extended, 0xC2 progressive, others for
    lossless / arithmetic coding), found by walking the segments before it; None if there is none."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        m = data[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
        elif 0xD0 <= m <= 0xD8 or m == 0x01:  # markers without a length
            i += 2
        elif 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            return m
        elif m == 0xDA:  # a scan before any frame
            return None
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def plain_jpeg(data: bytes | None) -> tuple[int, int] | None:
    """``(width, height)`` of a JPEG the device may decode, else None (the CPU path decides)."""
    if not data or data[:3] != b"\xff\xd8\xff" or data.rstrip(b"\0")[-2:] != b"\xff\xd9":
        return None  # not a JPEG, or truncated (no end-of-image marker: Pillow names the damage)
    if frame_marker(data) not in (SOF_BASELINE, SOF_EXTENDED, SOF_PROGRESSIVE):
        return None
    try:
        if simplejpeg is not None:
            h, w, space, _ = simplejpeg.decode_jpeg_header(data)
            ok = space in ("YCbCr", "Gray")
        else:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                (w, h), ok = im.size, im.mode in ("RGB", "L") and im.format == "JPEG"
    except Exception:  # noqa: BLE001 - an unreadable header: the CPU path words the reason
        return None
    if not ok or w < 1 or h < 1 or w * h > min(MAX_PIXELS, DEVICE_MAX_PIXELS) or max(w, h) > MAX_ASPECT * min(w, h):
        return None
    return w, h


@lru_cache(maxsize=8)
def decode_jpeg_works(device: str) -> str | None:
    """None when ``torchvision.io.decode_jpeg`` decodes a batch on ``device``, else why not."""
    try:
        from shardio.compat import ensure_torchvision

        ensure_torchvision()
        import numpy as np
        import torch
        from PIL import Image
        from torchvision.io import ImageReadMode, decode_jpeg

        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buf, "JPEG")
        data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        out = decode_jpeg([data, data], mode=ImageReadMode.RGB, device=device)
        if len(out) != 2 or tuple(out[0].shape) != (3, 8, 8):
            return f"decode_jpeg on {device} gave {[tuple(o.shape) for o in out]} for two 8x8 JPEGs"
        return None
    except Exception as e:  # noqa: BLE001 - e.g. torchvision's compiled ops missing (shardio/compat.py)
        return f"torchvision.io.decode_jpeg does not work on {device}: {type(e).__name__}: {str(e)[:200]}"


def use_device_decode(mode: str, device: str) -> bool:
    """``auto``: on a GPU when decode_jpeg works there; ``device``: always (an error naming why when
    it cannot); ``cpu``: never."""
    if mode not in MODES:
        raise ValueError(f"unknown decode mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "cpu":
        return False
    why = decode_jpeg_works(device)
    if mode == "device" and why:
        raise RuntimeError(f"decode: device was asked for, but {why}; use decode: auto or cpu")
    return why is None and (mode == "device" or device.startswith("cuda"))


class DeviceDecoder:
    """Decodes a list of plain JPEGs (``plain_jpeg``) on ``device`` in one call."""

    def __init__(self, device: str):
        self.device = device

    def __call__(self, datas: list[bytes]) -> list:
        """One (3, H, W) uint8 tensor on the device per input, None where the decoder refused it (a
        failing batch is retried one image at a time to find which)."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        out: list = [None] * len(datas)
        progressive = [frame_marker(d) == SOF_PROGRESSIVE for d in datas]
        batch = [i for i, p in enumerate(progressive) if not p]
        single = [i for i, p in enumerate(progressive) if p]
        if batch:
            try:
                for i, t in zip(batch, decode_jpeg([tensors[i] for i in batch], mode=ImageReadMode.RGB,
                                                   device=self.device)):
                    out[i] = t
            except Exception:  # noqa: BLE001 - one refused image fails the batch: find it
                single = list(range(len(datas)))
        for i in single:
            try:
                out[i] = decode_jpeg(tensors[i], mode=ImageReadMode.RGB, device=self.device)
            except Exception:  # noqa: BLE001 - the CPU path decodes it, or words why not
                out[i] = None
        return out


def is_tensor(x) -> bool:
    """A device-decoded image (a torch tensor) rather than a PIL image, without importing torch."""
    return type(x).__name__ == "Tensor" and hasattr(x, "device")
