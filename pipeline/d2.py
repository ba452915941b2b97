"""D² pruning (Maharana et al., ICLR 2024): difficulty and diversity on a k-NN graph.

Graph: each sample's k nearest neighbours over its concatenated, normalised image+text embedding
(cluster-restricted search, pipeline/vectors.py). Distance d = 1 - cosine.
Forward message passing: s_i <- s_i + sum_j exp(-gamma_f * d_ij) * s_j (over i's neighbours).
Reverse selection: repeatedly take the highest-scoring sample, then lower each neighbour's score
by exp(-gamma_r * d_ij) * s_i, until ``budget`` (a fraction of the valid samples) is selected.
Difficulty is the CLIP score shifted to be >= 0 (scores are cosines, in [-1, 1]).
"""
from __future__ import annotations

import heapq

import numpy as np

from pipeline.vectors import cluster_knn, kmeans, normalize, usable


def d2_select(img: np.ndarray, txt: np.ndarray, difficulty: np.ndarray, budget: float, k: int = 10,
              gamma_f: float = 1.0, gamma_r: float = 1.0, clusters: int | None = None, valid: np.ndarray | None = None,
              seed: int = 0, backend: str = "auto") -> dict:
    """Return {"selected": bool per row, "score": message-passed score per row (NaN if not valid)}."""
    n = len(img)
    ok = usable(img, valid) & usable(txt) & np.isfinite(difficulty)
    rows = np.flatnonzero(ok)
    out = {"selected": np.zeros(n, bool), "score": np.full(n, np.nan, np.float32)}
    if len(rows) == 0:
        return out
    x = normalize(np.concatenate([normalize(img[rows]), normalize(txt[rows])], axis=1))
    m = len(rows)
    nclust = clusters or max(1, m // 1000)
    cent, assign = kmeans(x, nclust, niter=10, seed=seed, backend=backend)
    sims, nbr = cluster_knn(x, cent, assign, k, nprobe=2, backend=backend)
    has = nbr >= 0  # fewer than k neighbours when the pool is small
    w_edge = np.where(has, 1.0 - sims, 0.0)  # distance
    s0 = (difficulty[rows].astype(np.float64) + 1.0)
    s = s0 + np.where(has, np.exp(-gamma_f * w_edge) * s0[np.maximum(nbr, 0)], 0.0).sum(1)
    out["score"][rows] = s
    want = max(1, int(round(budget * m)))  # a positive budget keeps at least one sample
    # reverse graph: who lists i as a neighbour also gets pushed down when i is taken (undirected)
    src = np.repeat(np.arange(m), k)[has.ravel()]
    dst = nbr.ravel()[has.ravel()]
    dist = w_edge.ravel()[has.ravel()]
    a = np.concatenate([src, dst])
    b = np.concatenate([dst, src])
    d = np.concatenate([dist, dist])
    _, first = np.unique(a * m + b, return_index=True)  # one edge per pair (sorted by a, then b)
    a, b, d = a[first], b[first], d[first]
    start = np.searchsorted(a, np.arange(m + 1))
    cur = s.copy()
    taken = np.zeros(m, bool)
    heap = [(-cur[i], i) for i in range(m)]
    heapq.heapify(heap)
    picked = 0
    while heap and picked < want:
        neg, i = heapq.heappop(heap)
        if taken[i] or -neg != cur[i]:
            continue  # stale entry
        taken[i] = True
        picked += 1
        lo, hi = start[i], start[i + 1]
        for j, dj in zip(b[lo:hi], d[lo:hi]):
            if not taken[j]:
                cur[j] -= np.exp(-gamma_r * dj) * cur[i]
                heapq.heappush(heap, (-cur[j], j))
    out["selected"][rows[taken]] = True
    return out
