"""Trainer figures -> bench/results/trainer.json.

    .venv/bin/python -m bench.trainer            # ~12 min on 2 CPU cores

On the same clean Fashion-MNIST shards, model config (curate-tiny), batch size, lr schedule and
samples seen: our trainer vs open_clip's own (`open_clip_train.main`, shipped with open_clip_torch),
samples/s and zero-shot top-1; then a run killed at 60% and resumed vs the uninterrupted run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from app.demo import machine  # noqa: E402
from app.sample_pool.build import write_clean_fmnist, write_fmnist_task  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402
from training.zeroshot import evaluate_zeroshot  # noqa: E402

OUT = ROOT / "bench" / "results" / "trainer.json"
PEER_PATH = ROOT / "bench" / ".peer" / "wds"


def peer_env() -> dict:
    """webdataset 0.2.86 (open_clip_train's pin) in its own folder, first on the peer's path only."""
    if not (PEER_PATH / "webdataset").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(PEER_PATH),
                        "webdataset==0.2.86"], check=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PEER_PATH), os.environ.get("PYTHONPATH")]))}


def run_peer(shards: list[str], out: Path, cfg: TrainConfig) -> dict:
    pattern = f"{Path(shards[0]).parent}/{{{Path(shards[0]).stem}..{Path(shards[-1]).stem}}}.tar"
    args = [sys.executable, str(ROOT / "bench" / "peers" / "open_clip_train_run.py"),
            "--train-data", pattern, "--dataset-type", "webdataset", "--dataset-resampled",
            "--train-num-samples", str(cfg.samples_seen), "--epochs", "1", "--batch-size", str(cfg.batch_size),
            "--lr", str(cfg.peak_lr()), "--wd", str(cfg.wd), "--beta1", str(cfg.beta1), "--beta2", str(cfg.beta2),
            "--eps", str(cfg.eps), "--warmup", str(cfg.warmup_steps()), "--model", cfg.model,
            "--precision", "fp32", "--workers", "1", "--logs", str(out), "--name", "run", "--seed", str(cfg.seed),
            "--log-every-n-steps", "20", "--save-frequency", "1", "--report-to", ""]
    t0 = time.time()
    p = subprocess.run(args, env=peer_env(), capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"open_clip_train failed:\n{p.stderr[-3000:]}")
    log = (out / "run" / "out.log").read_text()
    batch_t = [float(x) for x in re.findall(r"Batch \(t\): ([0-9.]+)", log)][1:]  # first interval warms up
    ckpt = out / "run" / "checkpoints" / "epoch_1.pt"
    steps = [int(x) for x in re.findall(r"Train Epoch: 0 \[\s*(\d+)/", log)]
    return {"samples_per_s": round(cfg.batch_size / (sum(batch_t) / len(batch_t)), 1), "checkpoint": str(ckpt),
            "wall_seconds": round(time.time() - t0, 1), "samples_logged": max(steps)}


def steady_rate(run_dir: Path) -> float:
    """Samples/s after the first logged interval (as open_clip_train's figure, which skips its first)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    return round((last["samples_seen"] - first["samples_seen"]) / (last["elapsed_s"] - first["elapsed_s"]), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="runs/bench-trainer")
    ap.add_argument("--samples-seen", type=int, default=120_000)
    ap.add_argument("--batch-size", type=int, default=256)
    a = ap.parse_args()
    root = Path(a.root)
    shards = write_clean_fmnist(root / "data", 60_000)
    task = root / "eval" / "fashion_mnist"
    if not (task / "test" / "nshards.txt").is_file():
        write_fmnist_task(task)
    base = dict(train_data=str(root / "data"), model="curate-tiny", samples_seen=a.samples_seen,
                batch_size=a.batch_size, seed=0)
    for name in ("ours", "resumed", "peer"):
        d = root / name
        if d.exists():
            import shutil

            shutil.rmtree(d)
    ours = train(TrainConfig(out_dir=str(root / "ours"), log_every=20, **base))
    ours["samples_per_s"] = steady_rate(root / "ours")
    ours_top1 = evaluate_zeroshot(ours["checkpoint"], task)["metrics"]["acc1"]
    cfg = TrainConfig(out_dir=str(root / "peer"), **base)
    peer = run_peer(shards, root / "peer", cfg)
    peer_top1 = evaluate_zeroshot(cfg.model, task, weights=peer["checkpoint"])["metrics"]["acc1"]
    cut = int(0.6 * cfg.steps)
    killed = train(TrainConfig(out_dir=str(root / "resumed"), max_steps=cut, **base))
    resumed = train(TrainConfig(out_dir=str(root / "resumed"), **base))
    resumed_top1 = evaluate_zeroshot(resumed["checkpoint"], task)["metrics"]["acc1"]
    runs = {
        "ours_samples_per_s": ours["samples_per_s"],
        "open_clip_train_samples_per_s": peer["samples_per_s"],
        "throughput_ratio": round(ours["samples_per_s"] / peer["samples_per_s"], 3),
        "ours_zero_shot_top1": round(ours_top1, 4),
        "open_clip_train_zero_shot_top1": round(peer_top1, 4),
        "cpu_preset_samples_per_s": ours["samples_per_s"],
        "cpu_preset_fmnist_top1": round(ours_top1, 4),
        "resume_same_steps": resumed["steps"] == ours["steps"] and killed["steps"] == cut
                             and resumed["resumed_from_step"] > 0,
        "resume_killed_at_step": killed["steps"], "resume_restarted_from_step": resumed["resumed_from_step"],
        "resume_metric_delta": round(resumed_top1 - ours_top1, 4),
        "settings": {"model": "curate-tiny", "batch_size": a.batch_size, "samples_seen": a.samples_seen,
                     "steps": cfg.steps, "lr": cfg.peak_lr(), "warmup_steps": cfg.warmup_steps(),
                     "data": "60,000 Fashion-MNIST train photos, clean shop captions",
                     "peer": "open_clip_train (open_clip_torch 3.3.0) with webdataset 0.2.86, --workers 1, fp32",
                     "ours_loader": "in-process (workers 0)"},
        "machine": machine(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(runs, indent=2) + "\n")
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
