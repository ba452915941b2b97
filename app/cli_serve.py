"""Serve the Prefect deployments from this process (runs execute here; stop with Ctrl-C).

Deployments:
  curate/laion-subset        curate a pool (new shards only); on demand, no schedule
  train-eval/on-curated      train + evaluate on a curated output; on demand
  curate-train-eval/nightly  curate, then train, then evaluate on the output; on the schedule

The nightly schedule is on by default ("0 2 * * *", UTC): --cron and --timezone change it,
--no-schedule serves it paused (inactive, which also switches off a schedule an earlier serve left
on the server). Scheduled runs start only while this process serves (PREFECT_API_URL names the
server: source scripts/prefect-env.sh). Only the nightly chain is scheduled: the core takes an
exclusive lock per output folder, so a second schedule on the same --out would only race it and
be refused. Start other runs by hand, e.g.
    prefect deployment run curate/laion-subset -p pool=/data/pool -p out=runs/other
For a process work pool instead of a serving process, see prefect.yaml (`prefect deploy --all`).
"""
from __future__ import annotations

import argparse
import zoneinfo

from flows.curate import DEFAULT_CONFIG, DEFAULT_OUT, DEFAULT_POOL
from flows.serve import CRON, NAMES, deployments


def parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cron", default=CRON, help=f"schedule of the nightly chain (default: '{CRON}', 02:00 daily)")
    p.add_argument("--timezone", default="UTC", help="IANA time zone of --cron (default: UTC)")
    p.add_argument("--no-schedule", action="store_true", help="serve the nightly chain with its schedule paused")
    p.add_argument("--deployments", nargs="+", choices=NAMES, default=list(NAMES), metavar="NAME",
                   help=f"which deployments to serve: {', '.join(NAMES)} (default: all)")
    p.add_argument("--pool", default=DEFAULT_POOL, help=f"default pool pattern (default: {DEFAULT_POOL})")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"default output folder (default: {DEFAULT_OUT})")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"default curation config (default: {DEFAULT_CONFIG})")
    return p


def main(argv: list[str] | None = None, prog: str = "curate serve") -> None:
    p = parser(prog)
    a = p.parse_args(argv)
    try:
        zoneinfo.ZoneInfo(a.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        p.error(f"--timezone {a.timezone!r} is no IANA time zone (e.g. UTC, Europe/Berlin)")
    try:
        deps = deployments(a.pool, a.out, a.config, a.cron, a.timezone, not a.no_schedule, a.deployments)
    except ValueError as e:  # an invalid cron string
        p.error(f"--cron {a.cron!r}: {e}")
    from prefect import serve

    names = ", ".join(f"{d.flow_name}/{d.name}" for d in deps)
    sched = "no schedule" if "nightly" not in a.deployments else \
        f"nightly at '{a.cron}' {a.timezone}" + (", paused" if a.no_schedule else "")
    print(f"serving {names} ({sched})", flush=True)
    serve(*deps)


if __name__ == "__main__":
    main()


if __name__ == "__main__":
    main()
