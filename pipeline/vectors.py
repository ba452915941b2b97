"""Vector steps shared by the global filters: exact nearest-neighbour search, spherical k-means,
neighbours inside a cluster and inverted-file scans (never all-pairs over the pool).

Two backends give the same answers (tested): ``faiss`` (faiss-cpu, or faiss-gpu where it installs)
and ``torch`` (matmul + top-k, on the GPU when there is one). ``auto`` picks torch on a GPU and faiss
on a CPU. k-means centroids come from faiss.Kmeans on both backends, so they do not depend on the
backend; only the nearest-centroid search runs on it.

Out of core: ``kmeans``, ``assign``, ``usable`` and ``by_cluster`` take a view of per-shard embedding
files (pipeline/embeddings.py) as well as an array, and hold a chunk or a few clusters at a time.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pipeline.embeddings import View, view

CHUNK = 16384
PER_CENTROID = 256  # k-means trains on at most this many rows a centroid (faiss's max_points_per_centroid)
TRAIN_BYTES = 256 << 20  # ... and, from a view, on at most this many float32 bytes (but 39 rows a centroid)
BATCH_BYTES = 64 << 20  # float32 bytes of clusters gathered at once by by_cluster


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


def usable(x, valid: np.ndarray | None = None) -> np.ndarray:
    """Rows with a finite, non-zero vector (and ``valid`` when given): the rows a global step can use.
    A view is read a chunk at a time."""
    if isinstance(x, View):
        ok = np.zeros(len(x), bool)
        for start, block in x.chunks():
            ok[start:start + len(block)] = usable(block)
    else:
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


def kmeans(x, k: int, niter: int = 20, seed: int = 0, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means on unit vectors: (centroids (k, d), assignment (n,)); ``k`` is capped at n.
    The centroids come from ``faiss.Kmeans`` on both backends (seeded k-means++ init, ``niter`` Lloyd
    iterations on at most 256 points a centroid, empty clusters split): an array goes to faiss whole
    (faiss draws the 256 a centroid itself); a view (pipeline/embeddings.py) gives faiss a seeded sample
    of that size, at most TRAIN_BYTES (not under 39 a centroid, faiss's minimum), so the pool is never
    in memory at once. Every row is then assigned to its nearest centroid by ``assign`` (the n * k
    pass, a chunk at a time)."""
    import faiss

    v = view(x)
    if len(v) == 0:
        return np.zeros((0, v.shape[1]), np.float32), np.zeros(0, np.int64)
    k = max(1, min(k, len(v)))
    if isinstance(x, View):
        rows = min(k * PER_CENTROID, max(k * 39, TRAIN_BYTES // (4 * v.shape[1])))
        train = v.sample(rows, seed)[1]
        train /= np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)  # normalize, in place
    else:
        train = normalize(x)
    km = faiss.Kmeans(train.shape[1], k, niter=niter, seed=seed, spherical=True, max_points_per_centroid=PER_CENTROID,
                      init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS)
    km.train(train)
    del train
    cent = np.ascontiguousarray(km.centroids, np.float32)
    return cent, assign(v, cent, backend)


def assign(x, cent: np.ndarray, backend: str = "auto") -> np.ndarray:
    """Each row's nearest centroid (rows normalised), a chunk at a time."""
    x = view(x)
    out = np.zeros(len(x), np.int64)
    for start, block in x.chunks():
        _, idx = search(cent, normalize(block), 1, backend)
        out[start:start + len(block)] = idx[:, 0]
    return out


def members(assign: np.ndarray) -> list[np.ndarray]:
    """Row indices of each cluster, ascending (pool order)."""
    order = np.argsort(assign, kind="stable")
    bounds = np.flatnonzero(np.diff(assign[order])) + 1
    return [g for g in np.split(order, bounds) if len(g)]


def by_cluster(x, assign: np.ndarray, max_bytes: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows ascending, their float32 vectors) of each cluster in turn. Clusters are gathered a few at
    a time, one ``take`` of up to ``max_bytes`` (BATCH_BYTES; a bigger cluster alone), so only they are
    in memory."""
    x, max_bytes = view(x), max_bytes or BATCH_BYTES
    batch, size = [], 0
    for g in members(assign):
        batch.append(g)
        size += len(g)
        if size * 4 * x.shape[1] >= max_bytes:
            yield from _split(x, batch)
            batch, size = [], 0
    if batch:
        yield from _split(x, batch)


def _split(x: View, groups: list[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    block = x.take(np.concatenate(groups))
    start = 0
    for g in groups:
        yield g, block[start:start + len(g)]
        start += len(g)


def knn(x: np.ndarray, k: int, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every row among the rows of ``x`` (itself excluded), as
    (similarities, indices) with -inf / -1 where fewer than ``k`` others exist."""
    n = len(x)
    sims = np.full((n, k), -np.inf, np.float32)
    idx = np.full((n, k), -1, np.int64)
    s, j = search(x, x, min(k + 1, n), backend)
    s = np.where(j == np.arange(n)[:, None], -np.inf, s)  # a copy may come before the row itself
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    s, j = np.take_along_axis(s, order, 1), np.take_along_axis(j, order, 1)
    sims[:, :s.shape[1]], idx[:, :j.shape[1]] = s, np.where(np.isfinite(s), j, -1)
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
