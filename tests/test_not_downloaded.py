"""Rows img2dataset listed but never downloaded come back as not_downloaded.parquet, ready to retry."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.export import uid_array
from pipeline.run import run_curation
from fixtures.shardmaker import make_pool, uid

CFG = {"clip": [], "filters": [{"type": "basic", "min_side": 8}]}  # no model: ingest only
FAILED = [  # shard, key, url, caption, uid, status, error_message
    ("00000", "99990", "https://example.com/a.jpg", "a lost cat", uid(900), "failed_to_download", "HTTP 404"),
    ("00000", "99991", "https://example.com/b.jpg", "a lost dog", uid(901), "failed_to_resize", "image too small"),
    ("00001", "99992", "https://example.com/c.jpg", "a lost bird", uid(902), "failed_to_download", "timeout"),
]


def _pool(root):
    """Two shards; their img2dataset parquets list three rows that failed to download."""
    make_pool(root, n=20, per_shard=10)
    for sid in ("00000", "00001"):
        side = root / f"{sid}.parquet"
        t = pq.read_table(side)
        extra = pa.Table.from_pylist([{"key": k, "url": u, "caption": c, "uid": i, "status": st, "error_message": e}
                                      for s, k, u, c, i, st, e in FAILED if s == sid])
        pq.write_table(pa.concat_tables([t, extra], promote_options="default"), side)


def test_listed_rows_never_downloaded_are_written_for_img2dataset(tmp_path):
    _pool(tmp_path / "pool")
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", CFG, progress=False)
    assert m["listed_not_downloaded"] == {"failed_to_download": 2, "failed_to_resize": 1}
    assert m["not_downloaded"] == str(Path(m["root"]) / "not_downloaded.parquet")
    assert (tmp_path / "out" / "not_downloaded.parquet").is_file()  # in the published version
    t = pq.read_table(m["not_downloaded"])
    assert t.column_names[:2] == ["url", "caption"]  # img2dataset --url_col url --caption_col caption
    got = sorted((r["shard"], r["key"], r["url"], r["caption"], r["uid"], r["status"], r["error_message"])
                 for r in t.to_pylist())
    assert got == sorted(FAILED)
    # not samples: in neither the uid list nor the metadata
    kept = np.load(m["uids"])
    assert np.array_equal(kept, uid_array([uid(i) for i in range(20)]))
    meta = pq.read_table(m["metadata"], columns=["uid"]).column("uid").to_pylist()
    assert not {r[4] for r in FAILED} & set(meta) and len(meta) == 20


def test_a_pool_without_failures_writes_none(tmp_path):
    make_pool(tmp_path / "pool", n=10, per_shard=10)
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", CFG, progress=False)
    assert m["not_downloaded"] is None and not (Path(m["root"]) / "not_downloaded.parquet").exists()


def test_datacomp_text_column_and_missing_fields(tmp_path):
    """DataComp's parquets name the caption ``text``; a row without url or uid keeps a null there."""
    make_pool(tmp_path / "pool", n=10, per_shard=10)
    side = tmp_path / "pool" / "00000.parquet"
    t = pq.read_table(side)
    extra = pa.Table.from_pylist([{"key": "99", "url": None, "text": "a red square", "status": "failed_to_download"},
                                  {"key": "98", "url": "https://example.com/x", "text": None, "status": None}])
    pq.write_table(pa.concat_tables([t, extra], promote_options="default"), side)
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", CFG, progress=False)
    assert m["listed_not_downloaded"] == {"failed_to_download": 1, "null": 1}
    rows = sorted(pq.read_table(m["not_downloaded"]).to_pylist(), key=lambda r: r["key"])
    assert rows[0] == {"url": "https://example.com/x", "caption": None, "uid": None, "status": "null",
                       "error_message": None, "key": "98", "shard": "00000"}
    assert rows[1]["caption"] == "a red square" and rows[1]["url"] is None and rows[1]["status"] == "failed_to_download"
