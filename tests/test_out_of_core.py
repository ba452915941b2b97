"""Out-of-core global steps: the per-shard embedding view reads exactly the rows asked for; semantic
dedup, image-based and concept give the same answers on a view as on the array; k-means on a sample
assigns every row to its nearest centroid; D² per cluster selects exactly the budget, the same samples
a single global greedy selects on the same graph, and on separated clusters the same as exact D²."""
import heapq

import numpy as np
import pytest

import pipeline.semdedup as sd
import pipeline.vectors as vectors
from pipeline.d2 import Joined, d2_select
from pipeline.decide import Arrays
from pipeline.embeddings import Shards, view
from pipeline.semdedup import semdedup
from pipeline.targets import concept_score, image_based
from pipeline.vectors import kmeans, knn, members, normalize, search, usable

SIZES = [7, 0, 13, 1, 9]  # an empty shard among them


def shard_files(tmp_path, dim=8, seed=0, dtype=np.float16):
    rng = np.random.default_rng(seed)
    full = rng.normal(size=(sum(SIZES), dim)).astype(dtype)
    paths, start = [], 0
    for i, n in enumerate(SIZES):
        paths.append(tmp_path / f"{i}.npy")
        np.save(paths[-1], full[start:start + n])
        start += n
    return paths, full.astype(np.float32)


def test_view_takes_chunks_and_samples_exactly_the_rows_asked_for(tmp_path):
    paths, full = shard_files(tmp_path)
    v = Shards(paths)
    assert len(v) == 30 and v.shape == (30, 8)
    for rows in ([], [0], [29], [5, 6, 7, 8], [3, 20, 8, 8, 0], list(range(30))):
        got = v.take(np.array(rows, np.int64))
        assert got.dtype == np.float32 and (got == full[rows]).all()
    blocks = list(v.chunks(4))
    assert [s for s, _ in blocks] == list(range(0, 30, 4)) and (np.concatenate([b for _, b in blocks]) == full).all()
    rows, block = v.sample(10, seed=3)
    assert len(set(rows)) == 10 and (np.diff(rows) > 0).all() and (block == full[rows]).all()
    assert (v.sample(10, seed=3)[0] == rows).all() and (v.sample(99)[0] == np.arange(30)).all()
    sub = v.subset(np.array([2, 9, 21, 28])).subset(np.array([1, 3]))
    assert (sub.take(np.array([0, 1])) == full[[9, 28]]).all() and (sub.load() == full[[9, 28]]).all()
    with pytest.raises(IndexError):
        v.take(np.array([30]))
    assert view(full).shape == (30, 8) and view(np.zeros((0, 8))).shape == (0, 8) and view(v) is v


def test_arrays_give_a_view_of_the_shard_files(tmp_path):
    paths, full = shard_files(tmp_path)
    emb = tmp_path / "run" / "embeddings" / "clip_score"
    emb.mkdir(parents=True)
    for i, p in enumerate(paths):
        p.rename(emb / f"s{i}.img.npy")
    arrays = Arrays(tmp_path / "run", [f"s{i}" for i in range(len(SIZES))])
    img = arrays.image("clip_score")
    assert isinstance(img, Shards) and (img.load() == full).all()
    with pytest.raises(FileNotFoundError, match="s0.txt.npy"):
        arrays.text("clip_score")
    assert len(Arrays(tmp_path / "run", []).image("clip_score")) == 0


def planted(tmp_path, n=600, dim=32, seed=0):
    """Unit vectors around 12 centres, 30 near copies of earlier rows and 3 bad rows, in shard files."""
    rng = np.random.default_rng(seed)
    c = normalize(rng.normal(size=(12, dim)))
    x = normalize(c[rng.integers(12, size=n)] + 0.4 * rng.normal(size=(n, dim)))
    copies = {int(r): int(r) - 1 - int(rng.integers(50)) for r in rng.choice(np.arange(60, n), 30, replace=False)}
    for r, src in sorted(copies.items()):
        x[r] = normalize(x[src][None] + 0.002 * rng.normal(size=(1, dim)))[0]
    x[2], x[4], x[7] = np.nan, 0.0, np.inf  # before every copy's source
    bounds = np.linspace(0, n, 7).astype(int)
    paths = []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        paths.append(tmp_path / f"p{i}.npy")
        np.save(paths[-1], x[lo:hi].astype(np.float32))
    return Shards(paths), x.astype(np.float32), copies


@pytest.mark.parametrize("rule", ["farthest", "first", "score"])
def test_semdedup_on_a_view_is_the_array_answer_and_catches_the_planted_copies(tmp_path, rule, monkeypatch):
    v, x, copies = planted(tmp_path)
    score = np.random.default_rng(1).uniform(size=len(x))
    a = semdedup(x, 10, 0.001, rule, score)
    monkeypatch.setattr(sd, "BLOCK", 7)  # a cluster's similarities 7 columns at a time
    monkeypatch.setattr(vectors, "BATCH_BYTES", 1000)  # about one cluster a read
    b = semdedup(v, 10, 0.001, rule, score)
    assert np.array_equal(a["cluster"], b["cluster"]) and np.array_equal(a["duplicate_of"], b["duplicate_of"])
    assert np.allclose(a["max_sim"], b["max_sim"], atol=1e-6, equal_nan=True)  # blocked products: last bits
    group = np.arange(len(x))  # a copy's group is its first source's
    for r, src in sorted(copies.items()):
        group[r] = group[src]
    dups = np.flatnonzero(b["duplicate_of"] >= 0)
    assert len(dups) == len(copies) and (group[dups] == group[b["duplicate_of"][dups]]).all()
    if rule == "first":
        assert set(dups.tolist()) == set(copies)


def test_image_based_and_concept_on_a_view_are_the_array_answer(tmp_path):
    v, x, _ = planted(tmp_path)
    ok = np.ones(len(x), bool)
    ok[10] = False
    targets = x[[20, 21, 400]] + 0.01
    a, b = image_based(x, ok, targets, 8), image_based(v, ok, targets, 8)
    assert all(np.array_equal(p, q) for p, q in zip(a, b)) and a[2] >= 1
    prompts = normalize(np.random.default_rng(4).normal(size=(3, 32)))
    sa, sb = concept_score(x, ok, prompts), concept_score(v, ok, prompts)
    assert np.array_equal(sa, sb, equal_nan=True) and np.isnan(sb[[2, 4, 7, 10]]).all()


def test_kmeans_on_a_sample_assigns_every_row_to_its_nearest_centroid(tmp_path, monkeypatch):
    v, x, _ = planted(tmp_path)
    rows = np.flatnonzero(usable(v))
    monkeypatch.setattr(vectors, "PER_CENTROID", 40)  # train on 40 * 6 of the 597 rows
    cent, assign = kmeans(v.subset(rows), 6, seed=2)
    _, near = search(cent, normalize(x[rows]), 1)
    assert cent.shape == (6, 32) and (assign == near[:, 0]).all()
    again, _ = kmeans(v.subset(rows), 6, seed=2)
    assert np.array_equal(cent, again)


def global_greedy(nbr, sims, s0, want, gamma_f=1.0, gamma_r=1.0):
    """D²'s selection as one heap over the whole graph (the in-memory algorithm), written again."""
    n = len(s0)
    edges = {}
    for i in range(n):
        for j, sim in zip(nbr[i], sims[i]):
            if j >= 0:
                edges.setdefault(i, {})[int(j)] = 1.0 - sim
                edges.setdefault(int(j), {})[i] = 1.0 - sim
    s = np.array([s0[i] + sum(np.exp(-gamma_f * (1.0 - sim)) * s0[j] for j, sim in zip(nbr[i], sims[i]) if j >= 0)
                  for i in range(n)])
    cur, taken, picked = s.copy(), np.zeros(n, bool), []
    heap = [(-cur[i], i) for i in range(n)]
    heapq.heapify(heap)
    while heap and len(picked) < want:
        neg, i = heapq.heappop(heap)
        if taken[i] or -neg != cur[i]:
            continue
        taken[i] = True
        picked.append(i)
        for j, d in sorted(edges.get(i, {}).items()):
            if not taken[j]:
                cur[j] -= np.exp(-gamma_r * d) * cur[i]
                heapq.heappush(heap, (-cur[j], j))
    return taken, s


def test_d2_per_cluster_selects_the_budget_as_one_global_greedy_on_the_same_graph(tmp_path, monkeypatch):
    img, x, _ = planted(tmp_path)
    with np.errstate(invalid="ignore"):
        txt = view(normalize(x + 0.3 * np.random.default_rng(5).normal(size=x.shape)))
    monkeypatch.setattr(vectors, "BATCH_BYTES", 1000)
    difficulty = np.random.default_rng(6).uniform(-0.1, 0.4, len(x))
    r = d2_select(img, txt, difficulty, 0.3, k=6, clusters=7)
    rows = np.flatnonzero(usable(img) & usable(txt))
    assert r["selected"].sum() == round(0.3 * len(rows)) and not r["selected"][[2, 4, 7]].any()
    joined = Joined(img.subset(rows), txt.subset(rows))
    _, assign = kmeans(joined, 7, niter=10)
    nbr, sims = np.full((len(rows), 6), -1), np.full((len(rows), 6), -np.inf)
    for g in members(assign):
        s, j = knn(joined.take(g), 6)
        nbr[g], sims[g] = np.where(j >= 0, g[np.maximum(j, 0)], -1), s
    taken, s = global_greedy(nbr, sims, difficulty[rows] + 1.0, round(0.3 * len(rows)))
    assert np.array_equal(r["selected"][rows], taken)
    assert np.allclose(r["score"][rows], s)


def test_d2_on_separated_clusters_is_exact_d2(tmp_path):
    """Far-apart blobs: every true nearest neighbour is in the sample's cluster, so per-cluster D² is
    D² on the exact k-NN graph of the whole pool."""
    rng = np.random.default_rng(7)
    c = normalize(rng.normal(size=(5, 32))) * 10
    x = normalize(c[np.repeat(np.arange(5), 60)] + rng.normal(size=(300, 32))).astype(np.float32)
    difficulty = rng.uniform(0, 0.3, 300)
    r = d2_select(x, x, difficulty, 0.4, k=5, clusters=5)
    joined = normalize(np.concatenate([x, x], 1))
    sims, nbr = knn(joined, 5)
    taken, _ = global_greedy(nbr, sims, difficulty + 1.0, 120)
    assert np.array_equal(r["selected"], taken) and r["selected"].sum() == 120
