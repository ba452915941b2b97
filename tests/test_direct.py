"""A metadata-only run of columns alone reads the pool in place (pipeline/direct.py): the same uids,
metadata.parquet and report, byte for byte, as the annotate pass, on hostile parquets; the same
failures; nothing written per shard."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.direct
from pipeline.run import ShardsFailed, plan, run_curation
from fixtures.shardmaker import uid

L14 = {"precomputed": "l14"}
B32 = {"precomputed": "b32", "column": "clip_score_b32"}
CONFIGS = {
    "no_filter": {"filters": []},
    "clip_score": {"clip": [L14], "filters": [{"type": "clip_score", "fraction": 0.3}]},
    "two_scorers_exact": {"clip": [L14, B32], "filters": [
        {"type": "clip_score", "fraction": 0.5}, {"type": "clip_score", "column": "clip_score_b32", "threshold": 0.2},
        {"type": "exact_dedup"}]},
}


def shard(rng, ids, **over):
    n = len(ids)
    cols = {"uid": [uid(i) for i in ids], "url": [f"https://example.com/{i}.jpg" for i in ids],
            "text": [f"a photo of thing {i % 9}" for i in ids],
            "original_width": rng.integers(100, 900, n), "original_height": rng.integers(100, 900, n),
            "clip_b32_similarity_score": rng.uniform(0.1, 0.4, n), "clip_l14_similarity_score": rng.uniform(0.1, 0.4, n),
            "sha256": [f"{i % 13:064x}" for i in ids]}
    cols.update(over)
    return pa.table({k: v for k, v in cols.items() if v is not None})


def hostile_pool(folder, seed=0):
    """Five parquets: plain; bad / upper-case / repeated uids, NaN scores, null captions; no size
    columns; no rows; rows repeating the first shard's uids."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    pq.write_table(shard(rng, range(0, 30)), folder / "000a.parquet")
    ids = list(range(30, 55))
    uids = [uid(i).upper() if i % 4 == 0 else uid(i) for i in ids]
    uids[3], uids[7], uids[9] = "not-a-uid", None, uids[2]
    l14 = rng.uniform(0.1, 0.4, len(ids))
    l14[[1, 5, 6]] = np.nan
    text = [None if i % 6 == 0 else f"caption {i}" for i in ids]
    pq.write_table(shard(rng, ids, uid=pa.array(uids, pa.string()), clip_l14_similarity_score=l14, text=text),
                   folder / "000b.parquet")
    pq.write_table(shard(rng, range(55, 70), original_width=None, original_height=None), folder / "000c.parquet")
    pq.write_table(shard(rng, []).cast(shard(rng, [1]).schema), folder / "000d.parquet")
    pq.write_table(shard(rng, range(0, 10)), folder / "000e.parquet")


def annotated(monkeypatch):
    monkeypatch.setattr(pipeline.direct, "eligible", lambda p, local: False)


def outputs(m) -> dict:
    root = m["root"]
    return {f: open(f"{root}/{f}", "rb").read() for f in ("uids.npy", "metadata.parquet", "report.html")}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("workers", [1, 2])
def test_read_in_place_gives_the_annotate_pass_outputs_byte_for_byte(tmp_path, monkeypatch, name, workers):
    hostile_pool(tmp_path / "pool")
    cfg = CONFIGS[name]
    assert pipeline.direct.eligible(plan(str(tmp_path / "pool"), tmp_path / "x", cfg), True)
    direct = run_curation(str(tmp_path / "pool"), tmp_path / "direct", cfg, progress=False, workers=workers)
    assert direct["run"]["stage_runs"] == 0 and not (tmp_path / "direct" / "columns").exists()
    annotated(monkeypatch)
    full = run_curation(str(tmp_path / "pool"), tmp_path / "full", cfg, progress=False, workers=workers)
    assert full["run"]["stage_runs"] > 0
    assert outputs(direct) == outputs(full)
    for k in ("samples_in", "kept", "dropped_by_reason", "thresholds", "broken_shards", "sidecar_errors",
              "not_processed_shards", "filters"):
        assert direct[k] == full[k], k
    assert direct["samples_in"] == 80 and direct["dropped_by_reason"]["metadata"] == 2
    assert direct["dropped_by_reason"]["duplicate_uid"] >= 11
    md = pd.read_parquet(tmp_path / "direct" / "metadata.parquet")
    assert md["url"].str.startswith("https://example.com/").all() and md["caption"].notna().all()


def test_a_parquet_that_cannot_be_read_fails_the_same_way(tmp_path, monkeypatch):
    hostile_pool(tmp_path / "pool")
    (tmp_path / "pool" / "000f.parquet").write_bytes(b"PAR1 not really a parquet")
    rng = np.random.default_rng(3)
    pq.write_table(shard(rng, range(90, 95), clip_l14_similarity_score=None), tmp_path / "pool" / "0010.parquet")
    cfg = CONFIGS["clip_score"]
    errors = []
    for mode in ("direct", "annotated"):
        if mode == "annotated":
            annotated(monkeypatch)
        with pytest.raises(ShardsFailed) as e:
            run_curation(str(tmp_path / "pool"), tmp_path / mode, cfg, progress=False)
        assert "000f.parquet" in str(e.value) and "no 'clip_l14_similarity_score' column" in str(e.value)
        m = run_curation(str(tmp_path / "pool"), tmp_path / mode, cfg, progress=False, on_failure="partial")
        errors.append(sorted(f["shard"] for f in m["not_processed_shards"]))
        assert m["samples_in"] == 80
    assert errors[0] == errors[1] and len(errors[0]) == 2


def test_what_reads_in_place_and_what_annotates(tmp_path):
    hostile_pool(tmp_path / "pool")

    def eligible(cfg, local=True, pool=str(tmp_path / "pool")):
        return pipeline.direct.eligible(plan(pool, tmp_path / "o", cfg), local)

    assert eligible(CONFIGS["clip_score"]) and not eligible(CONFIGS["clip_score"], local=False)  # a cluster
    assert not eligible({"clip": [L14], "filters": [{"type": "basic"}]})  # language id: cached per shard
    assert not eligible({"clip": [L14], "filters": [{"type": "semantic_dedup", "clusters": 2}]})  # embeddings
    assert not eligible({"filters": [], "languages": True})


def test_report_rebuilt_from_a_direct_run(tmp_path):
    """The published metadata.parquet is a whole table: `curate report` draws from it alone."""
    from pipeline.report import write_report

    hostile_pool(tmp_path / "pool")
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", CONFIGS["clip_score"], progress=False)
    md = pd.read_parquet(m["metadata"])
    assert len(md) == 80 and set(md["shard"]) == {"000a", "000b", "000c", "000e"}
    (tmp_path / "again").mkdir()
    html = write_report(tmp_path / "again", md, m["input_shards"], m).read_text()
    assert f"<b>{m['samples_in']:,}</b> samples in" in html and f"<b>{m['kept']:,}</b> kept" in html
    assert html.count('<span class="cap">caption 3') + html.count('<span class="cap">a photo of thing') > 0


@pytest.mark.parametrize("mode", ["direct", "annotated", "tars"])
def test_a_decisions_table_is_the_full_table_without_the_pool_columns(tmp_path, monkeypatch, mode):
    """``export.metadata: decisions``: the same rows and decisions, the pool's own columns left out."""
    from fixtures.shardmaker import make_pool
    from pipeline.export import POOL_COLUMNS

    cfg = CONFIGS["clip_score"] if mode != "tars" else {"filters": [{"type": "basic", "min_side": 0}]}
    if mode == "tars":
        make_pool(tmp_path / "pool", n=30, per_shard=10, plant={3: "corrupt", 7: "dup", 12: "short"})
    else:
        hostile_pool(tmp_path / "pool")
    if mode == "annotated":
        annotated(monkeypatch)
    full = run_curation(str(tmp_path / "pool"), tmp_path / "full", cfg, progress=False)
    cfg = {**cfg, "export": {"metadata": "decisions"}}
    lean = run_curation(str(tmp_path / "pool"), tmp_path / "lean", cfg, progress=False)
    a, b = pd.read_parquet(full["metadata"]), pd.read_parquet(lean["metadata"])
    left = [*POOL_COLUMNS, *(["key"] if mode != "tars" else [])]  # a metadata pool's key is its uid again
    assert set(left) <= set(a.columns) and not set(left) & set(b.columns)
    pd.testing.assert_frame_equal(a.drop(columns=left), b)
    assert open(full["uids"], "rb").read() == open(lean["uids"], "rb").read()
    assert full["dropped_by_reason"] == lean["dropped_by_reason"] and full["kept"] == lean["kept"]
    from pipeline.report import write_report  # `curate report` draws from the table alone

    (tmp_path / "again").mkdir()
    write_report(tmp_path / "again", b, lean["input_shards"], lean)
    assert "kept" in (tmp_path / "again" / "report.html").read_text()


def test_an_unknown_metadata_setting_is_named():
    from pipeline.config import load_config

    with pytest.raises(ValueError, match="export.metadata"):
        load_config({"filters": [], "export": {"metadata": "some"}})


def test_float32_scores_cut_as_stored(tmp_path, monkeypatch):
    """Scores stored as float32: the cutoff is taken over them as stored, in both passes."""
    rng = np.random.default_rng(5)
    (tmp_path / "pool").mkdir()
    for i in range(3):
        t = shard(rng, range(20 * i, 20 * i + 20))
        col = t.column("clip_l14_similarity_score").cast(pa.float32())
        t = t.set_column(t.schema.get_field_index("clip_l14_similarity_score"), "clip_l14_similarity_score", col)
        pq.write_table(t, tmp_path / "pool" / f"{i:04x}.parquet")
    cfg = CONFIGS["clip_score"]
    direct = run_curation(str(tmp_path / "pool"), tmp_path / "direct", cfg, progress=False)
    annotated(monkeypatch)
    full = run_curation(str(tmp_path / "pool"), tmp_path / "full", cfg, progress=False)
    assert outputs(direct) == outputs(full) and direct["thresholds"] == full["thresholds"]
    assert direct["filters"]["clip_score[top0.3]"]["cutoff_over"] == "metadata"


def test_captions_read_back_as_ingest_cuts_them(tmp_path):
    """The report's captions, read again from the pool, are ingest's: null as '', cut where ingest cuts."""
    from pipeline.ingest import INGEST_COLUMNS, MAX_CAPTION_CHARS
    from pipeline.metadata import ingest_table

    rng = np.random.default_rng(2)
    (tmp_path / "pool").mkdir()
    text = [None, "", "é" * (MAX_CAPTION_CHARS + 3), "😀" * MAX_CAPTION_CHARS + "x", " two  words "]
    path = tmp_path / "pool" / "0001.parquet"
    pq.write_table(shard(rng, range(5), text=text), path)
    loaded = pipeline.direct.Loaded(INGEST_COLUMNS, [])
    loaded.paths["0001"] = str(path)
    assert loaded.source("0001", ["caption"]).equals(ingest_table(path, ["caption"])[0])
    assert loaded.source("0001", ["url", "caption"]).equals(ingest_table(path, ["url", "caption"])[0])


def test_the_reason_lists_are_dictionary_encoded_and_compressed(tmp_path):
    """A list column's writer options name its values' path: drop_reasons is stored as a dictionary."""
    hostile_pool(tmp_path / "pool")
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", CONFIGS["clip_score"], progress=False)
    meta = pq.ParquetFile(m["metadata"]).metadata.row_group(0)
    col = next(meta.column(i) for i in range(meta.num_columns)
               if meta.column(i).path_in_schema == "drop_reasons.list.element")
    assert col.compression == "SNAPPY" and "RLE_DICTIONARY" in col.encodings
