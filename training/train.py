"""CLIP contrastive training at a fixed samples-seen budget (DataComp's rule), open_clip model + loss.

One process, or one per GPU under ``torchrun`` (DDP, local loss + gather-with-grad as open_clip).
A run folder holds ``metrics.jsonl``, ``checkpoints/state_latest.pt`` (resumed from automatically,
written every 1/N of the run) and ``final/`` (an open_clip local-dir checkpoint carrying its config).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from training import dist
from training.model import load_clip, save_checkpoint_dir, unwrap

# Per-preset defaults that differ from open_clip's (tuned on this CPU for the tiny preset).
PRESET_LR = {"curate-tiny": 2e-3}


class TrainConfig(BaseModel):
    """Every field can come from a ``preset`` (training/presets.py); fields given explicitly win."""

    model_config = ConfigDict(extra="forbid")

    preset: str | None = Field(None, description="DataComp scale (debug..xlarge) or CPU preset (cpu-tiny)")
    train_data: str = Field(description="training shards: folder, braced pattern or glob")
    out_dir: str = Field(description="run folder")
    model: str = Field("curate-tiny", description="open_clip name, preset, JSON config or checkpoint folder")
    samples_seen: int = Field(gt=0, description="training budget in samples (global)")
    batch_size: int = Field(256, gt=0, description="global batch size")
    lr: float | None = Field(None, gt=0, description="peak learning rate; default: the model's tuned one or 5e-4")
    wd: float = Field(0.2, ge=0)
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup: float = Field(0.1, ge=0, description="warmup: a fraction of the steps (<1) or a step count")
    loss: Literal["clip", "siglip"] = "clip"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on GPU")
    grad_checkpointing: bool = False
    accum_steps: int = Field(1, ge=1, description="gradient accumulation: micro-batches per step (exact gradient)")
    checkpoints: int = Field(4, ge=1, description="save resumable state every 1/N of the run")
    init_checkpoint: str | None = Field(None, description="start from this checkpoint folder's weights")
    workers: int | None = Field(None, ge=0, description="loader worker processes per rank; default: 0 on CPU "
                                "(measured no faster on 2 cores), 4 on GPU")
    device: str = "auto"
    seed: int = 0
    log_every: int = Field(10, ge=1)
    max_steps: int | None = Field(None, description="stop after this step (to simulate a crash in tests)")
    data_version: dict | None = Field(None, description="recorded, not an input: the curated version read "
                                      "({out, version, manifest_sha256}; None for plain shards)")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data):
        if isinstance(data, dict) and data.get("preset"):
            from training.presets import preset

            data = {**preset(data["preset"]), **{k: v for k, v in data.items() if v is not None}}
        return data

    @model_validator(mode="after")
    def _check(self):
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.batch_size % (world * self.accum_steps):
            raise ValueError(f"batch_size {self.batch_size} must divide by world size x accum_steps "
                             f"({world} x {self.accum_steps})")
        if self.samples_seen < self.batch_size:
            raise ValueError(f"samples_seen ({self.samples_seen}) is smaller than one batch ({self.batch_size})")
        return self

    @property
    def steps(self) -> int:
        return self.samples_seen // self.batch_size

    def peak_lr(self) -> float:
        return self.lr or PRESET_LR.get(self.model, 5e-4)

    def warmup_steps(self) -> int:
        return int(self.warmup * self.steps) if self.warmup < 1 else int(self.warmup)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine decay to 0 (open_clip's ``cosine_lr``)."""
    peak, warm, total = cfg.peak_lr(), cfg.warmup_steps(), cfg.steps
    if step < warm:
        return peak * (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm))) * peak


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on gains, biases, norms and logit scale (open_clip's rule)."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        (no_decay if exclude else decay).append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": cfg.wd}]
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.peak_lr(), betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)


def make_loss(cfg: TrainConfig, rank: int, world: int):
    import open_clip

    if cfg.loss == "siglip":
        return open_clip.SigLipLoss(rank=rank, world_size=world)
    return open_clip.ClipLoss(local_loss=world > 1, gather_with_grad=world > 1, cache_labels=True,
                              rank=rank, world_size=world)


def train(cfg: TrainConfig, adapter=None) -> dict:
    """Train (resuming from ``out_dir`` if a run was interrupted); return a summary with ``checkpoint``.

    ``adapter`` (fine-tuning, training/lora.py) has ``wrap(model) -> model`` (called before the optimizer
    is built), ``merge(model) -> model`` (the plain open_clip model to save) and ``info() -> dict``.
    A curated output is read in one version, held for the run and recorded (training/data.py::pin_data)."""
    from training.data import pin_data

    with pin_data(cfg, cfg.out_dir) as pinned:
        return _train(cfg.model_copy(update={"data_version": pinned.record}), adapter, pinned.shards)


def _train(cfg: TrainConfig, adapter, shards: list[str]) -> dict:
    from shardio.device import pick_device
    from training.data import train_loader

    rank, world, local = dist.setup()
    device = pick_device(cfg.device) if world == 1 else (f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(cfg.model_dump_json(indent=2))
    torch.manual_seed(cfg.seed)

    clip = load_clip(cfg.init_checkpoint or cfg.model, device=device)
    model = clip.model
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if adapter is not None:
        model = adapter.wrap(model)
    opt = make_optimizer(model, cfg)
    start = _resume(ckpt_dir / "state_latest.pt", cfg, model, opt, device)
    if rank == 0:
        _trim_log(out / "metrics.jsonl", start)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if device != "cpu" else None)
    loss_fn = make_loss(cfg, rank, world)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") and cfg.precision != "fp32"
                else torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"))

    per_rank = cfg.batch_size // world
    loader = iter(train_loader(shards, clip.preprocess_train, clip.tokenizer, per_rank,
                               seed=cfg.seed * 7919 + rank * 104729 + start,
                               workers=cfg.workers if cfg.workers is not None else (4 if device.startswith("cuda") else 0)))
    every = max(1, cfg.steps // cfg.checkpoints)
    stop = min(cfg.steps, cfg.max_steps or cfg.steps)
    bad: dict[str, int] = {}
    bar = _progress(rank, start, cfg.steps)
    model.train()
    t0, seen0, loss_v = time.time(), start * cfg.batch_size, float("nan")
    for step in range(start, stop):
        images, tokens, bad_now = next(loader)
        for k, v in bad_now.items():
            bad[k] = bad.get(k, 0) + v
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss_v = forward_backward(model, loss_fn, images.to(device, non_blocking=True),
                                  tokens.to(device, non_blocking=True), cfg.accum_steps, autocast)
        opt.step()
        with torch.no_grad():
            unwrap(model).logit_scale.clamp_(0, math.log(100))
        done = step + 1
        rate = (done * cfg.batch_size - seen0) / max(time.time() - t0, 1e-9)
        if rank == 0:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.3f}", samples_s=f"{rate:,.0f}", refresh=False)
            if done % cfg.log_every == 0 or done == cfg.steps:
                _log(out, {"step": done, "samples_seen": done * cfg.batch_size, "loss": round(loss_v, 5),
                           "lr": lr_at(step, cfg), "logit_scale": float(unwrap(model).logit_scale.detach().exp()),
                           "samples_per_s": round(rate, 1), "elapsed_s": round(time.time() - t0, 3),
                           "bad_samples": bad})
            if done % every == 0 or done == cfg.steps:
                _save_state(ckpt_dir / "state_latest.pt", model, opt, done, cfg)
    bar.close()
    seconds = time.time() - t0
    _close(loader)
    result = {"steps": stop, "total_steps": cfg.steps, "samples_seen": stop * cfg.batch_size,
              "final_loss": loss_v, "samples_per_s": round((stop - start) * cfg.batch_size / max(seconds, 1e-9), 1),
              "train_seconds": round(seconds, 1), "resumed_from_step": start, "bad_samples": bad,
              "device": device, "world_size": world, "data_version": cfg.data_version}
    if stop == cfg.steps and rank == 0:
        info = {"train": cfg.model_dump(), "result": result, "base_model": clip.name,
                **(adapter.info() if adapter is not None else {})}
        final = adapter.merge(unwrap(model)) if adapter is not None else unwrap(model)
        result["checkpoint"] = str(save_checkpoint_dir(out / "final", final, clip.model_cfg, info))
        (out / "result.json").write_text(json.dumps(result, indent=2))
    dist.barrier()
    return result


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


def _resume(path: Path, cfg: TrainConfig, model, opt, device: str) -> int:
    if not path.is_file():
        return 0
    state = torch.load(path, map_location=device, weights_only=True)  # tensors and plain data only
    same = {k: state["config"].get(k) for k in ("model", "samples_seen", "batch_size", "train_data")}
    mine = {k: getattr(cfg, k) for k in same}
    if same != mine:
        raise ValueError(f"{path} belongs to a different run ({same}) than this config ({mine}); "
                         "use a new out_dir or delete the old checkpoints")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    print(f"resuming from step {state['step']} of {cfg.steps} ({path})", flush=True)
    return int(state["step"])


def _save_state(path: Path, model, opt, step: int, cfg: TrainConfig) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(), "step": step,
                "config": cfg.model_dump()}, tmp)
    os.replace(tmp, path)


def _log(out: Path, row: dict) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _trim_log(path: Path, step: int) -> None:
    """Drop rows logged after the state we resume from, so a resumed log has each step once."""
    if not path.is_file():
        return
    rows = [r for r in path.read_text().splitlines() if r.strip() and json.loads(r)["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(r + "\n" for r in rows))
    os.replace(tmp, path)


def _progress(rank: int, start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=rank != 0, unit="step", desc="train", mininterval=2)


def _close(loader) -> None:
    """Stop loader workers now; a worker that dies on the way out does not fail a finished run."""
    try:
        if hasattr(loader, "_shutdown_workers"):
            loader._shutdown_workers()
    except RuntimeError as e:
        print(f"warning: data loader shutdown: {e}", flush=True)

