"""k-means centroids that outlive a run, so a nightly run on a grown pool extends the clustering
instead of redoing it.

Rule: centroids saved under ``<work>/global/`` are reused - every sample, old and new, is assigned to
its nearest saved centroid, one search pass instead of ``niter`` Lloyd iterations - when they were
fitted with the same filter settings on the same embeddings (scorer and weights), and the pool has
grown by at most ``refit_growth`` (default 50%) since the fit. Otherwise (first run, another config
or scorer, more growth, or fewer samples than at the fit) they are fitted again and saved.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pipeline.vectors import assign, assign_levels, kmeans, kmeans_tree
from shardio.shards import atomic_save_npz


def fit_or_reuse(x, k: int, niter: int, seed: int, backend: str, cache_dir: Path | None, key: dict,
                 refit_growth: float = 0.5) -> tuple[np.ndarray, np.ndarray, str]:
    """(centroids, assignment, "fitted" | "reused"); ``x`` an array or a view (pipeline/embeddings.py)."""
    if cache_dir is None or len(x) == 0:  # nothing to fit is nothing to save
        cent, labels = kmeans(x, k, niter, seed, backend)
        return cent, labels, "fitted"
    digest = hashlib.sha256(json.dumps({**key, "k": k, "niter": niter, "seed": seed}, sort_keys=True,
                                       default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"centroids-{digest}.npz"
    if path.is_file():
        with np.load(path) as z:
            cent, n_fit = z["centroids"], int(z["n_fit"])
            levels = (z["coarse"], z["parent"]) if "coarse" in z.files else None
        if n_fit <= len(x) <= n_fit * (1 + refit_growth) and cent.shape[1] == x.shape[1]:
            labels = (assign(x, cent, backend) if levels is None
                      else assign_levels(x, levels[0], cent, levels[1], backend))
            return cent, labels, "reused"
    cent, labels, levels = kmeans_tree(x, k, niter, seed, backend)
    # saved with its coarse level when it has one, so a reuse assigns in two levels too
    extra = {} if levels is None else {"coarse": levels[0], "parent": levels[1]}
    atomic_save_npz(path, centroids=cent, n_fit=len(x), **extra)
    return cent, labels, "fitted"
