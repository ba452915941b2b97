"""What an objective plugs into the training loop (training/loop.py::fit).

An objective builds the model it trains from the config's model spec, names the loader's image
transform and tokenizer, and takes one step (forward and backward) on a batch; the loop does the
rest. The objectives: CLIP / SigLIP and LoRA or full fine-tuning (training/train.py,
training/lora.py), SimCLR and MoCo (training/ssl.py), MAE (training/mae.py).

An objective may also come from another installed package (entry point ``curate.objectives``,
shardio/plugins.py): an ``Objective`` subclass with its own ``name`` and a ``Config`` (a TrainConfig
subclass holding its settings), trained by ``curate train --objective NAME [--objective-config FILE]``.

Image-only objectives (SSL) train the image tower of an open_clip model, captions ignored; their
checkpoint is the whole open_clip model with an untrained text tower, marked ``image_only`` so the
probes (training/knn.py) score it by linear probe and k-NN, not zero-shot.
"""
from __future__ import annotations

import os

import torch
from pydantic import model_validator

from shardio import plugins
from training.loop import TrainConfig
from training.model import Clip, load_clip

BUILTIN = ("clip", "simclr", "moco", "mae")


class Objective:
    """The hooks the loop calls. ``build`` sets ``self.clip`` (the loaded open_clip model)."""

    name = "clip"
    distributed = False  # may run under torchrun (DDP)

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.clip: Clip | None = None
        self.device = "cpu"

    def load(self, device: str) -> Clip:
        """The config's model (or its ``init_checkpoint``) on ``device``."""
        self.device = device
        self.clip = load_clip(self.cfg.init_checkpoint or self.cfg.model, device=device)
        return self.clip

    def same_run(self) -> dict:
        """Config values a resumed state must share (besides the loop's model, budget and data)."""
        return {}

    def build(self, device: str, rank: int, world: int) -> torch.nn.Module:
        """The module to train: its parameters are optimised, its state is what a resume restores."""
        raise NotImplementedError

    def transforms(self) -> tuple:
        """(per-image transform, tokenizer) for the loader (training/data.py)."""
        raise NotImplementedError

    def step(self, model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor, step: int,
             autocast) -> float:
        """Forward and backward on one batch (gradients zeroed by the loop); return the loss."""
        raise NotImplementedError

    def after_step(self, model: torch.nn.Module) -> None:
        """After the optimizer step (e.g. clamp a parameter)."""

    def log_fields(self, model: torch.nn.Module, step: int) -> dict:
        """The objective's own columns of a metrics row."""
        return {}

    def result_fields(self) -> dict:
        """Leading fields of the run's result."""
        return {}

    def final_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The plain open_clip model to save from the trained ``model`` (unwrapped)."""
        return model

    def checkpoint_info(self) -> dict:
        """Added to the checkpoint's ``curate`` block."""
        return {}


def installed() -> dict[str, type[Objective]]:
    """``name`` -> objective class, from installed packages' ``curate.objectives`` entry points."""
    found: dict[str, type[Objective]] = {}
    for cls, where, direct in plugins.classes(plugins.GROUPS["objectives"], Objective):
        if not direct and "Config" not in vars(cls):
            continue  # a module's helper class: an objective declares its own Config
        if cls.name in BUILTIN or cls.name in found:
            raise plugins.PluginError(f"{where}: objective name {cls.name!r} is taken (built-in: "
                                      f"{', '.join(BUILTIN)}); give {cls.__name__} its own `name`")
        config = getattr(cls, "Config", None)
        if not (isinstance(config, type) and issubclass(config, TrainConfig)):
            raise plugins.PluginError(f"{where}: {cls.__name__}.Config must be a subclass of "
                                      "training.loop.TrainConfig (the loop's settings plus the objective's)")
        found[cls.name] = cls
    return found


def no_tokens(captions: list[str]) -> torch.Tensor:
    """The loader's tokenizer slot for image-only objectives: captions are ignored."""
    return torch.zeros(len(captions), 0, dtype=torch.long)


class ImageOnlyConfig(TrainConfig):
    """CLIP training's config for an objective of the image tower alone (its own loss, one process)."""

    @model_validator(mode="after")
    def _check_image_only(self):
        if self.loss != "clip" or self.accum_steps != 1:
            raise ValueError("loss and accum_steps are CLIP training options; SSL uses its own loss, no accumulation")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("SSL pretraining runs in one process (no torchrun)")
        return self


class ImageOnly(Objective):
    """An objective of the image tower: the text tower is frozen and saved untrained, heads the
    objective adds are dropped at save, as in the papers."""

    kind = "ssl"

    def same_run(self) -> dict:
        return {"objective": self.cfg.objective}

    def image_tower(self, device: str) -> torch.nn.Module:
        """The loaded model's image tower, the only part that learns."""
        clip = self.load(device)
        clip.model.requires_grad_(False)
        visual = clip.model.visual.requires_grad_(True)
        if self.cfg.grad_checkpointing:
            visual.set_grad_checkpointing(True)
        return visual

    def result_fields(self) -> dict:
        return {"objective": self.kind}

    def final_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.clip.model

    def checkpoint_info(self) -> dict:
        return {"objective": self.kind, "image_only": True}


def image_size(visual: torch.nn.Module) -> int:
    return visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size
