"""Prefect flow ``curate-train-eval``: curate the pool, then train and evaluate on what it kept.

Served as ``curate-train-eval/nightly``, on the schedule of ``curate serve`` (02:00 UTC
unless --cron / --timezone / --no-schedule say otherwise). One chain per output folder: each night
the curate step annotates only the shards that are new and publishes a new version; the train step
reads exactly that version, holds it while it trains (the next night's publish keeps it) and starts a
fresh run folder per curation manifest (its sha256 names it), so a crashed night resumes its own
training on its own version and a new night trains on the new output.
lineage.json ties manifest, config, checkpoint and scores together. The curation summary and the
evaluation table are attached to this run, the one the schedule (or the user) started.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import flow

from flows.curate import DEFAULT_CONFIG, DEFAULT_OUT, DEFAULT_POOL, curate, summary_artifact
from flows.train_eval import DEFAULT_TASK, eval_artifact, train_eval


@flow(name="curate-train-eval", log_prints=True)
def curate_train_eval(pool: str = DEFAULT_POOL, out: str = DEFAULT_OUT, config: str = DEFAULT_CONFIG,
                      model: str = "curate-tiny", samples_seen: int = 60_000, batch_size: int = 256,
                      task: str = DEFAULT_TASK, seed: int = 0, keep_versions: int = 2) -> dict:
    m = curate(pool=pool, out=out, config=config, keep_versions=keep_versions)
    summary_artifact(pool, m)
    version = Path(m["root"])  # the version this run published, even if another is published meanwhile
    digest = hashlib.sha256((version / "manifest.json").read_bytes()).hexdigest()[:12]
    lineage = train_eval(curated=str(version), out=str(Path(out) / "train" / digest), model=model,
                         samples_seen=samples_seen, batch_size=batch_size, task=task, seed=seed)
    eval_artifact(lineage)
    return lineage
