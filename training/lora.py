"""Fine-tuning a CLIP checkpoint on image-text shards: LoRA (Hu et al. 2021) or full.

LoRA freezes every weight W0 and learns W = W0 + (alpha / r) B A (A random, B zero at the start) on
the attention and MLP projections of both towers: open_clip's ``nn.MultiheadAttention`` (one adapter
on the fused q/k/v ``in_proj_weight``, one on ``out_proj``) and the ``nn.Linear`` MLP projections
(``c_fc``, ``c_proj``). Each adapter is a ``torch.nn.utils.parametrize`` parametrization of the weight,
so W0 is never written; on save it is merged (``remove_parametrizations``) and the checkpoint is a
plain open_clip local-dir folder. ``lora=0`` fine-tunes every weight instead. It is CLIP
training's objective (training/train.py: contrastive loss) in the one loop (training/loop.py).

Why not ``peft``: 0.21 does wrap ``nn.MultiheadAttention``, but since MHA reads ``in_proj_weight``
and ``out_proj.weight`` directly, peft adds B A into the frozen weights before every forward and
subtracts it after. The "frozen" base is rewritten each step and drifts by rounding (on curate-tiny,
20 steps changed half of one block's in_proj entries, by up to 6e-8 in fp32; more in bf16), and its
Parameters are replaced on every call. It also pulls in transformers, whose presence makes every
``import open_clip`` ~2.5 s slower here (open_clip imports it when installed).
"""
from __future__ import annotations

import math
import resource
from pathlib import Path

import torch
from pydantic import Field
from torch.nn.utils import parametrize

from training.runfolder import write_result
from training.train import TrainConfig, train

TARGETS = ["attn", "c_fc", "c_proj"]  # open_clip's attention and MLP projections (module name ends)


class FinetuneConfig(TrainConfig):
    """``model``: the checkpoint to adapt (a folder, or an open_clip name with ``weights``)."""

    lora: int = Field(0, ge=0, description="LoRA rank; 0 = full fine-tune")
    alpha: float = Field(8.0, gt=0, description="LoRA alpha (the update is scaled by alpha / rank)")
    targets: list[str] = Field(default_factory=lambda: list(TARGETS), description="module names to adapt")
    weights: str | None = Field(None, description="open_clip weights file for a named model")
    wd: float = Field(0.1, ge=0)

    def peak_lr(self) -> float:
        return self.lr or (1e-3 if self.lora else 1e-4)


class Adapter:
    """The ``adapter`` of training/train.py's CLIP objective: adds LoRA before training, merges it at save."""

    def __init__(self, cfg: FinetuneConfig) -> None:
        self.cfg = cfg
        self.counts: dict = {}

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.cfg.weights:
            import open_clip

            from shardio.models import local_copy

            weights = local_copy(self.cfg.weights, "weights file")  # a URL: copied once into the local cache
            if not Path(weights).is_file():
                raise FileNotFoundError(f"weights file {self.cfg.weights} does not exist")
            open_clip.load_checkpoint(model, weights)
        if self.cfg.lora:
            model = add_lora(model, self.cfg.lora, self.cfg.alpha, self.cfg.targets)
        self.counts = count_parameters(model)
        return model

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        return merge_lora(model)

    def info(self) -> dict:
        return {"finetune": {"lora": self.cfg.lora, "alpha": self.cfg.alpha, "targets": self.cfg.targets,
                             "weights": self.cfg.weights, **self.counts}}


class LoRA(torch.nn.Module):
    """The parametrization W0 -> W0 + (alpha / r) B A: A (r, in) Kaiming-uniform as in the LoRA
    reference code, B (out, r) zero, so training starts from W0."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float) -> None:
        super().__init__()
        out, inp = weight.shape
        self.A = torch.nn.Parameter(torch.empty(rank, inp, dtype=weight.dtype, device=weight.device))
        torch.nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = torch.nn.Parameter(torch.zeros(out, rank, dtype=weight.dtype, device=weight.device))
        self.scale = alpha / rank

    def forward(self, w0: torch.Tensor) -> torch.Tensor:
        return w0 + self.scale * (self.B @ self.A)


def add_lora(model: torch.nn.Module, rank: int, alpha: float, targets: list[str] = TARGETS) -> torch.nn.Module:
    """Freeze ``model`` and add adapters to the modules whose name ends in one of ``targets``."""
    model.requires_grad_(False)
    found = 0
    for name, module in list(model.named_modules()):
        if name.rsplit(".", 1)[-1] not in targets:
            continue
        if isinstance(module, torch.nn.MultiheadAttention):
            if not module._qkv_same_embed_dim:
                raise ValueError(f"{name}: LoRA needs q, k and v of one width (a fused in_proj_weight)")
            weights = [(module, "in_proj_weight"), (module.out_proj, "weight")]
        elif isinstance(module, torch.nn.Linear):
            weights = [(module, "weight")]
        else:
            raise ValueError(f"{name} is a {type(module).__name__}: LoRA adapts nn.Linear and nn.MultiheadAttention")
        for mod, attr in weights:
            parametrize.register_parametrization(mod, attr, LoRA(getattr(mod, attr), rank, alpha))
        found += 1
    if not found:
        raise ValueError(f"no module named {targets} in the model")
    return model


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every adapter into its weight (W0 + (alpha / r) B A), leaving plain modules."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model


def count_parameters(model: torch.nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total, "trainable_share": round(trainable / total, 6)}


def peak_rss_mb() -> float:
    """This process's peak resident memory: Linux's VmHWM (``ru_maxrss`` would carry over the
    parent's resident size at fork into a subprocess), else ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune (resuming if interrupted); the summary adds parameter counts and peak RSS."""
    adapter = Adapter(cfg)
    r = train(cfg, adapter=adapter)
    r.update(lora=cfg.lora, **adapter.counts, peak_rss_mb=peak_rss_mb())
    if "checkpoint" in r:
        write_result(cfg.out_dir, r)
    return r
