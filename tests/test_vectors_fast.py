"""The fast paths of the global steps' vector work: blocked torch products give the exact answers of
one product and of faiss; k-means seeds every separated blob (also after the random projection) and
survives empty clusters; the joined D² view is unit length and the pair normalised again; ``take``
writes into a given array."""
import numpy as np
import pytest

import pipeline.vectors as vectors
from pipeline.d2 import Joined
from pipeline.embeddings import Shards, view
from pipeline.vectors import assign, kmeans, knn, lloyd, normalize, search, usable


def blobs(centres, n_per, dim, spread, seed=0):
    rng = np.random.default_rng(seed)
    c = normalize(rng.normal(size=(centres, dim)))
    x = normalize(np.repeat(c, n_per, 0) + spread * rng.normal(size=(centres * n_per, dim)))
    return x, np.repeat(np.arange(centres), n_per)


def test_blocked_torch_search_and_knn_are_one_product_and_faiss(monkeypatch):
    x = normalize(np.random.default_rng(0).normal(size=(300, 24)))
    x = np.concatenate([x, x[:20]])  # exact copies: the row itself is still never its own neighbour
    s0, i0 = search(x, x[:90], 4, "torch")
    k0, j0 = knn(x, 5, "torch")
    monkeypatch.setattr(vectors, "SIM_FLOATS", 7 * len(x))  # 7 rows a product
    s1, i1 = search(x, x[:90], 4, "torch")
    k1, j1 = knn(x, 5, "torch")
    kf, jf = knn(x, 5, "faiss")
    assert np.array_equal(i0, i1) and np.allclose(s0, s1, atol=1e-6)
    assert np.allclose(k0, k1, atol=1e-6) and np.allclose(k0, kf, atol=1e-5)
    assert (j1 != np.arange(len(x))[:, None]).all() and (k1[:20, 0] > 0.9999).all()  # the copy comes first
    assert np.array_equal(np.sort(j0[20:300], 1), np.sort(jf[20:300], 1))


def test_nearest_centroid_is_the_same_for_unnormalised_rows():
    x, _ = blobs(6, 40, 16, 0.3)
    scaled = x * np.random.default_rng(1).uniform(0.1, 5, (len(x), 1))
    cent, lab = kmeans(x, 6, seed=1)
    _, near = search(cent, x, 1, "faiss")
    assert np.array_equal(lab, near[:, 0]) and np.array_equal(assign(scaled, cent), lab)


@pytest.mark.parametrize("dim", [16, 200])  # 200 > PROJ: seeding measures projected distances
def test_kmeans_finds_separated_blobs(dim):
    x, label = blobs(12, 30, dim, 0.3 / np.sqrt(dim), seed=dim)
    for seed in range(3):
        cent, lab = kmeans(x, 12, niter=5, seed=seed)
        pairs = set(zip(label.tolist(), lab.tolist()))
        assert len(pairs) == 12 and len({c for _, c in pairs}) == 12  # one cluster a blob
        assert np.allclose(np.linalg.norm(cent, axis=1), 1, atol=1e-5)


def test_empty_clusters_are_split_and_centroids_stay_finite():
    x = normalize(np.random.default_rng(2).normal(size=(3, 8))).astype(np.float32)
    x = np.repeat(x, 10, 0)  # 3 distinct points, 6 centroids
    cent = lloyd(x, 6, 4, seed=0)
    assert cent.shape == (6, 8) and np.isfinite(cent).all()
    assert np.allclose(np.linalg.norm(cent, axis=1), 1, atol=1e-5)


def test_joined_rows_are_the_pair_normalised_again(tmp_path):
    rng = np.random.default_rng(3)
    img, txt = rng.normal(size=(50, 6)).astype(np.float16), rng.normal(size=(50, 10)).astype(np.float16)
    np.save(tmp_path / "i.npy", img), np.save(tmp_path / "t.npy", txt)
    j = Joined(Shards([tmp_path / "i.npy"]), Shards([tmp_path / "t.npy"])).subset(np.arange(3, 50))
    rows = np.array([40, 2, 9, 9, 0])
    want = normalize(np.concatenate([normalize(img.astype(np.float32)), normalize(txt.astype(np.float32))], 1))
    assert j.unit and np.allclose(j.take(rows), want[3 + rows], atol=1e-6)
    out = np.zeros((len(rows), 20), np.float32)
    view(img).take(rows, out[:, 4:10])
    assert np.array_equal(out[:, 4:10], img[rows].astype(np.float32)) and not out[:, :4].any()


def test_usable_on_float16_bits_is_usable_in_float32(tmp_path):
    x = np.random.default_rng(4).normal(size=(40, 5)).astype(np.float16)
    x[3, 1], x[5, 0], x[7], x[9, 2], x[11] = np.nan, np.inf, 0, -np.inf, -0.0
    x[13] = np.float16(6e-8)  # subnormal: not zero
    np.save(tmp_path / "a.npy", x[:25]), np.save(tmp_path / "b.npy", x[25:])
    want = np.isfinite(x.astype(np.float32)).all(1) & (np.abs(x.astype(np.float32)).max(1) > 0)
    assert np.array_equal(usable(x), want) and np.array_equal(usable(x.astype(np.float32)), want)
    v = Shards([tmp_path / "a.npy", tmp_path / "b.npy"])
    assert np.array_equal(usable(v), want) and want[13] and want.sum() == 35
    assert np.array_equal([b for _, b in v.stored(7)][4], x[25:32])



def test_kmeans_in_two_levels_above_two_level(monkeypatch, tmp_path):
    """Above TWO_LEVEL centroids: about k centroids, every row at the nearest centroid of its coarse
    cluster, planted blobs kept apart, and saved centroids reused in two levels with the same answer."""
    from pipeline.centroids import fit_or_reuse
    from pipeline.vectors import assign_levels, kmeans_levels, shares

    monkeypatch.setattr(vectors, "TWO_LEVEL", 8)
    x, truth = blobs(40, 25, 16, 0.05)
    cent, lab = kmeans(x, 40, niter=10, seed=0)
    assert 36 <= len(cent) <= 40 and lab.max() < len(cent)
    # rows of one planted blob share a cluster, and a cluster mostly holds one blob
    pure = np.mean([np.bincount(truth[lab == c]).max() / (lab == c).sum() for c in np.unique(lab)])
    assert pure > 0.9
    cent2, lab2, coarse, parent = kmeans_levels(view(x), 40, 10, 0)
    assert np.array_equal(cent, cent2) and np.array_equal(lab, lab2)
    top = assign(x, coarse)
    for i in range(len(x)):  # each row: the best of its coarse cluster's centroids
        mine = np.flatnonzero(parent == top[i])
        assert lab[i] == mine[np.argmax(cent[mine] @ x[i])]
    assert np.array_equal(assign_levels(x, coarse, cent, parent), lab)
    assert shares(np.array([0, 5, 1, 94]), 10).tolist() == [0, 1, 1, 9] and shares(np.array([3, 0]), 9).tolist() == [3, 0]
    got = [fit_or_reuse(x, 40, 10, 0, "auto", tmp_path, {"t": 1}) for _ in range(2)]
    assert [g[2] for g in got] == ["fitted", "reused"] and np.array_equal(got[0][1], got[1][1])
