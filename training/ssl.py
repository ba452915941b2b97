"""Self-supervised pretraining of an open_clip image tower on shard images (captions ignored).

SimCLR (Chen et al. 2020): two augmented views per image, a projection MLP, NT-Xent loss.
MoCo v2 (He et al. 2020; Chen, Fan, Girshick & He 2020): a momentum key encoder and a queue of past keys.
MoCo v3 (Chen, Xie & He 2021): momentum encoder, projection + prediction heads, in-batch keys, no queue.

The backbone is the image tower of a model spec (default ``curate-tiny``); its output (the tower's
projected embedding, what ``encode_image`` returns) is the representation, heads sit on top and are
dropped at save, as in the papers. Loader (resampled shards, fixed samples seen), optimizer, schedule,
resumable state and the final local-dir checkpoint are the loop's (training/loop.py). The
checkpoint is a whole open_clip model whose text tower is untrained (``curate.image_only``): score it
by linear probe or k-NN (training/knn.py), not zero-shot. One process only (no DDP: the negatives,
the queue and BatchNorm would need gathering across ranks).
"""
from __future__ import annotations

import copy
import math
import random
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from training.loop import fit
from training.objective import ImageOnly, ImageOnlyConfig, image_size, no_tokens  # noqa: F401 - no_tokens public here
from training.transforms import FastTrainTransform

# Published defaults: SimCLR's CIFAR-10 temperature (the closest setting to 32 px inputs) and crop
# scale; MoCo v2 / v3 temperature 0.2, crop scale 0.2 (v2) / 0.08 (v3).
TEMPERATURE = {"simclr": 0.5, "moco2": 0.2, "moco3": 0.2}
CROP_MIN = {"simclr": 0.08, "moco2": 0.2, "moco3": 0.08}


class SSLConfig(ImageOnlyConfig):
    """CLIP training's config plus the objective's own settings (MoCo's scaled to short CPU runs:
    momentum 0.99 instead of 0.999, a 4096-key queue instead of 65536)."""

    objective: Literal["simclr", "moco"] = "simclr"
    moco_version: Literal[2, 3] = 2
    temperature: float | None = Field(None, gt=0, description="default: the paper's (simclr 0.5, moco 0.2)")
    momentum: float = Field(0.99, ge=0, le=1,
                            description="MoCo key encoder momentum (v3: start of its cosine ramp to 1)")
    queue_size: int = Field(4096, gt=0, description="MoCo v2 queue length (keys)")
    proj_hidden: int = Field(512, gt=0, description="hidden width of the projection / prediction MLPs")
    proj_dim: int = Field(128, gt=0, description="output width of the projection MLP")
    crop_min: float | None = Field(None, gt=0, le=1, description="RandomResizedCrop's smallest area share")

    @model_validator(mode="after")
    def _check_queue(self):
        if self.kind == "moco2" and self.queue_size < self.batch_size:
            raise ValueError(f"queue_size ({self.queue_size}) must hold at least one batch ({self.batch_size})")
        return self

    @property
    def kind(self) -> str:
        return "simclr" if self.objective == "simclr" else f"moco{self.moco_version}"

    @property
    def tau(self) -> float:
        return self.temperature or TEMPERATURE[self.kind]


# ---- augmentations ----

class TwoViews:
    """The per-image half of the augmentation, drawn twice (``views``): random resized crop (torchvision's box
    algorithm, bicubic) and horizontal flip. Returns uint8 (views, H, W, 3); ``Augment`` does the rest
    once per batch, on the training device (torchvision's per-image ops took 60-100 ms a pair of views
    on the 2-core dev machine)."""

    def __init__(self, size: int, crop_min: float = 0.08, views: int = 2) -> None:
        self.crop = FastTrainTransform(size, (crop_min, 1.0), (3 / 4, 4 / 3), (0, 0, 0), (1, 1, 1))
        self.rng: random.Random | None = None
        self.views = views

    def __call__(self, img) -> torch.Tensor:
        if self.rng is None:  # seeded in the process that uses it (loader workers differ)
            self.rng = random.Random(torch.initial_seed())
        views = [self.crop.image(img, self.rng) for _ in range(self.views)]
        views = [v[:, ::-1] if self.rng.random() < 0.5 else v for v in views]
        return torch.from_numpy(np.stack(views))


class Augment:
    """SimCLR's colour distortion and blur on a uint8 (B, H, W, 3) batch, per-sample parameters:
    colour jitter (strength 0.5: brightness, contrast, saturation 0.4, hue 0.1; p=0.8; fixed order;
    hue as a rotation of the YIQ chroma plane), grayscale (p=0.2), Gaussian blur (p=0.5, kernel 10%
    of the side, sigma 0.1-2), then the model's normalisation. Returns float (B, 3, H, W)."""

    def __init__(self, size: int, mean, std) -> None:
        self.kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float() / 255
        b, dev = len(x), x.device
        jitter = torch.rand(b, device=dev) < 0.8
        x = torch.where(jitter.view(-1, 1, 1, 1), colour_jitter(x, 0.4, 0.4, 0.4, 0.1), x)
        grey = (torch.rand(b, device=dev) < 0.2).view(-1, 1, 1, 1)
        x = torch.where(grey, gray(x).expand_as(x), x)
        blur = (torch.rand(b, device=dev) < 0.5).view(-1, 1, 1, 1)
        x = torch.where(blur, gaussian_blur(x, self.kernel, torch.empty(b, device=dev).uniform_(0.1, 2.0)), x)
        return (x - self.mean.to(dev)) / self.std.to(dev)


def _factors(b: int, strength: float, dev) -> torch.Tensor:
    return torch.empty(b, 1, 1, 1, device=dev).uniform_(1 - strength, 1 + strength)


def gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, torchvision's grayscale weights; (B, 1, H, W)."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def colour_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float) -> torch.Tensor:
    b, dev = len(x), x.device
    x = (x * _factors(b, brightness, dev)).clamp(0, 1)
    m = gray(x).mean((1, 2, 3), keepdim=True)
    x = ((x - m) * _factors(b, contrast, dev) + m).clamp(0, 1)
    g = gray(x)
    x = ((x - g) * _factors(b, saturation, dev) + g).clamp(0, 1)
    theta = torch.empty(b, device=dev).uniform_(-hue, hue) * 2 * math.pi
    c, s = theta.cos(), theta.sin()
    rot = torch.zeros(b, 3, 3, device=dev)
    rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, c, -s, s, c
    m = (YIQ.inverse().float().to(dev) @ rot @ YIQ.float().to(dev))  # (B, 3, 3)
    return torch.bmm(m, x.flatten(2)).view_as(x).clamp(0, 1)


YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma, reflect padding (torchvision's)."""
    b, c, h, w = x.shape
    r = torch.arange(kernel, device=x.device, dtype=x.dtype) - kernel // 2
    k = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, kernel)
    y = F.pad(x.reshape(1, b * c, h, w), [kernel // 2] * 4, mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, kernel), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, kernel, 1), groups=b * c)
    return y.view(b, c, h, w)


# ---- losses and MoCo's updates ----

def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR eq. 1) averaged over all 2N anchors: the positive of view i is the other view
    of the same image, the negatives are the other 2N - 2 views; cosine similarity / temperature."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    sim = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target)


def moco_v2_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the key of the same image as positive and the queue (dim, K) as negatives."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def moco_v3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's ctr(q, k): in-batch InfoNCE, scaled by 2 * temperature as in the paper's code."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    target = torch.arange(len(q), device=q.device)
    return F.cross_entropy(q @ k.T / temperature, target) * 2 * temperature


@torch.no_grad()
def momentum_update(online: torch.nn.Module, target: torch.nn.Module, m: float) -> None:
    """theta_k <- m * theta_k + (1 - m) * theta_q for every parameter (buffers are left alone)."""
    for po, pt in zip(online.parameters(), target.parameters()):
        pt.mul_(m).add_(po.detach(), alpha=1 - m)


@torch.no_grad()
def enqueue(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """Write the batch's keys over the oldest columns of the (dim, K) queue; advance the pointer."""
    size = queue.shape[1]
    idx = (int(ptr[0]) + torch.arange(len(keys), device=queue.device)) % size
    queue[:, idx] = keys.T.to(queue.dtype)
    ptr[0] = (int(ptr[0]) + len(keys)) % size


def momentum_at(step: int, cfg: SSLConfig) -> float:
    """v2: constant; v3: cosine ramp from ``momentum`` to 1 over the run."""
    if cfg.kind != "moco3":
        return cfg.momentum
    return 1 - (1 - cfg.momentum) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))


def mlp(dims: list[int], bn: bool, last_bn: bool = False) -> torch.nn.Sequential:
    """Linear layers with ReLU (and BatchNorm when ``bn``) between them; ``last_bn``: an affine-free
    BatchNorm after the last one (MoCo v3's projector)."""
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        last = i == len(dims) - 2
        layers.append(torch.nn.Linear(a, b, bias=not bn))
        if not last:
            layers += ([torch.nn.BatchNorm1d(b)] if bn else []) + [torch.nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(torch.nn.BatchNorm1d(b, affine=False))
    return torch.nn.Sequential(*layers)


class SSLModel(torch.nn.Module):
    """The encoder (an open_clip image tower, shared with its CLIP model) with the objective's heads.

    The ViT tower has LayerNorm only and MoCo v2's head no BatchNorm, so MoCo's shuffled BN (which
    stops keys and queries of one batch sharing statistics) has nothing to do here."""

    def __init__(self, encoder: torch.nn.Module, dim: int, cfg: SSLConfig) -> None:
        super().__init__()
        self.kind, self.tau = cfg.kind, cfg.tau
        h, out = cfg.proj_hidden, cfg.proj_dim
        self.encoder = encoder
        if self.kind == "simclr":
            self.projector = mlp([dim, h, out], bn=True)
        elif self.kind == "moco2":
            self.projector = mlp([dim, h, out], bn=False)
            self.register_buffer("queue", F.normalize(torch.randn(out, cfg.queue_size), dim=0))
            self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        else:
            self.projector = mlp([dim, h, h, out], bn=True, last_bn=True)
            self.predictor = mlp([out, h, out], bn=True)
        if self.kind != "simclr":
            self.key_encoder = copy.deepcopy(encoder).requires_grad_(False)
            self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, momentum: float = 0.99) -> torch.Tensor:
        if self.kind == "simclr":
            z1, z2 = self.projector(self.encoder(torch.cat([x1, x2]))).chunk(2)
            return nt_xent(z1, z2, self.tau)
        with torch.no_grad():
            momentum_update(self.encoder, self.key_encoder, momentum)
            momentum_update(self.projector, self.key_projector, momentum)
        if self.kind == "moco2":
            q = self.projector(self.encoder(x1))
            with torch.no_grad():
                k = F.normalize(self.key_projector(self.key_encoder(x2)), dim=1)
            loss = moco_v2_loss(q, k, self.queue.clone().detach(), self.tau)
            enqueue(self.queue, self.queue_ptr, k)
            return loss
        q1, q2 = (self.predictor(self.projector(self.encoder(x))) for x in (x1, x2))
        with torch.no_grad():
            k1, k2 = (self.key_projector(self.key_encoder(x)) for x in (x1, x2))
        return moco_v3_loss(q1, k2, self.tau) + moco_v3_loss(q2, k1, self.tau)


# ---- the objective ----

class Contrastive(ImageOnly):
    """SimCLR or MoCo on the image tower, two augmented views per image (the loop: training/loop.py)."""

    def __init__(self, cfg: SSLConfig) -> None:
        super().__init__(cfg)
        self.name = self.kind = cfg.kind
        self.views = self.augment = None

    def same_run(self) -> dict:
        return {"objective": self.cfg.objective, "moco_version": self.cfg.moco_version}

    def build(self, device: str, rank: int, world: int) -> torch.nn.Module:
        visual = self.image_tower(device)
        model = SSLModel(visual, self.clip.model_cfg["embed_dim"], self.cfg).to(device)
        size = image_size(visual)
        self.views = TwoViews(size, self.cfg.crop_min or CROP_MIN[self.kind])
        self.augment = Augment(size, visual.image_mean, visual.image_std)
        return model

    def transforms(self) -> tuple:
        return self.views, no_tokens

    def step(self, model, images: torch.Tensor, tokens: torch.Tensor, step: int, autocast) -> float:
        images = images.to(self.device, non_blocking=True)
        x1, x2 = self.augment(images[:, 0]), self.augment(images[:, 1])
        with autocast:
            loss = model(x1, x2, momentum_at(step, self.cfg))
        loss.backward()
        return float(loss.detach())

    def log_fields(self, model, step: int) -> dict:
        return {"momentum": momentum_at(step, self.cfg)}


def pretrain(cfg: SSLConfig) -> dict:
    """Pretrain (resuming from ``out_dir`` if interrupted); return a summary with ``checkpoint``."""
    return fit(cfg, Contrastive(cfg))
