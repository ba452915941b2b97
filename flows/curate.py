"""Prefect flow ``curate``: annotate every shard (one task each, run concurrently), then decide +
export over every shard that annotated.

Tasks pass paths, never tables. Retries (exponential backoff with jitter) live here, in one place.
A shard whose task still fails is reported in the manifest and the artifact; the run finishes the
rest, and the next run picks that shard up again (its completion markers are missing).
Incremental: per-shard, per-stage markers (input identity + stage config) make a rerun annotate
only new or changed shards. k-means centroids are reused while the pool grows by at most 50%
(pipeline/centroids.py); thresholds, dedup and D² are recomputed over the whole pool on every run: a
top-fraction threshold and a keep-order depend on every sample, and on the cached columns they cost
seconds per 100k samples (bench/results/curation.json).
``runner="dask"`` runs the shard tasks on a Dask cluster (``dask_address`` of a running scheduler, or
a local cluster of ``dask_workers`` processes); each worker process loads the scorer once.
The library (pipeline/) has no Prefect inside; ``pipeline.run.run_curation`` is the same work
without an orchestrator.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from pipeline.annotate import annotate_shard
from pipeline.lock import exclusive
from pipeline.run import decide_and_export
from pipeline.shards import expand
from schemas.config import load_config

DEFAULT_POOL = "data/sample_pool/shards"
DEFAULT_OUT = "runs/laion-subset"
DEFAULT_CONFIG = "configs/laion-subset.yaml"


@task(name="annotate-shard", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_jitter_factor=0.5)
def annotate_task(shard: str, work: str, config_path: str) -> dict:
    return annotate_shard(shard, work, load_config(config_path).clip)


@task(name="decide-export", retries=1, retry_delay_seconds=5)
def decide_export_task(shards: list[str], out: str, work: str, config_path: str, extra: dict) -> dict:
    return decide_and_export(shards, out, load_config(config_path), extra, work=work)


# Shard tasks share the process: each already uses several cores (torch, decode), so run about one
# per two cores; the Dask runner is the way to more.
THREADS = ThreadPoolTaskRunner(max_workers=max(1, (os.cpu_count() or 2) // 2))


@flow(name="curate-shards", log_prints=True, task_runner=THREADS)
def curate_shards(pool: str, out: str, config: str, work: str | None = None, retries: int = 2) -> dict:
    log = get_run_logger()
    shards = expand(pool)
    work = work or out
    log.info("curating %d shards from %s into %s", len(shards), pool, out)
    with exclusive(out):
        annotate = annotate_task.with_options(retries=retries)
        futures = [annotate.submit(s, work, config) for s in shards]
        done, failed = [], []
        for s, fut in zip(shards, futures):
            try:
                done.append((s, fut.result()))
            except Exception as e:  # noqa: BLE001 - one bad shard fails only its own task
                failed.append({"shard": s, "error": f"{type(e).__name__}: {e}"})
                log.error("shard %s failed after %d retries: %s", s, retries, e)
        if not done:
            raise RuntimeError(f"every shard failed; first error: {failed[0]['error'] if failed else 'no shards'}")
        extra = {"stage_runs": sum(len(r["ran"]) for _, r in done),
                 "shards_annotated": sum(bool(r["ran"]) for _, r in done), "failed_shards": failed}
        manifest = decide_export_task([s for s, _ in done], out, work, config, extra)
    _artifact(pool, out, manifest)
    log.info("kept %d of %d; shards in %s", manifest["kept"], manifest["samples_in"], Path(out) / "shards")
    return manifest


def _artifact(pool: str, out: str, m: dict) -> None:
    rows = "\n".join(f"| {k} | {v} |" for k, v in m["dropped_by_reason"].items())
    failed = "".join(f"\n- `{f['shard']}`: {f['error']}" for f in m.get("failed_shards", []))
    create_markdown_artifact(
        key="curation-summary", description="kept / dropped by reason",
        markdown=(f"## Curation of `{pool}`\n\n{m['samples_in']} in, **{m['kept']} kept**, {m['dropped']} dropped; "
                  f"{m.get('shards_annotated', 0)} shards annotated this run ({m.get('stage_runs', 0)} stage runs)."
                  f"\n\n| drop reason | samples |\n|---|---|\n{rows}\n\nFiltered shards: `{Path(out) / 'shards'}`"
                  + (f"\n\n**Failed shards** (retried next run):{failed}" if failed else "")))


@flow(name="curate", log_prints=True)
def curate(pool: str = DEFAULT_POOL, out: str = DEFAULT_OUT, config: str = DEFAULT_CONFIG, work: str | None = None,
           runner: Literal["threads", "dask"] = "threads", dask_address: str | None = None, dask_workers: int = 2,
           retries: int = 2) -> dict:
    """Curate a pool of webdataset shards into filtered shards + uid list + metadata + manifest."""
    load_config(config)  # fail fast, with a readable message
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        tr = (DaskTaskRunner(address=dask_address) if dask_address else
              DaskTaskRunner(cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1, "processes": True}))
        return curate_shards.with_options(task_runner=tr)(pool, out, config, work, retries)
    return curate_shards(pool, out, config, work, retries)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m flows.curate", description="Run the curate flow once.")
    p.add_argument("--pool", default=DEFAULT_POOL)
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--work", default=None)
    p.add_argument("--runner", default="threads", choices=["threads", "dask"])
    p.add_argument("--dask-address", default=None)
    p.add_argument("--dask-workers", type=int, default=2)
    a = p.parse_args(argv)
    curate(a.pool, a.out, a.config, a.work, a.runner, a.dask_address, a.dask_workers)


if __name__ == "__main__":
    main()
