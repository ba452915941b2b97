"""Vector steps shared by the global filters: exact nearest-neighbour search, spherical k-means,
neighbours restricted to clusters and inverted-file scans (never all-pairs over the pool).

Two backends give the same answers (tested): ``faiss`` (faiss-cpu, or faiss-gpu where it installs)
and ``torch`` (matmul + top-k, on the GPU when there is one). ``auto`` picks torch on a GPU and faiss
on a CPU. k-means centroids come from faiss.Kmeans on both backends, so they do not depend on the
backend; only the nearest-centroid search runs on it.
"""
from __future__ import annotations

import numpy as np
import torch

CHUNK = 16384


def pick(backend: str = "auto") -> str:
    if backend == "auto":
        return "torch" if torch.cuda.is_available() else "faiss"
    if backend not in ("faiss", "torch"):
        raise ValueError(f"unknown vector backend {backend!r}: use auto, faiss or torch")
    return backend


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(n, 1e-12))


def usable(x: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Rows with a finite, non-zero vector (and ``valid`` when given): the rows a global step can use."""
    x = np.asarray(x, np.float32).reshape(len(x), -1) if len(x) else np.zeros((0, 1), np.float32)
    ok = np.isfinite(x).all(1) & (np.abs(x).max(1, initial=0) > 0)
    return ok if valid is None else ok & np.asarray(valid, bool)


def torch_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def search(base: np.ndarray, queries: np.ndarray, k: int, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of each query against ``base``: (scores, indices), best first."""
    k = max(0, min(k, len(base)))
    if k == 0 or len(queries) == 0:  # faiss asserts k > 0
        return np.zeros((len(queries), k), np.float32), np.zeros((len(queries), k), np.int64)
    if pick(backend) == "faiss":
        import faiss

        index = faiss.IndexFlatIP(base.shape[1])
        index.add(np.ascontiguousarray(base, np.float32))
        return index.search(np.ascontiguousarray(queries, np.float32), k)
    dev = torch_device()
    b = torch.from_numpy(np.ascontiguousarray(base, np.float32)).to(dev)
    out_s, out_i = [], []
    for i in range(0, len(queries), CHUNK):
        q = torch.from_numpy(np.ascontiguousarray(queries[i:i + CHUNK], np.float32)).to(dev)
        s, j = (q @ b.T).topk(k, dim=1)
        out_s.append(s.cpu().numpy()), out_i.append(j.cpu().numpy())
    return np.concatenate(out_s), np.concatenate(out_i).astype(np.int64)


def kmeans(x: np.ndarray, k: int, niter: int = 20, seed: int = 0, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means on unit vectors: (centroids (k, d), assignment (n,)); ``k`` is capped at n.
    The centroids come from ``faiss.Kmeans`` on both backends (seeded k-means++ init, ``niter`` Lloyd
    iterations on at most 256 sampled points per centroid, empty clusters split); every row is then
    assigned to its nearest centroid by ``search`` on the chosen backend (the n * k pass)."""
    import faiss

    x = normalize(x)
    if len(x) == 0:
        return np.zeros((0, x.shape[1]), np.float32), np.zeros(0, np.int64)
    k = max(1, min(k, len(x)))
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True,
                      init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS)
    km.train(x)
    cent = np.ascontiguousarray(km.centroids, np.float32)
    _, idx = search(cent, x, 1, backend)
    return cent, idx[:, 0].astype(np.int64)


def members(assign: np.ndarray) -> list[np.ndarray]:
    """Row indices of each cluster, ascending (pool order)."""
    order = np.argsort(assign, kind="stable")
    bounds = np.flatnonzero(np.diff(assign[order])) + 1
    return [g for g in np.split(order, bounds) if len(g)]


def cluster_knn(x: np.ndarray, cent: np.ndarray, assign: np.ndarray, k: int, nprobe: int = 2,
                backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of every row (itself excluded) among the rows of its ``nprobe`` nearest
    clusters, as an inverted-file index does: cost ~ n * (cluster size * nprobe), not n^2.
    Returns (similarities, indices) with -1 where fewer than ``k`` candidates exist."""
    x = normalize(x)
    n = len(x)
    sims = np.full((n, k), -np.inf, np.float32)
    idx = np.full((n, k), -1, np.int64)
    groups = members(assign)
    by_cluster = {int(assign[g[0]]): g for g in groups}
    _, probe = search(cent, cent, min(nprobe, len(cent)), backend)  # clusters near each cluster
    for g in groups:
        c = int(assign[g[0]])
        cand = np.concatenate([by_cluster.get(int(p), np.zeros(0, np.int64)) for p in probe[c]])
        kk = min(k + 1, len(cand))
        s, j = search(x[cand], x[g], kk, backend)
        j = cand[j]
        self_hit = j == g[:, None]
        s = np.where(self_hit, -np.inf, s)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        s, j = np.take_along_axis(s, order, 1), np.take_along_axis(j, order, 1)
        j = np.where(np.isfinite(s), j, -1)
        sims[g, :s.shape[1]], idx[g, :j.shape[1]] = s, j
    return sims, idx


def list_search(queries: np.ndarray, probes: np.ndarray, base: np.ndarray, lists: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverted-file scan as matrix products: the top-``k`` inner products of each query among the base
    rows whose list (``lists``, one per base row) is one of the query's ``probes`` (nq, nprobe); one
    product per list. Returns (scores, indices) best first, -inf / -1 where fewer than ``k``."""
    nq, nlist = len(queries), int(max(lists.max(initial=-1), probes.max(initial=-1))) + 1
    border = np.argsort(lists, kind="stable")
    bstart = np.searchsorted(lists[border], np.arange(nlist + 1))
    base = torch.from_numpy(np.ascontiguousarray(base[border], np.float32))  # each list's rows together
    queries = torch.from_numpy(np.ascontiguousarray(queries, np.float32))
    qrow = np.repeat(np.arange(nq), probes.shape[1])
    qorder = np.argsort(probes.ravel(), kind="stable")
    qrow, qstart = qrow[qorder], np.searchsorted(probes.ravel()[qorder], np.arange(nlist + 1))
    hits_q, hits_b, hits_s = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    for c in range(nlist):
        b, q = border[bstart[c]:bstart[c + 1]], qrow[qstart[c]:qstart[c + 1]]
        if len(b) and len(q):
            s, top = (queries[q] @ base[bstart[c]:bstart[c + 1]].T).topk(min(k, len(b)), dim=1)
            hits_q.append(np.repeat(q, top.shape[1])), hits_b.append(b[top.numpy()].ravel())
            hits_s.append(s.numpy().ravel())
    q, b, s = np.concatenate(hits_q), np.concatenate(hits_b), np.concatenate(hits_s)
    o = np.lexsort((-s, q))  # per query, best first
    q, b, s = q[o], b[o], s[o]
    rank = np.arange(len(q)) - np.searchsorted(q, q)
    keep = rank < k
    scores, idx = np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
    scores[q[keep], rank[keep]], idx[q[keep], rank[keep]] = s[keep], b[keep]
    return scores, idx
