"""DataComp small (12.8M rows) on one machine, beside DataComp's own baselines.py -> bench/results/scale_small.json.

    .venv/bin/python -m bench.scale_small [--sizes 1000000,4000000,12800000] [--work runs/scale-small]

1. Pool: 12.8M rows in DataComp's ``metadata/`` layout (bench/scale_small_pool.py: parquet with every
   column DataComp ships, L/14 image and text embeddings as float16 ``.npz``; B/32 embeddings omitted),
   reused when its settings match, resumed when stopped part way. Smaller sizes are folders of links
   to its first shards.
2. Every step (bench/scale_small_steps.py) at every size, each a cold run in its own subprocess
   (bench/scale.py's ``run_ours``): wall and CPU seconds, peak RSS (largest process and the sampled
   process tree), the run's phases. DataComp's ``baselines.py`` (unchanged, its own venv, offline, CUDA
   mapped to the CPU: bench/parity_peer.py) beside each baseline it has, its uids compared byte for byte.
   Cheap steps get ``--step-timeout``, global ones (clustering, k-NN, batches) ``--global-timeout``:
   one slow step is killed and recorded, and the rest go on.
3. The cost model (bench/cost_model.py): per step and million rows, projected to 128M and 1.28B rows;
   checked against 2-worker Dask runs at 1M and 4M (``--dask-sizes``).

Without DataComp's venv (bench/.peer-datacomp/venv: ``python -m bench.scale --setup-peer``) or its code
(shared/peers/datacomp), ours runs alone and the file says so; ``--smoke``: a 40,000-row pool.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.scale_measure import ROOT, DaskCluster, machine_facts, rel
from bench.scale_peer import PEER_PY, datacomp_dir, peer_help
from bench.scale_small_steps import DECISIONS_NOTE, NCL_BATCH_NOTE

OUT = ROOT / "bench" / "results" / "scale_small.json"
PARQUET_STEPS = ("no_filter", "basic", "clip_score_l14", "clip_score_b32", "text_based")  # read no embedding
NOTES = [
    "pool: DataComp's metadata/ layout at DataComp small's size; the generator writes what the steps read: every "
    "parquet column DataComp ships (uid, url, text, original sizes, both CLIP scores, sha256) and L/14 image and "
    "text embeddings (float16 npz, uncompressed); B/32 embeddings are omitted (no step reads them; the B/32 "
    "baseline reads its score column, drawn around the L/14 score); L/14 text embeddings are kept as the runs "
    "read an npz's image and text members together and negCLIPLoss needs them",
    "each step is a cold run (fresh work folder) in its own subprocess; seconds are wall time including start-up",
    "peak_rss_mb: wait4's ru_maxrss (the largest single process); peak_tree_rss_mb: the process tree's RSS "
    "summed, sampled every 0.2 s (DataComp's baselines.py forks --num_workers processes)",
    "image-based: DataComp's baselines.py loads given pool centroids and ImageNet-1k L/14 embeddings; none are "
    "reachable offline, so both sides get the same files made here: 1,000 centroids (DataComp small's own are "
    "100,000) fit by faiss k-means on the caption-filtered first 100,000 rows, and 1,000 target embeddings; its "
    "GPU assignment runs on the CPU (bench/parity_peer.py maps cuda to cpu: the same torch einsum and argmax)",
    "the machine is shared with other work (2 cores): loadavg_1m_before gives the load before each step",
    "a step killed at its timeout reports the CPU seconds of the processes its parent had reaped: for DataComp "
    "(whose workers are killed with it) that is the parent's alone, so a timeout's cpu_seconds understates it",
    "the steps ran in several invocations (--resume), the cheap ones first at every size, then the global ones as "
    "the time allowed; missing lists the size:step pairs not run",
    "semantic_dedup's k-means clusters grow with the pool (n / 2,000, at least 500: steps.sized_config); with "
    "500 clusters at 4M a cluster held 64,922 rows and the run refused, as it should (config error)",
    "--parquet-only pools (same rows and scores, no npz) serve the steps that read no embedding; earlier_pools "
    "lists the pools that earlier invocations' rows were measured on (the global steps' need the embeddings)",
    "a global step gathering clusters from embeddings bigger than half the memory (SemDeDup and D2 at 12.8M: "
    "19.7 and 39.3 GB) copies them cluster by cluster to the run's work disk first (pipeline/spill.py), in "
    "rounds when the disk holds less",
    NCL_BATCH_NOTE,
    DECISIONS_NOTE,
    "before each cheap step the pool's parquet files are read once, so ours and DataComp's (run right after) "
    "both read them from the page cache",
]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-max", type=int, default=None, help="pool rows (default 12,800,000; 40,000 with --smoke)")
    ap.add_argument("--sizes", default=None, help="comma-separated sizes (default 1M, 4M, n_max)")
    ap.add_argument("--steps", default=None, help="comma-separated steps (default all)")
    ap.add_argument("--per-shard", type=int, default=None, help="rows a shard (default 10,000; 2,000 with --smoke)")
    ap.add_argument("--workers", type=int, default=2, help="ours: annotate processes; DataComp: --num_workers")
    ap.add_argument("--step-timeout", type=float, default=900, help="seconds before a cheap step is killed")
    ap.add_argument("--global-timeout", type=float, default=600, help="seconds before a global step is killed")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each cheap step, ours and DataComp's in "
                    "turn (each side's median kept)")
    ap.add_argument("--mem-cap-gb", type=float, default=16, help="tree RSS at which a step is killed")
    ap.add_argument("--dask-sizes", default=None, help="sizes run again on a 2-worker Dask cluster (default 1M,4M)")
    ap.add_argument("--dask-steps", default="clip_score_l14,basic", help="steps run on the Dask cluster")
    ap.add_argument("--no-peer", action="store_true", help="skip DataComp's baselines.py")
    ap.add_argument("--work", default=None, help="pool and runs (default runs/scale-small)")
    ap.add_argument("--out", default=None, help=f"JSON written (default {rel(OUT)})")
    ap.add_argument("--smoke", action="store_true", help="a 40,000-row pool, sizes 20k and 40k")
    ap.add_argument("--in-process", action="store_true", help="(tests) our runs in this process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="keep the steps the results file already holds")
    ap.add_argument("--rerun", action="store_true", help="with --resume: run --steps at --sizes (and the Dask "
                    "steps at --dask-sizes) again, replacing what the file holds for them")
    ap.add_argument("--parquet-only", action="store_true", help="a pool of parquets alone (no npz: 1/20 of the "
                    "disk); only the steps that read no embedding can run on it")
    return ap


def settings(a) -> dict:
    from bench.scale_small_steps import STEPS

    n_max = a.n_max or (40_000 if a.smoke else 12_800_000)
    per_shard = a.per_shard or (2_000 if a.smoke else 10_000)
    sizes = [int(x) for x in a.sizes.split(",")] if a.sizes else (
        [20_000, 40_000] if a.smoke else [1_000_000, 4_000_000, n_max])
    dask = [int(x) for x in a.dask_sizes.split(",") if x] if a.dask_sizes is not None else (
        [20_000, 40_000] if a.smoke else [1_000_000, 4_000_000])
    steps = a.steps.split(",") if a.steps else list(STEPS)
    if a.parquet_only:
        steps = [s for s in steps if s in PARQUET_STEPS] if not a.steps else steps
    bad = [s for s in steps if s not in STEPS or (a.parquet_only and s not in PARQUET_STEPS)]
    if bad or any(n % per_shard or n > n_max for n in sizes + dask):
        sys.exit(f"unknown steps {bad} (with --parquet-only: {', '.join(PARQUET_STEPS)}), or sizes not whole "
                 f"shards of {per_shard:,} up to {n_max:,}")
    work = Path(a.work) if a.work else ROOT / "runs" / ("scale-small-smoke" if a.smoke else "scale-small")
    peer = not a.no_peer and PEER_PY.exists() and (datacomp_dir() / "baselines.py").is_file()
    if not a.no_peer and not peer:
        print(peer_help() + "\n(going on without DataComp)", file=sys.stderr)
    return {"n_max": n_max, "per_shard": per_shard, "sizes": sorted(sizes), "dask_sizes": sorted(dask),
            "steps": steps, "work": work.resolve(), "peer": peer,
            "out": Path(a.out) if a.out else (work / "scale_small.json" if a.smoke else OUT)}


def prepare(res: dict, st: dict, a) -> dict:
    """The pool and the image inputs; returns the pool's info."""
    from bench.scale_small_pool import make_small_pool
    from bench.scale_small_steps import IMAGE_CLUSTERS

    work = st["work"]
    print(f"pool: {st['n_max']:,} rows -> {work / 'metadata'}", flush=True)
    info = make_small_pool(work / "metadata", st["n_max"], st["per_shard"], a.seed, procs=a.workers,
                           log=lambda m: print("  " + m, flush=True), npz=not a.parquet_only)
    res["pool"] = {"path": str(work / "metadata"), "reused": info["reused"], "write_seconds": info["write_seconds"],
                   "write_procs": info.get("procs"), "shards": len(info["shards"]), "gb": round(info["bytes"] / 1e9, 2),
                   "bytes_per_row": round(info["bytes"] / st["n_max"], 1), "settings": info["settings"]}
    print(f"  {len(info['shards'])} shards, {info['bytes'] / 1e9:.1f} GB, written in {info['write_seconds']} s"
          f"{' (reused)' if info['reused'] else ''}", flush=True)
    res["pool"]["parquet_bytes_per_row_by_column"] = column_bytes(work / "metadata" / f"{info['shards'][0]}.parquet")
    if a.parquet_only:  # no embeddings: no image-based inputs either
        res["image_inputs"] = {"clusters": IMAGE_CLUSTERS, "skipped": "parquet-only pool"}
        return info
    t0 = time.time()
    # in a subprocess: a child inherits this process's peak RSS (ru_maxrss survives fork and exec), so this
    # process stays small
    args = [str(work / "metadata"), info["shards"], str(work / "image_inputs"), 20 if a.smoke else IMAGE_CLUSTERS]
    code = ("import json, sys; from pathlib import Path; from bench.scale_small_steps import image_inputs; "
            "a = json.loads(sys.argv[1]); print(json.dumps(image_inputs(Path(a[0]), a[1], Path(a[2]), a[3])))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], cwd=ROOT, check=True, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    res["image_inputs"] = json.loads(done.stdout.strip().splitlines()[-1])
    res["image_inputs"]["seconds"] = round(time.time() - t0, 1)
    return info


def warm(pool: Path) -> None:
    """Read the pool's parquet files once, so that ours and DataComp's (run next) both find them in the page
    cache: otherwise the first of the two pays for reading them from disk."""
    for f in sorted(pool.glob("*.parquet")):
        with open(f, "rb") as fh:
            while fh.read(16 << 20):
                pass


def one_step(step: str, n: int, pool: Path, row: dict, st: dict, a, cfgs: dict, env: dict | None) -> None:
    """Ours, then DataComp's where it has the step, at size ``n``; results into ``row``. A cheap step runs
    ``--repeats`` times, ours and DataComp's in turn: each side's run of median seconds is kept, all its
    seconds listed in ``seconds_runs``."""
    import types

    from bench.scale_small_steps import STEPS

    kind = STEPS[step][2]
    timeout = a.step_timeout if kind == "cheap" else a.global_timeout
    opts = types.SimpleNamespace(workers=a.workers, step_timeout=timeout, mem_cap_gb=a.mem_cap_gb,
                                 in_process=a.in_process)
    peer = env is not None and STEPS[step][1] is not None
    ours, theirs = [], []
    for _ in range(a.repeats if kind == "cheap" else 1):
        r, p = _once(step, n, pool, st, a, cfgs, env if peer else None, opts, kind, timeout)
        ours.append(r)
        if p is not None:
            theirs.append(p)
    row[step] = _median(ours)
    if theirs:
        row[f"datacomp:{step}"] = _median(theirs)


def _once(step, n, pool, st, a, cfgs, env, opts, kind, timeout) -> tuple[dict, dict | None]:
    from bench.scale import run_ours
    from bench.scale_small_steps import run_peer, sized_config

    if kind == "cheap":
        warm(pool)
    load = round(os.getloadavg()[0], 2)
    r = run_ours(step, sized_config(step, cfgs[step], n), pool, n, st["work"], opts)
    r.update(loadavg_1m_before=load, kind=kind, timeout_s=timeout)
    print(f"n={n:>10,} {step:<17} {r['status']:<8} {r['seconds']:8.1f} s cpu {r['cpu_seconds']:8.1f} s "
          f"peak {r['peak_rss_mb']:7.0f} MB tree {r.get('peak_tree_rss_mb') or 0:7.0f} MB", flush=True)
    if env is None:
        return r, None
    if kind == "cheap":
        warm(pool)
    load = round(os.getloadavg()[0], 2)
    p = run_peer(step, pool, n, st["work"], env, a.workers, timeout, a.mem_cap_gb * 1024)
    p.update(loadavg_1m_before=load, timeout_s=timeout)
    if p["status"] == "ok" and r["status"] == "ok":
        p["identical_to_ours"] = _read(p["uids_file"]) == _read(r["uids_file"])
    print(f"n={n:>10,}   DataComp {step:<17} {p['status']:<8} {p['seconds']:8.1f} s cpu {p['cpu_seconds']:8.1f} s "
          f"tree {p['peak_tree_rss_mb']:7.0f} MB identical={p.get('identical_to_ours')}", flush=True)
    return r, p


def _median(runs: list[dict]) -> dict:
    """The run of median seconds (the lower middle of an even count); a failed run, if any, instead (it
    is what needs looking at); with ``seconds_runs`` and each run's ``identical_to_ours`` where there is one."""
    if len(runs) == 1:
        return runs[0]
    bad = [r for r in runs if r["status"] != "ok"]
    pick = dict(bad[0] if bad else sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2])
    pick["seconds_runs"] = [r["seconds"] for r in runs]
    if any("identical_to_ours" in r for r in runs):
        pick["identical_to_ours"] = all(r.get("identical_to_ours") for r in runs)
    return pick


def run_dask(res: dict, st: dict, a, cfgs: dict) -> None:
    """The Dask sizes' steps again on a local cluster of 2 worker processes."""
    import types

    from bench.scale import run_ours

    opts = types.SimpleNamespace(workers=a.workers, step_timeout=a.step_timeout, mem_cap_gb=a.mem_cap_gb,
                                 in_process=False)
    out = res.setdefault("dask", {"workers": "2 dask worker processes, --nthreads 1, TCP on 127.0.0.1"})
    for n in st["dask_sizes"]:
        for step in a.dask_steps.split(","):
            if out.get(str(n), {}).get(step, {}).get("status") == "ok":
                continue
            try:
                with DaskCluster(st["work"] / "dask", workers=2) as cluster:
                    r = run_ours(step, cfgs[step], st["work"] / "pools" / str(n), n, st["work"], opts,
                                 dask_address=cluster.address, watch=cluster.pids, tag="@dask")
            except Exception as e:  # noqa: BLE001 - recorded, the benchmark goes on
                r = {"status": "error", "seconds": 0.0, "cpu_seconds": 0.0, "note": f"{type(e).__name__}: {e}"}
            local = res["by_size"].get(str(n), {}).get(step, {})
            r["identical_to_local"] = (r["status"] == "ok" and local.get("status") == "ok" and
                                       _read(r["uids_file"]) == _read(local["uids_file"]))
            out.setdefault(str(n), {})[step] = r
            print(f"dask n={n:,} {step} {r['status']} {r['seconds']:.1f} s identical={r['identical_to_local']}",
                  flush=True)


def column_bytes(parquet: Path) -> dict:
    """Compressed bytes a row of each column of one shard's parquet."""
    import pyarrow.parquet as pq

    md = pq.ParquetFile(parquet).metadata
    out: dict = {}
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for c in range(rg.num_columns):
            col = rg.column(c)
            out[col.path_in_schema] = out.get(col.path_in_schema, 0) + col.total_compressed_size
    return {k: round(v / md.num_rows, 2) for k, v in out.items()}


def _read(p: str) -> bytes:
    return (Path(p) if Path(p).is_absolute() else ROOT / p).read_bytes()


def main(argv: list[str] | None = None) -> dict:
    from bench.cost_model import model
    from bench.scale_pool import subset_pool
    from bench.scale_small_steps import configs, peer_env

    a = parser().parse_args(argv)
    if a.rerun and not a.resume:
        sys.exit("--rerun goes with --resume")
    st = settings(a)
    desc, load = machine_facts()
    res: dict = {"n_max": st["n_max"], "sizes": st["sizes"], "per_shard": st["per_shard"], "workers": a.workers,
                 "machine": desc, "machine_load": load, "step_timeout_s": a.step_timeout,
                 "global_timeout_s": a.global_timeout, "mem_cap_gb": a.mem_cap_gb, "notes": NOTES,
                 "datacomp": bool(st["peer"]), "complete": False, "missing": [], "by_size": {}}
    out = st["out"]

    def save():
        res["missing"] = [f"{n}:{s}" for n in res["sizes"] for s in res.get("steps", {})
                          if s not in res["by_size"].get(str(n), {})]
        res.update(model(res))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + "\n")

    t0 = time.time()
    info = prepare(res, st, a)
    inputs = st["work"] / "image_inputs"
    cfgs = configs(str(inputs / "targets_l14.npy"), str(inputs / "centroids_l14.npy"), a.smoke,
                   res["image_inputs"]["clusters"])
    res["steps"] = cfgs if a.resume else {s: cfgs[s] for s in st["steps"]}
    env = peer_env(st["work"], inputs) if st["peer"] else None
    if a.resume and out.is_file():  # earlier invocations' steps and sizes are kept
        old = json.loads(out.read_text())
        res["by_size"], res["dask"] = old.get("by_size", {}), old.get("dask", {})
        if a.rerun:
            for n in st["sizes"]:
                for step in st["steps"]:
                    res["by_size"].get(str(n), {}).pop(step, None)
                    res["by_size"].get(str(n), {}).pop(f"datacomp:{step}", None)
            for n in st["dask_sizes"]:
                for step in a.dask_steps.split(","):
                    res["dask"].get(str(n), {}).pop(step, None)
        earlier = old.get("earlier_pools", [])
        if old.get("pool") and old["pool"].get("settings") != res["pool"]["settings"]:  # rows measured on it stay
            earlier = earlier + [old["pool"]]
        if earlier:
            res["earlier_pools"] = earlier
        res["datacomp"] = res["datacomp"] or old.get("datacomp", False)
        res["sizes"] = sorted(set(res["sizes"]) | set(old.get("sizes", [])))
    for n in st["sizes"]:
        pool = subset_pool(st["work"] / "metadata", info, n, st["work"] / "pools" / str(n))
        row = res["by_size"].setdefault(str(n), {})
        for step in st["steps"]:
            if step not in row:
                one_step(step, n, pool, row, st, a, cfgs, env)
            save()
    if st["dask_sizes"]:
        for n in st["dask_sizes"]:
            subset_pool(st["work"] / "metadata", info, n, st["work"] / "pools" / str(n))
        run_dask(res, st, a, cfgs)
    res["machine_load"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    res["total_seconds"] = round(time.time() - t0, 1)
    res["complete"] = not res["missing"]
    save()
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
