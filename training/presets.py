"""Training presets: DataComp's fixed recipes per scale, and CPU-sized ones for demos and tests.

DataComp (Gadre et al. 2023, github.com/mlfoundations/datacomp): samples seen = pool size; AdamW wd 0.2, betas (0.9, 0.98)
(xlarge: beta2 0.95), eps 1e-6, cosine schedule, bf16 autocast, gradient checkpointing, local loss
with gather-with-grad, resampled shards, 5 checkpoints per run.
"""
from __future__ import annotations

DATACOMP = {"grad_checkpointing": True, "checkpoints": 5, "wd": 0.2, "beta1": 0.9, "beta2": 0.98, "eps": 1e-6}

PRESETS: dict[str, dict] = {
    "debug": {**DATACOMP, "model": "ViT-B-32", "samples_seen": 128_000, "batch_size": 1024, "lr": 1e-4, "warmup": 500},
    "small": {**DATACOMP, "model": "ViT-B-32", "samples_seen": 12_800_000, "batch_size": 4096, "lr": 5e-4,
              "warmup": 500},
    "medium": {**DATACOMP, "model": "ViT-B-32", "samples_seen": 128_000_000, "batch_size": 4096, "lr": 5e-4,
               "warmup": 500},
    "large": {**DATACOMP, "model": "ViT-B-16", "samples_seen": 1_280_000_000, "batch_size": 8192, "lr": 5e-4,
              "warmup": 500},
    "xlarge": {**DATACOMP, "model": "ViT-L-14", "samples_seen": 12_800_000_000, "batch_size": 90_112, "lr": 1e-3,
               "warmup": 10_000, "beta2": 0.95},
    # CPU: curate-tiny learns Fashion-MNIST (0.85 zero-shot top-1 at 120k clean samples, bench/trainer.py)
    "cpu-tiny": {"model": "curate-tiny", "samples_seen": 120_000, "batch_size": 256, "warmup": 0.1},
    "cpu-demo": {"model": "curate-tiny", "samples_seen": 60_000, "batch_size": 256, "warmup": 0.1},
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
