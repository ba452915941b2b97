"""Prefect flow ``train-eval``: train a CLIP model on a curation output, evaluate it zero-shot, and
record lineage (which curation run and config made which shards, checkpoint and scores).

The output is read in one version (shardio/versions.py): the complete version ``current`` points to,
resolved once and held until the evaluation ends, so a curation publishing meanwhile changes nothing
under the training run and cannot delete it; an output that never completed is refused with its error.
The evaluation table is an artifact of the run the user started: this flow's when it runs on its own,
the caller's when it is a subflow (``flows/nightly.py`` attaches it from the returned lineage).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext

from flows.curate import DEFAULT_OUT
from pipeline.publish import published
from shardio.versions import pin

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


def eval_artifact(lineage: dict) -> None:
    """The evaluation table, as a markdown artifact of the current flow run."""
    c, t, e = lineage["curation"], lineage["train"], lineage["eval"]
    m = e["metrics"]
    create_markdown_artifact(
        key="train-eval", description="zero-shot result of a model trained on curated shards",
        markdown=(f"## Trained on `{c['version']}` ({c['kept']} kept of {c['samples_in']})\n\n"
                  f"{t['samples_seen']} samples seen at {t['samples_per_s']} samples/s -> `{t['checkpoint']}`\n\n"
                  f"| task | acc1 | acc5 | mean per-class recall |\n|---|---|---|---|\n"
                  f"| {e['task']} | {m['acc1']:.4f} | {m['acc5']:.4f} | {m['mean_per_class_recall']:.4f} |\n\n"
                  f"Curation config `{c.get('config_hash')}`, manifest sha256 `{c['manifest_sha256'][:12]}`"))


@flow(name="train-eval", log_prints=True)
def train_eval(curated: str = DEFAULT_OUT, out: str | None = None, model: str = "curate-tiny",
               samples_seen: int = 60_000, batch_size: int = 256, task: str = DEFAULT_TASK, seed: int = 0) -> dict:
    """Train on the published shards of ``curated`` at a fixed samples-seen budget, then zero-shot
    evaluate on ``task``; write ``<out>/lineage.json`` (default out: ``<curated>/train``)."""
    published(curated)  # NotPublished: never completed, or still being written
    log = get_run_logger()
    out = out or str(Path(curated) / "train")
    with pin(curated, purpose=f"train-eval {Path(out).resolve()}") as pinned:  # one version, held throughout
        root = pinned.data.root or published(curated)
        manifest_path = root / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        sha = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
        r = train_task(str(root / "shards"), out, model, samples_seen, batch_size, seed)
        ev = eval_task(r["checkpoint"], task, str(Path(out) / "results.jsonl"))
    lineage = {"curation": {"output": str(curated), "version": str(root), "data_version": pinned.record,
                            "config": manifest.get("config"),
                            "config_hash": manifest.get("config_hash"),
                            "manifest_sha256": sha,
                            "kept": manifest.get("kept"), "samples_in": manifest.get("samples_in")},
               "train": {k: r[k] for k in ("checkpoint", "samples_seen", "steps", "samples_per_s")},
               "eval": {"task": ev["task"], "metrics": ev["metrics"]}}
    (Path(out) / "lineage.json").write_text(json.dumps(lineage, indent=2, default=str))
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None or ctx.flow_run.parent_task_run_id is None:
        eval_artifact(lineage)  # a subflow's caller attaches it to the run the user started
    log.info("%s top-1 %.4f after %d samples seen", ev["task"], ev["metrics"]["acc1"], r["samples_seen"])
    return lineage
