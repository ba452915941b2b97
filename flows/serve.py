"""The Prefect deployments ``curate serve`` (app/cli_serve.py) serves from its process:

  curate/laion-subset        curate a pool (new shards only); on demand, no schedule
  train-eval/on-curated      train + evaluate on a curated output; on demand
  curate-train-eval/nightly  curate, then train, then evaluate on the output; on the schedule
"""
from __future__ import annotations

from flows.curate import DEFAULT_CONFIG, DEFAULT_OUT, DEFAULT_POOL

NAMES = ("laion-subset", "on-curated", "nightly")
CRON = "0 2 * * *"


def deployments(pool: str = DEFAULT_POOL, out: str = DEFAULT_OUT, config: str = DEFAULT_CONFIG,
                cron: str = CRON, timezone: str = "UTC", active: bool = True, names=NAMES) -> list:
    """The RunnerDeployments to serve; ``active=False`` gives the nightly chain its schedule paused
    (an empty schedule list would leave a schedule already on the server as it is)."""
    from prefect.schedules import Cron

    from flows.curate import curate
    from flows.nightly import curate_train_eval
    from flows.train_eval import train_eval

    params = {"pool": pool, "out": out, "config": config}
    make = {
        "laion-subset": lambda: curate.to_deployment(
            name="laion-subset", parameters=params,
            description="Curate a LAION-style pool of webdataset shards (new shards only on each run)"),
        "on-curated": lambda: train_eval.to_deployment(
            name="on-curated", parameters={"curated": out},
            description="Train and zero-shot evaluate on a curated output"),
        "nightly": lambda: curate_train_eval.to_deployment(
            name="nightly", parameters=params, schedules=[Cron(cron, timezone=timezone, active=active)],
            description="Curate (new shards only), then train and evaluate on the output, with lineage"),
    }
    return [make[n]() for n in NAMES if n in names]
