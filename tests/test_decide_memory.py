"""The lean decide of metadata-only runs (pipeline/decide.Lean): columns no filter reads stay on disk and
metadata.parquet / uids.npy come out byte for byte as a full load writes them; repeated uids and the
uid array from 64-bit halves, a chunk at a time, as the string rules decide them."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.decide
import pipeline.direct
import pipeline.export
import pipeline.uids
from pipeline.config import load_config
from pipeline.decide import Arrays, Lean, decide, load_columns, repeated_uids
from pipeline.export import uid_array, write_metadata
from pipeline.run import run_curation
from fixtures.shardmaker import uid

CAPTIONS = ["a red square on a table", "une photo d'un chien rouge", "", "two\nlines here", "der Hund", "ok dog"]
CONFIGS = {
    "no_filter": {"filters": []},
    "basic_clip": {"clip": [{"precomputed": "l14"}], "filters": [{"type": "basic", "min_side": 0},
                                                                  {"type": "clip_score", "fraction": 0.5}]},
    "exact_dedup": {"filters": [{"type": "exact_dedup"}]},
}


def write_pool(folder, shards=3, rows=40, seed=0):
    """Metadata shards with repeated uids (within and across shards), upper-case ones and shared sha256s."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        ids = [i if i % 7 else i // 2 for i in range(rows * s, rows * s + rows)]  # every 7th repeats an earlier uid
        t = pa.table({"uid": [uid(i).upper() if i % 5 == 0 else uid(i) for i in ids],
                      "url": [f"https://example.com/{i}.jpg" for i in ids],
                      "text": [CAPTIONS[i % len(CAPTIONS)] for i in ids],
                      "original_width": rng.integers(150, 600, rows), "original_height": rng.integers(150, 600, rows),
                      "clip_l14_similarity_score": rng.uniform(0.1, 0.4, rows),
                      "sha256": [f"{i % 11:064x}" for i in ids]})
        pq.write_table(t, folder / f"{s:08x}beef.parquet")
        emb = {k: rng.normal(size=(rows, 8)).astype(np.float16) for k in ("l14_img", "l14_txt")}
        np.savez(folder / f"{s:08x}beef.npz", **emb)


class NoLean:  # the full load, as before Lean
    @staticmethod
    def deferred_for(config):
        return []

    def __new__(cls, *a, **k):
        return None


def full_load(monkeypatch) -> None:
    """The runs after this load every column, from the annotate pass (as before Lean and reading in place)."""
    monkeypatch.setattr(pipeline.decide, "Lean", NoLean)
    monkeypatch.setattr(pipeline.direct, "eligible", lambda p, local: False)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_lean_run_writes_the_same_bytes_as_a_full_load(tmp_path, monkeypatch, name):
    write_pool(tmp_path / "pool")
    lean = run_curation(str(tmp_path / "pool"), tmp_path / "lean", CONFIGS[name], progress=False)
    full_load(monkeypatch)
    full = run_curation(str(tmp_path / "pool"), tmp_path / "full", CONFIGS[name], progress=False)
    for f in ("metadata.parquet", "uids.npy"):
        assert (tmp_path / "lean" / f).read_bytes() == (tmp_path / "full" / f).read_bytes(), f
    assert lean["kept"] == full["kept"] and lean["dropped_by_reason"] == full["dropped_by_reason"]
    assert lean["dropped_by_reason"].get("duplicate_uid", 0) > 0
    md = pd.read_parquet(tmp_path / "lean" / "metadata.parquet")
    assert md["url"].str.startswith("https://example.com/").all() and md["sha256"].str.len().eq(64).all()


def test_restore_across_chunk_and_shard_boundaries_and_what_stays_on_disk(tmp_path):
    write_pool(tmp_path / "pool", shards=4, rows=33)
    cfg = load_config(CONFIGS["basic_clip"])
    run_curation(str(tmp_path / "pool"), tmp_path / "out", cfg, progress=False)
    work = tmp_path / "out"
    sids = sorted(p.stem for p in (work / "columns" / "ingest").glob("*.parquet"))
    full = load_columns(work, sids, cfg)
    lean = Lean(work, sids, Lean.deferred_for(cfg))
    small = load_columns(work, sids, cfg, lean)
    assert lean.deferred == ["url", "image_ext", "image_bytes", "sha256", "width", "height"]
    assert not set(lean.deferred) & set(small.columns) and lean.key_is_uid
    assert small.memory_usage(deep=True).sum() < 0.75 * full.memory_usage(deep=True).sum()
    declared = {f.out_column(o): t for f in cfg.filters for o, t in f.outputs.items()}
    declared.update(cfg.stage_columns())
    outs = []
    for tag, df, how in (("full", full, None), ("lean", small, lean)):
        df, _, _ = decide(df, cfg, Arrays(work, sids), run=work)
        write_metadata(tmp_path / f"{tag}.parquet", df, declared, rows=10, lean=how)  # 10: not a shard's 33
        outs.append((tmp_path / f"{tag}.parquet").read_bytes())
    assert outs[0] == outs[1]


def test_exact_dedup_or_a_filter_naming_a_column_keeps_it_in_memory():
    assert "sha256" not in Lean.deferred_for(load_config(CONFIGS["exact_dedup"]))
    assert Lean.deferred_for(load_config({"filters": []})) == [
        "url", "caption", "image_ext", "image_bytes", "sha256", "original_width", "original_height", "width",
        "height", "caption_words", "caption_chars"]
    assert not {"caption_words", "caption_chars", "original_width"} & set(
        Lean.deferred_for(load_config(CONFIGS["basic_clip"])))
    assert "caption" in Lean.deferred_for(load_config(CONFIGS["exact_dedup"]))  # no filter there reads captions
    assert "caption" not in Lean.deferred_for(load_config(CONFIGS["basic_clip"]))  # basic does


def test_a_deferred_caption_still_shows_in_the_report(tmp_path, monkeypatch):
    """CLIP score alone reads no caption: it stays on disk, metadata.parquet is the same bytes as a full
    load's, and the report's cards still show the captions of the rows they show."""
    write_pool(tmp_path / "pool")
    cfg = {"clip": [{"precomputed": "l14"}], "filters": [{"type": "clip_score", "fraction": 0.5}]}
    assert "caption" in Lean.deferred_for(load_config(cfg))
    run_curation(str(tmp_path / "pool"), tmp_path / "lean", cfg, progress=False)
    full_load(monkeypatch)
    run_curation(str(tmp_path / "pool"), tmp_path / "full", cfg, progress=False)
    for f in ("metadata.parquet", "uids.npy", "report.html"):
        assert (tmp_path / "lean" / f).read_bytes() == (tmp_path / "full" / f).read_bytes(), f
    html = (tmp_path / "lean" / "report.html").read_text()
    assert sum(html.count(f'<span class="cap">{c}</span>') for c in CAPTIONS) > 0


def test_repeated_uids_are_pandas_duplicated_among_usable_rows():
    rng = np.random.default_rng(3)
    pool = [rng.bytes(16).hex() for _ in range(6)] + [f"{7:016x}{k:016x}" for k in range(4)]  # shared upper halves
    for _ in range(300):
        n = int(rng.integers(0, 50))
        uids = [pool[int(rng.integers(len(pool)))] for _ in range(n)]
        usable = rng.random(n) < 0.8
        for s in (pd.Series(uids, dtype="str"), pd.Series(uids, dtype=object)):
            want = s.where(usable).duplicated(keep="first").to_numpy() & usable if n else np.zeros(0, bool)
            assert (repeated_uids(s, usable) == want).all()
    upper = pd.Series(["A" * 32, "a" * 32], dtype="str")  # different strings: not repeats
    assert repeated_uids(upper, np.ones(2, bool)).tolist() == [False, False]


def test_uid_array_of_kept_rows_a_chunk_at_a_time(monkeypatch):
    monkeypatch.setattr(pipeline.uids, "HALVES_ROWS", 7)
    rng = np.random.default_rng(4)
    uids = pd.Series([rng.bytes(16).hex() for _ in range(50)], dtype="str")
    keep = rng.random(50) < 0.5
    want = np.array(sorted((int(u[:16], 16), int(u[16:], 16)) for u in uids[keep]), np.dtype("u8,u8"))
    assert uid_array(uids, keep).tobytes() == want.tobytes() == uid_array(uids[keep]).tobytes()
    odd = pd.Series(["zz" * 16, "a" * 32], dtype="str")  # not hex: the Python path, same selection
    assert uid_array(odd, np.array([False, True])).tolist() == [(int("a" * 16, 16), int("a" * 16, 16))]


def test_reasons_are_codes_in_memory_and_strings_in_the_file(tmp_path):
    write_pool(tmp_path / "pool")
    cfg = {"clip": [{"precomputed": "l14"}], "filters": [{"type": "clip_score", "fraction": 0.5},
                                                         {"type": "exact_dedup"}]}
    s = run_curation(str(tmp_path / "pool"), tmp_path / "out", cfg, progress=False)
    schema = pq.read_schema(tmp_path / "out" / "metadata.parquet")
    assert schema.field("drop_reason").type == pa.string()
    assert schema.field("drop_reasons").type == pa.list_(pa.string())
    md = pd.read_parquet(tmp_path / "out" / "metadata.parquet")
    assert not isinstance(md["drop_reason"].dtype, pd.CategoricalDtype)
    kept = md["keep"].to_numpy(bool)
    assert md["drop_reason"][kept].isna().all() and md["drop_reason"][~kept].map(type).eq(str).all()
    # the first reason is the first of the list; counts by name, no reason with zero rows
    assert (md["drop_reason"][~kept] == md["drop_reasons"][~kept].map(lambda r: r[0])).all()
    assert s["dropped_by_reason"] == md["drop_reason"][~kept].value_counts().sort_index().to_dict()
    assert all(v > 0 for v in s["dropped_by_reason"].values()) and s["failing_by_rule"]["exact_dedup"] > 0

    from pipeline.decide import failing, reason_lists

    matrix = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 1]], bool)
    col = pd.Series(reason_lists(matrix, np.array(["a", "b", "c"], object)))
    assert [list(r) for r in col] == [["a", "c"], [], ["b", "c"]]
    assert failing(col, ["b"]).tolist() == [False, False, True]
