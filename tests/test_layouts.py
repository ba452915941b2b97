"""Pool layouts as real crawls have them: subfolders, same-named shards in different folders, files
that are no shards, dangling links, tar members with no key or no extension. Every sample and every
file is accounted for; flat pools keep their ids."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.ingest import derive_uid
from pipeline.reshard import reshard
from pipeline.run import plan, run_curation
from shardio.shards import expand, iter_tar_samples, shard_id
from fixtures.shardmaker import write_members as _tar

META = {"filters": []}


def _jpg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def _samples(keys: list[str], seed: int) -> list[tuple[str, bytes]]:
    out = []
    for i, k in enumerate(keys):  # no uid in the json: uids are derived from shard id + key
        out += [(f"{k}.jpg", _jpg(seed + i)), (f"{k}.txt", f"a photo of {k}".encode()),
                (f"{k}.json", json.dumps({"url": f"https://x/{seed}/{k}"}).encode())]
    return out


def _nested(root: Path) -> Path:
    pool = root / "pool"
    _tar(pool / "part-a" / "00000.tar", _samples(["a", "b"], 0))
    _tar(pool / "part-b" / "00000.tar", _samples(["a", "c"], 10))  # same file name, same key "a"
    _tar(pool / "part-b" / "deep" / "00001.tar", _samples(["d"], 20))
    _tar(pool / "00000.tar", _samples(["e"], 30))
    return pool


def test_a_nested_pool_is_read_whole_and_same_names_stay_distinct(tmp_path):
    pool = _nested(tmp_path)
    m = run_curation(str(pool), tmp_path / "out", META, progress=False)
    meta = pd.read_parquet(m["metadata"])
    want = {("00000", "e"), ("part-a/00000", "a"), ("part-a/00000", "b"), ("part-b/00000", "a"),
            ("part-b/00000", "c"), ("part-b/deep/00001", "d")}
    assert set(zip(meta["shard"], meta["key"])) == want and len(meta) == 6
    assert m["samples_in"] == m["kept"] == 6 and m["dropped_by_reason"] == {}
    assert sorted(meta["uid"]) == sorted(derive_uid(s, k) for s, k in want)  # uids from path id + key
    assert m["pool_files_not_read"] == []
    # the per-shard cache is keyed by the path id: a rerun annotates nothing
    assert (tmp_path / "out" / "columns" / "ingest" / "part-b" / "deep" / "00001.parquet").is_file()
    again = run_curation(str(pool), tmp_path / "out", META, progress=False)
    assert again["run"]["stage_runs"] == 0 and again["samples_in"] == 6
    # the exported shards hold both "a"s (the second under its shard id), byte for byte
    out = {s["__key__"]: s for p in m["output_shards"] for s in iter_tar_samples(p)}
    assert len(out) == 6 and {"a", "part-b/00000/a"} <= set(out)
    src = {(shard_id(p), s["__key__"]): s["jpg"] for p in expand(str(pool)) for s in iter_tar_samples(p)}
    assert out["part-b/00000/a"]["jpg"] == src[("part-b/00000", "a")] != src[("part-a/00000", "a")]
    # reshard derives the same uids from the same pool
    r = reshard(m["uids"], str(pool), tmp_path / "resharded")
    assert r["written"] == 6 and r["not_found"] == 0


def test_flat_pools_keep_their_ids_and_patterns_or_lists_name_the_root(tmp_path):
    pool = tmp_path / "flat"
    for i in range(3):
        _tar(pool / f"{i:05d}.tar", _samples([f"k{i}"], i))
    assert [shard_id(p) for p in expand(str(pool))] == ["00000", "00001", "00002"]
    assert [shard_id(p) for p in expand(str(pool / "{00000..00002}.tar"))] == ["00000", "00001", "00002"]
    assert [shard_id(p) for p in expand(str(pool / "0000[12].tar"))] == ["00001", "00002"]
    assert shard_id(expand(str(pool / "00001.tar"))[0]) == shard_id(str(pool / "00001.tar")) == "00001"
    m = run_curation(str(pool), tmp_path / "out", META, progress=False)
    meta = pd.read_parquet(m["metadata"])
    assert meta["uid"].tolist() == [derive_uid(f"{i:05d}", f"k{i}") for i in range(3)]  # today's uids
    nested = _nested(tmp_path)
    ids = ["part-a/00000", "part-b/00000"]
    assert [shard_id(p) for p in expand(str(nested / "part-{a,b}" / "00000.tar"))] == ids
    assert [shard_id(p) for p in expand(str(nested / "*" / "00000.tar"))] == ids
    assert [shard_id(p) for p in expand(str(nested / "part-?"))] == ids + ["part-b/deep/00001"]
    (nested / "list.txt").write_text("# two parts\npart-a/00000.tar\npart-b/00000.tar\n")
    assert [shard_id(p) for p in expand(str(nested / "list.txt"))] == ids
    # a shard's id travels with it through pickling (process pools, Dask)
    import pickle
    p = expand(str(nested / "list.txt"))[1]
    assert shard_id(pickle.loads(pickle.dumps(p))) == "part-b/00000"


def test_same_ids_from_separate_places_are_refused_with_the_fix(tmp_path):
    pool = _nested(tmp_path)
    with pytest.raises(ValueError, match="have the id '00000'.*common folder"):
        plan([str(pool / "part-a" / "00000.tar"), str(pool / "part-b" / "00000.tar")], tmp_path / "o", META)
    p = plan(str(pool / "{part-a,part-b}" / "00000.tar"), tmp_path / "o", META)  # their common folder: fine
    assert [shard_id(s) for s in p.shards] == ["part-a/00000", "part-b/00000"]


def test_every_file_not_read_is_listed_with_why(tmp_path):
    pool = tmp_path / "pool"
    _tar(pool / "00000.tar", _samples(["a"], 0))
    pq.write_table(pa.table({"key": ["a"], "status": ["success"]}), pool / "00000.parquet")  # its sidecars
    (pool / "00000_stats.json").write_text("{}")
    (pool / "notes.md").write_text("crawl notes")
    (pool / "sub").mkdir()
    (pool / "sub" / "image.jpg").write_bytes(_jpg(1))
    (pool / ".DS_Store").write_bytes(b"x")
    os.symlink(tmp_path / "gone.tar", pool / "sub" / "01.tar")  # dangling
    os.symlink("..", pool / "sub" / "up")  # back to the pool: a loop
    os.mkfifo(pool / "pipe.tar")
    _tar(pool / "sub" / "00001.tar", _samples(["b"], 1))
    p = plan(str(pool), tmp_path / "o", META)
    assert [shard_id(s) for s in p.shards] == ["00000", "sub/00001"]
    got = {os.path.relpath(u["path"], pool): u["why"].split(":")[0] for u in p.unread}
    assert got == {".DS_Store": "hidden", "notes.md": "not_a_shard", "pipe.tar": "not_a_regular_file",
                   "sub/01.tar": "dangling_link", "sub/image.jpg": "not_a_shard", "sub/up": "link_loop"}
    m = run_curation(str(pool), tmp_path / "out", META, progress=False)
    assert m["samples_in"] == 2 and {u["why"] for u in m["pool_files_not_read"]} == {u["why"] for u in p.unread}
    assert "6 file(s) under the pool are not read" in (tmp_path / "out" / "curate.log").read_text()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_shard_is_listed(tmp_path):
    pool = tmp_path / "pool"
    _tar(pool / "00000.tar", _samples(["a"], 0))
    _tar(pool / "00001.tar", _samples(["b"], 1)).chmod(0)
    p = plan(str(pool), tmp_path / "o", META)
    assert [shard_id(s) for s in p.shards] == ["00000"]
    assert [(Path(u["path"]).name, u["why"].split(":")[0]) for u in p.unread] == [("00001.tar", "unreadable")]


def test_a_built_pool_or_a_curated_output_means_its_shards(tmp_path):
    built = tmp_path / "sample_pool"  # curate build-pool's layout
    _tar(built / "shards" / "00000.tar", _samples(["a"], 0))
    _tar(built / "trusted" / "00000.tar", _samples(["t"], 1))
    _tar(built / "eval" / "task" / "test" / "0.tar", _samples(["e"], 2))
    (built / "truth.parquet").write_bytes(b"")
    unread: list = []
    got = expand(str(built), unread)
    assert got == [str(built / "shards" / "00000.tar")] and [shard_id(s) for s in got] == ["00000"]
    assert sorted(Path(u["path"]).name for u in unread) == ["eval", "trusted", "truth.parquet"]
    assert {u["why"].split(":")[0] for u in unread} == {"outside_shards"}
    m = run_curation(str(built), tmp_path / "out", META, progress=False)
    assert m["samples_in"] == 1
    again = expand(str(tmp_path / "out"))  # a curation output: its published shards
    assert [shard_id(s) for s in again] == ["00000"] and "/versions/v000001/shards/" in again[0]  # current read once


def test_members_without_key_or_extension_drop_as_member_name(tmp_path):
    pool = tmp_path / "pool"
    members = _samples(["0001"], 0) + [(".jpg", _jpg(5)), ("0001", b"no extension"), ("0002.", b"x"),
                                       ("d/.png", _jpg(6))] + _samples(["0003"], 3)
    _tar(pool / "00000.tar", members)
    m = run_curation(str(pool), tmp_path / "out", META, progress=False)
    meta = pd.read_parquet(m["metadata"])
    assert m["samples_in"] == 6 and m["kept"] == 2
    assert m["dropped_by_reason"] == {"member_name": 4} and m["skipped_members"] == {}
    stray = meta[meta["drop_reason"] == "member_name"]
    assert sorted(stray["key"]) == [".jpg", "0001", "0002.", "d/.png"]
    assert meta["uid"].is_unique  # the member "0001" is not the sample "0001"
    assert meta.loc[meta["key"] == ".jpg", "ingest_error"].item().startswith("member_name: tar member '.jpg' has no key")
    out = [s["__key__"] for p in m["output_shards"] for s in iter_tar_samples(p)]
    assert out == ["0001", "0003"]
