"""D² pruning (Maharana et al., ICLR 2024): difficulty and diversity on a k-NN graph.

Graph: each sample's k nearest neighbours over its concatenated, normalised image+text embedding,
searched inside its k-means cluster only (m / 1000 clusters unless given; in two levels above 1,024,
pipeline/vectors.kmeans_levels). Distance d = 1 - cosine.
Forward message passing: s_i <- s_i + sum_j exp(-gamma_f * d_ij) * s_j (over i's neighbours).
Reverse selection: repeatedly take the highest-scoring sample, then lower each neighbour's score
by exp(-gamma_r * d_ij) * s_i, until ``budget`` (a fraction of the valid samples) is selected.
Difficulty is the CLIP score shifted to be >= 0 (scores are cosines, in [-1, 1]).

Out of core, one cluster at a time (as NeMo Curator processes clusters): k-means trains on a sample and
assigns a chunk at a time; each cluster's rows are gathered, its graph built, its scores passed and
its reverse selection run to the end, then freed. The approximation: a neighbour outside the
sample's cluster is never in its graph (before, the two nearest clusters were searched), so the graph
falls apart into the clusters. On such a graph the global greedy selection is exactly a merge of the
clusters' own greedy orders, always taking the best next pick among the clusters (score at its pick,
then pool order): that merge selects exactly ``budget`` of the pool, the same samples the single
global heap selects on this graph.
"""
from __future__ import annotations

import heapq

import numpy as np

from pipeline.embeddings import View, view
from pipeline.vectors import by_cluster, kmeans, knn, usable


class Joined(View):
    """Normalised image and text embeddings side by side, the pair normalised again (each half scaled
    to length 1 / sqrt(2): rows are unit length, as both halves are non-zero for usable rows). Stored
    (``take_stored``) as the two halves unscaled, in their own dtype."""
    unit = True

    def __init__(self, img: View, txt: View):
        self.img, self.txt, self.scratch = img, txt, img.scratch
        self.shape = (len(img), img.shape[1] + txt.shape[1])
        self.dtype = np.dtype(np.result_type(img.dtype, txt.dtype))

    def take(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = np.empty((len(rows), self.shape[1]), np.float32) if out is None else out
        return self._scale(self._halves(rows, out))

    def take_stored(self, rows: np.ndarray) -> np.ndarray:
        return self._halves(rows, np.empty((len(rows), self.shape[1]), self.dtype))

    def finish(self, block: np.ndarray) -> np.ndarray:
        return self._scale(block.astype(np.float32))

    def _halves(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        d = self.img.shape[1]
        self.img.take(rows, out[:, :d])
        self.txt.take(rows, out[:, d:])
        return out

    def _scale(self, out: np.ndarray) -> np.ndarray:
        d = self.img.shape[1]
        for half in (out[:, :d], out[:, d:]):
            norm = np.sqrt(np.einsum("ij,ij->i", half, half))[:, None]
            half *= np.float32(np.sqrt(0.5)) / np.maximum(norm, 1e-12)
        return out


def d2_select(img, txt, difficulty: np.ndarray, budget: float, k: int = 10,
              gamma_f: float = 1.0, gamma_r: float = 1.0, clusters: int | None = None, valid: np.ndarray | None = None,
              seed: int = 0, backend: str = "auto") -> dict:
    """``img``, ``txt``: arrays or views (pipeline/embeddings.py). Return {"selected": bool per row,
    "score": message-passed score per row (NaN if not valid)}."""
    img, txt = view(img), view(txt)
    n = len(img)
    ok = usable(img, valid) & usable(txt) & np.isfinite(difficulty)
    rows = np.flatnonzero(ok)
    out = {"selected": np.zeros(n, bool), "score": np.full(n, np.nan, np.float32)}
    if len(rows) == 0:
        return out
    x = Joined(img.subset(rows), txt.subset(rows))
    m = len(rows)
    _, assign = kmeans(x, clusters or max(1, m // 1000), niter=10, seed=seed, backend=backend)
    s0 = difficulty[rows].astype(np.float64) + 1.0
    score = np.zeros(m)
    picks = []
    for g, xs in by_cluster(x, assign):
        sims, nbr = knn(xs, k, backend)
        score[g], order, at = select(sims, nbr, s0[g], gamma_f, gamma_r)
        picks.append((at, g[order]))
    out["score"][rows] = score
    want = max(1, int(round(budget * m)))  # a positive budget keeps at least one sample
    out["selected"][rows[merge(picks, want)]] = True
    return out


def select(sims: np.ndarray, nbr: np.ndarray, s0: np.ndarray, gamma_f: float, gamma_r: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One cluster's graph (local indices): (forward scores, every row in reverse-selection order, its
    score when picked)."""
    m, k = nbr.shape
    has = nbr >= 0  # fewer than k neighbours when the cluster is small
    w_edge = np.where(has, 1.0 - sims, 0.0)  # distance
    s = s0 + np.where(has, np.exp(-gamma_f * w_edge) * s0[np.maximum(nbr, 0)], 0.0).sum(1)
    # reverse graph: who lists i as a neighbour also gets pushed down when i is taken (undirected)
    src = np.repeat(np.arange(m), k)[has.ravel()]
    dst = nbr.ravel()[has.ravel()]
    dist = w_edge.ravel()[has.ravel()]
    a = np.concatenate([src, dst])
    b = np.concatenate([dst, src])
    d = np.concatenate([dist, dist])
    _, first = np.unique(a * m + b, return_index=True)  # one edge per pair (sorted by a, then b)
    a, b, d = a[first], b[first], d[first]
    start = np.searchsorted(a, np.arange(m + 1)).tolist()
    b, push = b.tolist(), np.exp(-gamma_r * d).tolist()
    cur = s.tolist()
    taken = [False] * m
    heap = [(-cur[i], i) for i in range(m)]
    heapq.heapify(heap)
    order, at = [], []
    while heap:
        neg, i = heapq.heappop(heap)
        if taken[i] or -neg != cur[i]:
            continue  # stale entry
        taken[i] = True
        order.append(i)
        at.append(cur[i])
        for e in range(start[i], start[i + 1]):
            j = b[e]
            if not taken[j]:
                cur[j] -= push[e] * cur[i]
                heapq.heappush(heap, (-cur[j], j))
    return s, np.array(order, np.int64), np.array(at)


def merge(picks: list[tuple[np.ndarray, np.ndarray]], want: int) -> np.ndarray:
    """The first ``want`` of the global greedy order, from each cluster's (score at pick, row) sequence:
    always the best next pick among the clusters, ties to the lower row."""
    heap = [(-at[0], int(rows[0]), c, 0) for c, (at, rows) in enumerate(picks) if len(rows)]
    heapq.heapify(heap)
    out = []
    while heap and len(out) < want:
        _, row, c, t = heapq.heappop(heap)
        out.append(row)
        at, rows = picks[c]
        if t + 1 < len(rows):
            heapq.heappush(heap, (-at[t + 1], int(rows[t + 1]), c, t + 1))
    return np.array(out, np.int64)
