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


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _annotate(args) -> dict:
    shard, work, clip_json = args
    from schemas.config import ClipModel

    return annotate_shard(shard, work, [ClipModel.model_validate_json(c) for c in clip_json])


def run_curation(pool: str | list[str], out: str | Path, config: CurateConfig | str | dict,
                 progress: bool = True, work: str | Path | None = None, workers: int = 1) -> dict:
    """Curate ``pool`` (paths, braced patterns or folders of .tar) into ``out``; return the manifest.

    Per-shard columns and embeddings go to ``work`` (default: ``out``); several configs can share
    one ``work`` folder and so score the pool once. ``workers`` > 1 annotates shards in that many
    processes (each loads the scorer once and gets its share of the cores); outputs are the same.
    """
    config = config if isinstance(config, CurateConfig) else load_config(config)
    shards = expand(pool)
    sids = [shard_id(s) for s in shards]
    if len(set(sids)) != len(sids):
        raise ValueError("two input shards share a name; per-shard outputs are keyed by name")
    with exclusive(out):
        t0 = time.time()
        if workers > 1:
            import multiprocessing as mp
            import os
            from concurrent.futures import ProcessPoolExecutor

            threads = max(1, (os.cpu_count() or 1) // workers)
            jobs = [(s, str(work or out), [c.model_dump_json() for c in config.clip]) for s in shards]
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                     initargs=(threads,)) as ex:
                ran = list(tqdm(ex.map(_annotate, jobs), total=len(jobs), desc="annotate", unit="shard",
                                disable=not progress))
        else:
            ran = [annotate_shard(s, work or out, config.clip)
                   for s in tqdm(shards, desc="annotate", unit="shard", disable=not progress)]
        t_annotate = time.time() - t0
        rows = sum(r["rows"] for r in ran)
        return decide_and_export(shards, out, config, {
            "annotate_seconds": round(t_annotate, 2),
            "annotate_samples_per_s": round(rows / t_annotate, 1) if t_annotate > 0 else None,
            "stage_runs": sum(len(r["ran"]) for r in ran),
            "shards_annotated": sum(bool(r["ran"]) for r in ran),
        }, work=work)
