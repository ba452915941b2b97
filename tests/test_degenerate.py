"""Every global step on degenerate pools: 0, 1, 2 samples, all identical, all flat thumbnails, nothing
decodable, k or clusters above the usable samples, NaN / zero embeddings on undecodable rows.

The answers: identical images or embeddings -> all but the first (in keep order) are duplicates;
flat thumbnails carry no structure -> never a near duplicate nor an eval copy; nothing usable ->
nothing is a duplicate, D² selects nothing, image-based keeps nothing, concept scores are NaN."""
import numpy as np
import pytest
from PIL import Image

from pipeline.centroids import fit_or_reuse
from pipeline.d2 import d2_select
from pipeline.decontam import contaminated
from pipeline.neardup import groups, near_duplicates, thumbnail
from pipeline.semdedup import semdedup
from pipeline.targets import concept_score, image_based
from pipeline.vectors import kmeans, normalize, search
from shardio.evaltask import iter_split
from fixtures.shardmaker import make_task

ND = {"max_rms": 4.5, "ratio": 0.75, "ratio_max_rms": 7.0}


def textured(seed: int) -> np.ndarray:
    """A 32x32 grey thumbnail of a smooth random pattern (distinct for each seed)."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((64, 64), Image.BICUBIC)
    return thumbnail(im)


def flat(level: int) -> np.ndarray:
    return np.full((32, 32), level, np.uint8)


def near(thumbs, ok=None, **kw):
    thumbs = np.asarray(thumbs, np.uint8).reshape(-1, 32, 32)
    ok = np.ones(len(thumbs), bool) if ok is None else np.asarray(ok, bool)
    return near_duplicates(thumbs, ok, **{**ND, **kw})


def unit(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    return normalize(np.random.default_rng(seed).normal(size=(n, d)))


# near dedup

def test_near_dedup_empty_and_single():
    r = near(np.zeros((0, 32, 32)))
    assert r.duplicate_of.shape == (0,) and r.rms.shape == (0,)
    r = near([textured(1)])
    assert r.duplicate_of.tolist() == [-1] and np.isnan(r.rms).all()


def test_near_dedup_two_samples():
    assert near([textured(1), textured(2)]).duplicate_of.tolist() == [-1, -1]
    r = near([textured(1), textured(1)])
    assert r.duplicate_of.tolist() == [-1, 0] and r.rms == pytest.approx([0, 0], abs=1e-3)


@pytest.mark.parametrize("n", [3, 8, 30])
def test_near_dedup_all_identical_keeps_the_first(n):
    r = near([textured(7)] * n)
    assert r.duplicate_of.tolist() == [-1] + [0] * (n - 1)


def test_near_dedup_order_key_picks_the_kept_copy():
    r = near_duplicates(np.stack([textured(7)] * 3), np.ones(3, bool), order_key=np.array([2.0, 0.0, 1.0]), **ND)
    assert r.duplicate_of.tolist() == [1, -1, 1]


def test_near_dedup_flat_thumbnails_are_never_duplicates():
    for thumbs in ([flat(0)] * 5, [flat(v) for v in (0, 90, 200, 255)], [flat(128)] * 2 + [textured(1)]):
        r = near(thumbs)
        assert (r.duplicate_of == -1).all() and np.isnan(r.rms).all()


def test_near_dedup_nothing_decodable():
    r = near([textured(3)] * 4, ok=[False] * 4)
    assert (r.duplicate_of == -1).all() and np.isnan(r.rms).all()
    r = near([textured(3)] * 4, ok=[False, True, False, True])  # only decodable rows count
    assert r.duplicate_of.tolist() == [-1, -1, -1, 1]


def test_near_dedup_k_above_the_usable_samples():
    thumbs = [textured(1), textured(1), textured(2)] + [flat(50)] * 5
    assert near(thumbs, k=100).duplicate_of.tolist() == [-1, 0] + [-1] * 6


@pytest.mark.parametrize("ivf", [False, True])
def test_near_dedup_inverted_file_path(monkeypatch, ivf):
    """The inverted-file candidate search (large pools) finds what exact search finds, also when every
    image is the same."""
    import pipeline.neardup as nd

    if ivf:
        monkeypatch.setattr(nd, "IVF_ABOVE", 0)
    thumbs = [textured(s) for s in range(40)]
    thumbs += [thumbs[3], np.clip(thumbs[7].astype(int) + 2, 0, 255)]  # copies of 3 and 7
    r = near(thumbs)
    assert r.duplicate_of.tolist() == [-1] * 40 + [3, 7]
    assert near([textured(5)] * 12).duplicate_of.tolist() == [-1] + [0] * 11


def test_groups_without_pairs_is_identity():
    assert groups(4, np.zeros((0, 2), np.int64), np.arange(4.0)).tolist() == [0, 1, 2, 3]
    assert groups(0, np.zeros((0, 2), np.int64), np.zeros(0)).tolist() == []
    assert groups(5, np.array([[3, 1], [4, 3]]), np.array([0, 9, 0, 5, 1.0])).tolist() == [0, 4, 2, 4, 4]


# semantic dedup

def test_semdedup_empty_single_and_pair():
    r = semdedup(np.zeros((0, 8), np.float32), 10, 0.05)
    assert all(len(v) == 0 for v in r.values())
    r = semdedup(unit(1), 10, 0.05)
    assert r["duplicate_of"].tolist() == [-1] and r["cluster"].tolist() == [0] and np.isnan(r["max_sim"]).all()
    x = unit(1)
    assert semdedup(np.concatenate([x, x]), 10, 0.05, "first")["duplicate_of"].tolist() == [-1, 0]


@pytest.mark.parametrize("rule", ["farthest", "first", "score"])
def test_semdedup_all_identical_keeps_the_first_in_keep_order(rule):
    x = np.repeat(unit(1), 6, 0)
    score = np.array([0.1, 0.2, 0.9, 0.3, 0.9, 0.0])
    r = semdedup(x, 50, 0.05, rule, score)
    first = 2 if rule == "score" else 0  # highest score (ties: pool order), else pool order
    assert r["duplicate_of"].tolist() == [first if i != first else -1 for i in range(6)]


def test_semdedup_nothing_usable_and_bad_embeddings():
    x = unit(4)
    r = semdedup(x, 3, 0.05, valid=np.zeros(4, bool))
    assert (r["duplicate_of"] == -1).all() and (r["cluster"] == -1).all()
    x[1], x[3] = np.nan, 0.0  # undecodable rows
    r = semdedup(x, 100, 0.05, valid=np.array([True, False, True, False]))
    assert (r["duplicate_of"] == -1).all() and r["cluster"][[1, 3]].tolist() == [-1, -1]
    assert (r["cluster"][[0, 2]] >= 0).all()
    r = semdedup(x, 100, 0.05)  # the same rows are skipped when no mask says so
    assert r["cluster"][[1, 3]].tolist() == [-1, -1]


def test_semdedup_clusters_above_the_samples():
    x = unit(5)
    r = semdedup(np.concatenate([x, x[:2]]), 1000, 0.05, "first")
    assert r["duplicate_of"].tolist() == [-1] * 5 + [0, 1]


# image-based

def test_image_based_nothing_usable():
    keep, cluster, n = image_based(np.zeros((0, 8), np.float32), np.zeros(0, bool), unit(2, 8), 10)
    assert keep.shape == cluster.shape == (0,) and n == 0
    x = unit(5)
    x[2] = np.nan
    keep, cluster, n = image_based(x, np.zeros(5, bool), x[:1], 3)
    assert not keep.any() and (cluster == -1).all() and n == 0
    keep, cluster, n = image_based(x, np.ones(5, bool), np.zeros((0, 16), np.float32), 3)  # no targets
    assert not keep.any() and n == 0


def test_image_based_single_and_identical_samples():
    x = unit(1)
    keep, cluster, n = image_based(x, np.ones(1, bool), unit(3, seed=9), 10)
    assert keep.tolist() == [True] and cluster.tolist() == [0] and n == 1
    x = np.repeat(unit(1), 6, 0)  # one distinct point, k = 4: targets reach the cluster that holds it
    keep, cluster, n = image_based(x, np.ones(6, bool), unit(3, seed=9), 4)
    assert keep.all() and n == 1 and len(set(cluster)) == 1


def test_image_based_clusters_above_the_samples_and_bad_rows():
    x = unit(4)
    x[3] = 0.0
    valid = np.array([True, True, True, False])
    keep, cluster, n = image_based(x, valid, x[1:2] + 0.01, 50)
    assert keep.tolist() == [False, True, False, False] and n == 1
    assert cluster[3] == -1 and len(set(cluster[:3])) == 3


# D² pruning

def test_d2_nothing_usable():
    r = d2_select(np.zeros((0, 8)), np.zeros((0, 8)), np.zeros(0), 0.5)
    assert r["selected"].shape == r["score"].shape == (0,)
    x = unit(4)
    r = d2_select(x, x, np.full(4, 0.3), 0.5, valid=np.zeros(4, bool))
    assert not r["selected"].any() and np.isnan(r["score"]).all()
    r = d2_select(x, x, np.full(4, np.nan), 0.5)  # no difficulty
    assert not r["selected"].any()


@pytest.mark.parametrize("gamma_f", [0.0, 1.0])
def test_d2_one_and_two_samples(gamma_f):
    x = unit(1)
    r = d2_select(x, x, np.array([0.2]), 0.5, k=10, gamma_f=gamma_f)
    assert r["selected"].tolist() == [True] and np.isfinite(r["score"]).all()
    xx = np.concatenate([x, x])
    r = d2_select(xx, xx, np.array([0.2, 0.2]), 0.5, k=10, gamma_f=gamma_f)
    assert r["selected"].sum() == 1 and np.isfinite(r["score"]).all()


def test_d2_identical_samples_and_k_above_the_pool():
    x = np.repeat(unit(1), 6, 0)
    r = d2_select(x, x, np.full(6, 0.25), 0.5, k=50)
    assert r["selected"].sum() == 3 and np.isfinite(r["score"]).all()
    r = d2_select(unit(5), unit(5, seed=1), np.linspace(0, 0.4, 5), 0.4, k=100, clusters=50)
    assert r["selected"].sum() == 2


def test_d2_skips_nan_and_zero_embeddings():
    img, txt = unit(6), unit(6, seed=1)
    img[1], img[4], txt[4] = np.nan, 0.0, np.nan
    valid = np.array([True, False, True, True, False, True])
    r = d2_select(img, txt, np.full(6, 0.3), 0.5, valid=valid)
    assert not r["selected"][[1, 4]].any() and np.isnan(r["score"][[1, 4]]).all()
    assert r["selected"].sum() == 2 and np.isfinite(r["score"][valid]).all()


# decontamination

@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = make_task(tmp_path_factory.mktemp("task") / "colours", per_class=2)
    return root, [(name, thumbnail(im)) for name, im, _ in iter_split(root)]


def test_decontam_empty_flat_and_single(task):
    root, ev = task
    flags, nearest, rms = contaminated(np.zeros((0, 32, 32), np.uint8), [str(root)], 0.03)
    assert flags.shape == rms.shape == (0,) and nearest == []
    flags, nearest, rms = contaminated(np.stack([flat(0), flat(200), flat(200)]), [str(root)], 0.03)
    assert not flags.any() and nearest == [None] * 3 and np.isnan(rms).all()
    name, th = ev[3]
    flags, nearest, rms = contaminated(th[None], [str(root)], 0.03)
    assert flags.tolist() == [True] and nearest == [name] and rms[0] == pytest.approx(0, abs=1e-4)


def test_decontam_identical_copies_all_flagged(task):
    root, ev = task
    name, th = ev[5]
    thumbs = np.stack([th] * 4 + [textured(1), flat(9)])
    flags, nearest, rms = contaminated(thumbs, [str(root)], 0.03)
    assert flags.tolist() == [True] * 4 + [False, False] and nearest == [name] * 4 + [None, None]
    assert np.isfinite(rms[4]) and np.isnan(rms[5])


# concept score

def test_concept_score_degenerate_rows():
    prompts = unit(2, seed=3)
    assert concept_score(np.zeros((0, 16), np.float32), np.zeros(0, bool), prompts).shape == (0,)
    x = unit(4)
    assert np.isnan(concept_score(x, np.zeros(4, bool), prompts)).all()
    x[1], x[2] = np.nan, 0.0
    s = concept_score(x, np.array([True, False, True, True]), prompts)
    assert np.isnan(s[[1, 2]]).all() and np.isfinite(s[[0, 3]]).all()  # a zero embedding has no score
    same = concept_score(np.repeat(unit(1), 3, 0), np.ones(3, bool), prompts)
    assert np.isfinite(same).all() and len(set(same.tolist())) == 1
    assert np.isnan(concept_score(unit(2), np.ones(2, bool), np.zeros((0, 16), np.float32))).all()


# the vector steps under them

def test_search_and_kmeans_on_tiny_inputs(tmp_path):
    for backend in ("faiss", "torch"):
        s, i = search(np.zeros((0, 4), np.float32), unit(3, 4), 5, backend)
        assert s.shape == i.shape == (3, 0)
        s, i = search(unit(2, 4), np.zeros((0, 4), np.float32), 5, backend)
        assert s.shape == i.shape == (0, 2)
        cent, assign = kmeans(np.zeros((0, 4), np.float32), 10, backend=backend)
        assert cent.shape == (0, 4) and assign.shape == (0,)
        cent, assign = kmeans(unit(3, 4), 10, backend=backend)
        assert cent.shape == (3, 4) and sorted(assign.tolist()) == [0, 1, 2]
    cent, assign, how = fit_or_reuse(np.zeros((0, 4), np.float32), 5, 10, 0, "faiss", tmp_path, {"a": 1})
    assert assign.shape == (0,) and how == "fitted" and not list(tmp_path.iterdir())


def test_decontam_eval_thumbnails_are_cached_until_the_task_changes(task, tmp_path, monkeypatch):
    import os

    import shardio.evaltask
    from pipeline.decontam import task_thumbs

    root, ev = task
    thumbs, names = task_thumbs(root, tmp_path / "cache")
    assert names == [n for n, _ in ev] and np.array_equal(thumbs, np.stack([t for _, t in ev]))
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    with monkeypatch.context() as m:  # read back: the task is not read again
        m.setattr(shardio.evaltask, "iter_split", lambda *a, **k: pytest.fail("task read again"))
        again, names2 = task_thumbs(root, tmp_path / "cache")
        assert names2 == names and np.array_equal(again, thumbs)
        flags, nearest, _ = contaminated(ev[3][1][None], [str(root)], 0.03, tmp_path / "cache")
        assert flags.tolist() == [True] and nearest == [ev[3][0]]
    shard = next(f for f in (root / "test").rglob("*") if f.is_file())
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the task changed: made again
    task_thumbs(root, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
