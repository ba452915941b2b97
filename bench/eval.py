"""Evaluation figures -> bench/results/eval.json.

    .venv/bin/python -m bench.eval [--checkpoint runs/bench-skeleton/train_clip_score/final]

1. Our built-in suite on a CPU-preset checkpoint, timed (the suite is written by `curate build-pool`).
2. The same checkpoint and task folders through CLIP_benchmark's own CLI (`clip_benchmark eval`,
   open_clip model from the local weights file, wds datasets from the local folders, fp32 like ours),
   and the largest difference on acc1, mean per-class recall and retrieval recall@1/@5.
CLIP_benchmark 1.6.2 runs from bench/.peer/ with numpy 2.2.6 and webdataset 0.2.86 (its pins do not
fit ours: its numpy<2 and webdataset<0.3 pins conflict with this stack), installed there on first use without touching the project's venv.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bench.trainer import PEER_PATH, peer_env  # noqa: E402
from app.demo import machine  # noqa: E402
from schemas.tasks import BUILTIN  # noqa: E402
from training.evalsuite import run_suite  # noqa: E402
from training.model import WEIGHTS_FILE  # noqa: E402

OUT = ROOT / "bench" / "results" / "eval.json"
CB_PATH = ROOT / "bench" / ".peer" / "cb"
CB_PKGS = ["clip_benchmark==1.6.2", "numpy==2.2.6", "scikit-learn", "scipy", "joblib", "threadpoolctl", "narwhals",
           "pycocoevalcap"]
COMPARED = {"classification": ["acc1", "mean_per_class_recall"],
            "retrieval": ["image_retrieval_recall@1", "text_retrieval_recall@1", "image_retrieval_recall@5",
                          "text_retrieval_recall@5"]}


def cb_env() -> dict:
    peer_env()  # webdataset 0.2.86
    if not (CB_PATH / "clip_benchmark").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(CB_PATH), *CB_PKGS],
                       check=True)
    return {**os.environ, "PYTHONPATH": f"{CB_PATH}:{PEER_PATH}"}


def clip_benchmark(checkpoint: Path, folder: Path, kind: str, out: Path) -> dict:
    args = [sys.executable, str(ROOT / "bench" / "peers" / "clip_benchmark_run.py"), "eval",
            "--dataset", f"wds/{folder.name}", "--dataset_root", str(folder), "--model", "curate-tiny",
            "--pretrained", str(checkpoint / WEIGHTS_FILE), "--model_type", "open_clip",
            "--task", "zeroshot_retrieval" if kind == "retrieval" else "zeroshot_classification",
            "--recall_k", "1", "5", "--output", str(out), "--batch_size", "256", "--num_workers", "0", "--no_amp"]
    p = subprocess.run(args, env=cb_env(), capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"clip_benchmark failed on {folder.name}:\n{p.stderr[-3000:]}")
    return json.loads(out.read_text())["metrics"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="runs/bench-skeleton/train_clip_score/final",
                    help="a curate-tiny checkpoint folder (bench/skeleton.py writes this one)")
    ap.add_argument("--data-root", default="data/sample_pool/eval")
    a = ap.parse_args()
    ckpt, data_root = Path(a.checkpoint), Path(a.data_root)
    if not (ckpt / WEIGHTS_FILE).is_file():
        sys.exit(f"{ckpt} has no {WEIGHTS_FILE}: run `.venv/bin/python -m bench.skeleton` first or pass --checkpoint")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        ours = run_suite(str(ckpt), data_root, "builtin", results=Path(tmp) / "ours.jsonl")
        suite_seconds = round(time.time() - t0, 1)
        ours_rows = {json.loads(x)["task"]: json.loads(x) for x in (Path(tmp) / "ours.jsonl").read_text().splitlines()}
        compared, diffs = {}, []
        for task in BUILTIN:
            if task.key not in ours_rows:
                continue
            theirs = clip_benchmark(ckpt, data_root / task.folder, task.kind, Path(tmp) / f"{task.folder}.json")
            mine = ours_rows[task.key]["metrics"]
            row = {}
            for m in COMPARED[task.kind]:
                d = abs(mine[m] - theirs[m]) * 100
                row[m] = {"ours": round(mine[m], 5), "clip_benchmark": round(theirs[m], 5), "abs_diff_points": round(d, 4)}
                diffs.append(d)
            compared[task.key] = row
            print(task.key, {m: v["abs_diff_points"] for m, v in row.items()}, flush=True)
    res = {"max_abs_diff_vs_clip_benchmark": round(max(diffs), 4), "tasks_compared": len(compared),
           "builtin_suite_seconds": suite_seconds, "builtin_tasks": ours["tasks_covered"],
           "builtin_average": round(ours["average"], 4),
           "groups": {g: (None if v["mean"] is None else round(v["mean"], 4)) for g, v in ours["groups"].items()},
           "checkpoint": str(ckpt), "per_task": compared,
           "settings": "CLIP_benchmark 1.6.2 CLI, --no_amp (fp32 as ours on CPU), batch 256, recall_k 1 5",
           "machine": machine()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "per_task"}, indent=2))


if __name__ == "__main__":
    main()
