"""CLIP stage: image and text embeddings and the image-text score, with open_clip.

The score is DataComp's: cosine similarity of the L2-normalised image and text embeddings.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from schemas.config import ClipModel


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU; use 'auto' or 'cpu'")
    return device


class ClipScorer:
    """Holds one open_clip model; ``embed`` returns (image_emb, text_emb, scores) as numpy."""

    def __init__(self, spec: ClipModel):
        from training.model import load_clip

        self.spec = spec
        self.device = pick_device(spec.device)
        with torch.random.fork_rng(devices=[]):  # a model without weights starts the same in every process
            torch.manual_seed(0)
            self.clip = load_clip(spec.model, spec.checkpoint, device=self.device)
        self.clip.model.eval()
        from training.transforms import fast_val_transform

        self.fast = fast_val_transform(self.clip.preprocess_val)  # same pixels, tensor steps per batch
        self.dim = int(self.clip.model_cfg["embed_dim"])

    @torch.no_grad()
    def embed(self, images: list[Image.Image], captions: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not images:
            z = np.zeros((0, self.dim), np.float32)
            return z, z.copy(), np.zeros(0, np.float32)
        pixels = self.pixels(images).to(self.device)
        tokens = self.clip.tokenizer(captions).to(self.device)
        with self._autocast():
            img = self.clip.model.encode_image(pixels, normalize=True).float()
            txt = self.clip.model.encode_text(tokens, normalize=True).float()
        scores = (img * txt).sum(-1)
        return img.cpu().numpy(), txt.cpu().numpy(), scores.cpu().numpy()

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        return self.fast(images) if self.fast else torch.stack([self.clip.preprocess_val(im) for im in images])

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.spec.batch_size):
            pixels = self.pixels(images[i:i + self.spec.batch_size])
            with self._autocast():
                out.append(self.clip.model.encode_image(pixels.to(self.device), normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        with self._autocast():
            return self.clip.model.encode_text(self.clip.tokenizer(texts).to(self.device), normalize=True).float().cpu().numpy()

    def _autocast(self):
        bf16 = self.spec.precision == "bf16" or (self.spec.precision == "auto" and self.device == "cuda")
        return torch.autocast(self.device, dtype=torch.bfloat16) if bf16 else _null()


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


@lru_cache(maxsize=4)
def get_scorer(spec_json: str) -> ClipScorer:
    """One model per process (per spec), reused across shards."""
    return ClipScorer(ClipModel.model_validate_json(spec_json))
