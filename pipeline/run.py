"""Curation without an orchestrator: annotate every shard, decide, export.

The Prefect flow (flows/curate.py) calls the same three steps as tasks.
"""
from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from pipeline.annotate import annotate_shard
from pipeline.decide import Arrays, decide, load_columns, summarize
from pipeline.export import export
from pipeline.lock import exclusive
from pipeline.report import write_report
from pipeline.shards import expand, shard_id
from schemas.config import CurateConfig, load_config


def decide_and_export(shards: list[str], out: str | Path, config: CurateConfig, extra: dict | None = None,
                      work: str | Path | None = None) -> dict:
    """Decide on the columns in ``work`` (default ``out``) and export into ``out``."""
    t0 = time.time()
    sids = [shard_id(s) for s in shards]
    df = load_columns(work or out, sids, config)
    df, thresholds = decide(df, config, Arrays(work or out, sids))
    manifest = {**summarize(df), "thresholds": thresholds, "input_shards": shards,
                "config": config.model_dump(), **(extra or {})}
    manifest = export(df, shards, out, config.export.samples_per_shard, manifest)
    manifest["report"] = str(write_report(out, df.reset_index(drop=True), shards, manifest))
    manifest["decide_export_seconds"] = round(time.time() - t0, 2)
    return manifest


def run_curation(pool: str | list[str], out: str | Path, config: CurateConfig | str | dict,
                 progress: bool = True, work: str | Path | None = None) -> dict:
    """Curate ``pool`` (paths, braced patterns or folders of .tar) into ``out``; return the manifest.

    Per-shard columns and embeddings go to ``work`` (default: ``out``); several configs can share
    one ``work`` folder and so score the pool once.
    """
    config = config if isinstance(config, CurateConfig) else load_config(config)
    shards = expand(pool)
    sids = [shard_id(s) for s in shards]
    if len(set(sids)) != len(sids):
        raise ValueError("two input shards share a name; per-shard outputs are keyed by name")
    with exclusive(out):
        t0 = time.time()
        ran = []
        for s in tqdm(shards, desc="annotate", unit="shard", disable=not progress):
            ran.append(annotate_shard(s, work or out, config.clip))
        t_annotate = time.time() - t0
        rows = sum(r["rows"] for r in ran)
        return decide_and_export(shards, out, config, {
            "annotate_seconds": round(t_annotate, 2),
            "annotate_samples_per_s": round(rows / t_annotate, 1) if t_annotate > 0 else None,
            "stage_runs": sum(len(r["ran"]) for r in ran),
            "shards_annotated": sum(bool(r["ran"]) for r in ran),
        }, work=work)
