"""Helpers of bench/gpu.py: a synthetic 256 px pool, clustered vectors and agreement measures, the
k-means backend chain on a GPU (faiss-gpu, else faiss-cpu, else torch), the install from carried
wheels (bench/gpu_wheels.sh), the CPU cost besides the towers, score agreement between two runs, the
trainer's compute limit (its own step on in-memory batches) and open_clip_train's run with its peak
GPU memory. Nothing here downloads anything (the GPU machine is
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


# --- installing from carried wheels --------------------------------------------------------------------

SITE = Path("/tmp/curate-site")


def install_from_wheels(site: Path = SITE, timeout: int = 240) -> dict:
    """Install every wheel in ``.whl/`` (the project's and the dependencies the machine lacks, from
    bench/gpu_wheels.sh) into ``site`` with ``pip --no-index --no-deps --target`` (no venv module needed),
    check that the installed project imports and its CLI answers, and record what pip's resolver says
    of the project's own requirements against what is installed (e.g. an exact torch pin)."""
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if not wheels:
        return {"attempted": False, "why": "no .whl/ folder: bench/gpu_wheels.sh builds it"}
    out: dict = {"attempted": True, "wheels": [w.name for w in wheels],
                 "wheel_mib": round(sum(w.stat().st_size for w in wheels) / 2**20, 1)}
    t0 = time.perf_counter()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    p = subprocess.run([*pip, "install", "-q", "--no-index", "--no-deps", "--upgrade", "--target", str(site),
                        *map(str, wheels)], capture_output=True, text=True, timeout=timeout)
    out.update(ok=p.returncode == 0, message=(p.stderr or p.stdout).strip()[-600:])
    if p.returncode:
        return out
    env = {**os.environ, "PYTHONPATH": str(site)}
    chk = subprocess.run([sys.executable, "-c", "import sys; sys.argv = ['curate', '--help']\n"
                          "import pipeline.run, training.train, app.cli\nfrom app.cli import main\nmain()"],
                         capture_output=True, text=True, timeout=120, env=env, cwd="/")
    out["project_imports_and_cli"] = chk.returncode == 0
    out["cli_message"] = (chk.stderr if chk.returncode else chk.stdout).strip()[-300:]
    curate = next((w for w in wheels if w.name.startswith("curate-")), None)
    if curate is not None:  # what a plain `pip install curate` would meet here (dry run, no network)
        dry = subprocess.run([*pip, "install", "--dry-run", "--no-index", "--find-links", str(ROOT / ".whl"),
                              str(curate)], capture_output=True, text=True, timeout=120)
        out["resolver_ok"] = dry.returncode == 0
        out["resolver_message"] = (dry.stderr or dry.stdout).strip()[-600:]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["site"] = str(site)
    return out


# --- scoring figures -----------------------------------------------------------------------------------

def cpu_besides_towers(shard: str, spec_json: str, repeats: int = 3) -> dict:
    """CPU ms a sample of one shard's whole annotate pass in this process with the towers replaced by
    zeros (process CPU time, every thread: tar read, header parse or decode, the resize on the device's
    launches, thumbnails, tokenising, parquet), the least of ``repeats`` after a warm pass. On a GPU
    the waits for it spin and count too, so this is an upper bound."""
    import tempfile

    import torch

    from pipeline.annotate import annotate_shard
    from pipeline.clip_stage import get_scorer
    from schemas.config import ClipModel

    spec = ClipModel.model_validate_json(spec_json)
    sc = get_scorer(spec_json)
    dim, real = sc.dim, sc._encode_image
    sc._encode_image = lambda x, normalize=True: torch.zeros((len(x), dim), device=x.device)
    sc.model.encode_text = lambda t, normalize=True: torch.zeros((len(t), dim), device=t.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best, rows = None, 0
    try:
        for r in range(repeats + 1):
            with tempfile.TemporaryDirectory() as tmp:
                c0 = time.process_time()
                rows = annotate_shard(shard, tmp, [spec], False)["rows"]
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                cpu = time.process_time() - c0
            if r:
                best = cpu if best is None else min(best, cpu)
    finally:
        sc._encode_image = real
        del sc.model.encode_text
        torch.set_num_threads(threads)
    return {"ms_per_sample": round(best / rows * 1e3, 4), "samples": rows, "decode_on_device": sc.device_decode,
            "method": "process CPU time of a whole one-shard pass, towers replaced by zeros, 1 torch thread"}


def score_agreement(work_a: Path, work_b: Path, column: str = "clip_score", fraction: float = 0.5,
                    near: float = 0.01) -> dict:
    """Scores of the shards two runs both annotated (``work_a`` the reference): largest difference, and
    keep decisions of a top-``fraction`` cut-off (the reference's quantile) compared, with the
    disagreements that are not within ``near`` of the cut-off."""
    import pyarrow.parquet as pq

    a_files = {p.name: p for p in (Path(work_a) / "columns" / column).glob("*.parquet")}
    b_files = {p.name: p for p in (Path(work_b) / "columns" / column).glob("*.parquet")}
    both = sorted(set(a_files) & set(b_files))
    if not both:
        raise RuntimeError(f"no shard scored in both {work_a} and {work_b}")
    a = np.concatenate([pq.read_table(a_files[n]).column(column).to_numpy() for n in both])
    b = np.concatenate([pq.read_table(b_files[n]).column(column).to_numpy() for n in both])
    ok = ~np.isnan(a) & ~np.isnan(b)
    cut = float(np.quantile(a[ok], 1 - fraction))
    keep_a, keep_b = a[ok] >= cut, b[ok] >= cut
    differ = keep_a != keep_b
    return {"shards": len(both), "samples": int(ok.sum()), "same_scored_rows": bool((np.isnan(a) == np.isnan(b)).all()),
            "score_max_abs_diff": round(float(np.abs(a[ok] - b[ok]).max()), 6),
            "score_mean_abs_diff": round(float(np.abs(a[ok] - b[ok]).mean()), 6), "cutoff": round(cut, 6),
            "keep_decisions_agree_share": round(float(1 - differ.mean()), 6),
            "keep_decisions_differ": int(differ.sum()),
            f"differ_beyond_{near}_of_cutoff": int((differ & (np.abs(a[ok] - cut) > near)).sum())}


# --- training --------------------------------------------------------------------------------------------

def compute_limit(model: str, batch: int, steps: int, device: str, warm: int = 5) -> dict:
    """Our trainer's own step (training/train.py: model, AdamW, loss, ``forward_backward``, bf16 autocast
    on a GPU) on one in-memory batch already on the device: the rate no loader can beat."""
    import torch

    from training.model import load_clip
    from training.train import TrainConfig, forward_backward, make_loss, make_optimizer

    cfg = TrainConfig(train_data="unused", out_dir="unused", model=model, samples_seen=batch * steps,
                      batch_size=batch, device=device)
    torch.manual_seed(0)
    clip = load_clip(model, device=device)
    m = clip.model
    m.train()
    opt, loss_fn = make_optimizer(m, cfg), make_loss(cfg, 0, 1)
    cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    size = clip.preprocess_train.transforms[0].size
    side = size if isinstance(size, int) else size[0]
    images = torch.randn(batch, 3, side, side, device=device)
    tokens = clip.tokenizer(["a photo of a red car on the street"] * batch).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        forward_backward(m, loss_fn, images, tokens, cfg.accum_steps, autocast)
        opt.step()

    for _ in range(warm):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    del m, opt, clip
    if cuda:
        torch.cuda.empty_cache()
    return {"samples_per_s": round(steps * batch / seconds, 1), "steps": steps, "batch_size": batch,
            "method": "training/train.py's step on one in-memory batch on the device (no loader)"}


# --- the GPU extra -----------------------------------------------------------------------------------

def try_gpu_extra(timeout: int = 180) -> dict:
    """Install pyproject's ``gpu-cu12`` extra (beside a CUDA 12 torch only) offline (``--no-index``,
    wheels from ``.whl/`` if present) unless faiss-gpu is there already; never reaches the network. Call
    before faiss is imported."""
    import importlib.metadata as md
    import tomllib

    import torch

    cuda = torch.version.cuda or ""
    if not cuda.startswith("12."):
        return {"attempted": False, "extra": "gpu-cu12",
                "why": f"torch is built for CUDA {cuda or 'none'}: faiss-gpu-cu12 needs CUDA 12 runtime libraries and "
                       "PyPI has no faiss GPU wheel for CUDA 13, so the global steps stay on torch"}
    reqs = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu-cu12"]
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
