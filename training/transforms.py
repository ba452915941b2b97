"""A batched equivalent of open_clip's training transform, ~1.4x cheaper per image on CPU.

open_clip's train transform is RandomResizedCrop (bicubic) -> RGB -> ToTensor -> Normalize, one image
at a time. Here the crop box is drawn the same way (torchvision's algorithm), PIL crops and resizes in
one call, and ToTensor + Normalize run once per batch. Any other transform is used as it is.
"""
from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image

from shardio.pixels import FastValTransform, Normalize, fast_val_transform  # noqa: F401 - re-exported


class FastTrainTransform(Normalize):
    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float], mean, std) -> None:
        super().__init__(mean, std)
        self.size, self.scale, self.log_ratio = size, scale, (math.log(ratio[0]), math.log(ratio[1]))

    def crop_box(self, w: int, h: int, rng: random.Random) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params: 10 tries, then a centre crop of valid ratio."""
        area = w * h
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            ratio = math.exp(rng.uniform(*self.log_ratio))
            cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
                return x, y, x + cw, y + ch
        r0, r1 = math.exp(self.log_ratio[0]), math.exp(self.log_ratio[1])
        if w / h < r0:
            cw, ch = w, int(round(w / r0))
        elif w / h > r1:
            cw, ch = int(round(h * r1)), h
        else:
            cw, ch = w, h
        x, y = (w - cw) // 2, (h - ch) // 2
        return x, y, x + cw, y + ch

    def image(self, im: Image.Image, rng: random.Random) -> np.ndarray:
        return self.crop(im, self.crop_box(*im.size, rng))

    def crop(self, im: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
        return np.asarray(im.resize((self.size, self.size), Image.BICUBIC, box=box))

    def tensors(self, images: list, boxes: list[tuple[int, int, int, int]]):
        """(3, H, W) uint8 images on one device, each with its crop box -> (N, 3, size, size) float
        0..255 there (rounded, as ``crop``'s uint8): torch's antialiased bicubic, as Pillow's."""
        import torch
        import torch.nn.functional as F

        s = self.size
        out = torch.empty((len(images), 3, s, s), dtype=torch.float32, device=images[0].device if images else "cpu")
        for i, (im, (x0, y0, x1, y1)) in enumerate(zip(images, boxes)):
            x = im[:, y0:y1, x0:x1].unsqueeze(0).float()
            if x.shape[-2:] != (s, s):
                x = F.interpolate(x, size=(s, s), mode="bicubic", antialias=True, align_corners=False)
            out[i] = x[0]
        return out.round_().clamp_(0, 255)


def fast_train_transform(preprocess) -> FastTrainTransform | None:
    """The fast path for open_clip's standard train transform, or None when it is anything else."""
    steps = getattr(preprocess, "transforms", None)
    names = [type(t).__name__ for t in steps or []]
    if names != ["RandomResizedCrop", "MaybeConvertMode", "MaybeToTensor", "Normalize"]:
        return None
    crop, norm = steps[0], steps[-1]
    size = crop.size if isinstance(crop.size, int) else crop.size[0]
    if getattr(crop.interpolation, "value", "bicubic") != "bicubic" or (
            not isinstance(crop.size, int) and crop.size[0] != crop.size[1]):
        return None
    return FastTrainTransform(size, tuple(crop.scale), tuple(crop.ratio), norm.mean, norm.std)
