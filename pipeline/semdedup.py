"""Semantic dedup (SemDeDup): k-means over normalised image embeddings, then inside each cluster
pairwise cosine similarity. Items are visited in keep-priority order; an item whose cosine
similarity to an item already kept in its cluster is > 1 - eps is a duplicate of that item.

Keep rule (documented, configurable):
  ``farthest`` - SemDeDup's default: least prototypical first (lowest cosine to the centroid);
  ``score``    - highest value of a score column first (e.g. the CLIP score);
  ``first``    - pool order (shard, then row).
Cost: k-means (n * k per iteration, on a sample; in two levels above 1,024 clusters, so ~n * 2 sqrt(k):
pipeline/vectors.kmeans_levels) + sum over clusters of size^2; never n^2.
Out of core: the embeddings may be a view of per-shard files (pipeline/embeddings.py); k-means trains
on a sample and assigns a chunk at a time, then each cluster's rows are gathered (a few clusters at
once, pipeline/vectors.by_cluster), compared a block of columns at a time, and freed.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.embeddings import view
from pipeline.vectors import by_cluster, kmeans, normalize, torch_device, usable

MAX_CLUSTER = 40_000
BLOCK = 1024  # columns of a cluster's similarity matrix computed at once


def priority(x: np.ndarray, cent: np.ndarray, assign: np.ndarray, rule: str,
             score: np.ndarray | None = None) -> np.ndarray:
    """A key per row; lower is kept first. Ties go to pool order."""
    if rule == "farthest":
        return (x * cent[assign]).sum(1)
    if rule == "score":
        if score is None:
            raise ValueError("keep rule 'score' needs a score column")
        return -np.nan_to_num(score.astype(np.float64), nan=-np.inf)
    if rule == "first":
        return np.arange(len(x), dtype=np.float64)
    raise ValueError(f"unknown keep rule {rule!r}: use farthest, score or first")


def semdedup(emb, k: int, eps: float, rule: str = "farthest", score: np.ndarray | None = None,
             valid: np.ndarray | None = None, niter: int = 20, seed: int = 0, backend: str = "auto",
             fit=None) -> dict:
    """``emb``: an array or a view (pipeline/embeddings.py). ``fit(x, k, niter) -> (centroids,
    assignment)`` replaces the k-means (e.g. saved centroids). Return per-row arrays: cluster,
    duplicate_of (row index or -1), max_sim (SemDeDup's M: the highest cosine to any item before it in
    keep order, within its cluster, floored at 0)."""
    emb = view(emb)
    n = len(emb)
    rows = np.flatnonzero(usable(emb, valid))  # NaN / zero embeddings (undecodable rows) take no part
    out = {"cluster": np.full(n, -1, np.int64), "duplicate_of": np.full(n, -1, np.int64),
           "max_sim": np.full(n, np.nan, np.float32)}
    if len(rows) == 0:
        return out
    x = emb.subset(rows)
    cent, assign = fit(x, k, niter) if fit else kmeans(x, k, niter, seed, backend)
    biggest = int(np.bincount(assign).max())
    if biggest > MAX_CLUSTER:
        raise ValueError(f"semantic_dedup: a cluster holds {biggest:,} samples (> {MAX_CLUSTER:,}; its pairwise "
                         f"pass would be too slow and its rows too big): raise 'clusters' (now {k}) to about n / 1000")
    score = None if score is None else score[rows]
    for g, xs in by_cluster(x, assign):
        xs = normalize(xs)
        key = priority(xs, cent, assign[g], rule, None if score is None else score[g])
        order = np.lexsort((g, key))  # priority, then pool order
        g, xs = g[order], xs[order]
        max_sim, dup = walk(xs, eps)
        out["max_sim"][rows[g]] = max_sim
        hit = dup >= 0
        out["duplicate_of"][rows[g[hit]]] = rows[g[dup[hit]]]
        out["cluster"][rows[g]] = assign[g]
    return out


def walk(xs: np.ndarray, eps: float, block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One cluster, rows in keep order: (max_sim, dup). max_sim[a] = the highest cosine of row a to a row
    before it, floored at 0 (NaN for the first); dup[a] = the most similar row kept before a when that
    cosine is > 1 - eps, else -1. Columns ``block`` (BLOCK) at a time: memory len(xs) * block, not
    len(xs)^2."""
    block = block or BLOCK
    dev = torch_device()
    t = torch.from_numpy(np.ascontiguousarray(xs, np.float32)).to(dev)
    n = len(xs)
    max_sim = np.full(n, np.nan, np.float32)
    dup = np.full(n, -1, np.int64)
    kept = np.ones(n, bool)
    for c0 in range(0, n, block):
        c1 = min(n, c0 + block)
        later = torch.arange(c1, device=dev)[:, None] >= torch.arange(c0, c1, device=dev)[None, :]
        sim = (t[:c1] @ t[c0:c1].T).masked_fill_(later, 0.0).cpu().numpy()  # sim[j, a - c0], j before a
        earlier = sim.max(0)
        max_sim[c0:c1] = earlier
        for a in np.flatnonzero(earlier > 1 - eps) + c0:  # only items close to something earlier need the walk
            s = np.where(kept[:a], sim[:a, a - c0], -np.inf)
            j = int(s.argmax())
            if s[j] > 1 - eps:
                kept[a] = False
                dup[a] = j
    max_sim[0] = np.nan
    return max_sim, dup
