"""Pools in object storage, measured against a real S3 server (moto's standalone server on 127.0.0.1,
as in tests/test_s3.py) behind a byte-counting TCP relay, so every byte the server sends is counted.

- a DataComp-layout metadata pool (``<hash>.parquet`` + ``<hash>.npz``, bench/scale_pool.py) in the
  bucket vs on local disk: the CLIP score L/14 30% preset, metadata only, each run a ``curate run``
  process of its own (start-up included): seconds, uids identical, bytes fetched;
- a tar pool (fixtures/shardmaker.py's coloured squares) from the bucket on a Dask cluster of 2 worker
  processes with private scratch, output and work folder in the bucket, vs one local process;
- bytes fetched from the server / the pool's bytes for a CLIP-score run with ingest (curate-tiny),
  streamed and through ``filecache::``;
- SIGKILL at each fault point with the output in the bucket: what the pointer shows, and the rerun.

    python -m bench.object_store [--rows 1000000] [--tar-samples 20000]   (~10 min on 2 cores)
    python -m bench.object_store --parts metadata   (one part again; the others' entries are kept)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fixtures.buckets import Relay, Requests, checksums, start_server, wait_for_lease

ROOT = Path(__file__).resolve().parents[1]
KEY, SECRET = "AKIABENCHOBJSTORE", "bench-secret-not-logged"
PARTS = {"metadata": "metadata_only", "dask": "dask", "bytes": "bytes_read", "kills": "kills"}  # --parts -> entry
CLIP = {"clip": [{"model": "curate-tiny", "batch_size": 64}],
        "filters": [{"type": "clip_score", "fraction": 0.3}, {"type": "exact_dedup"}]}


def _fs():
    import s3fs

    return s3fs.S3FileSystem(key=KEY, secret=SECRET, endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                             skip_instance_cache=True)


def upload(local: Path, bucket: str, prefix: str, skip=("pool.json",)) -> tuple[int, float]:
    """Every file under ``local`` to ``s3://bucket/prefix/``; (bytes, seconds)."""
    fs = _fs()
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    t0, n = time.time(), 0
    for f in sorted(p for p in local.rglob("*") if p.is_file() and p.name not in skip):
        fs.put_file(str(f), f"{bucket}/{prefix}/{f.relative_to(local).as_posix()}")
        n += f.stat().st_size
    return n, round(time.time() - t0, 2)


def cli_run(pool: str, out: Path | str, config: str, kill: str | None = None, extra=()) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "CURATE_KILL_AT": kill or "", "CURATE_LOCK_LEASE_S": "2", "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "app.cli", "run", "--pool", pool, "--out", str(out), "--config", config,
                        *extra], env=env, capture_output=True, text=True, cwd=ROOT)
    return round(time.time() - t0, 2), r


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _per_object(counts) -> dict:
    """GET requests per parquet (min, max), and every other request by method."""
    gets = [n for (m, p), n in counts.items() if m == "GET" and p.endswith(".parquet")]
    other: dict[str, int] = {}
    for (m, p), n in counts.items():
        if not (m == "GET" and p.endswith(".parquet")):
            other[m] = other.get(m, 0) + n
    return {"parquets_read": len(gets), "gets_per_parquet": [min(gets, default=0), max(gets, default=0)],
            "npz_requests": sum(n for (m, p), n in counts.items() if p.endswith(".npz")), "other": other}


def metadata_only(relay: Relay, work: Path, rows: int, per_shard: int) -> dict:
    from bench.scale_pool import make_pool

    pool = work / "datacomp"
    info = make_pool(pool, rows, per_shard, seed=0, procs=2)
    nbytes, up_s = upload(pool, "bench", "datacomp/metadata")
    parquet_bytes = sum(p.stat().st_size for p in pool.glob("*.parquet"))
    out = {"rows": rows, "shards": len(info["shards"]), "pool_bytes": nbytes, "parquet_bytes": parquet_bytes,
           "pool_write_seconds": info["write_seconds"], "pool_reused": info["reused"], "upload_seconds": up_s,
           "config": "datacomp/clip-score-l14-30 (metadata only: the shipped clip_l14_similarity_score)"}
    runs: dict[str, list[float]] = {"local": [], "s3": []}
    uids = {}
    for i in range(2):  # alternated, twice each: the machine is shared, so its load moves under the runs
        for where, src in (("local", str(pool)), ("s3", "s3://bench/datacomp/metadata")):
            dst = work / f"meta-{where}-{i}"
            shutil.rmtree(dst, ignore_errors=True)
            relay.reset()
            relay.requests.mark()
            secs, r = cli_run(src, dst, "datacomp/clip-score-l14-30")
            if r.returncode != 0:
                raise RuntimeError(f"metadata-only run from {where} failed: {r.stderr[-3000:]}")
            runs[where].append(secs)
            uids[where] = (dst / "uids.npy").read_bytes()
            if where == "s3":
                out["s3_bytes_fetched"] = relay.down
                out["s3_requests"] = _per_object(relay.requests.count())
    out["seconds"] = runs
    out["local_seconds"], out["s3_seconds"] = min(runs["local"]), min(runs["s3"])
    out["s3_vs_local_seconds"] = round(out["s3_seconds"] / out["local_seconds"], 3)
    out["uids_identical"] = uids["local"] == uids["s3"]
    out["uid_count"] = int(len(np.load(work / "meta-local-1" / "uids.npy")))
    out["s3_bytes_fetched_vs_parquet_bytes"] = round(out["s3_bytes_fetched"] / parquet_bytes, 3)
    out["s3_bytes_fetched_vs_pool_bytes"] = round(out["s3_bytes_fetched"] / nbytes, 3)
    out["what_is_fetched"] = ("each parquet once: its last 64 KiB (the footer, as pyarrow reads it), then the chunks "
                              "of the columns the stages read (ingest's and the L/14 score) in one set of range "
                              "requests, nearby chunks merged; the next 3 parquets are fetched on two threads while "
                              "one is worked on. No .npz byte: the precomputed scorer stage copies a bucket npz's "
                              "embeddings into the work folder only when a filter or stage of the run reads them, "
                              "and a CLIP-score filter reads only the score")
    return out


def _same_outputs(local: Path, url: str) -> dict:
    """Byte comparison of uids.npy, metadata.parquet and every shard (tar, parquet) of a local output and
    the version a bucket output's pointer names."""
    from pipeline.objstore import published_url
    from shardio import storage

    root = published_url(url)
    fs, base = storage.filesystem(root)
    names = ["uids.npy", "metadata.parquet"] + [f"shards/{p.name}" for p in sorted((local / "shards").iterdir())
                                                  if not p.name.endswith("_stats.json")]  # stats hold a duration
    differ = [n for n in names if fs.cat_file(f"{base}/{n}") != (local / n).read_bytes()]
    remote = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{base}/shards"))
    return {"files_compared": len(names), "differ": differ,
            "same_shard_names": remote == sorted(p.name for p in (local / "shards").iterdir())}


def dask_cluster(work: Path, tar_pool: Path) -> dict:
    import distributed

    from pipeline.run import run_curation

    local_out = work / "tars-local"
    shutil.rmtree(local_out, ignore_errors=True)
    t0 = time.time()
    local = run_curation(str(tar_pool), local_out, CLIP, progress=False)
    local_s = round(time.time() - t0, 2)
    scratch = work / "dask-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    t0 = time.time()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  local_directory=str(scratch), env={"TMPDIR": str(scratch)}) as cluster:
        start_s = round(time.time() - t0, 2)
        t1 = time.time()
        m = run_curation("s3://bench/tars", "s3://bench/dask-out", CLIP, progress=False,
                         dask_address=cluster.scheduler_address)
        run_s = round(time.time() - t1, 2)
    same = _same_outputs(Path(local["root"]), "s3://bench/dask-out")
    return {"samples": local["samples_in"], "kept": local["kept"], "local_seconds": local_s,
            "dask_s3_seconds": run_s, "cluster_start_seconds": start_s,
            "dask_stage_runs": m["run"]["stage_runs"], "comparison": same,
            "dask_s3_identical": not same["differ"] and same["same_shard_names"] and m["kept"] == local["kept"],
            "setup": "LocalCluster: 2 worker processes, 1 thread each, scratch in their own folder (TMPDIR); pool, "
                     "work folder and output in the bucket; the client reads only the bucket; curate-tiny scorer, "
                     "CLIP score 30% + exact dedup. The workers keep no spool (another machine's disk): the "
                     "client's export fetches each tar holding kept samples once more, into its own spool, and "
                     "the report reads that"}


def bytes_read(relay: Relay, work: Path, pool_bytes: int) -> dict:
    from pipeline.run import run_curation

    out = {"pool_bytes": pool_bytes, "config": "curate-tiny CLIP score 30% + exact dedup, ingest + thumbnails + "
           "scorer from the tars; work folder and output on local disk, so only reads reach the server"}
    for name, url in (("streamed", "s3://bench/tars"), ("filecache", "filecache::s3://bench/tars")):
        dst = work / f"bytes-{name}"
        shutil.rmtree(dst, ignore_errors=True)
        cache = work / "filecache"
        shutil.rmtree(cache, ignore_errors=True)
        cfg = {**CLIP, "storage_options": {"filecache": {"cache_storage": str(cache)}}} if name == "filecache" else CLIP
        relay.reset()
        t0 = time.time()
        m = run_curation(url, dst, cfg, progress=False)
        out[name] = {"bytes_fetched": relay.down, "bytes_sent": relay.up, "seconds": round(time.time() - t0, 2),
                     "samples": m["samples_in"], "bytes_read_vs_pool_bytes": round(relay.down / pool_bytes, 4)}
    out["bytes_read_vs_pool_bytes"] = {k: out[k]["bytes_read_vs_pool_bytes"] for k in ("streamed", "filecache")}
    out["how_streamed_reads_once"] = ("the per-shard pass keeps each tar it fetches in the run's private spool "
                                      "(<out>/.spool, one file a shard, removed when the run ends); export and the "
                                      "report's gallery read it there. The rest over 1: the shards' img2dataset "
                                      "parquets (read by the pass and again by the report), the listings and the "
                                      "HTTP headers. filecache:: fetches each object once into a cache the user keeps")
    return out


def kill_points(work: Path) -> dict:
    """tests/test_s3.py's kill_and_rerun, each point recorded instead of asserted."""
    from pipeline.faults import POINTS
    from fixtures.shardmaker import make_pool

    pool = work / "kill-pool"
    shutil.rmtree(pool, ignore_errors=True)
    make_pool(pool, n=40, per_shard=10, plant={3: "corrupt", 8: "dup"})
    _fs().mkdir("kills")
    old, new = work / "old.json", work / "new.json"
    old.write_text(json.dumps({"filters": []}))
    new.write_text(json.dumps({"filters": [{"type": "exact_dedup"}, {"type": "basic", "min_side": 30}]}))
    _, r = cli_run(str(pool), "s3://kills/clean", str(new))
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    want = checksums("s3://kills/clean")
    points = {}
    for point in POINTS:
        out = f"s3://kills/{point.replace(':', '_')}"
        _, r0 = cli_run(str(pool), out, str(old))
        before = checksums(out)
        _, r = cli_run(str(pool), out, str(new), kill=point)
        seen = checksums(out)
        expect = want if point == "publish:switched" else before
        wait_for_lease(out)
        _, r2 = cli_run(str(pool), out, str(new))
        after = checksums(out)
        points[point] = {"killed": r.returncode == -9, "pointer_shows": "new" if seen == want else
                         "old" if seen == before else "a mix", "as_expected": seen == expect,
                         "rerun_ok": r0.returncode == 0 and r2.returncode == 0, "rerun_identical": after == want}
    return {"points": points,
            "kill_points_identical": all(p["killed"] and p["as_expected"] and p["rerun_ok"] and p["rerun_identical"]
                                         for p in points.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="metadata pool rows (default 1,000,000)")
    ap.add_argument("--per-shard", type=int, default=10_000)
    ap.add_argument("--tar-samples", type=int, default=20_000, help="tar pool samples (default 20,000)")
    ap.add_argument("--work", default="runs/bench-object-store")
    ap.add_argument("--out", default="bench/results/object_store.json")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated, of {','.join(PARTS)}; the parts not run keep their entries in --out")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    if not parts or parts - set(PARTS):
        ap.error(f"--parts: give some of {','.join(PARTS)}")
    path = ROOT / a.out
    old = json.loads(path.read_text()) if parts != set(PARTS) and path.is_file() else {}
    if set(PARTS) - parts - {k for k, v in PARTS.items() if v in old}:
        ap.error(f"--parts: {path} has no results for the parts not run; run them too")
    import psutil

    from fixtures.shardmaker import make_pool

    work = (ROOT / a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t_start, load = time.time(), {**old.get("loadavg_1m", {}), "before": _load()}
    server, port = start_server(work / "moto.log")
    relay = Relay(port)
    relay.requests = Requests(work / "moto.log")
    for k in [k for k in os.environ if k.startswith(("AWS_", "FSSPEC_"))]:
        del os.environ[k]
    os.environ.update({"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": f"http://127.0.0.1:{relay.port}"})
    result: dict = {**old,  # the parts not run keep their entries
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                                "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
                    "server": "moto standalone server (moto[server]) on 127.0.0.1, objects kept by the server "
                              "process; every request through a byte-counting TCP relay"}
    try:
        tar_pool = work / "tars"
        if parts - {"metadata"}:
            if not (tar_pool / "00000.tar").is_file() or len(list(tar_pool.glob("*.tar"))) != -(-a.tar_samples // 250):
                shutil.rmtree(tar_pool, ignore_errors=True)
                make_pool(tar_pool, n=a.tar_samples, per_shard=250, plant={5: "corrupt", 9: "dup", 40: "noimage"})
            tar_bytes, _ = upload(tar_pool, "bench", "tars")
        if "metadata" in parts:
            print("metadata only ...", flush=True)
            result["metadata_only"] = metadata_only(relay, work, a.rows, a.per_shard)
            load["after_metadata_only"] = _load()
        if "dask" in parts:
            print("dask ...", flush=True)
            result["dask"] = dask_cluster(work, tar_pool)
            load["after_dask"] = _load()
        if "bytes" in parts:
            print("bytes read ...", flush=True)
            result["bytes_read"] = bytes_read(relay, work, tar_bytes)
            load["after_bytes_read"] = _load()
        if "kills" in parts:
            print("kill points ...", flush=True)
            result["kills"] = kill_points(work)
        load["end"] = _load()
        result["server_rss_mb"] = round(psutil.Process(server.pid).memory_info().rss / 2**20)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    md = result["metadata_only"]
    result.update({
        "s3_vs_local_seconds": md["s3_vs_local_seconds"], "metadata_uids_identical": md["uids_identical"],
        "metadata_rows": md["rows"],
        "dask_s3_identical": result["dask"]["dask_s3_identical"],
        "dask_seconds": {"local_one_process": result["dask"]["local_seconds"],
                         "dask_2_workers_from_s3": result["dask"]["dask_s3_seconds"]},
        "tar_samples": result["dask"]["samples"],
        "bytes_read_vs_pool_bytes": result["bytes_read"]["bytes_read_vs_pool_bytes"],
        "kill_points_identical": result["kills"]["kill_points_identical"],
        "loadavg_1m": load, "total_seconds": round(time.time() - t_start, 1), "parts_run": sorted(parts)})
    ratio = result["bytes_read_vs_pool_bytes"]
    result["targets"] = {"s3_vs_local_seconds <= 1.5": md["s3_vs_local_seconds"] <= 1.5,
                         "uids identical": md["uids_identical"], "dask_s3_identical": result["dask_s3_identical"],
                         "bytes_read_vs_pool_bytes <= 1.1 (filecache::)": ratio["filecache"] <= 1.1,
                         "bytes_read_vs_pool_bytes <= 1.1 (streamed)": ratio["streamed"] <= 1.1,
                         "kill_points_identical": result["kill_points_identical"]}
    result["notes"] = (f"metadata pool at {md['rows']:,} rows, not the issue's 1M: the 1M DataComp-layout pool is "
                       "5.3 GB (npz embeddings), ~4.5 min to write on this shared 2-core machine and as much again "
                       "into the server, over this bench's ~15 min budget; the CLIP-score run reads only the "
                       "parquets' score column, so its cost grows with the parquet bytes (scale.json: 6.7 s at 1M "
                       "locally). " if md["rows"] < 1_000_000 else "") + (
        f"Tar pool: {result['tar_samples']:,} samples of 40 px JPEGs, 250 a shard. Seconds are wall time on a shared "
        "machine: read them beside loadavg_1m.")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("s3_vs_local_seconds", "metadata_uids_identical", "dask_s3_identical",
                                             "dask_seconds", "bytes_read_vs_pool_bytes", "kill_points_identical",
                                             "total_seconds")}, indent=2))


if __name__ == "__main__":
    main()
