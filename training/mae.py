"""MAE: masked autoencoder pretraining of an open_clip ViT image tower (He et al. 2021), captions ignored.

Each image is cut into patches (the tower's own patch embedding); a random 75% of them are masked.
The encoder (the ViT tower: patch embedding, position embedding, class token, blocks, final norm)
runs on the visible 25% only. A light decoder (a linear map to its width, a shared learned mask
token in every masked place, fixed 2-D sin-cos positions, a few transformer blocks, a linear head)
reconstructs the pixels of every patch; the loss is the mean squared error on the masked patches
only, against each patch's pixels normalised by its own mean and variance (the paper's
``norm_pix_loss``). Augmentation is the paper's: random resized crop (scale 0.2-1) and flip.

The decoder is dropped at save; the checkpoint is the whole open_clip model with an untrained text
tower (``image_only``), scored by linear probe and k-NN (training/knn.py) on the tower's pooled,
projected class token, what ``encode_image`` returns. The loop is training/loop.py's.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from training.loop import fit
from training.objective import ImageOnly, ImageOnlyConfig, image_size, no_tokens
from training.ssl import TwoViews


class MAEConfig(ImageOnlyConfig):
    """The loop's config plus MAE's settings (the paper's optimizer: AdamW, beta2 0.95, wd 0.05)."""

    objective: Literal["mae"] = "mae"
    mask_ratio: float = Field(0.75, gt=0, lt=1, description="share of patches masked")
    decoder_width: int = Field(64, gt=0)
    decoder_depth: int = Field(2, ge=1)
    decoder_heads: int = Field(4, ge=1)
    norm_pix_loss: bool = Field(True, description="targets: each patch's pixels normalised by its mean and std")
    crop_min: float = Field(0.2, gt=0, le=1, description="RandomResizedCrop's smallest area share")
    wd: float = Field(0.05, ge=0)
    beta2: float = 0.95


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p * p * C), patches in the row-major order of the patch embedding."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def random_masking(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From per-patch noise (B, N): the kept patch indices (B, K), the mask (B, N; 1 = masked) and
    the permutation that puts shuffled tokens back in place (B, N). The lowest-noise patches stay."""
    b, n = noise.shape
    keep = max(1, int(n * (1 - mask_ratio)))
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(b, n, device=noise.device)
    mask[:, :keep] = 0
    return shuffle[:, :keep], torch.gather(mask, 1, restore), restore


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error per patch, averaged over the masked patches (``mask`` 1) only."""
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred.float() - target.float()) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (grid * grid + 1, dim), a zero row for the class token."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    parts = [f(np.outer(c.reshape(-1), omega)) for c in (xs, ys) for f in (np.sin, np.cos)]
    emb = np.concatenate(parts, axis=1)
    emb = np.pad(emb, ((1, 0), (0, dim - emb.shape[1])))
    return torch.from_numpy(emb).float()


class MAEModel(torch.nn.Module):
    """An open_clip ``VisionTransformer`` as MAE's encoder, with MAE's decoder."""

    def __init__(self, visual: torch.nn.Module, cfg: MAEConfig) -> None:
        super().__init__()
        if not all(hasattr(visual, a) for a in ("conv1", "class_embedding", "positional_embedding", "transformer")) \
                or getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
            raise ValueError(f"MAE needs a plain ViT image tower (open_clip VisionTransformer), not {type(visual).__name__}")
        self.encoder, self.mask_ratio, self.norm_pix = visual, cfg.mask_ratio, cfg.norm_pix_loss
        self.patch = visual.conv1.kernel_size[0]
        self.grid = visual.grid_size[0]
        width, dw = visual.conv1.out_channels, cfg.decoder_width
        self.decoder_embed = torch.nn.Linear(width, dw)
        self.mask_token = torch.nn.Parameter(torch.randn(1, 1, dw) * 0.02)
        self.register_buffer("decoder_pos", sincos_2d(dw, self.grid), persistent=False)
        block = torch.nn.TransformerEncoderLayer(dw, cfg.decoder_heads, 4 * dw, dropout=0.0, activation="gelu",
                                                 batch_first=True, norm_first=True)
        self.decoder = torch.nn.TransformerEncoder(block, cfg.decoder_depth, enable_nested_tensor=False)
        self.decoder_norm = torch.nn.LayerNorm(dw)
        self.decoder_pred = torch.nn.Linear(dw, self.patch * self.patch * 3)

    def encode_visible(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The encoder on the kept patches only: (B, 1 + K, width), class token first."""
        v = self.encoder
        x = v.conv1(images).flatten(2).transpose(1, 2)
        pos = v.positional_embedding.to(x.dtype)
        x = torch.gather(x + pos[1:], 1, keep[..., None].expand(-1, -1, x.shape[-1]))
        cls = (v.class_embedding.to(x.dtype) + pos[0]).expand(len(x), 1, -1)
        return v.ln_post(v.transformer(v.ln_pre(torch.cat([cls, x], dim=1))))

    def decode(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """Pixels of every patch (B, N, p * p * 3) from the visible tokens and mask tokens."""
        x = self.decoder_embed(latent)
        b, n = restore.shape
        tokens = torch.cat([x[:, 1:], self.mask_token.to(x.dtype).expand(b, n + 1 - x.shape[1], -1)], dim=1)
        tokens = torch.gather(tokens, 1, restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos.to(x.dtype)
        return self.decoder_pred(self.decoder_norm(self.decoder(x)))[:, 1:]

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = torch.rand(len(images), self.grid * self.grid, device=images.device)
        keep, mask, restore = random_masking(noise, self.mask_ratio)
        pred = self.decode(self.encode_visible(images, keep), restore)
        return masked_patch_loss(pred, patchify(images, self.patch), mask, self.norm_pix)


class MAE(ImageOnly):
    """MAE on the image tower, one cropped and flipped view per image (the loop: training/loop.py)."""

    name = kind = "mae"

    def build(self, device: str, rank: int, world: int) -> torch.nn.Module:
        visual = self.image_tower(device)
        model = MAEModel(visual, self.cfg).to(device)
        self.views = TwoViews(image_size(visual), self.cfg.crop_min, views=1)
        self.mean = torch.tensor(visual.image_mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(visual.image_std, device=device).view(1, 3, 1, 1)
        return model

    def transforms(self) -> tuple:
        return self.views, no_tokens

    def step(self, model, images: torch.Tensor, tokens: torch.Tensor, step: int, autocast) -> float:
        x = images[:, 0].to(self.device, non_blocking=True).permute(0, 3, 1, 2).float() / 255
        with autocast:
            loss = model((x - self.mean) / self.std)
        loss.backward()
        return float(loss.detach())


def pretrain(cfg: MAEConfig) -> dict:
    """Pretrain (resuming from ``out_dir`` if interrupted); return a summary with ``checkpoint``."""
    return fit(cfg, MAE(cfg))
