"""Prefect flow ``curate-train-eval``: curate the pool, then train and evaluate on what it kept.

Served as ``curate-train-eval/nightly`` (cron from ``python -m flows.serve --cron``). Each night the
curate step annotates only the shards that are new; the train step starts a fresh run folder per
curation manifest (its sha256 names it), so a crashed night resumes its own training and a new
night trains on the new output. lineage.json ties manifest, config, checkpoint and scores together.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import flow

from flows.curate import DEFAULT_CONFIG, DEFAULT_OUT, DEFAULT_POOL, curate
from flows.train_eval import DEFAULT_TASK, train_eval


@flow(name="curate-train-eval", log_prints=True)
def curate_train_eval(pool: str = DEFAULT_POOL, out: str = DEFAULT_OUT, config: str = DEFAULT_CONFIG,
                      model: str = "curate-tiny", samples_seen: int = 60_000, batch_size: int = 256,
                      task: str = DEFAULT_TASK, seed: int = 0) -> dict:
    curate(pool=pool, out=out, config=config)
    digest = hashlib.sha256((Path(out) / "manifest.json").read_bytes()).hexdigest()[:12]
    return train_eval(curated=out, out=str(Path(out) / "train" / digest), model=model, samples_seen=samples_seen,
                      batch_size=batch_size, task=task, seed=seed)
