"""Bootstrap standard errors of evaluation metrics: resample a task's items with replacement and take
the spread of the metric (Efron & Tibshirani 1993). Seeded, so a rerun gives the same figure."""
from __future__ import annotations

import numpy as np

REPS = 500


def _resamples(n: int, reps: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(reps, n))


def se_mean(hits: np.ndarray, reps: int = REPS, seed: int = 0) -> float:
    """Standard error of a mean of per-item values (accuracy: 0/1 hits)."""
    hits = np.asarray(hits, np.float64)
    if len(hits) < 2:
        return 0.0
    return float(hits[_resamples(len(hits), reps, seed)].mean(1).std(ddof=1))


def se_mean_per_class_recall(hits: np.ndarray, target: np.ndarray, reps: int = REPS, seed: int = 0) -> float:
    """Standard error of the mean over classes of per-class recall (classes absent from a resample
    are left out of its mean, as the metric does)."""
    hits, target = np.asarray(hits, np.float64), np.asarray(target, np.int64)
    if len(hits) < 2:
        return 0.0
    k = int(target.max()) + 1
    vals = []
    for idx in _resamples(len(hits), reps, seed):
        seen = np.bincount(target[idx], minlength=k)
        right = np.bincount(target[idx], weights=hits[idx], minlength=k)
        vals.append((right[seen > 0] / seen[seen > 0]).mean())
    return float(np.std(vals, ddof=1))


def se_of_mean(ses: list[float]) -> float:
    """Standard error of a plain mean of independent scores."""
    return float(np.sqrt(np.sum(np.square(ses))) / len(ses)) if ses else 0.0
