"""CLIP stage: image and text embeddings and the image-text score, with open_clip.

The score is DataComp's: cosine similarity of the L2-normalised image and text embeddings. A scorer
is an open_clip model name (with an optional local weights file), a JSON model config, or a
checkpoint folder in open_clip's ``local-dir`` layout (what ``curate train`` writes), loaded by
open_clip itself, offline.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from schemas.checkpoint import CONFIG_FILE, MODEL_CONFIG_DIR
from schemas.config import ClipModel
from shardio.compat import ensure_torchvision
from shardio.device import pick_device
from shardio.pixels import fast_val_transform

ensure_torchvision()  # before open_clip imports torchvision, in every process


def open_clip_name(model: str) -> str:
    """A model spec as open_clip names it: ``local-dir:PATH`` for a checkpoint folder, the stem of a
    JSON config (registered), or a built-in / preset name; a clear error otherwise."""
    ensure_torchvision()
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    if model.startswith("local-dir:"):
        return model
    p = Path(model)
    if p.is_dir():
        if not (p / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"scorer {p} is a folder without {CONFIG_FILE}: not a checkpoint folder")
        return f"local-dir:{p.resolve()}"
    if p.suffix == ".json":
        if not p.is_file():
            raise FileNotFoundError(f"scorer model config {p} does not exist")
        open_clip.add_model_config(p)
        return p.stem
    if open_clip.get_model_config(model) is None:
        hint = " (a checkpoint folder that does not exist?)" if ("/" in model or model.startswith(".")) else ""
        raise ValueError(f"scorer model {model!r} is neither an open_clip model name nor a checkpoint folder{hint}")
    return model


def check_scorer(spec: ClipModel) -> None:
    """Validate a scorer's model and weights file before any work starts (no model is built)."""
    if spec.model:
        open_clip_name(spec.model)
    if spec.checkpoint and not Path(spec.checkpoint).is_file():
        raise FileNotFoundError(f"scorer weights file {spec.checkpoint} does not exist")


class ClipScorer:
    """Holds one open_clip model; ``embed`` returns (image_emb, text_emb, scores) as numpy."""

    def __init__(self, spec: ClipModel):
        import open_clip
        import torch

        check_scorer(spec)
        self.spec = spec
        self.device = pick_device(spec.device)
        name = open_clip_name(spec.model)
        with torch.random.fork_rng(devices=[]):  # a model without weights starts the same in every process
            torch.manual_seed(0)
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                name, pretrained=spec.checkpoint, device=self.device, pretrained_text=False)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self.fast = fast_val_transform(self.preprocess)  # same pixels, tensor steps per batch
        self.dim = int(self.embed_texts(["x"]).shape[1])

    def embed(self, images: list[Image.Image], captions: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        if not images:
            z = np.zeros((0, self.dim), np.float32)
            return z, z.copy(), np.zeros(0, np.float32)
        with torch.no_grad():
            pixels = self.pixels(images).to(self.device)
            tokens = self.tokenizer(captions).to(self.device)
            with self._autocast():
                img = self.model.encode_image(pixels, normalize=True).float()
                txt = self.model.encode_text(tokens, normalize=True).float()
            scores = (img * txt).sum(-1)
        return img.cpu().numpy(), txt.cpu().numpy(), scores.cpu().numpy()

    def pixels(self, images: list[Image.Image]):
        import torch

        return self.fast(images) if self.fast else torch.stack([self.preprocess(im) for im in images])

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.spec.batch_size):
                pixels = self.pixels(images[i:i + self.spec.batch_size])
                with self._autocast():
                    out.append(self.model.encode_image(pixels.to(self.device), normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.no_grad(), self._autocast():
            return self.model.encode_text(self.tokenizer(texts).to(self.device), normalize=True).float().cpu().numpy()

    def _autocast(self):
        import contextlib

        import torch

        bf16 = self.spec.precision == "bf16" or (self.spec.precision == "auto" and self.device == "cuda")
        return torch.autocast(self.device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@lru_cache(maxsize=4)
def get_scorer(spec_json: str) -> ClipScorer:
    """One model per process (per spec), reused across shards."""
    return ClipScorer(ClipModel.model_validate_json(spec_json))
