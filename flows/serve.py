"""Serve the deployments: ``curate/laion-subset``, ``train-eval/on-curated`` and
``curate-train-eval/nightly`` (curate, then train + evaluate on the output).

    python -m flows.serve                      # then: prefect deployment run curate/laion-subset
    python -m flows.serve --cron "0 2 * * *"   # laion-subset and nightly on a schedule
For a process work pool instead of a serving process, see prefect.yaml (``prefect deploy --all``).
"""
from __future__ import annotations

import argparse

from prefect import serve

from flows.curate import DEFAULT_CONFIG, DEFAULT_OUT, DEFAULT_POOL, curate


def deployments(cron: str | None, pool: str, out: str, config: str) -> list:
    deps = [curate.to_deployment(name="laion-subset", cron=cron,
                                 parameters={"pool": pool, "out": out, "config": config},
                                 description="Curate a LAION-style pool of webdataset shards")]
    from flows.nightly import curate_train_eval
    from flows.train_eval import train_eval

    deps.append(train_eval.to_deployment(name="on-curated", description="Train and evaluate on curated shards"))
    deps.append(curate_train_eval.to_deployment(
        name="nightly", cron=cron, parameters={"pool": pool, "out": out, "config": config},
        description="Curate (new shards only), then train and evaluate on the output, with lineage"))
    return deps


def main(argv: list[str] | None = None, prog: str = "python -m flows.serve") -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cron", default=None, help="cron schedule, e.g. '0 2 * * *' for nightly (default: none)")
    p.add_argument("--pool", default=DEFAULT_POOL, help=f"default pool pattern (default: {DEFAULT_POOL})")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"default output folder (default: {DEFAULT_OUT})")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"default config (default: {DEFAULT_CONFIG})")
    a = p.parse_args(argv)
    serve(*deployments(a.cron, a.pool, a.out, a.config))


if __name__ == "__main__":
    main()
