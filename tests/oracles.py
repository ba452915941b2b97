"""Independent oracles: DataComp's published rules written again, differently from pipeline/."""
from __future__ import annotations

import heapq

import numpy as np


def datacomp_top_fraction_uids(uids, scores, fraction: float) -> np.ndarray:
    """DataComp's CLIP-score baseline (baselines/apply_filter.py: ``threshold = -sort(-scores)[int(n *
    fraction)]``, keep ``score >= threshold``; the subset file holds sorted (u8, u8) uid halves), here via
    a heap and big-endian byte views instead of sorting and int parsing."""
    pairs = [(u, s) for u, s in zip(uids, scores) if np.isfinite(s)]
    t = heapq.nlargest(int(len(pairs) * fraction) + 1, [s for _, s in pairs])[-1]
    kept = sorted(bytes.fromhex(u) for u, s in pairs if s >= t)
    return np.array([tuple(np.frombuffer(b, ">u8").astype("u8")) for b in kept], np.dtype("u8,u8"))
