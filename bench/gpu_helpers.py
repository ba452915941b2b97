"""Helpers of bench/gpu.py: a synthetic 256 px pool, clustered vectors and agreement measures, the
k-means backend chain on a GPU (faiss-gpu, else faiss-cpu, else torch), the optional GPU extra and
open_clip_train's run with its peak GPU memory. Nothing here downloads anything (the GPU machine is
offline), except the peer's webdataset pin, which is looked for, tried once and otherwise recorded.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEER_PATH = ROOT / "bench" / ".peer" / "wds"  # where bench/trainer.py puts open_clip_train's webdataset
WORDS = ("red blue green small large photo drawing of a the cat dog house tree car street sky "
         "flower bird boat shirt shoe cup table chair mountain river city night day old new").split()


# --- the pool: synthetic 256 px JPEGs (the GPU machine has no openclipart) --------------------------

def _shard(args: tuple[str, int, int, int]) -> str:
    """One shard of ``per`` samples: shapes on a gradient with mild noise, drawn at a random size,
    then img2dataset's border resize to 256 px (bench/annotate.py) and JPEG q95."""
    from PIL import Image, ImageDraw

    from bench.annotate_pool import QUALITY, SIZE, img2dataset_resize
    from shardio.shards import ShardWriter, sha256

    folder, index, per, seed = args
    rng = np.random.default_rng([seed, index])
    with ShardWriter(folder, per, start=index) as w:
        for i in range(per):
            wd, ht = (int(v) for v in rng.integers(160, 400, 2))
            gx, gy = rng.uniform(-1, 1, 2).astype(np.float32)
            t = np.linspace(0, gx, wd, dtype=np.float32)[None, :] + np.linspace(0, gy, ht, dtype=np.float32)[:, None]
            t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
            c0, c1 = rng.uniform(8, 247, (2, 3)).astype(np.float32)
            px = c0 + (c1 - c0) * t[..., None] + rng.standard_normal((ht, wd, 3), dtype=np.float32) * 4
            im = Image.fromarray(np.clip(px, 0, 255).astype(np.uint8))
            draw = ImageDraw.Draw(im)
            for _ in range(int(rng.integers(2, 7))):
                x0, y0 = int(rng.integers(0, wd - 20)), int(rng.integers(0, ht - 20))
                box = (x0, y0, x0 + int(rng.integers(10, wd // 2)), y0 + int(rng.integers(10, ht // 2)))
                fill = tuple(int(v) for v in rng.integers(0, 256, 3))
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
            buf = io.BytesIO()
            img2dataset_resize(im).save(buf, "JPEG", quality=QUALITY)
            data = buf.getvalue()
            caption = " ".join(rng.choice(WORDS, int(rng.integers(3, 12))))
            w.write(f"{index:05d}{i:04d}", data, "jpg", caption,
                    {"url": f"http://127.0.0.1/{index}/{i}.jpg", "width": SIZE, "height": SIZE,
                     "original_width": wd, "original_height": ht, "sha256": sha256(data)})
    return str(Path(folder) / f"{index:05d}.tar")


def make_pool(folder: Path, samples: int, per_shard: int, seed: int = 0) -> list[str]:
    """``samples`` synthetic 256 px JPEG samples in img2dataset's layout, shards written in parallel."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder), i, min(per_shard, samples - i * per_shard), seed) for i in range(-(-samples // per_shard))]
    with ProcessPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as ex:
        return list(ex.map(_shard, jobs))


# --- vectors -----------------------------------------------------------------------------------------

def clustered(n: int, d: int, clusters: int, dup_share: float = 0.1, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (within-cluster cosine ~0.8), the last
    ``dup_share`` of rows near-copies of earlier rows (cosine ~0.999): something for dedup to find."""
    rng = np.random.default_rng(seed)
    cent = rng.standard_normal((clusters, d), dtype=np.float32)
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    x = cent[rng.integers(0, clusters, n)]
    x += rng.standard_normal((n, d), dtype=np.float32) * np.float32(0.5 / np.sqrt(d))
    dups = int(n * dup_share)
    if dups:
        src = rng.integers(0, n - dups, dups)
        x[n - dups:] = x[src] + rng.standard_normal((dups, d), dtype=np.float32) * np.float32(0.05 / np.sqrt(d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@contextlib.contextmanager
def cpu_only():
    """The project's code sees no GPU inside (its device pickers ask ``torch.cuda.is_available``)."""
    import torch

    real = torch.cuda.is_available
    torch.cuda.is_available = lambda: False
    try:
        yield
    finally:
        torch.cuda.is_available = real


def faiss_kind() -> str | None:
    """'faiss-gpu' (a faiss that sees a GPU), 'faiss-cpu', or None when faiss does not import."""
    try:
        import faiss
    except Exception:  # noqa: BLE001 - e.g. faiss-gpu-cu12 without CUDA 12 runtime libraries
        return None
    return "faiss-gpu" if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0 else "faiss-cpu"


def torch_kmeans(x: np.ndarray, k: int, niter: int, seed: int, device: str) -> np.ndarray:
    """Spherical Lloyd iterations in torch (last resort when faiss does not import): centroids (k, d)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sample = torch.from_numpy(x[torch.randperm(len(x), generator=g)[:256 * k].numpy()]).to(device)
    picked = [int(torch.randint(len(sample), (1,), generator=g))]
    best = sample @ sample[picked[0]]  # farthest-point init: each next centre least like those chosen
    for _ in range(k - 1):
        picked.append(int(best.argmin()))
        best = torch.maximum(best, sample @ sample[picked[-1]])
    cent = sample[picked].clone()
    for _ in range(niter):
        a = (sample @ cent.T).argmax(1)
        new = torch.zeros_like(cent).index_add_(0, a, sample)
        empty = new.norm(dim=1) == 0
        new[empty] = cent[empty]
        cent = torch.nn.functional.normalize(new, dim=1)
    return cent.cpu().numpy()


def kmeans_gpu(x: np.ndarray, k: int, niter: int, seed: int, device: str) -> tuple[np.ndarray, np.ndarray, str]:
    """k-means + assignment the GPU way: centroids from faiss-gpu, else faiss-cpu (the project's
    ``vectors.kmeans``), else torch; every row assigned by the project's torch search (matmul + top-k
    on ``device``). Returns (centroids, assignment, which backend ran)."""
    from pipeline.vectors import kmeans, normalize, search

    kind = faiss_kind()
    if kind == "faiss-gpu" and device != "cuda":
        kind = "faiss-cpu"
    if kind == "faiss-cpu":
        cent, assign = kmeans(x, k, niter, seed, backend="torch")
        return cent, assign, f"torch k-means (Lloyd) and torch assignment on {device}; faiss-gpu absent"
    if kind == "faiss-gpu":
        import faiss

        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, gpu=True,
                          init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS)
        km.train(normalize(x))
        cent = np.ascontiguousarray(km.centroids, np.float32)
    else:
        cent = torch_kmeans(normalize(x), k, niter, seed, device)
    return cent, search(cent, normalize(x), 1, "torch")[1][:, 0], f"{kind or 'torch'} k-means, torch assignment"


def d2_knn(x: np.ndarray, assign: np.ndarray, k: int, backend: str) -> tuple[np.ndarray, str]:
    """D²'s neighbour graph given a clustering, as pipeline/d2.py builds it: the exact ``knn`` inside
    each cluster. Returns (neighbour indices (n, k), -1 where fewer; which ran)."""
    import pipeline.vectors as v

    idx = np.full((len(x), k), -1, np.int64)
    for g, xs in v.by_cluster(x, assign):
        j = v.knn(xs, k, backend)[1]
        idx[g] = np.where(j >= 0, g[np.maximum(j, 0)], -1)
    return idx, "vectors.knn inside each cluster"


def assignment_agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Same cluster id share, and the share after matching each of b's clusters to a's majority one
    (label-free: two clusterings from different initial centroids)."""
    pairs = np.unique(np.stack([b, a]), axis=1, return_counts=True)
    (bb, _), counts = pairs
    best = {}
    for c, n in zip(bb, counts):
        best[c] = max(best.get(c, 0), n)
    return {"same_assignment_share": round(float((a == b).mean()), 5),
            "matched_assignment_share": round(float(sum(best.values()) / len(a)), 5)}


def knn_agreement(ref: np.ndarray, got: np.ndarray) -> dict:
    """Recall of ``got``'s neighbour lists against ``ref``'s, and the share of identical lists (as sets)."""
    valid = ref >= 0
    hits = ((ref[:, :, None] == got[:, None, :]) & valid[:, :, None]).any(2).sum(1)
    same = (hits == valid.sum(1)) & ((got >= 0).sum(1) == valid.sum(1))
    return {"neighbour_recall": round(float(hits.sum() / max(valid.sum(), 1)), 5),
            "same_neighbours_share": round(float(same.mean()), 5)}


def steady_rate(run_dir: Path) -> float | None:
    """Our trainer's samples/s after its first logged interval (bench/trainer.py's reading)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    return round((last["samples_seen"] - first["samples_seen"]) / (last["elapsed_s"] - first["elapsed_s"]), 1)


def timed(fn, sync: bool = False):
    """(result, seconds); ``sync`` waits for the GPU before stopping the clock."""
    import torch

    t0 = time.perf_counter()
    out = fn()
    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, round(time.perf_counter() - t0, 3)


# --- the GPU extra -----------------------------------------------------------------------------------

def try_gpu_extra(timeout: int = 180) -> dict:
    """Install pyproject's ``gpu`` extra offline (``--no-index``, wheels from ``.whl/`` if present)
    unless faiss-gpu is there already; never reaches the network. Call before faiss is imported."""
    import importlib.metadata as md
    import tomllib

    reqs = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    names = [r.split("=")[0].split(">")[0].split("<")[0].strip() for r in reqs]
    have = {}
    for n in names:
        with contextlib.suppress(md.PackageNotFoundError):
            have[n] = md.version(n)
    if len(have) == len(names):
        return {"requirements": reqs, "installed": have, "attempted": False}
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--disable-pip-version-check", *reqs]
    if (ROOT / ".whl").is_dir():
        cmd[5:5] = ["--find-links", str(ROOT / ".whl")]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        ok, msg = p.returncode == 0, (p.stderr or p.stdout).strip()[-400:]
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, msg = False, repr(e)
    return {"requirements": reqs, "installed": have, "attempted": True, "ok": ok, "message": msg}


# --- open_clip_train, the peer -------------------------------------------------------------------

def peer_env() -> dict:
    """open_clip_train's webdataset pin (0.2.86; with the project's 1.0.2 its reader yields no batch)
    from bench/.peer/wds, installed there once if pip can (as bench/trainer.py does)."""
    if not (PEER_PATH / "webdataset").is_dir():
        p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--retries", "0", "--timeout",
                            "15", "--target", str(PEER_PATH), "webdataset==0.2.86"], capture_output=True, text=True)
        if p.returncode:
            raise RuntimeError(f"open_clip_train needs webdataset 0.2.86 in {PEER_PATH.relative_to(ROOT)} and pip "
                               f"could not install it (offline?): {p.stderr.strip()[-300:]}")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PEER_PATH), os.environ.get("PYTHONPATH")]))}


def run_peer(shards: list[str], out: Path, model: str, batch: int, samples: int, lr: float, warmup: int,
             workers: int, precision: str, log_every: int, timeout: int) -> dict:
    """open_clip_train on the shards (bench/peers/open_clip_train_run.py): steady samples/s (logged
    batch times after the first interval, as bench/trainer.py reads them) and its peak GPU memory."""
    import re

    env = peer_env()
    mem = out / "peak_memory.json"
    env["CURATE_PEAK_MEMORY_FILE"] = str(mem)
    first, last = Path(shards[0]), Path(shards[-1])
    args = [sys.executable, str(ROOT / "bench" / "peers" / "open_clip_train_run.py"),
            "--train-data", f"{first.parent}/{{{first.stem}..{last.stem}}}.tar", "--dataset-type", "webdataset",
            "--dataset-resampled", "--train-num-samples", str(samples), "--epochs", "1", "--batch-size", str(batch),
            "--lr", str(lr), "--wd", "0.2", "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6",  # TrainConfig's
            "--warmup", str(warmup), "--model", model, "--precision", precision,
            "--workers", str(workers), "--logs", str(out), "--name", "run", "--seed", "0",
            "--log-every-n-steps", str(log_every), "--save-frequency", "0", "--report-to", ""]
    t0 = time.time()
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"open_clip_train failed: {p.stderr[-1500:]}")
    log = (out / "run" / "out.log").read_text()
    batch_t = [float(x) for x in re.findall(r"Batch \(t\): ([0-9.]+)", log)][1:]  # first interval warms up
    if not batch_t:
        raise RuntimeError(f"open_clip_train logged fewer than two intervals; its log ends: {log[-600:]}")
    peak = json.loads(mem.read_text()) if mem.is_file() else {}
    return {"samples_per_s": round(batch / (sum(batch_t) / len(batch_t)), 1),
            "peak_gpu_memory_gb": peak.get("max_memory_allocated_gb"), "wall_seconds": round(time.time() - t0, 1),
            "webdataset": "0.2.86 (open_clip_train's pin)"}
