"""Prefect in production, measured -> bench/results/prefect.json.

    .venv/bin/python -m bench.orchestration [--pool data/sample_pool/shards] [--config configs/laion-subset.yaml]

On a real local Prefect server (127.0.0.1, temporary PREFECT_HOME):
1. serve the deployments and `prefect deployment run curate/laion-subset` on the first half of the
   pool's shards -> COMPLETED?
2. add the other half and run the deployment again -> how many shards / stage executions ran;
3. run the flow in a subprocess, SIGKILL it midway through annotation, rerun it -> are the outputs
   (shards, uids.npy, metadata.parquet) byte-identical to the uninterrupted run of step 2?
4. the same flow on a Dask LocalCluster with 2 worker processes -> identical outputs?
5. orchestration overhead: the flow vs `pipeline.run.run_curation` on the same pool, fresh caches.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from bench.prefect_deployment import deployment_run, local_server, serving  # noqa: E402

OUT = ROOT / "bench" / "results" / "prefect.json"


def checksums(out: str | Path) -> dict[str, str]:
    """sha256 of everything a user consumes (pipeline/publish.py: the manifest without run timings)."""
    from pipeline.publish import checksums as sums

    return sums(out)


def link_shards(src: list[Path], dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for s in src:
        for f in s.parent.glob(s.stem + "*"):  # the tar and its sidecars
            if not (dst / f.name).exists():
                (dst / f.name).symlink_to(f.resolve())


def flow_cmd(pool: Path, out: Path, config: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flows.curate", "--pool", str(pool), "--out", str(out), "--config", config, *extra]


def killed_then_rerun(env: dict, pool: Path, out: Path, config: str, after_shards: int) -> dict:
    """Start the flow, SIGKILL its process group once ``after_shards`` shards are annotated, rerun."""
    p = subprocess.Popen(flow_cmd(pool, out, config), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    marker = out / "columns" / "ingest"
    while p.poll() is None and len(list(marker.glob("*.parquet"))) < after_shards:
        time.sleep(0.1)
    done_at_kill = len(list(marker.glob("*.parquet")))
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    r = subprocess.run(flow_cmd(pool, out, config), env=env, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("rerun after the kill failed:\n" + r.stdout[-2000:] + r.stderr[-2000:])
    m = json.loads((out / "manifest.json").read_text())
    return {"shards_done_at_kill": done_at_kill, "rerun_shards_annotated": m["run"]["shards_annotated"],
            "rerun_kept": m["kept"], "rerun_samples_in": m["samples_in"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default="data/sample_pool/shards")
    ap.add_argument("--config", default="configs/laion-subset.yaml")
    a = ap.parse_args()
    shards = sorted(Path(a.pool).glob("*.tar"))
    if len(shards) < 4:
        raise SystemExit(f"{a.pool}: need at least 4 shards")
    half = len(shards) // 2
    config = str(Path(a.config).resolve())
    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp, local_server() as env:
        tmp = Path(tmp)
        pool, out = tmp / "pool", tmp / "deployed"
        link_shards(shards[:half], pool)
        with serving(env, str(pool), str(out), config):
            r1 = deployment_run(env)
            m1 = json.loads((out / "manifest.json").read_text())
            link_shards(shards[half:], pool)
            r2 = deployment_run(env)
            m2 = json.loads((out / "manifest.json").read_text())
        res.update(deployment_run_completed=r1["completed"] and r2["completed"],
                   first_run={"shards": half, "shards_annotated": m1["run"]["shards_annotated"], "stage_runs": m1["run"]["stage_runs"],
                              "samples_in": m1["samples_in"], "kept": m1["kept"], "seconds": r1["seconds"]},
                   second_run_new_shards=len(shards) - half, second_run_shards_annotated=m2["run"]["shards_annotated"],
                   second_run_shard_stage_runs=m2["run"]["stage_runs"], second_run_samples_in=m2["samples_in"],
                   second_run_seconds=r2["seconds"])
        reference = checksums(out)
        print(json.dumps(res, indent=2), flush=True)

        kill = killed_then_rerun(env, pool, tmp / "killed", config, after_shards=len(shards) // 2)
        res["kill"] = kill
        res["killed_rerun_identical"] = checksums(tmp / "killed") == reference
        print("killed rerun identical:", res["killed_rerun_identical"], kill, flush=True)

        t0 = time.time()
        r = subprocess.run(flow_cmd(pool, tmp / "dask", config, "--runner", "dask", "--dask-workers", "2"), env=env,
                           cwd=ROOT, capture_output=True, text=True)
        res["dask_seconds"] = round(time.time() - t0, 1)
        if r.returncode != 0:
            print(r.stdout[-2000:], r.stderr[-2000:])
        res["dask_identical"] = r.returncode == 0 and checksums(tmp / "dask") == reference
        print("dask identical:", res["dask_identical"], flush=True)

        # overhead: the flow in-process vs the library, each from empty caches on the same pool
        os.environ.update({k: env[k] for k in ("PREFECT_API_URL", "PREFECT_HOME")})
        from flows.curate import curate
        from pipeline.run import run_curation

        t0 = time.time()
        run_curation(str(pool), tmp / "lib", config, progress=False)
        t_lib = time.time() - t0
        t0 = time.time()
        curate(pool=str(pool), out=str(tmp / "flow"), config=config)
        t_flow = time.time() - t0
        res.update(library_seconds=round(t_lib, 2), flow_seconds=round(t_flow, 2),
                   orchestration_overhead_ratio=round(t_flow / t_lib, 3),
                   flow_equals_library=checksums(tmp / "flow") == checksums(tmp / "lib"))
    from app.demo import machine

    res.update(pool=a.pool, config=a.config, shards=len(shards), machine=machine())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
