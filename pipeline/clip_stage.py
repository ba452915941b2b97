"""CLIP stage: image and text embeddings and the image-text score, with open_clip.

The score is DataComp's: cosine similarity of the L2-normalised image and text embeddings. A scorer
is an open_clip model name (with an optional weights file), a JSON model config, or a checkpoint
folder in open_clip's ``local-dir`` layout (what ``curate train`` writes), loaded by open_clip itself,
offline; each may be a URL (copied once into a local cache where the scorer runs: shardio/models.py).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from schemas.config import ClipModel
from shardio.compat import ensure_torchvision
from shardio.device import pick_device
from shardio.gpu_decode import is_tensor, use_device_decode
from shardio import storage
from shardio.models import local_copy, open_clip_name, remote_files
from shardio.pixels import batch_transform, fast_val_transform

ensure_torchvision()  # before open_clip imports torchvision, in every process

GPU_BATCH, CPU_BATCH = 1024, 256  # default images a batch


def default_batch(spec: ClipModel) -> int:
    """The configured batch size, else 1024 on a GPU (towers at its pace) and 256 on a CPU."""
    return spec.batch_size or (GPU_BATCH if pick_device(spec.device).startswith("cuda") else CPU_BATCH)


def check_scorer(spec: ClipModel) -> None:
    """Validate a scorer's model and weights file before any work starts (no model is built)."""
    if spec.model:
        open_clip_name(spec.model, "scorer model", fetch=False)  # a URL: checked here, copied where it runs
    if spec.checkpoint and storage.is_url(spec.checkpoint):
        remote_files(spec.checkpoint, "scorer weights file")
    elif spec.checkpoint and not Path(spec.checkpoint).is_file():
        raise FileNotFoundError(f"scorer weights file {spec.checkpoint} does not exist")


class ClipScorer:
    """Holds one open_clip model; ``embed`` returns (image_emb, text_emb, scores) as numpy.

    CPU side: ``prepare`` turns one decoded image into its uint8 model input (resize + crop, no
    normalising). Device side, per batch: the uint8 batch (pinned, copied without blocking on a GPU)
    is normalised where the towers run, and the towers run in bf16 on a GPU (``precision: auto``),
    channels-last, optionally compiled. Images decoded on the device (shardio/gpu_decode.py, when
    ``device_decode``) are resized and cropped there in the same batch. ``submit`` queues a batch and
    ``collect`` waits for it, so a caller can read and decode the next batch meanwhile."""

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
                name, pretrained=local_copy(spec.checkpoint) if spec.checkpoint else None, device=self.device,
                pretrained_text=False)
        self.model.eval()
        self.batch_size = default_batch(spec)
        self.channels_last = self.device.startswith("cuda")
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._encode_image = torch.compile(self.model.encode_image) if spec.compile else self.model.encode_image
        self.tokenizer = fast_tokenizer(open_clip.get_tokenizer(name))
        self.fast = fast_val_transform(self.preprocess)  # same pixels, tensor steps per batch
        self._batch = self.fast or batch_transform(self.preprocess)
        self.dim = int(self.embed_texts(["x"]).shape[1])
        # device decode needs the standard transform (its geometry is redone on tensors)
        self.device_decode = self.fast is not None and use_device_decode(spec.decode, self.device)

    @property
    def input_side(self) -> int | None:
        """The side an image needs for this model's transform (its shorter side is resized to it), or
        None when the transform is not open_clip's standard one (then images are decoded in full)."""
        return self.fast.size if self.fast else None

    def prepare(self, im: Image.Image):
        """One image's CPU-side model input: uint8 HxWx3 on the fast path, else the transform's tensor;
        a device-decoded image (a tensor) as it is (resized with its batch on the device)."""
        if is_tensor(im):
            return im
        return self.fast.image(im) if self.fast else self.preprocess(im)

    def embed(self, images: list[Image.Image], captions: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.embed_prepared([self.prepare(im) for im in images], captions)

    def embed_prepared(self, prepared: list, captions: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Embed and score a batch of ``prepare`` outputs with their captions."""
        return self.collect(self.submit(prepared, captions))

    def submit(self, prepared: list, captions: list[str]):
        """Queue a batch on the device; ``collect`` gives its (image_emb, text_emb, scores)."""
        import torch

        if not prepared:
            return None
        with torch.no_grad():
            pixels = self._pixels_on_device(prepared)
            tokens = self._to_device(self.tokenizer(captions))
            with self._autocast():
                img = self._encode_image(pixels, normalize=True).float()
                txt = self.model.encode_text(tokens, normalize=True).float()
            return img, txt, (img * txt).sum(-1)

    def collect(self, handle) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if handle is None:
            z = np.zeros((0, self.dim), np.float32)
            return z, z.copy(), np.zeros(0, np.float32)
        return tuple(t.cpu().numpy() for t in handle)

    def pixels(self, images: list[Image.Image]):
        """A normalised float batch on the CPU (the transform's output for each image)."""
        return self._batch(images)

    def _to_device(self, t):
        if self.device == "cpu":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def _pixels_on_device(self, prepared: list):
        import torch

        if not self.fast:
            x = self._to_device(torch.stack(prepared))
        elif not any(is_tensor(p) for p in prepared):  # uint8 travels (4x fewer bytes than float)
            x = self.fast.normalize(self._to_device(torch.from_numpy(np.stack(prepared))))
        else:  # decoded on the device: resized there; the CPU-decoded rest (fallbacks) joins them
            s, n = self.fast.size, len(prepared)
            on_dev = [i for i, p in enumerate(prepared) if is_tensor(p)]
            host = [i for i, p in enumerate(prepared) if not is_tensor(p)]
            x = torch.empty((n, 3, s, s), dtype=torch.float32, device=self.device)
            x[on_dev] = self.fast.tensors([prepared[i].to(self.device) for i in on_dev])
            if host:
                up = self._to_device(torch.from_numpy(np.stack([prepared[i] for i in host])))
                x[host] = up.permute(0, 3, 1, 2).float()
            x = self.fast.normalize_chw(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        out = []
        bs = self.batch_size
        with torch.no_grad():
            for i in range(0, len(images), bs):
                pixels = self._pixels_on_device([self.prepare(im) for im in images[i:i + bs]])
                with self._autocast():
                    out.append(self._encode_image(pixels, normalize=True).float().cpu().numpy())
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


class FastTokenizer:
    """open_clip's SimpleTokenizer (``clean='lower'``, no reduction) giving the same ids with less work:
    printable ASCII without '&' skips ftfy and HTML unescaping (both leave such text as it is), only
    the words that fit the context are encoded, and the rows are filled in numpy."""

    def __init__(self, tok) -> None:
        self.tok = tok
        self.fit = tok.context_length - 2  # ids between the start and end tokens

    def ids(self, text: str) -> list[int]:
        tok, plain = self.tok, text.isascii() and text.isprintable() and "&" not in text
        text = " ".join(text.split()).lower() if plain else tok.clean_fn(text)
        out: list[int] = []
        for m in tok.pat.finditer(text):
            word = m.group() if plain else "".join(tok.byte_encoder[b] for b in m.group().encode("utf-8"))
            out.extend(tok.encoder[t] for t in tok.bpe(word).split(" "))
            if len(out) >= self.fit:
                break
        return out[:self.fit]

    def __call__(self, texts: str | list[str]):
        import torch

        texts = [texts] if isinstance(texts, str) else texts
        rows = np.zeros((len(texts), self.fit + 2), np.int64)
        rows[:, 0] = self.tok.sot_token_id
        for i, text in enumerate(texts):
            ids = self.ids(text)
            rows[i, 1:len(ids) + 1] = ids
            rows[i, len(ids) + 1] = self.tok.eot_token_id
        return torch.from_numpy(rows)


def fast_tokenizer(tok):
    """``FastTokenizer`` over open_clip's default tokenizer; any other tokenizer as it is."""
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower

    if (type(tok) is SimpleTokenizer and tok.clean_fn is _clean_lower and tok.reduction_fn is None
            and (tok.context_length or 0) >= 3):
        return FastTokenizer(tok)
    return tok


@lru_cache(maxsize=4)
def get_scorer(spec_json: str) -> ClipScorer:
    """One model per process (per spec), reused across shards."""
    return ClipScorer(ClipModel.model_validate_json(spec_json))
