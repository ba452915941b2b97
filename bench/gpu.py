"""GPU figures in one prepared command -> bench/results/gpu.json (sized to fit 8 min on one H100/H200; measured on an H200).

    python -m bench.gpu                          # on a GPU machine: writes bench/results/gpu.json
    python -m bench.gpu --smoke [--out F.json]   # tiny, on the CPU, ~1 min: writes to a temp folder

Each part runs in its own try/except, so one failing leaves the others' figures (and its error):

a. scoring: ``run_curation`` (the project's annotate path, CLIP score 50%) with ViT-B-32 given as an
   open_clip name, random init (nothing downloaded), on webdataset shards of synthetic 256 px JPEGs
   the benchmark writes itself: decode on CPU worker processes, towers on the GPU in bf16 from pinned
   uint8 batches. Annotate and end-to-end samples/s, the towers alone, CPU core-ms per sample besides
   the towers and cores to feed 10k samples/s (bench/annotate.py's one-process breakdown).
b. global steps on the same clustered 512-d vectors, CPU (faiss-cpu, no GPU visible) vs GPU: k-means
   + assignment (faiss-gpu, else faiss-cpu, else torch k-means; torch assignment), semantic dedup
   and the D² k-NN graph (torch), seconds each and whether the outputs agree.
c. training ViT-B-32 with training/train.py vs open_clip_train on the same shards, batch, steps, bf16
   and loader workers: steady samples/s and peak GPU memory.

Without ``--no-install`` a GPU run first tries pyproject's ``gpu`` extra offline (``pip install
--no-index``, wheels from ``.whl/`` if there) and records the outcome; the machine has no internet.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import gpu_helpers as h  # noqa: E402

OUT = ROOT / "bench" / "results" / "gpu.json"
FULL = dict(device="cuda", model="ViT-B-32", samples=64_000, per_shard=1000, batch=256, vectors=500_000, train_steps=60,
            log_every=10, train_workers=8, repeats=3, peer_timeout=240)
SMOKE = dict(device="cpu", model="curate-tiny", samples=384, per_shard=128, batch=64, vectors=4000, train_steps=6,
             log_every=2, train_workers=1, repeats=1, peer_timeout=120)
DIM, KNN_K, EPS = 512, 10, 0.01


def machine() -> dict:
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    try:
        import faiss
        faiss_v = faiss.__version__
    except Exception as e:  # noqa: BLE001
        faiss_v = f"not importable: {type(e).__name__}: {e}"
    from shardio.compat import ensure_torchvision

    ensure_torchvision()
    import open_clip

    return {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(), "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "cuda": torch.version.cuda, "faiss": faiss_v, "faiss_kind": h.faiss_kind(),
            "open_clip": open_clip.__version__}


def part_scoring(s: dict, shards: list[str], work: Path, workers: int) -> dict:
    import torch
    from PIL import Image

    from bench.annotate_parts import breakdown, children_cpu, worker_start
    from pipeline.clip_stage import get_scorer
    from pipeline.run import run_curation
    from schemas.config import ClipModel

    scorer = {"model": s["model"], "batch_size": s["batch"], "device": s["device"]}  # precision auto: bf16 on a GPU
    spec_json = ClipModel(**scorer).model_dump_json()
    config = {"clip": [scorer], "filters": [{"type": "clip_score", "fraction": 0.5}]}
    c0, t0 = children_cpu(), time.perf_counter()
    m = run_curation(shards, work / "curate", config, progress=False, workers=workers)
    seconds = time.perf_counter() - t0
    n = m["samples_in"]
    steady = steady_rate(work / "curate", s["per_shard"])
    start = worker_start(spec_json, workers, spawned=False) if workers > 1 else None
    sc = get_scorer(spec_json)  # the towers alone: prepared uint8 batches, pinned, bf16 on a GPU
    px = [sc.prepare(Image.new("RGB", (256, 256), (i, 90, 200))) for i in range(s["batch"])]
    caps = ["a photo of a red car on the street"] * s["batch"]
    for _ in range(2):
        sc.embed_prepared(px, caps)
    _, t = h.timed(lambda: [sc.embed_prepared(px, caps) for _ in range(20)], sync=True)
    threads = torch.get_num_threads()
    try:
        parts = breakdown(shards[0], spec_json, s["repeats"])  # one thread, thread CPU time
    finally:
        torch.set_num_threads(threads)
    ms = parts["ms_per_sample"]
    if sc.device == "cpu":  # bench/annotate.py's reading: the whole pass less the towers
        besides, how = parts["besides_towers_ms"], "whole one-process pass minus the towers (bench/annotate.py)"
    else:  # the whole pass also spins waiting for the GPU: add up the CPU parts instead
        besides, how = round(parts["sum_of_parts_ms"] - ms["towers"], 4), "sum of the CPU parts besides the towers"
    return {"model": s["model"], "weights": "random init (pretrained=None)", "device": sc.device,
            "precision": "bf16" if sc.device == "cuda" else "fp32", "samples": n, "shards": len(shards),
            "workers": workers, "batch_size": s["batch"],
            "annotate_per_s": round(n / m["run"]["annotate_seconds"], 1), "end_to_end_per_s": round(n / seconds, 1),
            "annotate_seconds": m["run"]["annotate_seconds"], "annotate_per_s_workers_up": steady, "end_to_end_seconds": round(seconds, 2),
            "worker_start": start, "towers_only_per_s": round(20 * s["batch"] / t, 1),
            "cpu_ms_per_sample_besides_towers": besides, "besides_towers_method": how,
            "cpu_ms_per_sample_by_part": ms, "cores_to_feed_10k_per_s": round(10_000 * besides / 1e3, 2),
            "whole_pass_cpu_ms_per_sample": parts["whole_pass_ms"],
            "workers_cpu_ms_per_sample": round((children_cpu() - c0) / n * 1e3, 4), "kept": m["kept"],
            "decode_side": parts["decode_side"], "pool": "synthetic shapes on gradients, border-resized to 256 px, JPEG q95"}


def steady_rate(run: Path, per_shard: int) -> float | None:
    """Samples/s once the workers are up: shards whose scores were written after the first one's, over
    the time from that first write to the last (worker start-up, a model load each, left out)."""
    done = sorted(p.stat().st_mtime for p in run.glob("columns/*/*.parquet") if p.parent.name != "ingest")
    return round((len(done) - 1) * per_shard / (done[-1] - done[0]), 1) if len(done) > 1 and done[-1] > done[0] else None


def part_global(n: int, device: str) -> dict:
    import numpy as np

    from pipeline.semdedup import semdedup
    from pipeline.vectors import kmeans, search

    k = max(2, n // 1000)  # the project's default cluster size (~1,000 rows a cluster)
    x = h.clustered(n, DIM, k, seed=0)
    with h.cpu_only():
        (cent, assign), km_c = h.timed(lambda: kmeans(x, k, 20, 0, backend="faiss"))
        sd_c, sd_c_s = h.timed(lambda: semdedup(x, k, EPS, fit=lambda *_: (cent, assign), backend="faiss"))
        (nb_c, how), nn_c = h.timed(lambda: h.d2_knn(x, assign, KNN_K, "faiss"))
    search(x[:256], x[:256], 1, "torch")  # CUDA context and matmul libraries loaded before the clock starts
    (cent_g, assign_g, which), km_g = h.timed(lambda: h.kmeans_gpu(x, k, 20, 0, device), sync=True)
    # semantic dedup and the k-NN on the CPU's clustering, so their agreement is the backend's alone
    sd_g, sd_g_s = h.timed(lambda: semdedup(x, k, EPS, fit=lambda *_: (cent, assign), backend="torch"), sync=True)
    (nb_g, _), nn_g = h.timed(lambda: h.d2_knn(x, assign, KNN_K, "torch"), sync=True)
    kept_c, kept_g = sd_c["duplicate_of"] < 0, sd_g["duplicate_of"] < 0

    def pair(c, g):
        return {"cpu_s": c, "gpu_s": g, "speedup": round(c / g, 2) if g else None}

    return {"n": n, "dim": DIM, "clusters": k, "knn_k": KNN_K, "eps": EPS, "device": device,
            "data": "unit vectors around n/1000 random centres, last 10% near-copies of earlier rows",
            "backends": {"cpu": "faiss-cpu (no GPU visible)", "gpu": which + f", searches on {device}"},
            "kmeans": {**pair(km_c, km_g), **h.assignment_agreement(assign, assign_g)},
            "semantic_dedup": {**pair(sd_c_s, sd_g_s), "cpu_kept": int(kept_c.sum()), "gpu_kept": int(kept_g.sum()),
                               "same_kept_set": bool((kept_c == kept_g).all()),
                               "kept_decisions_agree_share": round(float((kept_c == kept_g).mean()), 5)},
            "knn_d2": {**pair(nn_c, nn_g), **h.knn_agreement(nb_c, nb_g), "search": how},
            "total": pair(round(km_c + sd_c_s + nn_c, 3), round(km_g + sd_g_s + nn_g, 3)),
            "planted_near_copies": int(n * 0.1), "kept_share_cpu": round(float(kept_c.mean()), 4),
            "assign_sizes_max": int(np.bincount(assign).max())}


def part_training(s: dict, shards: list[str], work: Path, device: str) -> dict:
    import torch

    from training.train import TrainConfig, train

    cfg = TrainConfig(train_data=str(Path(shards[0]).parent), out_dir=str(work / "ours"), model=s["model"],
                      samples_seen=s["batch"] * s["train_steps"], batch_size=s["batch"], workers=s["train_workers"],
                      log_every=s["log_every"], checkpoints=1, device=device)
    cuda = device == "cuda"
    if cuda:
        from pipeline.clip_stage import get_scorer

        get_scorer.cache_clear()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    r, wall = h.timed(lambda: train(cfg))
    ours = {"samples_per_s": h.steady_rate(work / "ours"), "wall_seconds": wall, "steps": r["steps"],
            "peak_gpu_memory_gb": round((torch.cuda.max_memory_allocated() - base) / 2**30, 3) if cuda else None}
    out = {"model": s["model"], "device": device, "batch_size": s["batch"], "samples_seen": cfg.samples_seen,
           "steps": cfg.steps, "precision": "bf16 autocast" if cuda else "fp32", "loader_workers": s["train_workers"],
           "log_every": s["log_every"], "ours": ours}
    try:
        out["open_clip_train"] = h.run_peer(shards, work / "peer", s["model"], s["batch"], cfg.samples_seen,
                                            cfg.peak_lr(), cfg.warmup_steps(), s["train_workers"],
                                            "amp_bf16" if cuda else "fp32", s["log_every"], s["peer_timeout"])
        if ours["samples_per_s"] and out["open_clip_train"]["samples_per_s"]:
            out["throughput_ratio"] = round(ours["samples_per_s"] / out["open_clip_train"]["samples_per_s"], 3)
    except Exception as e:  # noqa: BLE001 - ours still counts without the peer
        out["open_clip_train"] = {"error": f"{type(e).__name__}: {e}"[-2000:]}
    return out


def run_part(res: dict, name: str, fn) -> None:
    t0 = time.perf_counter()
    print(f"\n=== {name} ===", flush=True)
    try:
        res[name] = fn()
    except Exception as e:  # noqa: BLE001 - one failing part leaves the others' figures
        res[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    res[name]["part_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res[name], indent=2, default=str), flush=True)


def save(res: dict, out: Path, t0: float) -> None:
    res["seconds"] = round(time.perf_counter() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")


def summary(res: dict) -> str:
    """The headline figures, one line each (errors named)."""
    lines = [f"machine: {res['machine']}"]
    sc, gs, tr = (res.get(k, {}) for k in ("scoring", "global_steps", "training"))
    if "annotate_per_s" in sc:
        lines.append(f"scoring {sc['model']} on {sc['device']}: annotate {sc['annotate_per_s']}/s, end to end "
                     f"{sc['end_to_end_per_s']}/s, once workers are up {sc['annotate_per_s_workers_up']}/s, towers alone {sc['towers_only_per_s']}/s; CPU ms/sample besides "
                     f"the towers {sc['cpu_ms_per_sample_besides_towers']}, cores to feed 10k/s {sc['cores_to_feed_10k_per_s']}")
    for step in ("kmeans", "semantic_dedup", "knn_d2"):
        if step in gs:
            agree = {k: v for k, v in gs[step].items() if k.endswith(("share", "recall", "set"))}
            lines.append(f"{step} n={gs['n']}: cpu {gs[step]['cpu_s']} s, gpu {gs[step]['gpu_s']} s, agreement {agree}")
    if "ours" in tr:
        peer = tr["open_clip_train"]
        lines.append(f"training {tr['model']} batch {tr['batch_size']}: ours {tr['ours']['samples_per_s']}/s peak "
                     f"{tr['ours']['peak_gpu_memory_gb']} GB; open_clip_train "
                     + (f"{peer['samples_per_s']}/s peak {peer['peak_gpu_memory_gb']} GB" if "error" not in peer
                        else f"failed: {peer['error'][:200]}"))
    lines += [f"{k}: ERROR {v['error']}" for k, v in res.items() if isinstance(v, dict) and "error" in v]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU; never writes bench/results/gpu.json")
    ap.add_argument("--out", help=f"where the JSON goes (default: {OUT.relative_to(ROOT)}; smoke: a temp folder)")
    ap.add_argument("--work", help="folder for the pool and runs (default: a temp folder, removed after)")
    ap.add_argument("--workers", type=int, help="annotate worker processes (default: every core; smoke 2)")
    ap.add_argument("--vectors", type=int, help="rows for the global steps (default 500k; smoke 4k)")
    ap.add_argument("--parts", default="scoring,global_steps,training")
    ap.add_argument("--no-install", action="store_true", help="do not try the gpu extra (pip --no-index)")
    a = ap.parse_args(argv)
    s = dict(SMOKE if a.smoke else FULL)
    s["vectors"] = a.vectors or s["vectors"]
    a.workers = a.workers or (min(2, os.cpu_count() or 1) if a.smoke else os.cpu_count() or 1)
    if a.smoke:  # no GPU, also for the spawned annotate workers
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    out = Path(a.out) if a.out else (Path(tempfile.mkdtemp(prefix="gpu-smoke-")) / "gpu.json" if a.smoke else OUT)
    if a.smoke and out.resolve() == OUT.resolve():
        raise SystemExit(f"--smoke never writes {OUT.relative_to(ROOT)}: its figures are not a GPU's")
    import torch

    if not a.smoke and not torch.cuda.is_available():
        raise SystemExit("no GPU visible to torch: run on a GPU machine, or --smoke for the tiny CPU check")
    device = s["device"]
    t0 = time.perf_counter()
    res: dict = {"smoke": a.smoke, "settings": {**s, "annotate_workers": a.workers}}
    res["gpu_extra"] = h.try_gpu_extra() if not (a.smoke or a.no_install) else {"attempted": False}
    res["machine"] = machine()
    parts = a.parts.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(a.work or tmp)
        shards: list[str] = []
        if {"scoring", "training"} & set(parts):
            try:
                shards, res["pool_seconds"] = h.timed(lambda: h.make_pool(work / "pool", s["samples"], s["per_shard"]))
            except Exception as e:  # noqa: BLE001 - the global steps need no pool
                res["pool_error"] = f"{type(e).__name__}: {e}"
        jobs = {"scoring": lambda: part_scoring(s, shards, work, a.workers),
                "global_steps": lambda: part_global(s["vectors"], device),
                "training": lambda: part_training(s, shards, work, device)}
        for name in (p for p in jobs if p in parts):
            run_part(res, name, jobs[name])
            save(res, out, t0)  # after each part: a run stopped at its time limit keeps what it measured
    save(res, out, t0)
    print("\n" + summary(res) + f"\nwrote {out} in {res['seconds']} s", flush=True)
    return res


if __name__ == "__main__":
    main()
