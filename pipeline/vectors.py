"""Vector steps shared by the global filters: exact nearest-neighbour search, spherical k-means,
neighbours inside a cluster and inverted-file scans (never all-pairs over the pool).

Two backends give the same answers (tested): ``faiss`` (faiss-cpu, or faiss-gpu where it installs)
and ``torch`` (matmul + top-k, on the GPU when there is one). ``auto`` picks torch on a GPU and faiss
on a CPU for ``search``; the dense products against a small base (nearest centroid, neighbours inside
a cluster) take torch for ``auto`` on a CPU too (a matmul there is ~6x faster than faiss's flat
search). k-means centroids come from ``lloyd`` (seeded) on both backends: on the CPU they do not
depend on the backend; on a GPU the torch backend runs the same loop there (same up to float rounding).

faiss-gpu: ``faiss`` searches move to the GPUs when the installed faiss sees one (the ``gpu-cu12`` extra,
faiss-gpu-cu12, built for CUDA 12). PyPI has no faiss GPU wheel for CUDA 13, so next to a CUDA 13
torch the GPU work stays torch's (``auto``); ``RAN`` records which backend each step took, and
``report`` says which one ``auto`` takes here and why.

Many clusters (SemDeDup's and D²'s grow with the pool): above TWO_LEVEL, k-means goes in two levels
(``kmeans_levels``), so assigning n rows costs n * ~2 sqrt(k) products, not n * k.

Out of core: ``kmeans``, ``assign``, ``usable`` and ``by_cluster`` take a view of per-shard embedding
files (pipeline/embeddings.py) as well as an array, and hold a chunk or a few clusters at a time.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from pipeline import spill
from pipeline.embeddings import Shards, View, view

CHUNK = 16384
PER_CENTROID = 256  # k-means trains on at most this many rows a centroid (as faiss's max_points_per_centroid)
TRAIN_BYTES = 256 << 20  # ... and, from a view, on at most this many float32 bytes (but 39 rows a centroid)
BATCH_BYTES = 64 << 20  # float32 bytes of clusters gathered at once by by_cluster
SIM_FLOATS = 16 << 20  # similarities computed at once (64 MB): query rows a product
PROJ = 64  # dimensions of the random projection k-means++ seeding measures distances in
SEED_ROWS = 8192  # rows k-means++ seeding draws from (but 4 a centroid): its cost ~ k, not k^2
TOPK_BLOCK = 8  # rows per block of list_search's two-level top-k
TWO_LEVEL = 1024  # k-means with more centroids than this goes in two levels (kmeans_levels)


RAN: dict[str, str] = {}  # step -> the backend and device it last ran on, in this process


def faiss_gpus() -> int:
    """GPUs the installed faiss can use (0: faiss-cpu, or faiss missing / failing to load)."""
    try:
        import faiss
    except Exception:  # noqa: BLE001 - e.g. faiss-gpu-cu12 without CUDA 12 runtime libraries
        return 0
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def report(backend: str = "auto") -> dict:
    """Which backend the global steps take here and why (for manifests and benchmarks)."""
    cuda = torch.version.cuda
    gpu = torch.cuda.is_available()
    chosen, fg = pick(backend), faiss_gpus() if gpu else 0
    if backend != "auto":
        why = f"vectors.backend: {backend} in the config"
    elif gpu:
        why = (f"auto: torch sees a GPU (torch {torch.__version__}, CUDA {cuda}): searches and k-means are torch "
               "matmuls there; " + ("faiss-gpu is installed too (set backend: faiss to use it)" if fg else
                                    "no faiss that sees a GPU (faiss-gpu-cu12 needs CUDA 12 runtime libraries; PyPI "
                                    "has no CUDA 13 build)"))
    else:
        why = "auto: no GPU visible to torch: faiss-cpu searches, torch k-means on the CPU"
    where = "cuda" if gpu else "cpu"
    search = f"faiss ({'gpu' if fg else 'cpu'})" if chosen == "faiss" else f"torch on {where}"
    return {"backend": chosen, "search": search,
            "kmeans": f"torch Lloyd on {where if dense(backend) == 'torch' else 'cpu'}", "faiss_gpus": fg,
            "torch_cuda": cuda, "why": why, "ran": dict(RAN)}


def pick(backend: str = "auto") -> str:
    if backend == "auto":
        return "torch" if torch.cuda.is_available() else "faiss"
    if backend not in ("faiss", "torch"):
        raise ValueError(f"unknown vector backend {backend!r}: use auto, faiss or torch")
    return backend


def dense(backend: str = "auto") -> str:
    """The backend of products against a small base (centroids, one cluster): torch for ``auto``."""
    return "torch" if backend == "auto" else pick(backend)


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(n, 1e-12))


def usable(x, valid: np.ndarray | None = None) -> np.ndarray:
    """Rows with a finite, non-zero vector (and ``valid`` when given): the rows a global step can use.
    A view is read a chunk at a time (shard files as stored: float16 is checked on its bits)."""
    if isinstance(x, View):
        ok = np.zeros(len(x), bool)
        for start, block in (x.stored() if isinstance(x, Shards) else x.chunks()):
            ok[start:start + len(block)] = usable(block)
    elif isinstance(x, np.ndarray) and x.dtype == np.float16 and x.ndim == 2:  # exponent all ones: inf, NaN
        u = x.view(np.uint16)
        ok = ((u & 0x7C00) != 0x7C00).all(1) & (u & 0x7FFF).any(1)
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
        on_gpu = k <= 2048 and torch.cuda.is_available() and faiss_gpus() > 0  # faiss's GPU top-k limit
        if on_gpu:
            index = faiss.index_cpu_to_all_gpus(index)
        RAN["search"] = f"faiss on {'gpu' if on_gpu else 'cpu'}"
        index.add(np.ascontiguousarray(base, np.float32))
        return index.search(np.ascontiguousarray(queries, np.float32), k)
    dev = torch_device()
    RAN["search"] = f"torch on {dev}"
    b = torch.from_numpy(np.ascontiguousarray(base, np.float32)).to(dev)
    out_s, out_i = [], []
    step = max(1, min(CHUNK, SIM_FLOATS // len(base)))  # a bounded block of similarities
    for i in range(0, len(queries), step):
        q = torch.from_numpy(np.ascontiguousarray(queries[i:i + step], np.float32)).to(dev)
        sim = q @ b.T
        s, j = sim.max(1, keepdim=True) if k == 1 else sim.topk(k, dim=1)  # max: the first of ties
        out_s.append(s.cpu().numpy()), out_i.append(j.cpu().numpy())
    return np.concatenate(out_s), np.concatenate(out_i).astype(np.int64)


def kmeans(x, k: int, niter: int = 20, seed: int = 0, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means on unit vectors: (centroids (k, d), assignment (n,)); ``k`` is capped at n.
    The centroids come from ``lloyd`` on a seeded sample of at most 256 rows a centroid (from a view
    also at most TRAIN_BYTES, but not under 39 a centroid), so the pool is never in memory at once.
    Every row is then assigned to its nearest centroid by ``assign`` (the n * k pass, a chunk at a
    time). Above TWO_LEVEL centroids, ``kmeans_levels`` instead (n * ~2 sqrt(k))."""
    return kmeans_tree(x, k, niter, seed, backend)[:2]


def kmeans_tree(x, k: int, niter: int = 20, seed: int = 0, backend: str = "auto"
                ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """``kmeans``, plus its coarse level (coarse centroids, each centroid's coarse cluster) when it went
    in two levels, else None (what ``assign_levels`` needs to assign new rows the same way)."""
    v = view(x)
    if len(v) == 0:
        return np.zeros((0, v.shape[1]), np.float32), np.zeros(0, np.int64), None
    k = max(1, min(k, len(v)))
    if k > TWO_LEVEL:
        cent, labels, coarse, parent = kmeans_levels(v, k, niter, seed, backend, capped=isinstance(x, View))
        return cent, labels, (coarse, parent)
    return (*_flat(v, k, niter, seed, backend, isinstance(x, View)), None)


def _flat(v: View, k: int, niter: int, seed: int, backend: str, capped: bool) -> tuple[np.ndarray, np.ndarray]:
    cent = fit_centroids(v, k, niter, seed, backend, capped)
    return cent, assign(v, cent, backend)


def fit_centroids(v: View, k: int, niter: int, seed: int, backend: str, capped: bool = True) -> np.ndarray:
    """``kmeans``'s centroids alone (no assignment pass); ``capped``: a sample of at most TRAIN_BYTES
    (the rows are read from files)."""
    rows = train_rows(len(v), k, v.shape[1], seed, capped)
    return fit_sample(v.take(rows), k, niter, seed, backend, getattr(v, "unit", False))


def train_rows(n: int, k: int, dim: int, seed: int, capped: bool = True) -> np.ndarray:
    """The rows (sorted) of ``n`` that ``fit_centroids`` trains ``k`` centroids on."""
    m = k * PER_CENTROID
    if capped:
        m = min(m, max(k * 39, TRAIN_BYTES // (4 * dim)))
    return np.arange(n) if m >= n else np.sort(np.random.default_rng(seed).choice(n, m, replace=False))


def fit_sample(train: np.ndarray, k: int, niter: int, seed: int, backend: str, unit: bool = False) -> np.ndarray:
    if not unit:
        train /= np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)  # normalize, in place
    return lloyd(train, k, niter, seed, torch_device() if dense(backend) == "torch" else "cpu")


def kmeans_levels(v: View, k: int, niter: int, seed: int, backend: str = "auto", capped: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """k-means in two levels, for many clusters (as hierarchical k-means, e.g. NeMo Curator's and
    SemDeDup's at billions of rows, keeps assignment affordable): ceil(sqrt(k)) coarse clusters, then
    each split into a share of ``k`` in proportion to its rows (at least 1), fit on a sample of its rows.
    A row goes to the nearest centroid of its coarse cluster. (centroids (~k, d), assignment,
    coarse centroids, each centroid's coarse cluster)."""
    coarse, top = _flat(v, int(np.ceil(np.sqrt(k))), niter, seed, backend, capped)
    sizes = np.bincount(top, minlength=len(coarse))
    share = shares(sizes, k)
    cents, parent = [], []
    used = np.flatnonzero(sizes)
    samples = [rows[train_rows(len(rows), int(share[c]), v.shape[1], seed + 1 + int(c), capped)]
               for c, rows in zip(used, members(top))]
    for c, (_, train) in zip(used, gathered(v, samples)):  # every sample in one pass where the pool is big
        sub = fit_sample(train, int(share[c]), niter, seed + 1 + int(c), backend, getattr(v, "unit", False))
        cents.append(sub)
        parent.append(np.full(len(sub), c, np.int64))
    cent, parent = np.concatenate(cents), np.concatenate(parent)
    return cent, assign_levels(v, coarse, cent, parent, backend, top), coarse, parent


def shares(sizes: np.ndarray, k: int) -> np.ndarray:
    """``k`` split over groups in proportion to ``sizes`` (largest remainders), at least 1 for a
    non-empty group (the total may pass ``k`` by those), at most its size."""
    raw = sizes / max(1, sizes.sum()) * k
    share = np.floor(raw).astype(np.int64)
    left = k - int(share.sum())
    if left > 0:
        share[np.argsort(-(raw - share), kind="stable")[:left]] += 1
    return np.minimum(np.where(sizes > 0, np.maximum(share, 1), 0), sizes)


def assign_levels(x, coarse: np.ndarray, cent: np.ndarray, parent: np.ndarray, backend: str = "auto",
                  top: np.ndarray | None = None) -> np.ndarray:
    """Each row's nearest centroid among those of its nearest coarse centroid, a chunk at a time."""
    x = view(x)
    top = assign(x, coarse, backend) if top is None else top
    ids = members(parent)  # centroid ids of each coarse cluster that has any
    by_coarse = {int(parent[g[0]]): g for g in ids}
    out = np.zeros(len(x), np.int64)
    for start, block in x.chunks():
        t = top[start:start + len(block)]
        for c in np.unique(t):
            m = t == c
            g = by_coarse.get(int(c))
            if g is None:  # a coarse cluster that had no rows when fit (centroids reused): all of them
                g = np.arange(len(cent))
            out[start:start + len(block)][m] = g[search(cent[g], block[m], 1, dense(backend))[1][:, 0]]
    return out


def lloyd(x: np.ndarray, k: int, niter: int, seed: int, device: str = "cpu") -> np.ndarray:
    """Spherical k-means of unit rows ``x`` (torch matmul on ``device``): seeded k-means++ seeding, then
    ``niter`` Lloyd iterations; an empty cluster takes half of the biggest one (faiss's split)."""
    rng = np.random.default_rng(seed)
    RAN["kmeans"] = f"torch Lloyd on {device}"
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)
    cent = t[torch.from_numpy(plusplus(x, k, rng)).to(device)].clone()
    sign = torch.where(torch.arange(x.shape[1], device=device) % 2 == 0, 1.0, -1.0) / 1024
    for _ in range(niter):
        lab = torch.from_numpy(nearest(t, cent)).to(device)
        count = torch.bincount(lab, minlength=k)
        cent = torch.zeros_like(cent).index_add_(0, lab, t)
        for e in torch.nonzero(count == 0).ravel().tolist():
            big = int(count.argmax())
            cent[e], cent[big] = cent[big] * (1 + sign), cent[big] * (1 - sign)
            count[e] = count[big] // 2
            count[big] -= count[e]
        cent /= cent.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return cent.cpu().numpy()


def plusplus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (as scikit-learn's: of 2 + log k candidates drawn a step, the one that
    lowers the potential most) among at most SEED_ROWS rows of ``x``, distances measured
    after a seeded random projection to PROJ dimensions (exact when ``x`` has no more)."""
    n, d = x.shape
    m = max(SEED_ROWS, 4 * k)
    among = np.arange(n) if n <= m else np.sort(rng.choice(n, m, replace=False))
    x = x[among] if len(among) < n else x
    if d > PROJ:
        x = x @ (rng.standard_normal((d, PROJ)) / np.sqrt(PROJ)).astype(np.float32)
    pt = np.ascontiguousarray(x.T)  # (PROJ, m): a step's products are one small matrix product
    m, sq = len(x), (pt * pt).sum(0)
    trials = 2 + int(np.log(k))
    picks = [int(rng.integers(m))]
    dist = np.maximum(sq + sq[picks[0]] - 2 * (pt[:, picks[0]] @ pt), 0)
    for _ in range(k - 1):
        cum = np.cumsum(dist, dtype=np.float64)
        if cum[-1] <= 0:
            cand = rng.integers(m, size=trials)
        else:
            cand = np.minimum(np.searchsorted(cum, rng.random(trials) * cum[-1], side="right"), m - 1)
        prod = np.ascontiguousarray(pt[:, cand].T) @ pt
        new = np.minimum(dist, np.maximum(sq + sq[cand][:, None] - 2 * prod, 0))
        best = int(new.sum(1).argmin())
        picks.append(int(cand[best]))
        dist = new[best]
    return among[picks]


def nearest(t: torch.Tensor, cent: torch.Tensor) -> np.ndarray:
    """Index of each row's highest inner product with ``cent`` (the first of ties), a block at a time."""
    out = np.empty(len(t), np.int64)
    step = max(1, SIM_FLOATS // max(1, len(cent)))
    for i in range(0, len(t), step):
        out[i:i + step] = (t[i:i + step] @ cent.T).argmax(1).cpu().numpy()
    return out


def assign(x, cent: np.ndarray, backend: str = "auto") -> np.ndarray:
    """Each row's nearest centroid (highest inner product: the same for the row normalised), a chunk at
    a time."""
    x = view(x)
    out = np.zeros(len(x), np.int64)
    for start, block in x.chunks():
        out[start:start + len(block)] = search(cent, block, 1, dense(backend))[1][:, 0]
    return out


def members(assign: np.ndarray) -> list[np.ndarray]:
    """Row indices of each cluster, ascending (pool order)."""
    order = np.argsort(assign, kind="stable")
    bounds = np.flatnonzero(np.diff(assign[order])) + 1
    return [g for g in np.split(order, bounds) if len(g)]


def by_cluster(x, assign: np.ndarray, max_bytes: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows ascending, their float32 vectors) of each cluster in turn (``gathered``)."""
    return gathered(x, members(assign), max_bytes)


def gathered(x, groups: list[np.ndarray], max_bytes: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, their float32 vectors) of each of ``groups`` (disjoint rows of ``x``) in turn. Groups are
    gathered a few at a time, one ``take`` of up to ``max_bytes`` (BATCH_BYTES; a bigger group alone),
    so only they are in memory; from a pool bigger than the page cache, through a cluster-ordered copy
    on disk instead (pipeline/spill.py)."""
    x, max_bytes = view(x), max_bytes or BATCH_BYTES
    disk = spill.where(x, sum(len(g) for g in groups))
    if disk is not None:
        yield from spill.spilled(x, groups, *disk)
        return
    for batch in spill.batches(groups, 4 * x.shape[1], max_bytes):
        block = x.take(np.concatenate([groups[i] for i in batch]))
        start = 0
        for i in batch:
            yield groups[i], block[start:start + len(groups[i])]
            start += len(groups[i])


def knn(x: np.ndarray, k: int, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every row among the rows of ``x`` (itself excluded), as
    (similarities, indices) with -inf / -1 where fewer than ``k`` others exist."""
    n = len(x)
    sims = np.full((n, k), -np.inf, np.float32)
    idx = np.full((n, k), -1, np.int64)
    if n < 2 or k < 1:
        return sims, idx
    if dense(backend) == "faiss":
        s, j = search(x, x, min(k + 1, n), backend)
        s = np.where(j == np.arange(n)[:, None], -np.inf, s)  # a copy may come before the row itself
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        s, j = np.take_along_axis(s, order, 1), np.take_along_axis(j, order, 1)
    else:  # torch: blocks of rows against all, the row itself masked
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(torch_device())
        out_s, out_j, step = [], [], max(1, SIM_FLOATS // n)
        for i in range(0, n, step):
            sim = t[i:i + step] @ t.T
            r = torch.arange(len(sim), device=sim.device)
            sim[r, r + i] = -torch.inf
            a, b = sim.topk(min(k, n - 1), dim=1)
            out_s.append(a.cpu().numpy()), out_j.append(b.cpu().numpy())
        s, j = np.concatenate(out_s), np.concatenate(out_j)
    sims[:, :s.shape[1]], idx[:, :j.shape[1]] = s, np.where(np.isfinite(s), j, -1)
    return sims, idx


def list_search(queries: np.ndarray, probes: np.ndarray, base: np.ndarray, lists: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverted-file scan: the top ``k`` inner products of each query among the base rows whose list
    (``lists``, one per base row) is one of its ``probes`` (nq, nprobe; distinct); (scores, indices)
    best first, -inf / -1 where fewer. Per list one product, then an exact two-level top-k (lists
    over threads): the maxima of blocks of TOPK_BLOCK rows, the top ``k`` blocks (every one holding a
    top-``k`` score is among them), the top ``k`` of their rows; a block's max costs far less than a
    top-k."""
    nq, nprobe = probes.shape
    nlist = int(max(lists.max(initial=-1), probes.max(initial=-1))) + 1
    blk = TOPK_BLOCK
    border = np.argsort(lists, kind="stable")
    size = np.bincount(lists, minlength=nlist)
    bstart = np.zeros(nlist + 1, np.int64)
    np.cumsum(-(-size // blk) * blk, out=bstart[1:])  # each list padded to whole blocks
    pos = bstart[lists[border]] + np.arange(len(border)) - np.repeat(np.cumsum(size) - size, size)
    index = np.full(bstart[-1], -1, np.int64)  # padded row -> base row (-1: padding)
    index[pos] = border
    base_t = torch.from_numpy(np.ascontiguousarray(base, np.float32))  # each list's rows together, padding
    base_t = base_t.index_select(0, torch.from_numpy(np.maximum(index, 0)))  # rows masked in the scan
    flat = probes.ravel()
    qorder = np.argsort(flat, kind="stable")
    qstart = np.searchsorted(flat[qorder], np.arange(nlist + 1))
    qs = torch.from_numpy(np.ascontiguousarray(queries[qorder // nprobe], np.float32))  # queries in list order
    top_s, top_i = torch.full((len(flat), k), -torch.inf), torch.full((len(flat), k), -1)

    def scan(c):
        b0, b1, q0, q1 = bstart[c], bstart[c + 1], qstart[c], qstart[c + 1]
        if b1 > b0 and q1 > q0:
            s = qs[q0:q1] @ base_t[b0:b1].T
            s[:, size[c]:] = -torch.inf  # the padding
            kk = min(k, size[c])
            bi = s.view(len(s), -1, blk).amax(2).topk(min(kk, s.shape[1] // blk), dim=1)[1]
            cols = (bi[:, :, None] * blk + torch.arange(blk)).flatten(1)
            v, j = s.gather(1, cols).topk(kk, dim=1)
            top_s[q0:q1, :kk], top_i[q0:q1, :kk] = v, cols.gather(1, j) + b0

    threaded(scan, np.argsort(-size * np.diff(qstart)))  # biggest lists first
    # per query: its probes' results side by side, then the top k of them
    inv = np.empty(len(flat), np.int64)
    inv[qorder] = np.arange(len(flat))
    s_all = top_s[torch.from_numpy(inv)].view(nq, nprobe * k)
    i_all = top_i[torch.from_numpy(inv)].view(nq, nprobe * k)
    s, j = s_all.topk(min(k, nprobe * k), dim=1)
    i = i_all.gather(1, j).numpy()
    idx = np.where(i >= 0, index[np.maximum(i, 0)], -1)
    s = s.numpy()
    return np.where(idx >= 0, s, -np.inf).astype(np.float32), idx


def threaded(fn, items) -> None:
    """``fn`` over ``items`` on torch's thread count of Python threads, one torch thread each: small
    products and top-k use the cores better than with intra-op threads (on a 2-core machine, 2
    intra-op threads on the alignment's small products took 3-7x the CPU time of 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(fn, items))
    finally:
        torch.set_num_threads(threads)
