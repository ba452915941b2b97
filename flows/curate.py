"""Prefect flow ``curate``: annotate every shard (one task each), then decide + export.

Tasks pass paths, never tables. Retries live here, in one place. The library (pipeline/) has
no Prefect inside; ``pipeline.run.run_curation`` is the same work without an orchestrator.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from pipeline.annotate import annotate_shard
from pipeline.run import decide_and_export
from pipeline.shards import expand
from schemas.config import load_config

DEFAULT_POOL = "data/sample_pool/shards"
DEFAULT_OUT = "runs/laion-subset"
DEFAULT_CONFIG = "configs/laion-subset.yaml"


@task(name="annotate-shard", retries=2, retry_delay_seconds=[2, 10])
def annotate_task(shard: str, out: str, config_path: str) -> dict:
    return annotate_shard(shard, out, load_config(config_path).clip)


@task(name="decide-export", retries=1, retry_delay_seconds=5)
def decide_export_task(shards: list[str], out: str, config_path: str, stage_runs: int) -> dict:
    return decide_and_export(shards, out, load_config(config_path), {"stage_runs": stage_runs})


@flow(name="curate", log_prints=True)
def curate(pool: str = DEFAULT_POOL, out: str = DEFAULT_OUT, config: str = DEFAULT_CONFIG) -> dict:
    """Curate a pool of webdataset shards into filtered shards + uid list + metadata + manifest."""
    load_config(config)  # fail fast, with a readable message
    log = get_run_logger()
    shards = expand(pool)
    log.info("curating %d shards from %s into %s", len(shards), pool, out)
    Path(out).mkdir(parents=True, exist_ok=True)
    results = [annotate_task(s, out, config) for s in shards]
    manifest = decide_export_task(shards, out, config, sum(len(r["ran"]) for r in results))
    rows = "\n".join(f"| {k} | {v} |" for k, v in manifest["dropped_by_reason"].items())
    create_markdown_artifact(
        key="curation-summary",
        markdown=(f"## Curation of `{pool}`\n\n{manifest['samples_in']} in, **{manifest['kept']} kept**, "
                  f"{manifest['dropped']} dropped.\n\n| drop reason | samples |\n|---|---|\n{rows}\n\n"
                  f"Filtered shards: `{Path(out) / 'shards'}`"),
        description="kept / dropped by reason")
    log.info("kept %d of %d; shards in %s", manifest["kept"], manifest["samples_in"], Path(out) / "shards")
    return manifest
