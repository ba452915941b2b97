"""The training loop, written once; the objective (training/objective.py) is its plug-in.

Training runs at a fixed samples-seen budget (DataComp's rule) on resampled shards. One process, or
one per GPU under ``torchrun`` (DDP) when the objective allows it. The loop owns the bookkeeping:
device and autocast, loader workers, the bad-sample tally, the learning-rate schedule, a
``metrics.jsonl`` row every ``log_every`` steps, resumable state in ``checkpoints/state_latest.pt``
(resumed from automatically, written every 1/N of the run), the result dict and the final
open_clip local-dir checkpoint in ``final/``. The objective builds the model and takes one step.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shardio import plugins
from training import dist
from training.model import save_checkpoint_dir, unwrap
from training.runfolder import FINAL_FILES, STATE_FILES

log = logging.getLogger(__name__)

# Per-preset defaults that differ from open_clip's (tuned on this CPU for the tiny preset).
PRESET_LR = {"curate-tiny": 2e-3}
SAME_RUN = ("model", "samples_seen", "batch_size", "train_data")  # a resumed state must share these


class TrainConfig(BaseModel):
    """Every field can come from a ``preset`` (training/presets.py); fields given explicitly win."""

    model_config = ConfigDict(extra="forbid")

    preset: str | None = Field(None, description="DataComp scale (debug..xlarge) or CPU preset (cpu-tiny)")
    train_data: str = Field(description="training shards: folder, braced pattern or glob")
    out_dir: str = Field(description="run folder, or a bucket URL (staged locally, mirrored: training/runfolder.py)")
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
    init_checkpoint: str | None = Field(None, description="start from this checkpoint folder's weights (or its URL)")
    workers: int | None = Field(None, ge=0, description="loader worker processes per rank; default: 0 on CPU "
                                "(measured no faster on 2 cores), 4 on GPU")
    device: str = "auto"
    decode: Literal["auto", "cpu", "device"] = Field("auto", description="JPEG decoding of training images: "
                                                     "auto: on the GPU where its decoder works; cpu; device")
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


def fit(cfg: TrainConfig, objective) -> dict:
    """Train ``objective`` (training/objective.py) for ``cfg``, resuming from ``out_dir`` if a run was
    interrupted; return the summary (with ``checkpoint`` once the run is complete). The run's data is
    resolved here, once: a curated output is read in one version, held for the run and recorded as
    ``data_version`` in train_config.json, the result and the checkpoint (training/data.py::pin_data)."""
    from training.data import pin_data
    from training.runfolder import RunFolder

    with RunFolder(cfg.out_dir) as folder, pin_data(cfg, folder.local, folder.label()) as pinned:
        if not pinned.shards:
            raise FileNotFoundError(f"no shards found at {cfg.train_data}")
        return _fit(cfg.model_copy(update={"data_version": pinned.record}), objective, pinned.shards, folder)


def _fit(cfg: TrainConfig, objective, shards: list[str], folder) -> dict:
    """``folder``: the run's training/runfolder.py::RunFolder (a local folder, or one mirrored to a bucket)."""
    from training.data import train_loader

    rank, world, local = dist.setup()
    if world > 1 and not objective.distributed:
        raise ValueError(f"the {objective.name} objective runs in one process (no torchrun)")
    device = _device(cfg, world, local)
    out = folder.local
    state_path = out / "checkpoints" / "state_latest.pt"
    state = _load_state(state_path, cfg, objective)
    done = out / "result.json"
    if state is not None and state["step"] == cfg.steps and world == 1 and done.is_file() \
            and (out / "final").is_dir():
        log.info("%s already holds this run, complete (%d steps): its saved result stands", out, cfg.steps)
        return json.loads(done.read_text())  # rewriting it would record a 0-step run (no loss, no speed)
    if rank == 0:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(cfg.model_dump_json(indent=2))
        folder.push("train_config.json")
    torch.manual_seed(cfg.seed)
    model = objective.build(device, rank, world)
    opt = make_optimizer(model, cfg)
    start = _restore(state, state_path, cfg, model, opt)
    if rank == 0:
        _trim_log(out / "metrics.jsonl", start)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if device != "cpu" else None)
    preprocess, tokenizer = objective.transforms()
    workers = cfg.workers if cfg.workers is not None else (4 if device.startswith("cuda") else 0)
    from shardio.gpu_decode import use_device_decode

    on = device if use_device_decode(cfg.decode, device) else None
    loader = iter(train_loader(shards, preprocess, tokenizer, cfg.batch_size // world,
                               seed=cfg.seed * 7919 + rank * 104729 + start, workers=workers, decode_on=on))
    run = _Run(cfg, objective, folder, state_path, rank, start, _autocast(cfg, device), _tallies(state))
    run.steps(model, opt, loader)
    _close(loader)
    origin = plugins.origin(type(objective))  # an installed package's objective: which, in which version
    result = {**objective.result_fields(), **({"plugin": origin} if origin else {}), "steps": run.stop, "total_steps": cfg.steps,
              "samples_seen": run.stop * cfg.batch_size, "final_loss": run.loss,
              "samples_per_s": round((run.stop - start) * cfg.batch_size / max(run.seconds, 1e-9), 1),
              "train_seconds": round(run.before + run.seconds, 1), "resumed_from_step": start, "bad_samples": run.bad,
              "device": device, "world_size": world, "data_version": cfg.data_version}
    if run.stop == cfg.steps and rank == 0:
        _save_final(out, cfg, objective, unwrap(model), result)
        result["checkpoint"] = folder.where("final")
        (out / "result.json").write_text(json.dumps(result, indent=2))
        folder.push(*FINAL_FILES)
    dist.barrier()
    return result


class _Run:
    """The step loop of one run and what it tallies (bad samples, last loss, seconds); a resumed run
    goes on from the tallies its state saved (``before``), so its result counts the whole run."""

    def __init__(self, cfg: TrainConfig, objective, folder, state_path: Path, rank: int, start: int,
                 autocast, before: dict) -> None:
        self.cfg, self.objective, self.folder, self.out, self.state_path = cfg, objective, folder, folder.local, state_path
        self.rank, self.start, self.autocast = rank, start, autocast
        self.stop = min(cfg.steps, cfg.max_steps or cfg.steps)
        self.every = max(1, cfg.steps // cfg.checkpoints)
        self.bad: dict[str, int] = dict(before["bad_samples"])
        self.loss, self.seconds, self.before = float("nan"), 0.0, before["seconds"]

    def steps(self, model, opt, loader) -> None:
        cfg = self.cfg
        bar = _progress(self.rank, self.start, cfg.steps)
        model.train()
        t0 = time.time()
        for step in range(self.start, self.stop):
            images, tokens, bad_now = next(loader)
            for k, v in bad_now.items():
                self.bad[k] = self.bad.get(k, 0) + v
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            opt.zero_grad(set_to_none=True)
            self.loss = self.objective.step(model, images, tokens, step, self.autocast)
            opt.step()
            self.objective.after_step(model)
            done = step + 1
            rate = (done - self.start) * cfg.batch_size / max(time.time() - t0, 1e-9)
            if self.rank == 0:
                bar.update(1)
                bar.set_postfix(loss=f"{self.loss:.3f}", samples_s=f"{rate:,.0f}", refresh=False)
                if done % cfg.log_every == 0 or done == cfg.steps:
                    _log(self.out, {"step": done, "samples_seen": done * cfg.batch_size, "loss": round(self.loss, 5),
                                    "lr": lr_at(step, cfg), **self.objective.log_fields(model, step),
                                    "samples_per_s": round(rate, 1), "elapsed_s": round(time.time() - t0, 3),
                                    "bad_samples": self.bad})
                if done % self.every == 0 or done == cfg.steps:
                    _save_state(self.state_path, model, opt, done, cfg,
                                {"seconds": self.before + time.time() - t0, "bad_samples": dict(self.bad)})
                    self.folder.push(*STATE_FILES)
        bar.close()
        self.seconds = time.time() - t0


def _device(cfg: TrainConfig, world: int, local: int) -> str:
    from shardio.device import pick_device

    if world == 1:
        return pick_device(cfg.device)
    return f"cuda:{local}" if torch.cuda.is_available() else "cpu"


def _autocast(cfg: TrainConfig, device: str):
    """bf16 autocast on GPU unless fp32 is asked for; on CPU only when bf16 is asked for."""
    if device.startswith("cuda") and cfg.precision != "fp32":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def _load_state(path: Path, cfg: TrainConfig, objective) -> dict | None:
    """The resumable state of an interrupted run, checked to belong to this config and objective."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    mine = {**{k: getattr(cfg, k) for k in SAME_RUN}, **objective.same_run()}
    theirs = {k: state["config"].get(k) for k in mine}
    if theirs != mine:
        raise ValueError(f"{path} belongs to a different run ({theirs}) than this config ({mine}); "
                         "use a new out_dir or delete the old checkpoints")
    return state


def _restore(state: dict | None, path: Path, cfg: TrainConfig, model, opt) -> int:
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    log.info("resuming from step %d of %d (%s)", state["step"], cfg.steps, path)
    return int(state["step"])


def _tallies(state: dict | None) -> dict:
    """Training seconds and bad samples up to a saved state (none for a fresh run or an older state)."""
    saved = (state or {}).get("tallies") or {}
    return {"seconds": float(saved.get("seconds", 0.0)), "bad_samples": dict(saved.get("bad_samples", {}))}


def _save_state(path: Path, model, opt, step: int, cfg: TrainConfig, tallies: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(), "step": step,
                "config": cfg.model_dump(), "tallies": tallies}, tmp)
    os.replace(tmp, path)


def _save_final(out: Path, cfg: TrainConfig, objective, model, result: dict) -> Path:
    clip = objective.clip
    info = {"train": cfg.model_dump(), "result": result, "base_model": clip.name, **objective.checkpoint_info()}
    return save_checkpoint_dir(out / "final", objective.final_model(model), clip.model_cfg, info)


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
    loader = getattr(loader, "loader", loader)  # training/device_decode.DeviceBatches wraps the loader
    try:
        if hasattr(loader, "_shutdown_workers"):
            loader._shutdown_workers()
    except RuntimeError as e:
        log.warning("data loader shutdown: %s", e)
