"""Global filters (near / semantic dedup, image-based, D², concept) on planted data; the vector
backends agree; every strategy accounts for every sample; DataComp's uid rule, byte for byte."""
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.d2 import d2_select
from pipeline.neardup import near_duplicates, rival_rms, thumbnail
from pipeline.semdedup import semdedup
from shardio.shards import ShardWriter
from pipeline.targets import concept_score, image_based
from pipeline.vectors import kmeans, knn, normalize, search
from pipeline.run import run_curation
from pipeline.config import load_config
from fixtures.shardmaker import uid


def pattern(seed: int, size: int = 64) -> Image.Image:
    """A smooth random colour pattern: 6x6 random colours upsampled (distinct for each seed)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)


def jpeg(im: Image.Image, q: int = 75) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return buf.getvalue()


# index -> (kind, index of its original)
NEAR = {10: ("exact", 9), 20: ("crop", 19), 30: ("resize", 29), 40: ("reencode", 39)}
N = 48


def write_pool(out):
    with ShardWriter(out, 24) as w:
        for i in range(N):
            kind, src = NEAR.get(i, (None, i))
            im = pattern(src)
            if kind == "crop":
                im = im.crop((3, 4, 3 + 57, 4 + 57)).resize((64, 64), Image.BICUBIC)
            elif kind == "resize":
                im = im.resize((45, 45), Image.BICUBIC)
            data = jpeg(pattern(src)) if kind in (None, "exact") else jpeg(im, 55)
            if i == 5:
                data = b"not an image"
            meta = {"uid": uid(i), "original_width": 64, "original_height": 64}
            w.write(f"{i:09d}", data, "jpg", f"pattern number {src}", meta)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("g")
    write_pool(tmp / "pool")
    return tmp


def curate(pool, filters):
    cfg = {"clip": [{"model": "curate-tiny", "batch_size": 16}], "filters": filters}
    n = len(list((pool / "out").glob("*"))) if (pool / "out").exists() else 0
    out = pool / f"out{n}_{len(filters)}_{filters[0]['type'] if filters else 'none'}"
    m = run_curation(str(pool / "pool"), out, cfg, progress=False, work=pool / "work")
    return m, pd.read_parquet(out / "metadata.parquet").set_index("uid")


def test_near_dedup_drops_exactly_the_planted_copies(pool):
    m, df = curate(pool, [{"type": "near_dedup"}])
    dropped = set(df.index[df["drop_reason"] == "near_dedup"])
    assert dropped == {uid(i) for i in NEAR}
    for i, (_, src) in NEAR.items():
        assert df.loc[uid(i), "near_dedup.dup_of"] == uid(src) and df.loc[uid(src), "keep"]
    assert df.loc[uid(5), "drop_reason"] == "format"


def thumbs_of(*images) -> np.ndarray:
    return np.stack([thumbnail(im) for im in images])


def test_ratio_test_catches_a_heavy_copy_unless_a_look_alike_is_as_near():
    a = pattern(1)
    heavy = Image.open(io.BytesIO(jpeg(a.crop((4, 3, 60, 59)).resize((30, 30), Image.BICUBIC), 20)))
    light = Image.open(io.BytesIO(jpeg(a, 60)))
    arr = np.asarray(a).copy()
    arr[24:32, 24:32] = 255 - arr[24:32, 24:32]  # a different image that shares most of a's pixels
    look_alike = Image.fromarray(arr)
    others = [pattern(s) for s in range(10, 30)]

    def dup_of(*ims, **kw):
        th = thumbs_of(*ims, *others)
        return list(near_duplicates(th, np.ones(len(th), bool), **{"max_rms": 4.5, **kw}).duplicate_of[:len(ims)])

    ratio = {"ratio": 0.75, "ratio_max_rms": 7.0}
    assert dup_of(a, heavy, ratio=0, ratio_max_rms=7.0) == [-1, -1]  # beyond max_rms, no ratio test
    assert dup_of(a, heavy, **ratio) == [-1, 0]  # far nearer to a than to anything else
    assert dup_of(a, heavy, light, **ratio) == [-1, 0, 0]  # a sure copy of a is no rival
    assert dup_of(a, heavy, look_alike, **ratio) == [-1, -1, -1]  # ambiguous: both stay


def test_rival_rms_skips_both_groups():
    pairs, rms = np.array([[0, 1], [0, 2], [1, 3]]), np.array([5.0, 8.0, 9.0])
    assert rival_rms(pairs, rms, np.arange(4)).tolist() == [8.0, 5.0, 5.0]
    assert rival_rms(pairs, rms, np.array([0, 1, 1, 3])).tolist() == [9.0, np.inf, 5.0]


def test_near_dedup_config_names_a_bad_band():
    with pytest.raises(ValueError, match="ratio_max_rms"):
        load_config({"filters": [{"type": "near_dedup", "max_rms": 8, "ratio_max_rms": 7}]})
    load_config({"filters": [{"type": "near_dedup", "max_rms": 8, "ratio": 0}]})


STRATEGIES = [
    [{"type": "near_dedup"}],
    [{"type": "semantic_dedup", "clusters": 4, "eps": 0.001, "keep": "first"}],
    [{"type": "image_based", "clusters": 6, "targets": ["POOL"]}],
    [{"type": "d2_pruning", "budget": 0.5, "k": 5}],
    [{"type": "concept", "concept": "pattern", "prompts": ["a colourful pattern"], "threshold": 0.0}],
    [{"type": "exact_dedup"}, {"type": "near_dedup"}, {"type": "semantic_dedup", "clusters": 3},
     {"type": "clip_score", "fraction": 0.8}, {"type": "d2_pruning", "budget": 0.7}],
]


@pytest.mark.parametrize("filters", STRATEGIES, ids=lambda f: "+".join(x["type"] for x in f))
def test_every_strategy_accounts_for_every_sample(pool, filters):
    filters = [{**f, "targets": [str(pool / "pool" / "00000.tar")]} if f.get("targets") else f for f in filters]
    m, df = curate(pool, filters)
    first = load_config({"clip": [{"model": "x"}], "filters": filters}).filters[0].instance
    assert m["samples_in"] == N == len(df) and sorted(df.index) == sorted(uid(i) for i in range(N))
    assert df.loc[uid(5), "drop_reason"] == "format"
    assert set(df["drop_reason"].dropna()) <= {"format"} | set(m["filters"])
    if filters[0]["type"] == "semantic_dedup":  # byte-identical images embed identically: the copy goes
        assert df.loc[uid(10), "drop_reason"] == first and df.loc[uid(9), "keep"]
        assert df.loc[uid(10), f"{first}.dup_of"] == uid(9)
    if filters[0]["type"] == "d2_pruning":
        assert m["kept"] == round(0.5 * (N - 1)) and df[f"{first}.score"].notna().sum() == N - 1
    if filters[0]["type"] == "concept":
        assert df["concept[pattern].score"].notna().sum() == N - 1


def test_datacomp_top30_uids_are_byte_identical(pool):
    m, df = curate(pool, [{"type": "clip_score", "fraction": 0.3}])
    # DataComp's rule, independently: n = int(len * fraction), threshold = -sort(-scores)[n], keep >= it
    scores = df["clip_score"].dropna()
    threshold = -np.sort(-scores.to_numpy())[int(len(scores) * 0.3)]
    kept = scores.index[scores >= threshold]
    ref = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in kept], np.dtype("u8,u8"))
    ref.sort()
    assert np.load(m["uids"]).tobytes() == ref.tobytes()


def blobs(n_per, centres, spread, seed=0):
    rng = np.random.default_rng(seed)
    c = normalize(rng.normal(size=(centres, 32)))
    x = np.concatenate([c[i] + spread * rng.normal(size=(n_per, 32)) for i in range(centres)])
    return normalize(x), np.repeat(np.arange(centres), n_per)


def test_backends_agree_on_search_and_kmeans():
    x, _ = blobs(40, 5, 0.3)
    rng = np.random.default_rng(1)
    r = normalize(rng.normal(size=(500, 32)))
    for data in (x, r):
        s1, i1 = search(data, data[:50], 5, "faiss")
        s2, i2 = search(data, data[:50], 5, "torch")
        assert (i1 == i2).all() and np.allclose(s1, s2, atol=1e-5)
        c1, a1 = kmeans(data, 8, seed=3, backend="faiss")
        c2, a2 = kmeans(data, 8, seed=3, backend="torch")
        assert (a1 == a2).all() and np.allclose(c1, c2, atol=1e-5)


def test_knn_is_exact_search_without_the_row_itself():
    x = normalize(np.random.default_rng(2).normal(size=(300, 16)))
    s, i = knn(x, 4)
    es, ei = search(x, x, 5)
    assert (i == ei[:, 1:]).all() and np.allclose(s, es[:, 1:])
    s, i = knn(x[:3], 4)  # fewer rows than k: -inf / -1 past the others
    assert (i[:, 2:] == -1).all() and np.isinf(s[:, 2:]).all() and (i[:, :2] >= 0).all()


def test_semdedup_flags_exactly_the_planted_near_copies_and_keeps_by_rule():
    rng = np.random.default_rng(0)
    x = normalize(rng.normal(size=(200, 64)))
    copies = {200 + j: src for j, src in enumerate([3, 50, 77, 120, 199])}
    x = np.concatenate([x, normalize(x[list(copies.values())] + 0.01 * rng.normal(size=(5, 64)))])
    r = semdedup(x, k=8, eps=0.01, rule="first")
    assert {i for i in range(len(x)) if r["duplicate_of"][i] >= 0} == set(copies)
    assert all(r["duplicate_of"][c] == s for c, s in copies.items())
    score = np.zeros(len(x))
    score[list(copies)] = 1.0  # copies score higher: with the score rule they stay, originals go
    r = semdedup(x, k=8, eps=0.01, rule="score", score=score)
    assert {i for i in range(len(x)) if r["duplicate_of"][i] >= 0} == set(copies.values())


def test_image_based_keeps_the_clusters_that_targets_fall_in():
    x, label = blobs(30, 4, 0.05)
    targets = x[label == 2][:5] + 0.01
    keep, cluster, n_target = image_based(x, np.ones(len(x), bool), targets, k=4, seed=0)
    assert n_target >= 1 and (keep == (label == 2)).all()


def test_d2_meets_the_budget_and_spreads_over_clusters():
    x, label = blobs(50, 2, 0.05)
    difficulty = np.where(label == 0, 0.9, 0.5)  # top-by-score would take cluster 0 only
    r = d2_select(x, x, difficulty, budget=0.5, k=10, gamma_f=1.0, gamma_r=1.0)
    assert r["selected"].sum() == 50
    assert 0 < r["selected"][label == 1].sum() < 50 and r["selected"][label == 0].sum() < 50


def test_concept_score_is_the_best_prompt_cosine():
    img = normalize(np.eye(4)[[0, 1, 2]] + 0.1)
    prompts = np.eye(4)[[1, 3]]
    s = concept_score(img, np.array([True, True, False]), prompts)
    assert s[1] == pytest.approx(img[1] @ prompts[0], abs=1e-6) and np.isnan(s[2])


def test_precomputed_datacomp_scores_and_embeddings_are_used(tmp_path):
    """A DataComp-style pool: scores in the shard parquet, embeddings in the shard npz, no model."""
    import pyarrow.parquet as pq

    write_pool(tmp_path / "pool")
    rng = np.random.default_rng(0)
    emb = normalize(rng.normal(size=(N, 16)))
    emb[10] = emb[9]  # a planted semantic duplicate
    scores = {}
    for shard in sorted((tmp_path / "pool").glob("*.parquet")):
        t = pq.read_table(shard).to_pandas()
        rows = [int(u, 16) for u in t["uid"]]
        t["clip_l14_similarity_score"] = rng.uniform(0.1, 0.4, len(t)).astype(np.float32)
        scores.update(zip(t["uid"], t["clip_l14_similarity_score"]))
        t.to_parquet(shard)
        np.savez(shard.with_suffix(".npz"), l14_img=emb[rows].astype(np.float16), l14_txt=emb[rows].astype(np.float16))
    cfg = {"clip": [{"precomputed": "l14"}],
           "filters": [{"type": "semantic_dedup", "clusters": 2, "eps": 0.001, "keep": "first"},
                       {"type": "clip_score", "fraction": 0.5}]}
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", cfg, progress=False)
    df = pd.read_parquet(tmp_path / "out" / "metadata.parquet").set_index("uid")
    assert df.loc[uid(10), "drop_reasons"].tolist()[0] == "semantic_dedup[eps0.001]"
    assert np.allclose(df["clip_score"].drop(uid(5)), pd.Series(scores).drop(uid(5)).loc[df.index.drop(uid(5))])
    # a second scorer column over the finished ingest: the shards are not read again, the uids line up
    import shutil

    shutil.rmtree(tmp_path / "out" / "columns" / "clip_score")
    m2 = run_curation(str(tmp_path / "pool"), tmp_path / "out", cfg, progress=False)
    assert m2["run"]["stage_runs"] == 2 and m2["kept"] == m["kept"]  # one precomputed column per shard
    every = np.array(list(scores.values()), np.float32)  # DataComp: over every metadata row, decodable or not
    assert m["thresholds"]["clip_score[top0.5]"] == pytest.approx(-np.sort(-every)[int(len(every) * 0.5)])


def test_image_based_with_precomputed_only_is_a_clear_error():
    from pipeline.config import load_config

    with pytest.raises(ValueError, match="needs a 'model'"):
        load_config({"clip": [{"precomputed": "l14"}],
                     "filters": [{"type": "image_based", "targets": ["x"]}]})


def test_nightly_runs_reuse_centroids_until_the_pool_grows_past_the_rule(pool):
    cfg = {"clip": [{"model": "curate-tiny", "batch_size": 16}],
           "filters": [{"type": "semantic_dedup", "clusters": 3, "eps": 0.001}]}
    work = pool / "work-centroids"

    def run(pattern, name):
        m = run_curation(str(pool / "pool" / pattern), pool / name, cfg, progress=False, work=work)
        (info,) = m["filters"].values()
        return info["centroids"]

    assert run("00000.tar", "night1") == "fitted"                 # first run
    assert run("{00000..00001}.tar", "night2") == "fitted"        # pool doubled: > 50% growth, refit
    assert run("{00000..00001}.tar", "night3") == "reused"        # same pool: assign to saved centroids
    cfg["filters"][0]["clusters"] = 4
    assert run("{00000..00001}.tar", "night4") == "fitted"        # another config: refit


def test_semdedup_refuses_a_cluster_too_big_for_memory(monkeypatch):
    import pipeline.semdedup as sd

    monkeypatch.setattr(sd, "MAX_CLUSTER", 10)
    with pytest.raises(ValueError, match="raise 'clusters'"):
        sd.semdedup(normalize(np.random.default_rng(0).normal(size=(50, 8))), k=1, eps=0.1)


def test_d2_and_semdedup_with_two_level_kmeans(monkeypatch):
    """Many clusters (above TWO_LEVEL): D² still selects its budget from every blob, and SemDeDup still
    catches a planted copy, with k-means in two levels over the joined / image view."""
    import pipeline.vectors as vectors
    from pipeline.semdedup import semdedup

    monkeypatch.setattr(vectors, "TWO_LEVEL", 3)
    x, label = blobs(50, 2, 0.05)
    r = d2_select(x, x, np.where(label == 0, 0.9, 0.5), budget=0.5, k=5, clusters=12)
    assert r["selected"].sum() == 50 and 0 < r["selected"][label == 1].sum() < 50
    y = x.copy()
    y[7] = y[3]  # a copy
    d = semdedup(y, 12, eps=1e-4, rule="first")
    assert d["duplicate_of"][7] == 3 and (d["cluster"] >= 0).all() and len(set(d["cluster"])) > 3
