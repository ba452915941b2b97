"""CLIP / SigLIP contrastive training (open_clip model + loss): the default objective of the loop.

One process, or one per GPU under ``torchrun`` (DDP, local loss + gather-with-grad as open_clip).
A run folder holds ``metrics.jsonl``, ``checkpoints/state_latest.pt`` (resumed from automatically,
written every 1/N of the run) and ``final/`` (an open_clip local-dir checkpoint carrying its config);
the loop that writes them is training/loop.py.
"""
from __future__ import annotations

import contextlib
import math

import torch

from training.loop import PRESET_LR, TrainConfig, fit, lr_at, make_optimizer  # noqa: F401 - the public names
from training.model import unwrap
from training.objective import Objective


def make_loss(cfg: TrainConfig, rank: int, world: int):
    from open_clip.loss import ClipLoss, SigLipLoss  # open_clip's top level does not export SigLipLoss

    if cfg.loss == "siglip":
        return SigLipLoss(rank=rank, world_size=world)
    return ClipLoss(local_loss=world > 1, gather_with_grad=world > 1, cache_labels=True,
                              rank=rank, world_size=world)


SIGLIP_INIT = (math.log(10), -10.0)  # SigLIP's initial log temperature and bias (the paper's, open_clip's)


def add_siglip_bias(model: torch.nn.Module) -> None:
    """Give a CLIP model SigLIP's learned logit bias and temperature at their initial values, as
    open_clip does for models whose name says siglip (the sigmoid loss needs the bias)."""
    with torch.no_grad():
        model.logit_scale.fill_(SIGLIP_INIT[0])
    model.logit_bias = torch.nn.Parameter(torch.ones_like(model.logit_scale) * SIGLIP_INIT[1])


class ClipObjective(Objective):
    """Contrastive image-text training of the whole model (``cfg.loss``: CLIP or SigLIP).

    ``adapter`` (fine-tuning, training/lora.py) has ``wrap(model) -> model`` (called before the optimizer
    is built), ``merge(model) -> model`` (the plain open_clip model to save) and ``info() -> dict``."""

    name = "clip"
    distributed = True

    def __init__(self, cfg: TrainConfig, adapter=None) -> None:
        super().__init__(cfg)
        self.adapter = adapter
        self.loss_fn = None

    def same_run(self) -> dict:
        return {"objective": None}  # not an image-only run's state

    def build(self, device: str, rank: int, world: int) -> torch.nn.Module:
        model = self.load(device).model
        if self.cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if self.adapter is not None:
            model = self.adapter.wrap(model)
        if self.cfg.loss == "siglip" and getattr(model, "logit_bias", None) is None:
            add_siglip_bias(model)
            self.clip.model_cfg = {**self.clip.model_cfg, "init_logit_bias": SIGLIP_INIT[1]}  # saved: loads back
        self.loss_fn = make_loss(self.cfg, rank, world)
        return model

    def transforms(self) -> tuple:
        return self.clip.preprocess_train, self.clip.tokenizer

    def step(self, model, images: torch.Tensor, tokens: torch.Tensor, step: int, autocast) -> float:
        return forward_backward(model, self.loss_fn, images.to(self.device, non_blocking=True),
                                tokens.to(self.device, non_blocking=True), self.cfg.accum_steps, autocast)

    def after_step(self, model) -> None:
        with torch.no_grad():
            unwrap(model).logit_scale.clamp_(0, math.log(100))

    def log_fields(self, model, step: int) -> dict:
        return {"logit_scale": float(unwrap(model).logit_scale.detach().exp())}

    def final_model(self, model) -> torch.nn.Module:
        return self.adapter.merge(model) if self.adapter is not None else model

    def checkpoint_info(self) -> dict:
        return self.adapter.info() if self.adapter is not None else {}


def train(cfg: TrainConfig, adapter=None) -> dict:
    """Train (resuming from ``out_dir`` if a run was interrupted); return a summary with ``checkpoint``.
    ``adapter``: see ``ClipObjective``."""
    return fit(cfg, ClipObjective(cfg, adapter))


def forward_backward(model, loss_fn, images: torch.Tensor, tokens: torch.Tensor, accum: int, autocast) -> float:
    """Gradients of the contrastive loss over the whole batch, in ``accum`` micro-batches if > 1.

    Accumulation is open_clip's ``accum_freq`` method: embed every micro-batch without gradients,
    then re-embed one at a time with gradients against the cached others, so the loss still sees
    the full batch of negatives and the summed gradient equals the full-batch one."""
    if accum == 1:
        with autocast:
            loss = _loss(loss_fn, model(images, tokens))
        loss.backward()
        return float(loss.detach())
    chunks = list(zip(images.chunk(accum), tokens.chunk(accum)))
    with torch.no_grad(), autocast:
        cache = [_feats(model(i, t)) for i, t in chunks]
    for j, (i, t) in enumerate(chunks):
        sync = contextlib.nullcontext() if j == accum - 1 or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast:
                img_j, txt_j, rest = _feats(model(i, t))
                img = torch.cat([img_j if k == j else c[0] for k, c in enumerate(cache)])
                txt = torch.cat([txt_j if k == j else c[1] for k, c in enumerate(cache)])
                # the temperature enters every micro-batch's loss: count its gradient once, not
                # accum times (open_clip's accum_freq over-counts it)
                loss = loss_fn(img, txt, *(r if j == 0 else r.detach() for r in rest))
            loss.backward()
    return float(loss.detach())


def _feats(out) -> tuple[torch.Tensor, torch.Tensor, list]:
    if isinstance(out, dict):
        rest = [out["logit_scale"]] + ([out["logit_bias"]] if out.get("logit_bias") is not None else [])
        return out["image_features"], out["text_features"], rest
    return out[0], out[1], list(out[2:])


def _loss(loss_fn, out) -> torch.Tensor:
    img, txt, rest = _feats(out)
    return loss_fn(img, txt, *rest)
