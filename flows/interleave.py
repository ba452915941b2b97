"""Prefect flow ``interleave``: pipeline/interleaved.py with one task per document shard.

The library does the work (assignment, thresholds, writing, accounting), so the flow and
``curate interleave`` give identical outputs; Prefect adds retries and the summary artifact."""
from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.interleaved import Settings, interleave_shard, summarize


@task(name="interleave-shard", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def shard_task(shard: str, out: str, scorer_json: str, settings: dict) -> dict:
    return interleave_shard(shard, Path(out) / "shards", scorer_json, Settings(**settings))


@flow(name="interleave", log_prints=True)
def interleave(docs: str, out: str, scorer: str, checkpoint: str | None = None, min_sim: float | None = None,
               null_quantile: float = 0.95, keep_unmatched: bool = False, min_images: int = 1) -> dict:
    """Assign the images of interleaved documents to their sentences (mmc4), shard by shard."""
    from schemas.config import ClipModel
    from shardio.shards import expand

    settings = Settings(min_sim=min_sim, null_quantile=null_quantile, keep_unmatched=keep_unmatched,
                        min_images=min_images)
    spec = ClipModel(model=scorer, checkpoint=checkpoint).model_dump_json()
    shards = expand(docs)  # fails fast on a wrong pattern
    results = [shard_task(s, out, spec, settings.model_dump()) for s in shards]
    summary = summarize(results, out, settings, scorer)
    dropped = "\n".join(f"| {k} | {v} |" for k, v in summary["images_dropped"].items())
    create_markdown_artifact(key="interleave-summary", description="images kept / dropped by reason",
                             markdown=f"## Interleave `{docs}`\n\n{summary['images_in']} images in "
                                      f"{summary['documents_in']} documents, **{summary['images_kept']} kept**.\n\n"
                                      f"| dropped | images |\n|---|---|\n{dropped}\n")
    get_run_logger().info("kept %d of %d images; documents in %s", summary["images_kept"], summary["images_in"],
                          Path(out) / "shards")
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m flows.interleave", description="Run the interleave flow once.")
    p.add_argument("--docs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--scorer", required=True)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--min-sim", type=float, default=None, help="default: auto")
    p.add_argument("--keep-unmatched", action="store_true")
    a = p.parse_args(argv)
    interleave(a.docs, a.out, a.scorer, a.checkpoint, a.min_sim, keep_unmatched=a.keep_unmatched)


if __name__ == "__main__":
    main()
