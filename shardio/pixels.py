"""open_clip's eval transform (Resize shorter side, CenterCrop, ToTensor, Normalize) with the tensor
steps run once per batch: the same pixels as torchvision's on PIL images, ~2.3x cheaper. Shared by the
scorer (pipeline/) and evaluation (training/). ``FastValTransform.tensors`` is the same geometry for
images decoded on the device (shardio/gpu_decode.py): torch's antialiased bicubic there, as Pillow's."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from shardio.decode import MAX_ASPECT


class Normalize:
    """ToTensor + Normalize once per batch of HxWx3 uint8 arrays."""

    def __init__(self, mean, std) -> None:
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255

    def batch(self, arrays: list[np.ndarray]) -> torch.Tensor:
        return self.normalize(torch.from_numpy(np.stack(arrays)))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 on any device -> (N, 3, H, W) float, normalised there."""
        return self.normalize_chw(x.permute(0, 3, 1, 2).float())

    def normalize_chw(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float 0..255 on any device -> normalised there."""
        if self.mean.device != x.device:
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x - self.mean) / self.std




class FastValTransform(Normalize):
    """open_clip's eval transform (Resize shorter side, CenterCrop, ToTensor, Normalize) with the tensor
    steps run once per batch; the pixels are the same as torchvision's on PIL images."""

    def __init__(self, size: int, mean, std) -> None:
        super().__init__(mean, std)
        self.size = size

    def image(self, im: Image.Image) -> np.ndarray:
        """One image's uint8 model input (size x size x 3), before normalising."""
        s, (w, h) = self.size, im.size
        if max(w, h) > MAX_ASPECT * min(w, h):
            # a 1 x 3,000,000 image resized whole would take GBs: resize only the source box the centre
            # crop comes from (within 0.5 grey levels on average of resize-then-crop)
            nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
            top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
            box = (left * w / nw, top * h / nh, (left + s) * w / nw, (top + s) * h / nh)
            im = im.resize((s, s), Image.BICUBIC, box=box)
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
        if (w, h) != (s, s):
            nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)  # torchvision's Resize(int)
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.BICUBIC)
            if (nw, nh) != (s, s):  # torchvision's CenterCrop rounding
                top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
                im = im.crop((left, top, left + s, top + s))
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return self.batch([self.image(im) for im in images])

    def tensors(self, images: list[torch.Tensor]) -> torch.Tensor:
        """(3, H, W) uint8 images on one device -> (N, 3, size, size) float 0..255 there (rounded, as
        ``image``'s uint8): images of one size are resized together."""
        s = self.size
        out = torch.empty((len(images), 3, s, s), dtype=torch.float32, device=images[0].device if images else "cpu")
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault((int(im.shape[2]), int(im.shape[1])), []).append(i)
        for (w, h), idx in groups.items():
            x = torch.stack([images[i] for i in idx]).float()
            out[idx] = self._resize_crop(x, w, h).round_().clamp_(0, 255)
        return out

    def _resize_crop(self, x: torch.Tensor, w: int, h: int) -> torch.Tensor:
        """``image``'s geometry on a float (B, 3, h, w) batch (resize whole, then crop: images beyond
        MAX_ASPECT are left to the CPU path by shardio/gpu_decode.py)."""
        import torch.nn.functional as F

        s = self.size
        nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        if (nw, nh) != (w, h):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        return x[:, :, top:top + s, left:left + s]


def fast_val_transform(preprocess) -> FastValTransform | None:
    """The batched path for open_clip's standard eval transform, or None when it is anything else."""
    steps = getattr(preprocess, "transforms", None)
    names = [type(t).__name__ for t in steps or []]
    if names != ["Resize", "CenterCrop", "MaybeConvertMode", "MaybeToTensor", "Normalize"]:
        return None
    resize, crop, norm = steps[0], steps[1], steps[-1]
    size = resize.size if isinstance(resize.size, int) else None
    if (size is None or getattr(resize.interpolation, "value", "") != "bicubic" or resize.max_size is not None
            or not resize.antialias or tuple(crop.size) != (size, size)):
        return None
    return FastValTransform(size, norm.mean, norm.std)


def batch_transform(preprocess):
    """``images -> float batch``: the batched path when ``preprocess`` is open_clip's standard eval
    transform (same pixels), else ``preprocess`` image by image."""
    fast = fast_val_transform(preprocess)
    if fast is not None:
        return fast
    return lambda images: torch.stack([preprocess(im) for im in images])
