"""Prefect flow ``curate``: the curation core (pipeline/run.py) with its shard jobs as Prefect tasks.

This file only wraps: planning, the failure policy, decide, export and publishing are the core's,
so the flow and ``curate run`` give identical outputs. Retries (exponential backoff with jitter)
are Prefect's, for transient errors only (I/O, a lost worker, a timeout: pipeline.executors.transient). ``runner="dask"`` runs the shard tasks on a Dask cluster (``dask_address`` of a
running scheduler, or a local cluster of ``dask_workers`` processes); each worker process loads the
scorer once. Artifacts (drops by reason with thresholds, scorer, config hash, report path; and a
progress bar) are attached to the run the user started.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from pipeline.executors import transient
from pipeline.run import annotate, annotate_job, finish, output_guard, plan, run_facts
from schemas.outputs import ShardResult

DEFAULT_POOL = "data/sample_pool/shards"
DEFAULT_OUT = "runs/laion-subset"
DEFAULT_CONFIG = "configs/laion-subset.yaml"


def transient_failure(task, task_run, state) -> bool:
    """Prefect's retry condition for a shard task: retry only a transient error (the core's rule)."""
    error = getattr(state, "data", None)
    if not isinstance(error, BaseException):
        try:
            state.result()
            return False
        except Exception as e:  # noqa: BLE001 - the task's own exception, judged below
            error = e
    return transient(error)


@task(name="annotate-shard", retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_jitter_factor=0.5, retry_condition_fn=transient_failure, cache_policy=NO_CACHE)
def annotate_task(job: tuple) -> ShardResult:
    return annotate_job(job)


@task(name="decide-export-publish", cache_policy=NO_CACHE)
def finish_task(p, done: dict, failed: dict, on_failure: str, run: dict, keep_versions: int = 2) -> dict:
    return finish(p, done, failed, on_failure, run, keep_versions)


class PrefectTasks:
    """The core's executor interface over Prefect tasks (and so over whatever task runner the flow has)."""

    def __init__(self, retries: int, progress_id=None):
        self.retries, self.progress_id = retries, progress_id

    def map(self, fn, items):
        items = list(items)
        futures = annotate_task.with_options(retries=self.retries).map(items)
        for n, (item, fut) in enumerate(zip(items, futures), 1):
            try:
                result, error = fut.result(), None
            except Exception as e:  # noqa: BLE001 - the core's failure policy decides
                result, error = None, f"{type(e).__name__}: {e}"
            if self.progress_id is not None:
                update_progress_artifact(self.progress_id, 100.0 * n / len(items))
            yield item, result, error


# Shard tasks share the process: each already uses several cores (torch, decode), so run about one
# per two cores; the Dask runner is the way to more.
THREADS = ThreadPoolTaskRunner(max_workers=max(1, (os.cpu_count() or 2) // 2))


@flow(name="curate-shards", log_prints=True, task_runner=THREADS)
def curate_shards(pool: str, out: str, config: str, work: str | None = None, retries: int = 2,
                  on_failure: str = "fail", progress_id: str | None = None, keep_versions: int = 2) -> dict:
    import time

    p = plan(pool, out, config, work)
    get_run_logger().info("curating %d shards from %s into %s", len(p.shards), pool, out)
    with output_guard(p):  # the output's lock (a lease in a bucket) and the run log
        t0 = time.time()
        done, failed = annotate(p, PrefectTasks(retries, progress_id), progress=False)
        return finish_task(p, done, failed, on_failure, run_facts(done, time.time() - t0), keep_versions)


@flow(name="curate", log_prints=True)
def curate(pool: str = DEFAULT_POOL, out: str = DEFAULT_OUT, config: str = DEFAULT_CONFIG, work: str | None = None,
           runner: Literal["threads", "dask"] = "threads", dask_address: str | None = None, dask_workers: int = 2,
           retries: int = 2, on_failure: Literal["fail", "partial"] = "fail", keep_versions: int = 2) -> dict:
    """Curate a pool of webdataset shards into filtered shards + uid list + metadata + manifest; keep the
    newest ``keep_versions`` published versions and those a training holds."""
    plan(pool, out, config, work)  # fail fast, with a readable message, before any task runs
    progress = create_progress_artifact(0.0, key="curation-progress", description="shards annotated (%)")
    sub = curate_shards
    if runner == "dask":
        from prefect_dask import DaskTaskRunner

        tr = (DaskTaskRunner(address=dask_address) if dask_address else
              DaskTaskRunner(cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1, "processes": True}))
        sub = curate_shards.with_options(task_runner=tr)
    m = sub(pool, out, config, work, retries, on_failure, str(progress) if progress else None, keep_versions)
    summary_artifact(pool, m)
    get_run_logger().info("kept %d of %d; shards in %s", m["kept"], m["samples_in"], Path(out) / "shards")
    return m


def summary_artifact(pool: str, m: dict) -> None:
    rows = "\n".join(f"| {k} | {v} |" for k, v in m["dropped_by_reason"].items())
    filt = "\n".join(f"| `{k}` | {v.get('type')} | {v.get('threshold', '')} | {', '.join(v.get('reasons', []))} |"
                     for k, v in m.get("filters", {}).items())
    scorers = ", ".join(f"`{s.get('model') or s.get('precomputed')}` -> {s['column']}" for s in m.get("scorers", []))
    problems = "".join(f"\n- broken `{b['shard']}`: {b['error']} ({b['samples_recovered']} recovered)"
                       for b in m.get("broken_shards", []))
    problems += "".join(f"\n- not processed `{f['shard']}`: {f['error']}" for f in m.get("not_processed_shards", []))
    create_markdown_artifact(
        key="curation-summary", description="kept / dropped by reason, thresholds, scorer, config",
        markdown=(f"## Curation of `{pool}`\n\n{m['samples_in']} in, **{m['kept']} kept**, {m['dropped']} dropped "
                  f"(config `{m.get('config_hash')}`; scorers: {scorers or 'none'}).\n\n"
                  f"| drop reason | samples |\n|---|---|\n{rows}\n\n"
                  f"| filter | type | threshold | reasons |\n|---|---|---|---|\n{filt}\n\n"
                  f"Report: `{m.get('report')}`  \nFiltered shards: `{m.get('root')}/shards`"
                  + (f"\n\n**Shard problems**:{problems}" if problems else "")))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m flows.curate", description="Run the curate flow once.")
    p.add_argument("--pool", default=DEFAULT_POOL)
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--work", default=None)
    p.add_argument("--runner", default="threads", choices=["threads", "dask"])
    p.add_argument("--dask-address", default=None)
    p.add_argument("--dask-workers", type=int, default=2)
    p.add_argument("--on-failure", default="fail", choices=["fail", "partial"])
    a = p.parse_args(argv)
    curate(a.pool, a.out, a.config, a.work, a.runner, a.dask_address, a.dask_workers, on_failure=a.on_failure)


if __name__ == "__main__":
    main()
