"""Near dedup's fast paths (pipeline/neardup.py, pipeline/vectors.py list_search): the inverted-file
scan's two-level top-k equals a plain top-k, the vectorised connected components equal scipy's, the
alignment's early stops change no pair within the settle RMS, and the decisions do not depend on the
thread count."""
import numpy as np
import pytest
import torch
from PIL import Image

import pipeline.neardup as nd
from pipeline.vectors import list_search, normalize

ND = {"max_rms": 4.5, "ratio": 0.75, "ratio_max_rms": 7.0}
SETTLE = max(ND["max_rms"], ND["ratio_max_rms"] / ND["ratio"])


def brute(queries, probes, base, lists, k):
    """Top k per query among the base rows of its probed lists, by a full sort."""
    s = queries @ base.T
    s[~(lists[None, :] == probes[:, :, None]).any(1)] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1)


@pytest.mark.parametrize("nlist,k", [(1, 5), (7, 3), (30, 20), (200, 4)])
def test_list_search_equals_a_full_top_k(nlist, k):
    rng = np.random.default_rng(nlist)
    base, queries = normalize(rng.normal(size=(500, 16))), normalize(rng.normal(size=(60, 16)))
    lists = rng.integers(0, nlist, 500)  # uneven lists, some shorter than k or than a block, some empty
    probes = np.stack([rng.permutation(nlist)[:min(3, nlist)] for _ in range(60)])  # distinct lists
    s, i = list_search(queries, probes, base, lists, k)
    want = brute(queries, probes, base, lists, k)
    assert np.allclose(s, want, atol=1e-5)
    found = i >= 0
    assert (found == np.isfinite(want)).all()
    assert (np.isin(lists[i[found]], probes[np.nonzero(found)[0]].ravel())).all()
    assert np.allclose((queries[np.nonzero(found)[0]] * base[i[found]]).sum(1), s[found], atol=1e-5)


def test_list_search_ties_and_a_single_row_list():
    base = np.tile(normalize(np.ones((1, 8))), (20, 1))  # all rows equal: every score ties
    lists = np.r_[np.zeros(19, np.int64), 1]
    s, i = list_search(base[:2], np.array([[0], [1]]), base, lists, 5)
    assert np.allclose(s[0], 1) and sorted(i[0]) == sorted(set(i[0])) and (i[0] < 19).all()
    assert i[1].tolist() == [19, -1, -1, -1, -1] and np.isinf(s[1, 1:]).all()


def test_components_equal_scipy():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(0)
    for _ in range(100):
        n, m = int(rng.integers(1, 200)), int(rng.integers(0, 300))
        pairs = rng.integers(0, n, (m, 2))
        label = nd.components(n, pairs)
        _, ref = connected_components(coo_matrix((np.ones(m), (pairs[:, 0], pairs[:, 1])), shape=(n, n)),
                                      directed=False)
        assert len(set(zip(label, ref))) == len(set(label)) == len(set(ref))  # the same partition
        assert all(label[r] == r for r in set(label))  # labelled by its lowest row


@pytest.fixture(scope="module")
def copies():
    """Random smooth patterns, and JPEG'd / cropped / brightened copies of some of them."""
    import io

    rng = np.random.default_rng(1)
    ims = [Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).resize((64, 64), Image.BICUBIC)
           for _ in range(300)]
    out = list(ims)
    for j, im in enumerate(ims[:40]):
        if j % 3 == 0:
            im = im.crop((4, 3, 60, 59)).resize((64, 64), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=40 + j)
        out.append(Image.open(buf))
    return np.stack([nd.thumbnail(im) for im in out])


def test_coarse_stop_changes_no_pair_within_settle(copies, monkeypatch):
    monkeypatch.setattr(nd, "IVF_ABOVE", 0)
    desc = nd.descriptors(copies)
    trip = nd.candidates(desc, np.ones(len(copies), bool), 5)
    fast = nd.aligned_rms(copies, trip, nd.view_params(), SETTLE)
    monkeypatch.setattr(nd, "COARSE_STOP", np.inf)
    full = nd.aligned_rms(copies, trip, nd.view_params(), SETTLE)
    near = (fast <= SETTLE) | (full <= SETTLE)
    assert near.sum() >= 40 and np.allclose(fast[near], full[near], atol=1e-4)
    assert (fast >= full - 1e-4).all()  # an early stop only keeps a pair further


@pytest.mark.parametrize("ivf", [False, True])
def test_decisions_do_not_depend_on_the_thread_count(copies, monkeypatch, ivf):
    if ivf:
        monkeypatch.setattr(nd, "IVF_ABOVE", 0)
    threads = torch.get_num_threads()
    try:
        runs = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            runs.append(nd.near_duplicates(copies, np.ones(len(copies), bool), **ND))
    finally:
        torch.set_num_threads(threads)
    for r in runs[1:]:
        assert (r.duplicate_of == runs[0].duplicate_of).all()
        assert np.allclose(r.rms, runs[0].rms, atol=1e-4, equal_nan=True)
    assert (runs[0].duplicate_of[300:] >= 0).mean() > 0.9  # the copies are found


def test_the_lists_built_beside_the_descriptors_are_the_serial_ones(copies, monkeypatch):
    monkeypatch.setattr(nd, "IVF_ABOVE", 0)
    desc = nd.descriptors(copies)
    index = nd.coarse_index(nd.descriptors(copies, scales=())[:, 0], desc.shape[1])
    a = nd.candidates(desc, np.ones(len(copies), bool), 5, index=index)
    b = nd.candidates(desc, np.ones(len(copies), bool), 5)
    assert (a == b).all()


def test_one_blas_thread_is_local_and_restored():
    fn = nd._blas_threads_local()
    if fn is None:
        pytest.skip("numpy's BLAS is not OpenBLAS")
    old = fn(2)
    try:
        with nd._one_blas_thread():
            assert fn(1) == 1  # the setter returns the value it replaces
        assert fn(2) == 2
    finally:
        fn(old)
