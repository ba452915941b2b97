"""Near-duplicate images: re-encoded, resized or cropped copies of another pool image.

Every decoded image leaves a 32x32 grey thumbnail at ingest (``thumbs/<shard>.npy``, 1 KB/sample).
A view or a warp is an axis-aligned crop (scale, x offset, y offset in affine_grid's normalised
units) sampled bilinearly as torch's grid_sample samples it, written as ``My @ image @ Mx.T`` with
small interpolation matrices, so batches of warps and their derivatives are matrix products.
1. Candidates: each image's full view (an 8x8 standardised descriptor) is searched against the
   views of every image at several crops (scales 0.87/0.93 x 4x4 offsets, plus the full view: 33),
   so a crop of B finds the matching crop view of B. ``k`` nearest per image; each pair is kept in
   the direction whose best view matches better (a crop against its original's crop view). Views
   chosen by measured recall on the seed-0 and seed-1 sample pools: 49 (scales 0.85/0.9/0.95) catch
   one planted copy more on one pool, one fewer on the other, and let more look-alikes through
   (precision 0.946 vs 0.952 on seed 1); a 3x3 offset grid misses ~2% more copies.
   Above IVF_ABOVE view vectors the search is an inverted file: k-means lists of the full views
   (built on one thread while the others make the crop views' descriptors); a view joins the
   nearest of its image's PROBE_POOL nearest lists, a query scans its NPROBE nearest. Each list is one
   product, then an exact two-level top-k: maxima of blocks of rows, the top blocks, their rows.
2. Verification: the crop mapping the reference onto the query is refined from the matched view by
   Gauss-Newton (Lucas-Kanade). The pair's ``rms`` is the RMS grey-level difference of the query and
   the warped reference, both 3x3-smoothed after the warp (inner 26x26 pixels; smoothing damps JPEG
   and resampling noise more than real differences). Above ``settle`` (the largest RMS any decision
   below looks at) the exact value changes nothing, so cheap tests settle most pairs first:
   a. Before any alignment: the RMS difference of the two matched views' 8x8 cell means (the
      descriptors before normalising, inner 6x6 cells). A pair more than START_MARGIN grey levels
      above ``settle`` keeps that value (~48% of pairs on the sample pools). This is measured, not a
      bound: pairs that alignment puts within ``settle`` start up to 27 grey levels above their
      aligned RMS (99.9th percentile 17-19); on each of the seed-0 and seed-1 sample pools the margin
      settles one of them (not within ``max_rms``), the same one a margin of 20 settles.
   b. The rest are aligned on 2x2 block means of the difference (13x13); a block mean's square is at
      most the mean of its squares, so this RMS bounds the 32x32 one from below at every crop, and a
      pair still above ``settle`` there keeps it. A pair more than COARSE_STOP above ``settle`` after
      two steps stops there (measured: no pair that ends within ``settle`` is above it by more than
      6.6 then, on either pool). Only the rest (~6% of pairs) are refined at 32x32.
3. Decision: a pair is a duplicate when ``rms <= max_rms``, or when ``rms <= ratio_max_rms`` and
   ``rms <= ratio * rival``, where ``rival`` is the lowest RMS from either image to a candidate in
   neither image's sure-duplicate group (``rms <= max_rms``) (a ratio test, like Lowe's for keypoints: a
   heavily re-encoded copy is as far from its original as two look-alike products, but much nearer to
   it than to anything else). Known limit: three or more heavy copies of one image, none within
   ``max_rms`` of another, are each other's rivals and stay.
4. Pairs join into groups (connected components); the first sample of a group in keep order stays.
Cost: the inverted-file scan (exact search below IVF_ABOVE view vectors) and ~k * n small alignments,
never all pairs. The products run on one torch (and BLAS) thread per Python thread, so no result
depends on the machine's thread count, and a loaded machine's spinning thread hand-offs are avoided.
"""
import contextlib
import ctypes
import functools
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pipeline.vectors import dense, kmeans, list_search, search, threaded

SIDE = 32
SCALES = (0.87, 0.93)
GRID = 4  # offsets per axis at each scale
MARGIN = 3
IVF_ABOVE = 100_000  # view vectors; above this the candidate search is an inverted file, not all-pairs
NPROBE = 3  # inverted lists scanned per query
LIST_DIV = 3  # sqrt(n * V) / LIST_DIV inverted lists
KMEANS_ITERS = 5  # Lloyd iterations of the lists' k-means
DESC_BLOCK = 256  # images a descriptor block (its views stay in cache)
PROBE_POOL = 32  # lists a view may join: its image's nearest
COARSE_STEPS, FINE_STEPS = 4, 3  # at most, Gauss-Newton steps on block means and at 32x32
COARSE_TOL = 0.05  # a pair stops when a step gains less than this share of its coarse RMS
COARSE_STOP = 8.0  # grey levels; ... or when after two steps its coarse RMS is this far above the settle RMS
MAX_STEP = 0.05  # largest change of a crop parameter per step (0.8 px at 32 px)
START_MARGIN = 16.0  # grey levels; a pair whose unaligned view RMS exceeds the settle RMS by this is settled


def thumbnail(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("L").resize((SIDE, SIDE), Image.BOX), np.uint8)


def view_params(scales=None, grid: int | None = None) -> np.ndarray:
    """(V, 3): scale, x offset, y offset in affine_grid's normalised units; row 0 is the full view."""
    scales, grid = SCALES if scales is None else scales, GRID if grid is None else grid
    out = [(1.0, 0.0, 0.0)]
    for f in scales:
        offs = np.linspace(-(1 - f), 1 - f, grid)
        out += [(f, tx, ty) for ty in offs for tx in offs]
    return np.array(out, np.float32)


def _grid(out: int) -> torch.Tensor:
    """Normalised centres of ``out`` output pixels (align_corners=False)."""
    return (2 * torch.arange(out, dtype=torch.float32) + 1) / out - 1


def _coords(scale: torch.Tensor, shift: torch.Tensor, out: int, size: int) -> torch.Tensor:
    """(B, out) pixel positions that grid_sample reads along one axis of a ``size`` image."""
    return ((scale[:, None] * _grid(out) + shift[:, None] + 1) * size - 1) / 2


def _interp(u: torch.Tensor, size: int) -> torch.Tensor:
    """(..., out, size) bilinear weights of positions ``u`` (..., out); taps outside the image weigh 0,
    as grid_sample's zero padding."""
    i0 = u.floor()
    w = u - i0
    idx = torch.stack([i0, i0 + 1], -1).long()
    m = torch.zeros(*u.shape, size + 2)
    m.scatter_add_(-1, idx.clamp(-1, size) + 1, torch.stack([1 - w, w], -1) * ((idx >= 0) & (idx < size)))
    return m[..., 1:-1]


def box3(size: int) -> torch.Tensor:
    """(size, size) matrix of a 3-tap mean (edges: the mean of the pixels inside); ``S @ t @ S.T`` is a
    3x3 box mean with count_include_pad=False."""
    a = torch.arange(size)
    m = ((a[:, None] - a[None]).abs() <= 1).float()
    return m / m.sum(1, keepdim=True)


def descriptors(thumbs: np.ndarray, scales=None, grid: int | None = None, out: int = 8, stats: bool = False,
                also=None):
    """(n, V, out*out) unit-norm, zero-mean descriptors of each view (``view_params`` order): each
    view sampled to 2*out and 2x2-averaged. The views of one scale form a grid of offsets, so one
    product ``M @ t @ M.T`` (M: every offset's rows stacked) gives all of them. ``stats``: also each
    view's mean and norm (n, V) before normalising. Blocks of images over threads; ``also``: one more
    task (a callable) for the same threads, started first."""
    scales, grid = SCALES if scales is None else scales, GRID if grid is None else grid
    n = len(thumbs)
    mats = []
    for f, offs in [(1.0, np.zeros(1))] + [(f, np.linspace(-(1 - f), 1 - f, grid)) for f in scales]:
        g = len(offs)
        m = _interp(_coords(torch.full((g,), f), torch.tensor(offs, dtype=torch.float32), 2 * out, SIDE), SIDE)
        mats.append(((m[:, 0::2] + m[:, 1::2]) / 2).reshape(g * out, SIDE))  # 2x2 mean, one axis at a time
    V = sum((len(m) // out) ** 2 for m in mats)
    desc = np.empty((n, V, out * out), np.float32)
    mean, norm = np.empty((n, V), np.float32), np.empty((n, V), np.float32)

    def run(i):
        if i < 0:
            return also()
        t = torch.from_numpy(np.asarray(thumbs[i:i + DESC_BLOCK], np.float32))
        v, j = torch.from_numpy(desc[i:i + DESC_BLOCK]), 0
        for m in mats:
            g = len(m) // out
            w = (m @ t @ m.T).view(len(t), g, out, g, out)  # (image, y offset, row, x offset, column)
            v[:, j:j + g * g] = w.permute(0, 1, 3, 2, 4).reshape(len(t), g * g, out * out)
            j += g * g
        mu = v.mean(2, keepdim=True)
        v -= mu
        nr = v.norm(dim=2, keepdim=True).clamp_min(1e-3)
        v /= nr
        mean[i:i + DESC_BLOCK], norm[i:i + DESC_BLOCK] = mu[..., 0].numpy(), nr[..., 0].numpy()

    threaded(run, ([-1] if also else []) + list(range(0, n, DESC_BLOCK)))
    return (desc, mean, norm) if stats else desc


def start_rms(desc: np.ndarray, mean: np.ndarray, norm: np.ndarray, trip: np.ndarray) -> np.ndarray:
    """Per candidate triple: RMS difference of the query's full view and the reference's matched view
    as 8x8 cell means (the descriptors before normalising), inner 6x6 cells; no alignment."""
    out = int(np.sqrt(desc.shape[2]))

    def cells(rows, views):
        return (desc[rows, views] * norm[rows, views, None] + mean[rows, views, None]).reshape(-1, out, out)

    d = (cells(trip[:, 0], 0) - cells(trip[:, 1], trip[:, 2]))[:, 1:-1, 1:-1]
    return np.sqrt((d * d).mean((1, 2)))


@functools.cache
def _blas_threads_local():
    """numpy's OpenBLAS ``openblas_set_num_threads_local`` (per calling thread), or None."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower()}
        for lib in sorted(libs):
            fn = getattr(ctypes.CDLL(lib), "openblas_set_num_threads_local", None)
            if fn is not None:
                fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
                return fn
    except OSError:
        pass
    return None


@contextlib.contextmanager
def _one_blas_thread():
    """numpy's BLAS on one thread in this thread: k-means++ seeding's many small products spent ~7x
    their time in OpenBLAS's thread hand-offs on a loaded 2-core machine (no-op without OpenBLAS)."""
    fn = _blas_threads_local()
    prev = fn(1) if fn is not None else None
    try:
        yield
    finally:
        if fn is not None:
            fn(prev)


def coarse_index(full: np.ndarray, views: int, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """The inverted file's lists: sqrt(n * views) / LIST_DIV k-means centroids of the full views (n, d),
    and each image's PROBE_POOL nearest of them (n, PROBE_POOL), best first. Torch and numpy's BLAS on
    one thread (small products; and the centroids do not depend on the machine's thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _one_blas_thread():
            cent, _ = kmeans(full, int(np.sqrt(len(full) * views) / LIST_DIV), niter=KMEANS_ITERS, seed=0,
                             backend=backend)
        _, near = search(cent, full, max(PROBE_POOL, NPROBE), dense(backend))
    finally:
        torch.set_num_threads(threads)
    return cent, near


def ivf(n: int, views: int, backend: str = "auto") -> bool:
    """Whether view_search takes the inverted file (else exact search)."""
    return n * views > IVF_ABOVE and backend != "torch"


def view_search(desc: np.ndarray, k: int, backend: str = "auto", index=None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's full view against every row's views (flat index row * V + view): the top ``k``
    (scores, indices). Above IVF_ABOVE view vectors an inverted file (``coarse_index``, or ``index``
    when given): a view joins the nearest of its image's PROBE_POOL nearest lists (a crop view stays
    near its full view; this costs n * V * PROBE_POOL, not n * V * lists), and each query scans its
    NPROBE nearest lists."""
    n, V, d = desc.shape
    full = np.ascontiguousarray(desc[:, 0])
    if not ivf(n, V, backend):
        return search(np.ascontiguousarray(desc.reshape(-1, d)), full, k, backend)
    cent, near = coarse_index(full, V, backend) if index is None else index
    lists = np.empty((n, V), np.int64)
    cent_t = torch.from_numpy(cent)

    def assign(i):
        j = slice(i, i + DESC_BLOCK)
        best = torch.bmm(torch.from_numpy(desc[j]), cent_t[torch.from_numpy(near[j])].mT).argmax(2).numpy()
        lists[j] = np.take_along_axis(near[j], best, 1)

    threaded(assign, range(0, n, DESC_BLOCK))
    return list_search(full, near[:, :NPROBE], desc.reshape(-1, d), lists.ravel(), k)


def candidates(desc: np.ndarray, valid: np.ndarray, k: int, min_sim: float = 0.9,
               backend: str = "auto", index=None) -> np.ndarray:
    """Candidate triples (query row, reference row, view index): the query's full view vs all views,
    the best view per (query, reference), the ``k`` best references per query, descriptor cosine >=
    min_sim; one direction per unordered pair, the one whose best view matches better. ``index``: the
    valid rows' ``coarse_index``, when already built."""
    rows = np.flatnonzero(valid)
    n, V, d = desc.shape
    if len(rows) < 2:
        return np.zeros((0, 3), np.int64)
    sub = desc if len(rows) == n else np.ascontiguousarray(desc[rows])
    sim, idx = view_search(sub, k * 4, backend, index)
    q = np.repeat(np.arange(len(rows)), idx.shape[1])
    ref = np.maximum(idx, 0).ravel() // V
    view = np.maximum(idx, 0).ravel() % V
    ok = (idx.ravel() >= 0) & (ref != q) & (sim.ravel() >= min_sim)
    trip, sim = np.stack([q[ok], ref[ok], view[ok]], 1), sim.ravel()[ok]
    # results are best first: keep the first view per (query, reference), then k references per query
    _, first = np.unique(trip[:, 0] * n + trip[:, 1], return_index=True)
    trip, sim = trip[np.sort(first)], sim[np.sort(first)]
    rank = np.arange(len(trip)) - np.searchsorted(trip[:, 0], trip[:, 0])
    trip, sim, rank = trip[rank < k], sim[rank < k], rank[rank < k]
    # the other direction: the reference's full view against the query's views, one product a query
    refs = np.zeros((len(rows), k, d), np.float32)
    refs[trip[:, 0], rank] = sub[trip[:, 1], 0]
    back = np.empty((len(rows), V, k), np.float32)

    def other(i):
        j = slice(i, i + DESC_BLOCK)
        back[j] = torch.bmm(torch.from_numpy(sub[j]), torch.from_numpy(refs[j]).mT).numpy()

    threaded(other, range(0, len(rows), DESC_BLOCK))
    back = back[trip[:, 0], :, rank]  # (pairs, V)
    flip = back.max(1) > sim + 1e-5  # a tie within rounding keeps the search's direction
    trip[flip] = np.stack([trip[flip, 1], trip[flip, 0], back[flip].argmax(1)], 1)
    sim = np.maximum(sim, back.max(1, initial=-1))
    o = np.argsort(-sim, kind="stable")  # one direction per unordered pair: the best
    lo, hi = np.minimum(trip[o, 0], trip[o, 1]), np.maximum(trip[o, 0], trip[o, 1])
    _, first = np.unique(lo * n + hi, return_index=True)
    trip = trip[np.sort(o[first])]
    trip[:, :2] = rows[trip[:, :2]]
    return trip


_PAIR, _SIGN, _PAIR_W = torch.tensor([0, 1]), torch.tensor([-1.0, 1.0]), torch.tensor([1.0, 0.0])


def _taps(post: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What ``_crop_matrices`` needs of ``post`` (the same at every step): each row's nonzero weights
    (rows, nnz, 1) and their samples' normalised positions (rows, nnz), and the derivatives' tap values
    in the offset and in the scale (rows, nnz * 2), which do not depend on the crop."""
    nnz = int((post != 0).sum(1).max())
    pw, po = post.topk(nnz, dim=1)  # (rows, nnz) weights and sample indices (weights are >= 0)
    pw, g = pw[..., None], _grid(SIDE)[po]
    slope = torch.cat([-torch.ones_like(pw), torch.ones_like(pw)], -1) * (pw * SIDE / 2)  # SIDE / 2 px per unit
    return pw, g, slope.flatten(-2), (slope * g[..., None]).flatten(-2)


def _crop_matrices(p: torch.Tensor, post: torch.Tensor, grad: bool = True, taps=None) -> torch.Tensor:
    """(B, 6, rows, SIDE): ``post @ M`` for the y and x interpolation matrices M of the crops ``p``
    (B, 3) sampled to SIDE, then their derivatives in the offset, then in the scale (``grad`` False:
    (B, 2, rows, SIDE), M only). Built from taps: each row of ``post`` mixes a few samples, each sample
    reads two pixels."""
    pw, g, slope, slope_s = _taps(post) if taps is None else taps
    shift = torch.stack([p[:, 2], p[:, 1]], 1)[:, :, None, None]  # y, x
    u = ((p[:, 0, None, None, None] * g + shift + 1) * SIDE - 1) / 2  # (B, 2, rows, nnz) positions read
    i0 = u.floor()[..., None]
    f = u[..., None] - i0
    idx = ((i0.long() + _PAIR).clamp(-1, SIDE) + 1).flatten(-2)  # the two pixels read; -1 and SIDE: outside
    m = torch.zeros(len(p), 6 if grad else 2, len(post), SIDE + 2)
    m[:, 0:2].scatter_add_(-1, idx, ((f * _SIGN + _PAIR_W) * pw).flatten(-2))  # weights 1 - f, f
    if grad:
        m[:, 2:4].scatter_add_(-1, idx, slope.expand(idx.shape))
        m[:, 4:6].scatter_add_(-1, idx, slope_s.expand(idx.shape))
    return m[..., 1:-1]


def refine(ref: torch.Tensor, qry: torch.Tensor, p: torch.Tensor, steps: int, post: torch.Tensor,
           margin: int = 0, tol: float = 0.01, stop: float = np.inf) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Newton (Lucas-Kanade) on the crops ``p`` (B, 3): ``ref`` (B, 32, 32) cropped by ``p`` and
    sampled to 32x32, then ``post @ . @ post.T`` (e.g. smoothing), against ``qry`` on its inner pixels
    (``margin`` off each edge). A pair stops once a step gains less than ``tol`` of its RMS, or, after
    two steps, once its RMS is above ``stop`` (stopped pairs leave the batch once they are a fifth
    of it). Returns the best (crop, RMS) seen, so never worse than the start."""
    inner = slice(margin, qry.shape[-1] - margin)
    best_p, best = p.clone(), torch.full((len(p),), float("inf"))
    act = torch.arange(len(p))  # pairs still in the batch
    ref_a, qry_a = ref, qry
    taps = _taps(post)
    for step in range(steps + 1):
        last = step == steps
        m = _crop_matrices(p, post, grad=not last, taps=taps)
        my, mx = m[:, 0], m[:, 1]
        a = torch.bmm(ref_a, mx.mT)
        e = (torch.bmm(my, a) - qry_a)[:, inner, inner]
        rms = e.pow(2).mean((1, 2)).sqrt()
        prev = best[act]
        go = (prev - rms > tol * rms) & ((step < 2) | (torch.minimum(prev, rms) <= stop))
        better = rms < prev
        best_p[act[better]], best[act[better]] = p[better], rms[better]
        n_go = int(go.sum())
        if last or n_go == 0:
            break
        if n_go < 0.8 * len(go):  # drop the stopped pairs
            act, p, ref_a, qry_a, a, e, m, go = act[go], p[go], ref_a[go], qry_a[go], a[go], e[go], m[go], go[go]
            my = m[:, 0]
        dy, dx, sy, sx = m[:, 2], m[:, 3], m[:, 4], m[:, 5]
        mr = torch.bmm(my, ref_a)
        j = torch.stack([torch.bmm(sy, a) + torch.bmm(mr, sx.mT), torch.bmm(mr, dx.mT), torch.bmm(dy, a)], 1)
        j = j[:, :, inner, inner].flatten(2)  # (B, 3, pixels): d/d(scale, x offset, y offset)
        hess = j @ j.mT
        hess = hess + 1e-3 * torch.diag_embed(hess.diagonal(dim1=1, dim2=2)) + 1e-6 * torch.eye(3)
        delta = torch.linalg.solve(hess, -(j @ e.flatten(1)[..., None]))[..., 0]
        p = p + delta.clamp(-MAX_STEP, MAX_STEP) * go[:, None]  # a stopped pair still in the batch stays
    return best_p, best


def aligned_rms(thumbs: np.ndarray, trip: np.ndarray, params: np.ndarray, settle: float = np.inf,
                batch: int = 1024) -> np.ndarray:
    """Per candidate triple: RMS grey-level difference of the query and the reference warped by the
    refined crop, both 3x3-smoothed after the warp, on the inner pixels. First every pair is aligned
    on 2x2 block means of that difference: a block mean's square is at most the block's mean square,
    so this RMS is a lower bound of the 32x32 one at every crop; pairs whose bound stays above
    ``settle`` keep it, the rest are refined at 32x32 from the coarse crop."""
    out = np.empty(len(trip), np.float32)
    smooth = box3(SIDE)
    inner = SIDE - 2 * MARGIN
    blocks = torch.zeros(inner // 2, SIDE)  # 2x2 means of the inner pixels (MARGIN even or odd)
    blocks[torch.arange(inner) // 2, MARGIN + torch.arange(inner)] = 0.5
    coarse = blocks @ smooth

    def run(i):
        t = trip[i:i + batch]
        q = torch.from_numpy(thumbs[t[:, 0]].astype(np.float32))
        r = torch.from_numpy(thumbs[t[:, 1]].astype(np.float32))
        p, rms = refine(r, coarse @ q @ coarse.T, torch.from_numpy(params[t[:, 2]]), COARSE_STEPS, coarse,
                        tol=COARSE_TOL, stop=settle + COARSE_STOP)
        near = torch.nonzero(rms <= settle)[:, 0]
        if len(near):
            _, rms[near] = refine(r[near], smooth @ q[near] @ smooth.T, p[near], FINE_STEPS, smooth, MARGIN)
        out[i:i + batch] = rms.numpy()

    threaded(run, range(0, len(trip), batch))
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


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of the undirected ``pairs`` over n rows: each row's label, the lowest row
    of its component (min-label hooking and pointer jumping, vectorised)."""
    label = np.arange(n)
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        la, lb = label[a], label[b]
        if (la == lb).all():
            return label
        m = np.minimum(la, lb)
        np.minimum.at(label, la, m)  # hook each root onto the lower one
        np.minimum.at(label, lb, m)
        while True:  # jump until each row points at its root
            up = label[label]
            if (up == label).all():
                break
            label = up


def groups(n: int, pairs: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    """Connected components of the duplicate pairs; returns each row's kept representative (itself if
    unique): the row with the lowest ``order_key`` (then index) in its component."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    label = components(n, pairs)
    order = np.lexsort((np.arange(n), order_key))  # keep order: best first
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    best = np.full(n, n, np.int64)
    np.minimum.at(best, label, rank)
    return order[best[label]]


@dataclass(frozen=True)
class NearDuplicates:
    """``near_duplicates``' answer, one value a row."""
    duplicate_of: np.ndarray  # int64: the row kept in its place, or -1 (not a duplicate)
    rms: np.ndarray  # float32: best RMS to a candidate (aligned, or the cheap test's for a pair it settled); NaN: none


def near_duplicates(thumbs: np.ndarray, valid: np.ndarray, *, max_rms: float, ratio: float, ratio_max_rms: float,
                    k: int = 5, order_key: np.ndarray | None = None, backend: str = "auto") -> NearDuplicates:
    """Per row: ``duplicate_of`` (kept row or -1) and ``rms`` (best RMS to a candidate: aligned, or the
    cheap test's value for a pair it settled).
    ``ratio`` > 0 adds the ratio test for pairs with ``max_rms < rms <= ratio_max_rms``. The thresholds
    have no defaults here: schemas/config.py NearDedupFilter holds them."""
    n = len(thumbs)
    order_key = np.arange(n, dtype=np.float64) if order_key is None else order_key
    # near-uniform thumbnails carry no structure to match on
    flat = torch.from_numpy(np.ascontiguousarray(thumbs, np.float32)).flatten(1)
    valid = np.asarray(valid, bool) & ((flat - flat.mean(1, keepdim=True)).square().mean(1).sqrt().numpy() >= 2.0)
    if valid.sum() < 2:  # nothing to compare
        return NearDuplicates(np.full(n, -1, np.int64), np.full(n, np.nan, np.float32))
    rows = np.flatnonzero(valid)  # the search works on these alone
    sub = np.ascontiguousarray(thumbs[rows], np.uint8)
    views, index = len(view_params()), {}
    also = None
    if ivf(len(rows), views, backend):  # the lists need only the full views: built beside the other views
        full = descriptors(sub, scales=())[:, 0]
        also = lambda: index.update(lists=coarse_index(full, views, backend))  # noqa: E731
    desc, mean, norm = descriptors(sub, stats=True, also=also)
    trip = candidates(desc, np.ones(len(rows), bool), k, backend=backend, index=index.get("lists"))
    # above this an RMS changes no decision: not a duplicate, and too far to be a ratio-test rival
    settle = max(max_rms, ratio_max_rms / ratio) if ratio > 0 else max_rms
    # cheap test first: pairs far apart before any alignment keep that distance
    rms = start_rms(desc, mean, norm, trip).astype(np.float32)
    near = rms <= settle + START_MARGIN
    rms[near] = aligned_rms(sub, trip[near], view_params(), settle)
    trip[:, :2] = rows[trip[:, :2]]
    best = np.full(n, np.nan, np.float32)
    np.fmin.at(best, trip[:, 0], rms)
    np.fmin.at(best, trip[:, 1], rms)
    dup = rms <= max_rms
    if ratio > 0 and len(trip):
        sure = groups(n, trip[dup][:, :2], np.arange(n, dtype=np.float64))
        dup |= (rms <= ratio_max_rms) & (rms <= ratio * rival_rms(trip[:, :2], rms, sure))
    rep = groups(n, trip[dup][:, :2], order_key)
    return NearDuplicates(np.where(rep != np.arange(n), rep, -1), best)
