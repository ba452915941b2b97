"""The whole loop on the built-in sample pool, printed as one summary.

pool -> bootstrap a scorer on the trusted split (the data-filtering-network recipe: a CLIP model
trained on clean data scores the noisy pool) -> curate twice from one scoring pass (no filter;
CLIP-score top fraction) -> train both at equal samples seen -> zero-shot on Fashion-MNIST test.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from pipeline.run import run_curation


def machine() -> str:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} cores, {gpu}, Python {platform.python_version()}"


def _step(name: str, timings: dict):
    class _T:
        def __enter__(self):
            print(f"\n=== {name} ===", flush=True)
            self.t = time.time()

        def __exit__(self, *exc):
            timings[name] = round(time.time() - self.t, 1)
            if exc[0] is None:
                print(f"--- {name}: {timings[name]} s", flush=True)
    return _T()


def run_demo(root: str | Path = "runs/demo", samples: int = 20_000, trusted: int = 10_000,
             samples_seen: int = 60_000, scorer_samples_seen: int = 40_000, fraction: float = 0.7,
             seed: int = 0, data: str = "auto", pool_dir: str | Path = "data/sample_pool") -> dict:
    from app.sample_pool import build_pool
    from training.train import TrainConfig, train
    from training.zeroshot import append_result, evaluate_zeroshot

    t0 = time.time()
    root = Path(root)
    if root.exists():  # a demo is one fresh run; the pool is reused when its settings match
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True)
    pool_dir = Path(pool_dir)
    timings: dict[str, float] = {}

    with _step("1. sample pool", timings):
        info = build_pool(pool_dir, samples, seed=seed, n_trusted=trusted, data=data)
    eval_task = str(pool_dir / "eval" / info.get("eval_task", "fashion_mnist"))

    with _step("2. bootstrap the scorer on the trusted split", timings):
        scorer = train(TrainConfig(train_data=str(pool_dir / "trusted"), model="curate-tiny",
                                   out_dir=str(root / "scorer"), samples_seen=scorer_samples_seen, seed=seed))
    scorer_dir = str(Path(scorer["checkpoint"]))

    clip = [{"model": scorer_dir}]
    configs = {"no_filter": {"clip": clip, "filters": []},
               "clip_score": {"clip": clip, "filters": [{"type": "clip_score", "fraction": fraction}]}}
    manifests = {}
    with _step("3. curate (one scoring pass, two decisions)", timings):
        for name, cfg in configs.items():
            manifests[name] = run_curation(str(pool_dir / "shards"), root / name, cfg, work=root / "work")
            m = manifests[name]
            print(f"{name}: {m['samples_in']} in, {m['kept']} kept, dropped by reason {m['dropped_by_reason']}")

    results = {}
    for name in configs:
        with _step(f"4. train on {name} ({samples_seen} samples seen)", timings):
            r = train(TrainConfig(train_data=str(root / name / "shards"), model="curate-tiny",
                                  out_dir=str(root / f"train_{name}"), samples_seen=samples_seen, seed=seed))
        with _step(f"5. zero-shot eval of {name}", timings):
            ev = evaluate_zeroshot(r["checkpoint"], eval_task)
            ev["curation"] = name
            append_result(root / "results.jsonl", ev)
        results[name] = {"train": r, "eval": ev}

    top1 = {n: results[n]["eval"]["metrics"]["acc1"] for n in results}
    truth = _noise_caught(pool_dir, root / "clip_score")
    summary = {
        "samples_in": manifests["clip_score"]["samples_in"],
        "kept": manifests["clip_score"]["kept"],
        "dropped": manifests["clip_score"]["dropped"],
        "dropped_by_reason": manifests["clip_score"]["dropped_by_reason"],
        "kept_no_filter": manifests["no_filter"]["kept"],
        "clip_score_fraction": fraction,
        "zero_shot_top1_no_filter": top1["no_filter"],
        "zero_shot_top1_clip_score": top1["clip_score"],
        "samples_seen": samples_seen,
        "scorer_samples_seen": scorer_samples_seen,
        "train_samples_per_s": {n: results[n]["train"].get("samples_per_s") for n in results},
        "noise_dropped_by_clip_score": truth,
        "pool_data": info.get("data"),
        "eval_task": eval_task,
        "timings_s": timings,
        "wall_seconds": round(time.time() - t0, 1),
        "machine": machine(),
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary)
    return summary


def _noise_caught(pool_dir: Path, curated: Path) -> dict:
    """Share of each injected noise type that the CLIP-score run dropped (ground truth table)."""
    import pandas as pd

    gt_path = pool_dir / "ground_truth.parquet"
    if not gt_path.is_file():
        return {}
    gt = pd.read_parquet(gt_path, columns=["uid", "noise"]).fillna({"noise": "clean"})
    meta = pd.read_parquet(curated / "metadata.parquet", columns=["uid", "keep"])
    df = gt.merge(meta, on="uid", how="left")
    out = {}
    for noise, g in df.groupby("noise"):
        out[noise or "clean"] = {"n": int(len(g)), "dropped_share": round(float((~g["keep"].astype(bool)).mean()), 3)}
    return out


def _print_summary(s: dict) -> None:
    print("\n================ curate demo: summary ================")
    print(f"pool: {s['samples_in']} samples ({s['pool_data']} data); CLIP-score top {s['clip_score_fraction']:.0%} "
          f"kept {s['kept']}, dropped {s['dropped']} {s['dropped_by_reason']}")
    for noise, v in s["noise_dropped_by_clip_score"].items():
        print(f"  {noise:>18}: {v['n']:6d} samples, {v['dropped_share']:.0%} dropped")
    print(f"zero-shot top-1 on {Path(s['eval_task']).name} after {s['samples_seen']} samples seen:")
    print(f"  no filter         : {s['zero_shot_top1_no_filter']:.4f}")
    print(f"  CLIP-score filter : {s['zero_shot_top1_clip_score']:.4f}")
    print(f"wall time: {s['wall_seconds']} s   ({s['machine']})")
