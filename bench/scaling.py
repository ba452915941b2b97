"""Global curation steps (semantic dedup, image-based k-means, D²) at 1x / 2x / 4x a pool's embeddings,
with the fitted exponent of time vs size, next to raw faiss doing the core work on the same embeddings.
Used by bench/curation.py; on a GPU machine run it alone (only numpy, torch and faiss needed):

    python -m bench.scaling --work runs/bench-curation/work --backend torch
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def fit_exponent(sizes: list[int], seconds: list[float]) -> float:
    return round(float(np.polyfit(np.log(sizes), np.log(np.maximum(seconds, 1e-6)), 1)[0]), 3)


def scaling(img: np.ndarray, txt: np.ndarray, score: np.ndarray, backend: str, mults=(1, 2, 4),
            clusters: int = 200) -> dict:
    """Global steps at 1x/2x/4x the pool (extra copies jittered so they are new points), ours vs raw faiss
    doing the matching core work on the same embeddings (faiss.Kmeans; IVF kNN for the D² graph)."""
    import faiss

    from pipeline.d2 import d2_select
    from pipeline.semdedup import semdedup
    from pipeline.targets import image_based
    from pipeline.vectors import normalize

    rng = np.random.default_rng(0)
    out: dict = {}
    for m in mults:
        x = normalize(np.concatenate([img] + [img + 0.05 * rng.standard_normal(img.shape).astype(np.float32)
                                              for _ in range(m - 1)]))
        t = normalize(np.concatenate([txt] * m))
        s = np.concatenate([score] * m)
        n, k = len(x), clusters  # fixed k, as a config fixes it: k-means cost ~ n * k
        ok = np.isfinite(s)
        timings = {}
        t0 = time.time(); semdedup(x, k, 0.01, valid=ok, backend=backend); timings["semantic_dedup"] = time.time() - t0
        t0 = time.time(); image_based(x, ok, x[:1000], k, backend=backend); timings["image_based"] = time.time() - t0
        t0 = time.time(); d2_select(x, t, s, 0.5, valid=ok, backend=backend); timings["d2_pruning"] = time.time() - t0
        t0 = time.time()
        km = faiss.Kmeans(x.shape[1], k, niter=20, seed=0, spherical=True, max_points_per_centroid=1 << 30)
        km.train(x)
        timings["raw_faiss_kmeans"] = time.time() - t0
        xt = normalize(np.concatenate([x, t], 1))
        t0 = time.time()
        nlist = max(1, n // 1000)
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(xt.shape[1]), xt.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(xt)
        ivf.add(xt)
        ivf.nprobe = 2
        ivf.search(xt, 11)
        timings["raw_faiss_ivf_knn"] = time.time() - t0
        out[f"{m}x"] = {"n": n, **{k_: round(v, 3) for k_, v in timings.items()}}
        print(m, out[f"{m}x"], flush=True)
    sizes = [out[f"{m}x"]["n"] for m in mults]
    res = {"sizes": out, "clusters": clusters, "backend": backend}
    for step in ("semantic_dedup", "image_based", "d2_pruning", "raw_faiss_kmeans", "raw_faiss_ivf_knn"):
        res[step] = {"seconds": {f"{m}x": out[f"{m}x"][step] for m in mults},
                     "exponent": fit_exponent(sizes, [out[f"{m}x"][step] for m in mults])}
    return res


def load_work(work: Path, column: str = "clip_score") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image / text embeddings and scores of every shard in an annotate folder (no config needed)."""
    import pyarrow.parquet as pq

    sids = sorted(p.stem for p in (work / "columns" / column).glob("*.parquet"))
    img = np.concatenate([np.load(work / "embeddings" / column / f"{s}.img.npy") for s in sids]).astype(np.float32)
    txt = np.concatenate([np.load(work / "embeddings" / column / f"{s}.txt.npy") for s in sids]).astype(np.float32)
    score = np.concatenate([pq.read_table(work / "columns" / column / f"{s}.parquet").column(column).to_numpy()
                            for s in sids]).astype(np.float32)
    return img, txt, score


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/bench-curation/work")
    ap.add_argument("--backend", default="auto", choices=["auto", "faiss", "torch"])
    ap.add_argument("--mults", default="1,2,4")
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    a = ap.parse_args()
    import torch

    res = {"backend": a.backend, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "scaling": scaling(*load_work(Path(a.work)), a.backend, tuple(int(m) for m in a.mults.split(",")))}
    print(json.dumps(res, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
