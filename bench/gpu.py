"""GPU figures in one prepared command -> bench/results/gpu.json (sized to fit 8 min on one H100/H200,
the install from carried wheels included).

    bash bench/gpu_wheels.sh                     # here, online: .whl/ and bench/.peer/wds to carry
    python3 -m bench.gpu                         # on the GPU machine: writes bench/results/gpu.json
    python -m bench.gpu --smoke [--out F.json]   # tiny, on the CPU, ~1 min: writes to a temp folder

0. install: the wheels in ``.whl/`` (the project's own and the dependencies the GPU machine lacks)
   into /tmp/curate-site with ``pip --no-index --no-deps --target``; the installed project must import
   and answer ``curate --help``, and pip's dry-run resolve of the project wheel is recorded. The script
   then re-runs itself with that folder on PYTHONPATH. Without ``.whl/`` it goes on as it is.
a. scoring: ``run_curation`` (what ``curate run`` calls; CLIP score 50%) with ViT-B-32 given as an
   open_clip name, random init (nothing downloaded), on webdataset shards of synthetic 256 px JPEGs
   the benchmark writes itself: CPU workers read tar members and JPEG headers, JPEGs are decoded on
   the GPU (nvJPEG, ``decode: auto``) and resized there, towers in bf16 at batch 1,024. Annotate rate
   once workers are up and with their start, end to end, worker start, the towers alone, CPU ms per
   sample besides the towers (the whole pass with the towers replaced by zeros), and the same shards'
   scores with ``decode: cpu`` (Pillow/simplejpeg on the workers): largest difference, keep decisions.
b. scoring_l14: the annotate rate of ViT-L-14 the same way, on fewer shards.
c. global steps on the same clustered 512-d vectors, CPU (faiss-cpu, no GPU visible) vs GPU: k-means
   + assignment (faiss-gpu, else faiss-cpu, else torch k-means; torch assignment), semantic dedup
   and the D² k-NN graph (torch), seconds each and whether the outputs agree; which backend
   ``vectors.backend: auto`` takes here and why (pipeline/vectors.py ``report``).
d. training ViT-B-32 with training/train.py vs open_clip_train on the same shards, batch, steps, bf16
   and loader workers: steady samples/s and peak GPU memory; and against the compute limit, our own
   step on an in-memory batch (``trainer_vs_compute_limit``).
``figures`` gathers the headline numbers with torch, CUDA and Python versions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import gpu_helpers as h  # noqa: E402

OUT = ROOT / "bench" / "results" / "gpu.json"
FULL = dict(device="cuda", model="ViT-B-32", samples=64_000, per_shard=1000, batch=1024, vectors=500_000,
            train_steps=60, train_batch=256, log_every=10, train_workers=8, repeats=3, peer_timeout=240, workers=8,
            l14_model="ViT-L-14", l14_samples=24_000, cpu_compare_shards=4, limit_steps=20, decode="auto")
SMOKE = dict(device="cpu", model="curate-tiny", samples=384, per_shard=128, batch=64, vectors=4000, train_steps=6,
             train_batch=64, log_every=2, train_workers=1, repeats=1, peer_timeout=120, workers=2,
             l14_model="curate-tiny", l14_samples=256, cpu_compare_shards=1, limit_steps=3, decode="auto")
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

    import torchvision

    from shardio.gpu_decode import decode_jpeg_works

    cuda = torch.cuda.is_available()
    return {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(), "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if cuda else None, "gpus": torch.cuda.device_count(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "torchvision": torchvision.__version__,
            "decode_jpeg_on_device": decode_jpeg_works("cuda" if cuda else "cpu") or "works",
            "faiss": faiss_v, "faiss_kind": h.faiss_kind(), "open_clip": open_clip.__version__}


def part_scoring(s: dict, shards: list[str], work: Path, workers: int) -> dict:
    import torch
    from PIL import Image

    from bench.annotate_parts import breakdown, children_cpu, worker_start
    from pipeline.clip_stage import get_scorer
    from pipeline.run import run_curation
    from schemas.config import ClipModel

    # precision auto: bf16 on a GPU; decode auto: JPEGs decoded on the GPU when torchvision's nvJPEG works
    scorer = {"model": s["model"], "batch_size": s["batch"], "device": s["device"], "decode": s["decode"]}
    spec_json = ClipModel(**scorer).model_dump_json()
    config = {"clip": [scorer], "filters": [{"type": "clip_score", "fraction": 0.5}]}
    c0, t0 = children_cpu(), time.perf_counter()
    m = run_curation(shards, work / "curate", config, progress=False, workers=workers)
    seconds = time.perf_counter() - t0
    n = m["samples_in"]
    steady = steady_rate(work / "curate", s["per_shard"])
    workers_cpu = round((children_cpu() - c0) / n * 1e3, 4)
    # the same shards' scores with the CPU decode (Pillow / simplejpeg on the workers), same towers
    some = shards[:s["cpu_compare_shards"]]
    cpu_cfg = {**config, "clip": [{**scorer, "decode": "cpu"}]}
    run_curation(some, work / "curate-cpu-decode", cpu_cfg, progress=False, workers=min(workers, len(some)))
    agree = h.score_agreement(work / "curate-cpu-decode", work / "curate")
    start = worker_start(spec_json, workers, spawned=False) if workers > 1 else None
    sc = get_scorer(spec_json)  # the towers alone: prepared uint8 batches, pinned, bf16 on a GPU
    px = [sc.prepare(Image.new("RGB", (256, 256), (i, 90, 200))) for i in range(s["batch"])]
    caps = ["a photo of a red car on the street"] * s["batch"]
    for _ in range(2):
        sc.embed_prepared(px, caps)
    _, t = h.timed(lambda: [sc.embed_prepared(px, caps) for _ in range(10)], sync=True)
    besides = h.cpu_besides_towers(shards[0], spec_json, s["repeats"])
    threads = torch.get_num_threads()
    try:
        parts = breakdown(shards[0], ClipModel(**{**scorer, "decode": "cpu"}).model_dump_json(), 1)  # CPU path by part
    finally:
        torch.set_num_threads(threads)
    return {"model": s["model"], "weights": "random init (pretrained=None)", "device": sc.device,
            "precision": "bf16" if sc.device == "cuda" else "fp32", "decode_on_device": sc.device_decode,
            "samples": n, "shards": len(shards), "workers": workers, "batch_size": sc.batch_size,
            "annotate_per_s": round(n / m["run"]["annotate_seconds"], 1), "end_to_end_per_s": round(n / seconds, 1),
            "annotate_seconds": m["run"]["annotate_seconds"], "annotate_per_s_workers_up": steady,
            "end_to_end_seconds": round(seconds, 2), "worker_start": start,
            "towers_only_per_s": round(10 * s["batch"] / t, 1),
            "cpu_ms_per_sample_besides_towers": besides["ms_per_sample"], "besides_towers_method": besides["method"],
            "cores_to_feed_10k_per_s": round(10_000 * besides["ms_per_sample"] / 1e3, 2),
            "vs_cpu_decode": agree, "cpu_decode_path_ms_by_part": parts["ms_per_sample"],
            "cpu_ms_per_sample_by_part": parts["ms_per_sample"], "whole_pass_cpu_ms_per_sample": parts["whole_pass_ms"],
            "workers_cpu_ms_per_sample": workers_cpu, "kept": m["kept"], "decode_side": parts["decode_side"],
            "pool": "synthetic shapes on gradients, border-resized to 256 px, JPEG q95"}


def part_scoring_l14(s: dict, shards: list[str], work: Path, workers: int) -> dict:
    """The annotate rate of a second, larger scorer on the first shards (same settings otherwise)."""
    from pipeline.run import run_curation

    some = shards[:max(1, s["l14_samples"] // s["per_shard"])]
    scorer = {"model": s["l14_model"], "batch_size": s["batch"], "device": s["device"], "decode": s["decode"]}
    config = {"clip": [scorer], "filters": [{"type": "clip_score", "fraction": 0.5}]}
    m = run_curation(some, work / "curate-l14", config, progress=False, workers=workers)
    n = m["samples_in"]
    return {"model": s["l14_model"], "samples": n, "shards": len(some), "workers": workers,
            "annotate_per_s": round(n / m["run"]["annotate_seconds"], 1),
            "annotate_seconds": m["run"]["annotate_seconds"],
            "annotate_per_s_workers_up": steady_rate(work / "curate-l14", s["per_shard"])}


def steady_rate(run: Path, per_shard: int) -> float | None:
    """Samples/s once the workers are up: shards whose scores were written after the first one's, over
    the time from that first write to the last (worker start-up, a model load each, left out)."""
    done = sorted(p.stat().st_mtime for p in run.glob("columns/clip_score/*.parquet"))  # one file a shard
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

    from pipeline.vectors import report

    return {"n": n, "dim": DIM, "clusters": k, "knn_k": KNN_K, "eps": EPS, "device": device, "auto_backend": report(),
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

    batch = s["train_batch"]
    cfg = TrainConfig(train_data=str(Path(shards[0]).parent), out_dir=str(work / "ours"), model=s["model"],
                      samples_seen=batch * s["train_steps"], batch_size=batch, workers=s["train_workers"],
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
    out = {"model": s["model"], "device": device, "batch_size": batch, "samples_seen": cfg.samples_seen,
           "steps": cfg.steps, "precision": "bf16 autocast" if cuda else "fp32", "loader_workers": s["train_workers"],
           "log_every": s["log_every"], "ours": ours}
    try:
        out["open_clip_train"] = h.run_peer(shards, work / "peer", s["model"], batch, cfg.samples_seen,
                                            cfg.peak_lr(), cfg.warmup_steps(), s["train_workers"],
                                            "amp_bf16" if cuda else "fp32", s["log_every"], s["peer_timeout"])
        if ours["samples_per_s"] and out["open_clip_train"]["samples_per_s"]:
            out["throughput_ratio"] = round(ours["samples_per_s"] / out["open_clip_train"]["samples_per_s"], 3)
    except Exception as e:  # noqa: BLE001 - ours still counts without the peer
        out["open_clip_train"] = {"error": f"{type(e).__name__}: {e}"[-2000:]}
    try:
        out["compute_limit"] = h.compute_limit(s["model"], batch, s["limit_steps"], device)
        if ours["samples_per_s"]:
            out["vs_compute_limit"] = round(ours["samples_per_s"] / out["compute_limit"]["samples_per_s"], 3)
    except Exception as e:  # noqa: BLE001
        out["compute_limit"] = {"error": f"{type(e).__name__}: {e}"[-2000:]}
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
    lines.append(f"figures: {json.dumps(res.get('figures'), default=str)}")
    lines += [f"{k}: ERROR {v['error']}" for k, v in res.items() if isinstance(v, dict) and "error" in v]
    return "\n".join(lines)


def figures(res: dict) -> dict:
    """The issue's headline figures in one place (None where a part failed or was not run)."""
    m, sc, l14, tr = (res.get(k) or {} for k in ("machine", "scoring", "scoring_l14", "training"))
    vs = sc.get("vs_cpu_decode") or {}
    return {"python": m.get("python"), "torch": m.get("torch"), "cuda": m.get("cuda"),
            "torchvision": m.get("torchvision"), "gpu": m.get("gpu"),
            "installed_from_wheels": (res.get("install") or {}).get("project_imports_and_cli"),
            "decode_on_device": sc.get("decode_on_device"),
            "annotate_b32_samples_per_s": sc.get("annotate_per_s_workers_up"),
            "annotate_b32_samples_per_s_with_worker_start": sc.get("annotate_per_s"),
            "end_to_end_b32_samples_per_s": sc.get("end_to_end_per_s"),
            "annotate_l14_samples_per_s": l14.get("annotate_per_s_workers_up"),
            "annotate_l14_samples_per_s_with_worker_start": l14.get("annotate_per_s"),
            "cpu_ms_per_sample_besides_towers": sc.get("cpu_ms_per_sample_besides_towers"),
            "worker_start_s": (sc.get("worker_start") or {}).get("seconds"),
            "score_max_abs_diff_vs_cpu": vs.get("score_max_abs_diff"),
            "keep_decisions_agree_share": vs.get("keep_decisions_agree_share"),
            "keep_decisions_differ_beyond_0.01_of_cutoff": vs.get("differ_beyond_0.01_of_cutoff"),
            "trainer_vs_open_clip": tr.get("throughput_ratio"), "trainer_vs_compute_limit": tr.get("vs_compute_limit")}


def install_then_rerun(argv: list[str]) -> dict:
    """Install the carried wheels (bench/gpu_wheels.sh) and, when that worked, run this script again
    with them on PYTHONPATH (this process is replaced); returns the install record otherwise."""
    rec = h.install_from_wheels()
    if not rec.get("ok"):
        return rec
    path = Path(tempfile.mkdtemp(prefix="bench-gpu-install-")) / "install.json"
    path.write_text(json.dumps(rec))
    path_list = [str(ROOT), rec["site"], os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path_list))}
    print(f"installed {len(rec['wheels'])} wheels into {rec['site']} in {rec['seconds']} s; running again with them",
          flush=True)
    os.chdir(ROOT)
    args = [sys.executable, "-m", "bench.gpu", *argv, "--no-install", "--install-record", str(path)]
    os.execve(sys.executable, args, env)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU; never writes bench/results/gpu.json")
    ap.add_argument("--out", help=f"where the JSON goes (default: {OUT.relative_to(ROOT)}; smoke: a temp folder)")
    ap.add_argument("--work", help="folder for the pool and runs (default: a temp folder, removed after)")
    ap.add_argument("--workers", type=int, help="annotate worker processes (default 8; smoke 2)")
    ap.add_argument("--vectors", type=int, help="rows for the global steps (default 500k; smoke 4k)")
    ap.add_argument("--parts", default="scoring,scoring_l14,global_steps,training")
    ap.add_argument("--no-install", action="store_true", help="do not install .whl/ nor try the GPU extra")
    ap.add_argument("--install-record", help=argparse.SUPPRESS)  # the first run's install, when it re-ran itself
    a = ap.parse_args(argv)
    wall0 = float(os.environ.setdefault("CURATE_BENCH_T0", str(time.time())))
    install = json.loads(Path(a.install_record).read_text()) if a.install_record else {"attempted": False}
    if not (a.smoke or a.no_install):
        install = install_then_rerun(list(sys.argv[1:] if argv is None else argv))  # returns only on failure
    s = dict(SMOKE if a.smoke else FULL)
    s["vectors"] = a.vectors or s["vectors"]
    if a.smoke:  # the device-decode code path on the CPU where torchvision's decode_jpeg works there
        from shardio.gpu_decode import decode_jpeg_works

        s["decode"] = "device" if decode_jpeg_works("cpu") is None else "auto"
    a.workers = a.workers or min(s["workers"], os.cpu_count() or 1)
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
    res: dict = {"smoke": a.smoke, "settings": {**s, "annotate_workers": a.workers}, "install": install}
    extra = not a.smoke and (not a.no_install or a.install_record)  # in the run after the install too
    res["gpu_extra"] = h.try_gpu_extra() if extra else {"attempted": False}
    res["machine"] = machine()
    parts = a.parts.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(a.work or tmp)
        shards: list[str] = []
        if {"scoring", "scoring_l14", "training"} & set(parts):
            try:
                shards, res["pool_seconds"] = h.timed(lambda: h.make_pool(work / "pool", s["samples"], s["per_shard"]))
            except Exception as e:  # noqa: BLE001 - the global steps need no pool
                res["pool_error"] = f"{type(e).__name__}: {e}"
        jobs = {"scoring": lambda: part_scoring(s, shards, work, a.workers),
                "scoring_l14": lambda: part_scoring_l14(s, shards, work, a.workers),
                "global_steps": lambda: part_global(s["vectors"], device),
                "training": lambda: part_training(s, shards, work, device)}
        for name in (p for p in jobs if p in parts):
            run_part(res, name, jobs[name])
            res["figures"] = figures(res)
            save(res, out, t0)  # after each part: a run stopped at its time limit keeps what it measured
    res["figures"] = figures(res)
    res["wall_seconds_with_install"] = round(time.time() - wall0, 1)
    save(res, out, t0)
    print("\n" + summary(res) + f"\nwrote {out} in {res['seconds']} s", flush=True)
    return res


if __name__ == "__main__":
    main()
