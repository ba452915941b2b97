"""Near-duplicate images: re-encoded, resized or cropped copies of another pool image.

Every decoded image leaves a 32x32 grey thumbnail at ingest (``thumbs/<shard>.npy``, 1 KB/sample).
1. Candidates: each image's full view (an 8x8 standardised descriptor) is searched against the
   views of every image at several crops (scales 0.85/0.9/0.95 x 4x4 offsets, plus the full view),
   so a crop of B finds the matching crop view of B. ``k`` nearest per image.
2. Verification: for each candidate pair, the crop (scale, offset) mapping one thumbnail onto the
   other is refined by gradient descent from the matched view (on 3x3-smoothed thumbnails); the pair's
   ``rms`` is the RMS grey-level difference of the query and the warped reference, both 3x3-smoothed
   after the warp (inner 26x26 pixels; smoothing damps JPEG and resampling noise more than real
   differences).
3. Decision: a pair is a duplicate when ``rms <= max_rms``, or when ``rms <= ratio_max_rms`` and
   ``rms <= ratio * rival``, where ``rival`` is the lowest RMS from either image to a candidate in
   neither image's sure-duplicate group (``rms <= max_rms``) (a ratio test, like Lowe's for keypoints: a
   heavily re-encoded copy is as far from its original as two look-alike products, but much nearer to
   it than to anything else). Known limit: three or more heavy copies of one image, none within
   ``max_rms`` of another, are each other's rivals and stay.
4. Pairs join into groups (connected components); the first sample of a group in keep order stays.
Cost: an inverted-file search (faiss IVF, sqrt(n * views) lists, 16 probed) above 100k view vectors
(~3,600 images; exact search below), plus k * n small alignments; never all pairs.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SIDE = 32
SCALES = (0.85, 0.9, 0.95)
MARGIN = 3
IVF_ABOVE = 100_000  # view vectors; above this the candidate search is an inverted file, not all-pairs
NPROBE = 16


def thumbnail(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("L").resize((SIDE, SIDE), Image.BOX), np.uint8)


def view_params(scales=SCALES, grid: int = 4) -> np.ndarray:
    """(V, 3): scale, x offset, y offset in affine_grid's normalised units; row 0 is the full view."""
    out = [(1.0, 0.0, 0.0)]
    for f in scales:
        offs = np.linspace(-(1 - f), 1 - f, grid)
        out += [(f, tx, ty) for ty in offs for tx in offs]
    return np.array(out, np.float32)


def _theta(p: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(p[:, 0])
    return torch.stack([torch.stack([p[:, 0], z, p[:, 1]], 1), torch.stack([z, p[:, 0], p[:, 2]], 1)], 1)


def _warp(t: torch.Tensor, p: torch.Tensor, size: int) -> torch.Tensor:
    g = F.affine_grid(_theta(p), (len(t), 1, size, size), align_corners=False)
    return F.grid_sample(t, g, mode="bilinear", align_corners=False)


def descriptors(thumbs: np.ndarray, params: np.ndarray, out: int = 8) -> np.ndarray:
    """(n, V, out*out) unit-norm, zero-mean descriptors of each view."""
    t = torch.from_numpy(thumbs.astype(np.float32))[:, None]
    res = []
    for p in torch.from_numpy(params):
        v = F.avg_pool2d(_warp(t, p.expand(len(t), 3), out * 2), 2).flatten(1)
        v = v - v.mean(1, keepdim=True)
        res.append((v / v.norm(dim=1, keepdim=True).clamp_min(1e-3)).numpy())
    return np.stack(res, 1)


def candidates(desc: np.ndarray, valid: np.ndarray, k: int, min_sim: float = 0.9,
               backend: str = "auto") -> np.ndarray:
    """Candidate triples (query row, reference row, view index): the query's full view vs all views,
    the best view per unordered pair, the ``k`` best references per query, descriptor cosine >= min_sim."""
    from pipeline.vectors import search

    rows = np.flatnonzero(valid)
    n, V, d = desc.shape
    if len(rows) < 2:
        return np.zeros((0, 3), np.int64)
    base = np.ascontiguousarray(desc[rows].reshape(-1, d))
    full = np.ascontiguousarray(desc[rows, 0])
    if len(base) > IVF_ABOVE and backend != "torch":
        import faiss

        nlist = int(np.sqrt(len(base)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(base[np.random.default_rng(0).choice(len(base), min(len(base), nlist * 64), replace=False)])
        index.add(base)
        index.nprobe = NPROBE
        sim, idx = index.search(full, k * 4)
    else:
        sim, idx = search(base, full, k * 4, backend)
    q = np.repeat(rows, idx.shape[1])
    ref = rows[np.maximum(idx, 0).ravel() // V]
    view = np.maximum(idx, 0).ravel() % V
    ok = (idx.ravel() >= 0) & (ref != q) & (sim.ravel() >= min_sim)
    trip = np.stack([q[ok], ref[ok], view[ok]], 1)
    # results are best first: keep the first view per (query, reference), then k references per query
    _, first = np.unique(trip[:, 0] * n + trip[:, 1], return_index=True)
    trip = trip[np.sort(first)]
    rank = np.arange(len(trip)) - np.searchsorted(trip[:, 0], trip[:, 0])
    trip = trip[rank < k]
    # one direction per unordered pair (the one found first)
    lo, hi = np.minimum(trip[:, 0], trip[:, 1]), np.maximum(trip[:, 0], trip[:, 1])
    _, first = np.unique(lo * n + hi, return_index=True)
    return trip[np.sort(first)]


def smooth(thumbs: np.ndarray | torch.Tensor) -> torch.Tensor:
    """3x3 box mean (edges: the mean of the pixels inside) of (n, H, W) or (n, 1, H, W) -> (n, 1, H, W)."""
    t = torch.as_tensor(thumbs, dtype=torch.float32)
    t = t[:, None] if t.dim() == 3 else t
    return F.avg_pool2d(t, 3, 1, 1, count_include_pad=False)


def aligned_rms(thumbs: np.ndarray, trip: np.ndarray, params: np.ndarray, steps: int = 25,
                batch: int = 8192) -> np.ndarray:
    """Per candidate triple: RMS grey-level difference of the query and the reference warped by the
    refined crop, both smoothed after the warp (so both sides are blurred alike)."""
    out = np.empty(len(trip), np.float32)
    m = MARGIN
    for i in range(0, len(trip), batch):
        t = trip[i:i + batch]
        q = torch.from_numpy(thumbs[t[:, 0]].astype(np.float32))[:, None]
        r = torch.from_numpy(thumbs[t[:, 1]].astype(np.float32))[:, None]
        qs, rs = smooth(q), smooth(r)
        p = torch.from_numpy(params[t[:, 2]]).clone().requires_grad_(True)
        opt = torch.optim.Adam([p], lr=0.008)
        for _ in range(steps):
            loss = (_warp(rs, p, SIDE) - qs)[:, :, m:-m, m:-m].pow(2).mean((1, 2, 3))
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
        with torch.no_grad():
            loss = (smooth(_warp(r, p, SIDE)) - qs)[:, :, m:-m, m:-m].pow(2).mean((1, 2, 3))
        out[i:i + batch] = loss.sqrt().numpy()
    return out


def rival_rms(pairs: np.ndarray, rms: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Per pair (a, b): the lowest RMS from a or b to a candidate in neither's group (inf when there
    is none): a look-alike as near as the partner makes the pair ambiguous; a sure copy of a or b
    does not. ``group``: each row's sure-duplicate group (from ``groups``)."""
    if not len(pairs):
        return np.zeros(0, np.float32)
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    g = group[np.concatenate([pairs[:, 1], pairs[:, 0]])]
    s = np.concatenate([rms, rms])
    other = g != group[src]
    src, g, s = src[other], g[other], s[other]
    o = np.lexsort((s, g, src))  # best first within (src, neighbour group)
    src, g, s = src[o], g[o], s[o]
    first = np.ones(len(src), bool)
    first[1:] = (src[1:] != src[:-1]) | (g[1:] != g[:-1])
    src, g, s = src[first], g[first], s[first]
    o = np.lexsort((s, src))  # groups by score within src
    src, g, s = src[o], g[o], s[o]
    rank = np.arange(len(src)) - np.searchsorted(src, src)
    n = len(group)
    best_g, best, second = np.full(n, -1), np.full(n, np.inf), np.full(n, np.inf)
    best_g[src[rank == 0]], best[src[rank == 0]] = g[rank == 0], s[rank == 0]
    second[src[rank == 1]] = s[rank == 1]

    def rival(x, y):
        return np.where(best_g[x] == group[y], second[x], best[x])

    return np.minimum(rival(pairs[:, 0], pairs[:, 1]), rival(pairs[:, 1], pairs[:, 0]))


def groups(n: int, pairs: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    """Connected components of the duplicate pairs (scipy); returns each row's kept representative
    (itself if unique): the row with the lowest ``order_key`` (then index) in its component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    ncomp, label = connected_components(graph, directed=False)
    order = np.lexsort((np.arange(n), order_key))  # keep order: best first
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    best = np.full(ncomp, n, np.int64)
    np.minimum.at(best, label, rank)
    return order[best][label]


def near_duplicates(thumbs: np.ndarray, valid: np.ndarray, *, max_rms: float, ratio: float, ratio_max_rms: float,
                    k: int = 5, order_key: np.ndarray | None = None, backend: str = "auto") -> dict:
    """Per row: ``duplicate_of`` (kept row or -1) and ``rms`` (best aligned RMS to a candidate).
    ``ratio`` > 0 adds the ratio test for pairs with ``max_rms < rms <= ratio_max_rms``. The thresholds
    have no defaults here: schemas/config.py NearDedupFilter holds them."""
    n = len(thumbs)
    order_key = np.arange(n, dtype=np.float64) if order_key is None else order_key
    # near-uniform thumbnails carry no structure to match on
    valid = np.asarray(valid, bool) & (thumbs.std((1, 2)) >= 2.0)
    if valid.sum() < 2:  # nothing to compare
        return {"duplicate_of": np.full(n, -1, np.int64), "rms": np.full(n, np.nan, np.float32)}
    params = view_params()
    trip = candidates(descriptors(thumbs, params), valid, k, backend=backend)
    rms = aligned_rms(thumbs, trip, params)
    best = np.full(n, np.nan, np.float32)
    np.fmin.at(best, trip[:, 0], rms)
    np.fmin.at(best, trip[:, 1], rms)
    dup = rms <= max_rms
    if ratio > 0 and len(trip):
        sure = groups(n, trip[dup][:, :2], np.arange(n, dtype=np.float64))
        dup |= (rms <= ratio_max_rms) & (rms <= ratio * rival_rms(trip[:, :2], rms, sure))
    rep = groups(n, trip[dup][:, :2], order_key)
    dup_of = np.where(rep != np.arange(n), rep, -1)
    return {"duplicate_of": dup_of, "rms": best}
