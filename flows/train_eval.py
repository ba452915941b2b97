"""Prefect flow ``train-eval``: train a CLIP model on a curation output, evaluate it zero-shot, and
record lineage (which curation run and config made which shards, checkpoint and scores)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.curate import DEFAULT_OUT

DEFAULT_TASK = "data/sample_pool/eval/fashion_mnist"


@task(name="train", retries=1, retry_delay_seconds=5)  # a retry resumes from the latest state
def train_task(data: str, out: str, model: str, samples_seen: int, batch_size: int, seed: int) -> dict:
    from training.train import TrainConfig, train

    return train(TrainConfig(train_data=data, out_dir=out, model=model, samples_seen=samples_seen,
                             batch_size=batch_size, seed=seed))


@task(name="zero-shot-eval")
def eval_task(checkpoint: str, task_root: str, results: str) -> dict:
    from training.zeroshot import append_result, evaluate_zeroshot

    r = evaluate_zeroshot(checkpoint, task_root)
    append_result(results, r)
    return r


@flow(name="train-eval", log_prints=True)
def train_eval(curated: str = DEFAULT_OUT, out: str | None = None, model: str = "curate-tiny",
               samples_seen: int = 60_000, batch_size: int = 256, task: str = DEFAULT_TASK, seed: int = 0) -> dict:
    """Train on ``curated``/shards at a fixed samples-seen budget, then zero-shot evaluate on ``task``."""
    log = get_run_logger()
    manifest_path = Path(curated) / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: run the curate flow on {curated} first")
    manifest = json.loads(manifest_path.read_text())
    out = out or str(Path(curated) / "train")
    r = train_task(str(Path(curated) / "shards"), out, model, samples_seen, batch_size, seed)
    ev = eval_task(r["checkpoint"], task, str(Path(out) / "results.jsonl"))
    lineage = {"curation": {"output": str(curated), "config": manifest.get("config"),
                            "manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
                            "kept": manifest.get("kept"), "samples_in": manifest.get("samples_in")},
               "train": {k: r[k] for k in ("checkpoint", "samples_seen", "steps", "samples_per_s")},
               "eval": {"task": ev["task"], "metrics": ev["metrics"]}}
    (Path(out) / "lineage.json").write_text(json.dumps(lineage, indent=2, default=str))
    m = ev["metrics"]
    create_markdown_artifact(
        key="train-eval", description="zero-shot result of a model trained on curated shards",
        markdown=(f"## Trained on `{curated}` ({manifest.get('kept')} kept of {manifest.get('samples_in')})\n\n"
                  f"{r['samples_seen']} samples seen at {r['samples_per_s']} samples/s -> `{r['checkpoint']}`\n\n"
                  f"| task | acc1 | acc5 | mean per-class recall |\n|---|---|---|---|\n"
                  f"| {ev['task']} | {m['acc1']:.4f} | {m['acc5']:.4f} | {m['mean_per_class_recall']:.4f} |"))
    log.info("%s top-1 %.4f after %d samples seen", ev["task"], m["acc1"], r["samples_seen"])
    return lineage
