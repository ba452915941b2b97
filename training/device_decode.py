"""Training images decoded on the model's device: the loader's workers only read tar members, parse
JPEG headers and draw each crop box (the same draws as the CPU path, so the same boxes); the main
process decodes the batch's plain JPEGs in one call (nvJPEG on a GPU, shardio/gpu_decode.py), crops,
resizes (antialiased bicubic) and normalises there. Other images (PNG, WebP, progressive ones the
device refuses, CMYK...) are decoded on the CPU with the same box, so no sample changes its fate."""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import torch

from shardio.decode import decode_image
from shardio.gpu_decode import DeviceDecoder, plain_jpeg

log = logging.getLogger(__name__)


class Jpeg:
    """A plain JPEG's bytes and its crop box, undecoded (the loader's collation leaves it as it is)."""

    __slots__ = ("data", "box")

    def __init__(self, data: bytes, box: tuple[int, int, int, int]) -> None:
        self.data, self.box = data, box


def worker_item(data: bytes | None, fast, rng) -> tuple[object, str | None]:
    """One sample's image as the worker hands it on: a ``Jpeg`` (bytes and crop box) for a plain JPEG,
    a cropped uint8 array for anything else, or ``(None, drop reason)``."""
    size = plain_jpeg(data)
    if size is not None:
        return Jpeg(bytes(data), fast.crop_box(*size, rng)), None
    img, reason = decode_image(data)
    if img is None:
        return None, reason
    return fast.image(img, rng), None


class DeviceBatches:
    """Wraps a loader of ``(items, tokens, bad)`` into ``(images on device, tokens, bad)``."""

    def __init__(self, loader, fast, device: str) -> None:
        self.loader, self.fast, self.device = loader, fast, device
        self.decoder = DeviceDecoder(device)

    def __iter__(self):
        return self

    def __next__(self):
        items, tokens, bad = next(self.loader)
        return self.finish(items, tokens, Counter(bad))

    def finish(self, items: list, tokens: torch.Tensor, bad: Counter):
        s = self.fast.size
        out = torch.empty((len(items), 3, s, s), dtype=torch.float32, device=self.device)
        keep = np.ones(len(items), bool)
        jpegs = [i for i, it in enumerate(items) if isinstance(it, Jpeg)]
        decoded = self.decoder([items[i].data for i in jpegs]) if jpegs else []
        done = [(i, t) for i, t in zip(jpegs, decoded) if t is not None]
        if done:
            out[[i for i, _ in done]] = self.fast.tensors([t for _, t in done], [items[i].box for i, _ in done])
        arrays = {i: _tensor(it) for i, it in enumerate(items) if not isinstance(it, Jpeg)}
        for i, t in zip(jpegs, decoded):  # the device refused it: the CPU decodes it, with the same box
            if t is None:
                img, reason = decode_image(items[i].data)
                if img is None:
                    keep[i] = False
                    bad[(reason or "decode").split(":")[0]] += 1
                    continue
                arrays[i] = _tensor(self.fast.crop(img, items[i].box))
        if arrays:  # (H, W, 3) uint8 arrays (tensors once through the loader's collation)
            idx = sorted(arrays)
            host = torch.stack([arrays[i] for i in idx]).permute(0, 3, 1, 2)
            out[idx] = host.to(self.device, non_blocking=True).float()
        if not keep.all():
            out, tokens = out[torch.from_numpy(keep).to(out.device)], tokens[torch.from_numpy(keep)]
        return self.fast.normalize_chw(out), tokens, dict(bad)


def _tensor(x) -> torch.Tensor:
    """An (H, W, 3) uint8 array (Pillow's are read-only: copied) or tensor, as a tensor."""
    return x if torch.is_tensor(x) else torch.from_numpy(x if x.flags.writeable else x.copy())
