"""DataComp pools as shipped: filter on metadata alone (no image on disk), reshard the uid list into
shards, and cut-offs over the pool's metadata with the scores' own precision."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.reshard import reshard
from pipeline.run import run_curation
from shardio.shards import iter_tar_samples
from fixtures.oracles import datacomp_top_fraction_uids
from fixtures.shardmaker import make_pool, uid


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """60 samples in tars; the metadata lists them plus 6 rows that were never downloaded."""
    root = tmp_path_factory.mktemp("md")
    make_pool(root / "shards", n=60, per_shard=20)
    rng = np.random.default_rng(0)
    (root / "metadata").mkdir()
    for s in range(3):
        ids = list(range(20 * s, 20 * s + 20)) + [100 + 2 * s, 101 + 2 * s]  # two listed, not downloaded
        n = len(ids)
        t = pa.table({"uid": [uid(i) for i in ids], "url": [f"https://example.com/{i}.jpg" for i in ids],
                      "text": [f"a {['red', 'green', 'blue', 'yellow'][i % 4]} square" for i in ids],
                      "original_width": rng.integers(150, 600, n), "original_height": rng.integers(150, 600, n),
                      # float64 scores 1e-9 apart: a float32 cast would merge them and move the cutoff
                      "clip_l14_similarity_score": 0.25 + rng.integers(0, 8, n) * 1e-9})
        pq.write_table(t, root / "metadata" / f"{s:08x}deadbeef.parquet")
        emb = rng.normal(size=(n, 16)).astype(np.float16)
        np.savez(root / "metadata" / f"{s:08x}deadbeef.npz", l14_img=emb, l14_txt=emb)
    return root


def _all_metadata(root):
    return pd.concat([pd.read_parquet(p) for p in sorted((root / "metadata").glob("*.parquet"))])


def test_metadata_only_run_gives_datacomps_uids_without_an_image(pool, tmp_path):
    cfg = {"clip": [{"precomputed": "l14"}], "filters": [{"type": "clip_score", "fraction": 0.3}]}
    m = run_curation(str(pool / "metadata"), tmp_path / "out", cfg, progress=False)
    md = _all_metadata(pool)
    assert m["samples_in"] == len(md) == 66
    expect = datacomp_top_fraction_uids(md["uid"], md["clip_l14_similarity_score"].to_numpy(), 0.3)
    assert np.load(tmp_path / "out" / "uids.npy").tobytes() == expect.tobytes()
    assert not (tmp_path / "out" / "shards").exists() and (tmp_path / "out" / "report.html").is_file()
    # the uid list turns into shards holding exactly the listed samples that were downloaded
    r = reshard(tmp_path / "out" / "uids.npy", str(pool / "shards"), tmp_path / "resharded", samples_per_shard=8)
    got = {json_uid(s) for p in sorted((tmp_path / "resharded" / "shards").glob("*.tar")) for s in iter_tar_samples(p)}
    listed = {f"{a:016x}{b:016x}" for a, b in expect.tolist()}
    assert got == listed - {uid(i) for i in range(100, 106)}
    assert r["not_found"] == len(listed - got)


def json_uid(sample) -> str:
    import json

    return json.loads(sample["json"])["uid"]


def test_cutoff_over_the_metadata_includes_rows_never_downloaded(pool, tmp_path):
    """Tars with DataComp sidecars: the cut-off is over every listed row, as DataComp computes it."""
    import shutil

    for p in (pool / "shards").glob("*.tar"):
        shutil.copy(p, tmp_path / p.name)
    for i, p in enumerate(sorted((pool / "metadata").glob("*.parquet"))):
        shutil.copy(p, tmp_path / f"{i:05d}.parquet")
        shutil.copy(p.with_suffix(".npz"), tmp_path / f"{i:05d}.npz")
    cfg = {"clip": [{"precomputed": "l14"}], "filters": [{"type": "clip_score", "fraction": 0.3}]}
    m = run_curation(str(tmp_path), tmp_path / "out", cfg, progress=False)
    md = _all_metadata(pool)
    expect = datacomp_top_fraction_uids(md["uid"], md["clip_l14_similarity_score"].to_numpy(), 0.3)
    downloaded = {uid(i) for i in range(60)}
    listed = [f"{a:016x}{b:016x}" for a, b in expect.tolist()]
    kept = np.load(m["uids"])
    assert [f"{a:016x}{b:016x}" for a, b in kept.tolist()] == [u for u in listed if u in downloaded]
    assert m["filters"]["clip_score[top0.3]"]["cutoff_over"] == "metadata"
    assert m["listed_not_downloaded"] == {} and m["samples_in"] == 60


@pytest.mark.parametrize("cfg, words", [
    ({"clip": [{"model": "curate-tiny"}]}, "needs images"),
    ({"clip": [{"precomputed": "l14"}], "filters": [{"type": "near_dedup"}]}, "compares images"),
])
def test_metadata_only_refuses_what_needs_images(pool, tmp_path, cfg, words):
    with pytest.raises(ValueError, match=words):
        run_curation(str(pool / "metadata"), tmp_path / "out", cfg, progress=False)


def test_image_based_on_metadata_alone_with_target_embeddings(pool, tmp_path):
    """Targets given as embeddings (.npy, the pool model's space): no model, no image; the kept rows are
    exactly those in the clusters the targets fall in."""
    with np.load(sorted((pool / "metadata").glob("*.npz"))[0]) as z:
        emb = z["l14_img"].astype(np.float32)
    np.save(tmp_path / "targets.npy", emb[[0, 7]])  # two pool rows' own embeddings
    cfg = {"clip": [{"precomputed": "l14"}],
           "filters": [{"type": "image_based", "clusters": 6, "targets": [str(tmp_path / "targets.npy")]}]}
    m = run_curation(str(pool / "metadata"), tmp_path / "out", cfg, progress=False)
    md = pd.read_parquet(tmp_path / "out" / "metadata.parquet")
    cluster = md["image_based[k6].cluster"].to_numpy()
    uids = _all_metadata(pool)["uid"].tolist()
    wanted = {cluster[md["uid"].tolist().index(uids[i])] for i in (0, 7)}
    assert set(md.loc[md["keep"], "uid"]) == set(md.loc[np.isin(cluster, list(wanted)), "uid"])
    assert 0 < m["kept"] < m["samples_in"] and m["filters"]["image_based[k6]"]["target_images"] == 2
    np.save(tmp_path / "wide.npy", np.ones((2, 32), np.float32))
    cfg["filters"][0]["targets"] = [str(tmp_path / "wide.npy")]
    with pytest.raises(Exception, match="32 dimensions, the pool's image embeddings 16"):
        run_curation(str(pool / "metadata"), tmp_path / "out2", cfg, progress=False)


def test_image_based_survivors_only_judges_what_earlier_filters_keep(pool, tmp_path):
    """``survivors_only``: the same kept rows (a row is kept only when every filter keeps it), the
    image-based rule judged only on the CLIP score filter's survivors: the others get cluster -1 and no
    image_based entry in drop_reasons."""
    with np.load(sorted((pool / "metadata").glob("*.npz"))[0]) as z:
        emb = z["l14_img"].astype(np.float32)
    np.save(tmp_path / "targets.npy", emb[[0, 3, 7]])
    np.save(tmp_path / "cent.npy", emb[[0, 1, 2, 3, 5, 7]])
    img = {"type": "image_based", "targets": [str(tmp_path / "targets.npy")], "centroids": str(tmp_path / "cent.npy")}
    runs = {}
    for lazy in (False, True):
        cfg = {"clip": [{"precomputed": "l14"}],
               "filters": [{"type": "clip_score", "fraction": 0.5}, {**img, "survivors_only": lazy}]}
        m = run_curation(str(pool / "metadata"), tmp_path / f"out{lazy}", cfg, progress=False)
        runs[lazy] = (m, pd.read_parquet(tmp_path / f"out{lazy}" / "metadata.parquet"))
    (m0, full), (m1, lazy) = runs[False], runs[True]
    assert full["uid"].tolist() == lazy["uid"].tolist() and full["keep"].tolist() == lazy["keep"].tolist()
    assert m0["uid_count"] == m1["uid_count"] > 0
    col = "image_based[given].cluster"
    passed = ~full["drop_reasons"].map(lambda r: "clip_score[top0.5]" in list(r))
    assert (lazy.loc[passed, col] == full.loc[passed, col]).all()
    assert (lazy.loc[~passed, col] == -1).all() and (full.loc[~passed, col] >= 0).any()
    assert not lazy.loc[~passed, "drop_reasons"].map(lambda r: "image_based[given]" in list(r)).any()
    assert full.loc[~passed, "drop_reasons"].map(lambda r: "image_based[given]" in list(r)).any()
    assert m1["filters"]["image_based[given]"]["rows_judged"] == int(passed.sum())
