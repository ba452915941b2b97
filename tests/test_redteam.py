"""Red-team inputs the hostile corpus (fixtures/hostile.py) lacks, each of which crashed a whole run, lost
a kept sample from the output or misread it: every one is built here, in tmp_path."""
from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.run import run_curation
from shardio.shards import expand, iter_tar_samples, shard_id
from fixtures.shardmaker import write_members as _tar

META = {"filters": []}
CLIP = {"clip": [{"model": "curate-tiny", "batch_size": 16}], "filters": []}


def _jpg(seed=0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def _png(w: int, h: int) -> bytes:
    """A valid grey PNG of any size, a few KB however long (rows of zeros compress well)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = (b"\x00" + b"\x80" * w) * h
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _sample(key, i, image=None, caption=b"a photo of a thing", js=None, ext="jpg", cap_ext="txt"):
    out = [(f"{key}.{ext}", image if image is not None else _jpg(i))]
    if caption is not None:
        out.append((f"{key}.{cap_ext}", caption))
    if js is not None:
        out.append((f"{key}.json", js))
    return out


LONG = "x" * 150  # a key ustar cannot hold (no folder to split at): the export used to raise "name is too long"
NON_UTF8 = os.fsdecode(b"caf\xe9.tar")  # a shard file name that is not UTF-8


def _pool(root: Path) -> tuple[Path, dict[tuple[str, str], str | None]]:
    """The pool and (shard, key) -> drop reason (None: kept)."""
    pool = root / "pool"
    m = []
    m += _sample(LONG, 1, js=b'{"url": "https://example.com/long"}')
    # lone surrogates in json text: Arrow refuses them (ingest and the exported sidecar parquet crashed)
    m += _sample("surr", 2, js=b'{"url": "https://x/\\ud800", "exif": "\\udcff"}')
    m += _sample("surrcap", 3, caption=None, js=b'{"caption": "a \\ud800 b"}')
    # numbers no int32 / int64 holds (json reads Infinity and big ints)
    m += _sample("nums", 4, js=b'{"original_width": Infinity, "original_height": 1e30, "foo": 12345678901234567890123}')
    m += _sample("emptyobj", 14, js=b'{"exif": {}}')  # parquet has no empty struct: the export's sidecar raised
    m += _sample("deep", 5, js=b"[" * 100_000 + b"]" * 100_000)  # RecursionError in json.loads
    m += _sample("cap1", 6, cap_ext="caption", caption=b"a red square")  # caption members other writers use
    m += _sample("cap2", 7, cap_ext="TEXT", caption=b"a blue square")
    m += _sample("cap3", 13, cap_ext="caption", caption=b"word " * 2000)  # cut on export as a long .txt is
    # 3,000,000 x 1: the scorer's resize-then-crop wanted 32 x 96,000,000 pixels (MemoryError)
    m += _sample("wide", 8, image=_png(3_000_000, 1), ext="png")
    m += _sample("k", 9)
    m += _sample("00001/k", 10)  # the name the export gave shard 00001's "k": two outputs shared it
    _tar(pool / "00000.tar", m)
    _tar(pool / "00001.tar", _sample("k", 11))
    _tar(pool / NON_UTF8, _sample("a", 12))
    expect = {("00000", k): None for k in (LONG, "surr", "surrcap", "nums", "cap1", "cap2", "cap3", "wide", "k",
                                           "00001/k", "emptyobj")}
    expect[("00000", "deep")] = "metadata"
    expect[("00001", "k")] = None
    expect[(shard_id(NON_UTF8), "a")] = None
    return pool, expect


@pytest.fixture(scope="module", params=["metadata_only", "clip"])
def curated(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("redteam")
    pool, expect = _pool(root)
    m = run_curation(str(pool), root / "out", META if request.param == "metadata_only" else CLIP, progress=False)
    return m, pd.read_parquet(m["metadata"]), expect, request.param


def test_every_sample_is_accounted_for_without_a_crash(curated):
    m, meta, expect, _ = curated
    got = {(s, k): r if isinstance(r, str) else None
           for s, k, r in zip(meta["shard"], meta["key"], meta["drop_reason"])}
    assert got == expect
    assert m["samples_in"] == len(expect) == m["kept"] + sum(m["dropped_by_reason"].values())
    assert m["broken_shards"] == []


def test_the_output_holds_exactly_the_kept_samples(curated):
    m, meta, _, _ = curated
    out = [s for p in m["output_shards"] for s in iter_tar_samples(p)]
    keys = [s["__key__"] for s in out]
    assert len(out) == m["kept"] == m["uid_count"] == len(np.load(m["uids"]))
    assert len(set(keys)) == len(keys)
    # a key already written gets its shard's id; when that name is taken too, "<id>.2/"
    assert {LONG, "k", "00001/k", "00001.2/k"} <= set(keys)
    assert [len(s["caption"]) for s in out if s["__key__"] == "cap3"] == [4096]
    for p in m["output_shards"]:  # the img2dataset-style parquet beside each output tar was written
        assert pq.read_metadata(Path(p).with_suffix(".parquet")).num_rows > 0


def test_odd_json_values_are_read_not_fatal(curated):
    _, meta, _, _ = curated
    row = meta.set_index("key")
    assert row.loc["surr", "url"] == "https://x/\\ud800"
    assert row.loc["surrcap", "caption"] == "a \\ud800 b"
    assert row.loc["nums", "original_width"] == 24 and row.loc["nums", "original_height"] == 24  # the header's
    assert "malformed json" in row.loc["deep", "ingest_error"]
    assert row.loc["cap1", "caption"] == "a red square" and row.loc["cap2", "caption"] == "a blue square"
    assert meta.loc[meta["key"] == "a", "shard"].item() == "caf\\xe9"


def test_the_extreme_aspect_image_is_scored(curated):
    _, meta, _, kind = curated
    if kind != "clip":
        pytest.skip("scored in the clip run")
    row = meta.set_index("key").loc["wide"]
    assert (row["width"], row["height"]) == (3_000_000, 1) and np.isfinite(row["clip_score"])


def test_extreme_aspect_pixels_match_resize_then_crop():
    """The box resize (aspect > MAX_ASPECT) gives what resize-then-centre-crop gives, within 1 grey level."""
    import shardio.pixels as px

    t = px.FastValTransform(32, (0.5,) * 3, (0.5,) * 3)
    rng = np.random.default_rng(0)
    for w, h in [(12, 600), (600, 12), (7, 1001), (3, 90)]:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        fast = t.image(im).astype(int)
        nw, nh = (32, int(32 * h / w)) if w <= h else (int(32 * w / h), 32)
        top, left = int(round((nh - 32) / 2.0)), int(round((nw - 32) / 2.0))
        slow = np.asarray(im.resize((nw, nh), Image.BICUBIC).crop((left, top, left + 32, top + 32))).astype(int)
        assert fast.shape == (32, 32, 3) and np.abs(fast - slow).mean() < 1.0, (w, h)


def test_a_text_file_lists_the_shards(tmp_path):
    pool = tmp_path / "pool"
    for i in range(3):
        _tar(pool / f"{i:05d}.tar", _sample(f"s{i}", i))
    _tar(pool / "odd[1].tar", _sample("o", 9))  # glob characters in an existing file's name
    lst = pool / "shards.txt"
    lst.write_text("# the pool\n00000.tar\n\n{00001..00002}.tar\nodd[1].tar\n")
    assert expand(str(lst)) == [str(pool / f"{i:05d}.tar") for i in range(3)] + [str(pool / "odd[1].tar")]
    assert expand(str(pool / "odd[1].tar")) == [str(pool / "odd[1].tar")]
    m = run_curation(str(lst), tmp_path / "out", META, progress=False)
    assert m["samples_in"] == m["kept"] == 4 and m["broken_shards"] == []


def test_metadata_pool_with_bad_uids_and_sizes(tmp_path):
    """DataComp metadata with a null and a non-hex uid (the run used to fail) and sizes no int32 holds."""
    n = 5
    cols = {"uid": [f"{i:032x}" for i in range(n)], "url": [f"u{i}" for i in range(n)],
            "text": [f"a thing {i}" for i in range(n)], "original_width": [300.0, float("nan"), 1e12, None, 40.0],
            "original_height": pa.array([300, 2**40, -1, None, 40], pa.int64()),
            "clip_l14_similarity_score": [0.1 * i for i in range(n)]}
    cols["uid"][1], cols["uid"][3] = None, "not-a-uid"
    (tmp_path / "pool").mkdir()
    pq.write_table(pa.table(cols), tmp_path / "pool" / "abc.parquet")
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", {"clip": [{"precomputed": "l14"}], "filters": []},
                     progress=False)
    meta = pd.read_parquet(m["metadata"])
    assert m["samples_in"] == n and m["kept"] == 3 and m["dropped_by_reason"] == {"metadata": 2}
    assert meta["drop_reason"].fillna("").tolist() == ["", "metadata", "", "metadata", ""]
    assert "not-a-uid" in meta["ingest_error"][3]
    assert meta["original_width"].fillna(0).tolist() == [300, 0, 0, 0, 40]
    assert meta["original_height"].fillna(0).tolist() == [300, 0, -1, 0, 40]
    assert len(np.load(m["uids"])) == 3


def test_a_broken_shard_whose_name_is_not_utf8(tmp_path):
    """Its path reaches the log and the report (writing report.html raised UnicodeEncodeError)."""
    p = _tar(tmp_path / "pool" / NON_UTF8, _sample("a", 1) + _sample("b", 2))
    p.write_bytes(p.read_bytes()[:3000])  # cut inside b's image
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", META, progress=False)
    assert m["samples_in"] == m["kept"] == 1
    assert [b["error"].split(":")[0] for b in m["broken_shards"]] == ["truncated"]
    assert "caf\\udce9.tar" in Path(m["report"]).read_text()
    assert "caf\\udce9" in (tmp_path / "out" / "curate.log").read_text()


def test_upper_case_tar_names_in_a_folder_are_shards(tmp_path):
    """00001.TAR was left out of a folder's listing: its samples were in no count."""
    pool = tmp_path / "pool"
    _tar(pool / "00000.tar", _sample("a", 1))
    _tar(pool / "00001.TAR", _sample("b", 2))
    pq.write_table(pa.table({"key": ["b", "c"], "status": ["success", "failed_to_download"]}), pool / "00001.parquet")
    m = run_curation(str(pool), tmp_path / "out", META, progress=False)
    assert m["samples_in"] == m["kept"] == 2 and m["listed_not_downloaded"] == {"failed_to_download": 1}


def test_reshard_finds_every_kept_uid(tmp_path):
    """reshard computed uids its own way: deeply nested json raised RecursionError, and a uid only in the
    shard's parquet (no json) was derived instead, so that sample was not found."""
    from pipeline.reshard import reshard

    pool = tmp_path / "pool"
    _tar(pool / "00000.tar", _sample("a", 1, js=json.dumps({"uid": "a" * 32}).encode()) + _sample("b", 2)
         + _sample("deep", 3, js=b"[" * 100_000 + b"]" * 100_000) + _sample("c", 4, js=b"{}"))
    pq.write_table(pa.table({"key": ["b"], "status": ["success"], "uid": ["b" * 32]}), pool / "00000.parquet")
    m = run_curation(str(pool), tmp_path / "out", META, progress=False)
    assert m["kept"] == 3 and m["dropped_by_reason"] == {"metadata": 1}
    r = reshard(m["uids"], str(pool), tmp_path / "resharded")
    assert r["written"] == 3 and r["not_found"] == 0


def test_braces_in_real_names(tmp_path):
    """A folder or shard whose name holds braces is itself, not a pattern (an unbalanced brace raised)."""
    for name in ("pool{", "pool{1,2}"):
        _tar(tmp_path / name / "00000.tar", _sample("a", 1))
        assert expand(str(tmp_path / name)) == [str(tmp_path / name / "00000.tar")]
    assert expand(str(tmp_path / "pool{1,2}" / "00000.tar")) == [str(tmp_path / "pool{1,2}" / "00000.tar")]


def test_a_member_over_the_size_limit_is_not_read_and_its_sample_drops(tmp_path, monkeypatch):
    import shardio.tar
    from pipeline.export import uid_array
    from pipeline.reshard import reshard

    monkeypatch.setattr(shardio.tar, "MAX_MEMBER_BYTES", 4_000)  # 24 px JPEGs are ~1 KB
    big = _png(300, 300) + b"\0" * 5_000  # an image member over the limit
    members = (_sample("ok", 1) + _sample("bigimg", 2, image=big)
               + _sample("bigjson", 3, js=json.dumps({"pad": "x" * 5_000}).encode()))
    _tar(tmp_path / "pool" / "00000.tar", members)
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", META, progress=False)
    md = pd.read_parquet(tmp_path / "out" / "metadata.parquet").set_index("key")
    assert m["samples_in"] == 3 and m["kept"] == 1 and md.loc["ok", "keep"]
    assert md.loc["bigimg", "ingest_error"].startswith("decode: member .jpg is")
    assert md.loc["bigjson", "ingest_error"].startswith("metadata: member .json is")
    # reshard never writes a sample without the member it could not read
    all_uids = tmp_path / "all.npy"
    np.save(all_uids, uid_array(md["uid"].tolist()))
    r = reshard(all_uids, str(tmp_path / "pool"), tmp_path / "re")
    assert r["written"] == 1 and len(r["not_written_member_too_big"]) == 2 and r["not_found"] == 0
