"""Semantic dedup (SemDeDup): k-means over normalised image embeddings, then inside each cluster
pairwise cosine similarity. Items are visited in keep-priority order; an item whose cosine
similarity to an item already kept in its cluster is > 1 - eps is a duplicate of that item.

Keep rule (documented, configurable):
  ``farthest`` - SemDeDup's default: least prototypical first (lowest cosine to the centroid);
  ``score``    - highest value of a score column first (e.g. the CLIP score);
  ``first``    - pool order (shard, then row).
Cost: k-means (n * k per iteration) + sum over clusters of size^2; never n^2.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.vectors import kmeans, members, normalize, torch_device, usable

MAX_CLUSTER = 40_000


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


def semdedup(emb: np.ndarray, k: int, eps: float, rule: str = "farthest", score: np.ndarray | None = None,
             valid: np.ndarray | None = None, niter: int = 20, seed: int = 0, backend: str = "auto",
             fit=None) -> dict:
    """``fit(x, k, niter) -> (centroids, assignment)`` replaces the k-means (e.g. saved centroids).
    Return per-row arrays: cluster, duplicate_of (row index or -1), max_sim (SemDeDup's M: the highest
    cosine to any item before it in keep order, within its cluster)."""
    n = len(emb)
    rows = np.flatnonzero(usable(emb, valid))  # NaN / zero embeddings (undecodable rows) take no part
    out = {"cluster": np.full(n, -1, np.int64), "duplicate_of": np.full(n, -1, np.int64),
           "max_sim": np.full(n, np.nan, np.float32)}
    if len(rows) == 0:
        return out
    x = normalize(emb[rows])
    cent, assign = fit(x, k, niter) if fit else kmeans(x, k, niter, seed, backend)
    key = priority(x, cent, assign, rule, None if score is None else score[rows])
    dev = torch_device()
    groups = members(assign)
    biggest = max(len(g) for g in groups)
    if biggest > MAX_CLUSTER:
        raise ValueError(f"semantic_dedup: a cluster holds {biggest:,} samples (> {MAX_CLUSTER:,}; its similarity "
                         f"matrix would not fit in memory): raise 'clusters' (now {k}) to about n / 1000")
    for g in groups:
        g = g[np.lexsort((g, key[g]))]  # priority, then pool order
        xs = torch.from_numpy(x[g]).to(dev)
        sim = torch.triu(xs @ xs.T, diagonal=1).cpu().numpy()  # sim[j, a]: j visited before a
        earlier = sim.max(0) if len(g) > 1 else np.zeros(1, np.float32)
        out["max_sim"][rows[g]] = np.where(np.arange(len(g)) > 0, earlier, np.nan)
        kept = np.ones(len(g), bool)
        for a in np.flatnonzero(earlier > 1 - eps):  # only items close to something earlier need the walk
            s = np.where(kept[:a], sim[:a, a], -np.inf)
            j = int(s.argmax())
            if s[j] > 1 - eps:
                kept[a] = False
                out["duplicate_of"][rows[g[a]]] = rows[g[j]]
        out["cluster"][rows[g]] = assign[g]
    return out
