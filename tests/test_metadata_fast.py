"""Metadata-only runs without copies or a model: embeddings read in place from the npz, ingest columns
computed once per distinct caption, DataComp's uid array without Python ints, no torch imported."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.decide import Arrays, reason_lists, summarize
from pipeline.export import uid_array
from pipeline.ingest import INGEST_COLUMNS, MAX_CAPTION_CHARS, caption_languages
from pipeline.metadata import caption_counts, ingest_table, lang_table, npz_member
from pipeline.run import run_curation
from fixtures.shardmaker import uid

CAPTIONS = ["a red square on a table", "une photo d'un chien rouge", "", None, "two\nlines here", "   ",
            "a red square on a table", "x " * 3000, "der kleine Hund im Garten", "ok"]


def write_pool(folder, shards=2, rows=10, compressed=False, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        ids = range(rows * s, rows * s + rows)
        t = pa.table({"uid": [uid(i).upper() if i % 3 == 0 else uid(i) for i in ids],
                      "url": [f"https://example.com/{i}.jpg" for i in ids],
                      "text": [CAPTIONS[i % len(CAPTIONS)] for i in ids],
                      "original_width": rng.integers(150, 600, rows), "original_height": rng.integers(150, 600, rows),
                      "clip_l14_similarity_score": rng.uniform(0.1, 0.4, rows)})
        pq.write_table(t, folder / f"{s:08x}cafe.parquet")
        emb = {k: rng.normal(size=(rows, 8)).astype(np.float16) for k in ("l14_img", "l14_txt")}
        (np.savez_compressed if compressed else np.savez)(folder / f"{s:08x}cafe.npz", **emb)
    return sorted(folder.glob("*.parquet"))


def test_ingest_columns_are_the_per_caption_reference(tmp_path):
    path = write_pool(tmp_path / "pool", shards=1)[0]
    tbl, info = ingest_table(path)
    assert tbl.column_names == INGEST_COLUMNS and info.samples_found == 10
    texts = [x if isinstance(x, str) else "" for x in pq.read_table(path).column("text").to_pylist()]
    langs = caption_languages(texts)
    got = tbl.to_pydict()
    got_lang = lang_table(path).to_pydict()
    assert got_lang["caption_lang"] == [lang for lang, _ in langs]
    assert got_lang["caption_lang_score"] == pytest.approx([s for _, s in langs], abs=1e-7)
    assert got["caption_words"] == [len(x.split()) for x in texts]
    assert got["caption_chars"] == [len(x) for x in texts]
    assert got["caption"] == [x[:MAX_CAPTION_CHARS] for x in texts]
    assert got["uid"] == got["key"] == [u.lower() for u in pq.read_table(path).column("uid").to_pylist()]


def test_caption_counts_are_pythons_for_every_code_point():
    import sys

    texts = [f"a{c}b  {c}{c}x {c}" for c in map(chr, range(sys.maxunicode + 1)) if not 0xD800 <= ord(c) < 0xE000]
    texts += ["", "   ", " a  b ", "\u3000x\u2028y\x1c", "é" * (MAX_CAPTION_CHARS + 5), "😀" * MAX_CAPTION_CHARS + "x"]
    words, chars, cut = caption_counts(pa.array(texts, pa.string()))
    assert words.to_pylist() == [len(x.split()) for x in texts]
    assert chars.to_pylist() == [len(x) for x in texts]
    assert cut.to_pylist() == [x[:MAX_CAPTION_CHARS] for x in texts]


# a filter that reads embeddings: the run annotates (a run of columns alone reads the pool in place,
# pipeline/direct.py, and writes nothing per shard)
READS_EMBEDDINGS = {"type": "semantic_dedup", "clusters": 2, "eps": 0.5}


def test_embeddings_stay_in_the_npz_and_a_view_reads_them(tmp_path):
    write_pool(tmp_path / "pool")
    cfg = {"clip": [{"precomputed": "l14"}], "filters": [{"type": "clip_score", "fraction": 0.5}, READS_EMBEDDINGS]}
    run_curation(str(tmp_path / "pool"), tmp_path / "out", cfg, progress=False)
    emb = tmp_path / "out" / "embeddings" / "clip_score"
    assert not list(emb.glob("*.npy")) and len(list(emb.glob("*.npz.json"))) == 2
    sids = [p.stem for p in sorted((tmp_path / "pool").glob("*.parquet"))]
    arrays = Arrays(tmp_path / "out", sids)
    for part in ("img", "txt"):
        want = np.concatenate([np.load(tmp_path / "pool" / f"{s}.npz")[f"l14_{part}"] for s in sids]).astype(np.float32)
        view = arrays.image("clip_score") if part == "img" else arrays.text("clip_score")
        assert view.shape == want.shape and (view.load() == want).all()
        assert (view.take(np.array([17, 2, 11])) == want[[17, 2, 11]]).all()
    assert npz_member(tmp_path / "pool" / f"{sids[0]}.npz", "nope") is None


def test_a_changed_npz_is_annotated_again_and_a_compressed_one_is_copied(tmp_path):
    write_pool(tmp_path / "pool")
    cfg = {"clip": [{"precomputed": "l14"}], "filters": [READS_EMBEDDINGS]}
    m1 = run_curation(str(tmp_path / "pool"), tmp_path / "out", cfg, progress=False)
    assert m1["run"]["stage_runs"] == 4  # ingest + clip columns; no filter reads languages
    assert run_curation(str(tmp_path / "pool"), tmp_path / "out", cfg, progress=False)["run"]["stage_runs"] == 0
    rng = np.random.default_rng(1)
    for npz in sorted((tmp_path / "pool").glob("*.npz")):  # new embeddings, compressed; parquets unchanged
        np.savez_compressed(npz, **{k: rng.normal(size=(10, 8)).astype(np.float16) for k in ("l14_img", "l14_txt")})
    m3 = run_curation(str(tmp_path / "pool"), tmp_path / "out", cfg, progress=False)
    assert m3["run"]["stage_runs"] == 2  # the clip columns only: the npz is part of their key
    emb = tmp_path / "out" / "embeddings" / "clip_score"
    assert len(list(emb.glob("*.npy"))) == 4 and not list(emb.glob("*.npz.json"))
    sids = [p.stem for p in sorted((tmp_path / "pool").glob("*.parquet"))]
    want = np.concatenate([np.load(tmp_path / "pool" / f"{s}.npz")["l14_img"] for s in sids]).astype(np.float32)
    assert (Arrays(tmp_path / "out", sids).image("clip_score").load() == want).all()


def test_a_metadata_only_run_imports_no_torch_and_forks_its_workers(tmp_path):
    write_pool(tmp_path / "pool", shards=3)
    cfg = {"clip": [{"precomputed": "l14"}], "filters": [{"type": "basic"}, {"type": "clip_score", "fraction": 0.5}]}
    code = ("import sys; from pipeline.run import run_curation; "
            f"run_curation({str(tmp_path / 'pool')!r}, {str(tmp_path / 'forked')!r}, {cfg!r}, progress=False, "
            "workers=2); print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"  # so its workers were forked, not spawned
    # annotated in this process: the scorer's cache key (its identity) needs no torch either
    code = code.replace("'forked'", "'one'").replace("workers=2", "workers=1").replace(str(tmp_path / "forked"),
                                                                                     str(tmp_path / "one"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "forked" / "uids.npy").read_bytes() == (tmp_path / "one" / "uids.npy").read_bytes()
    tables = [pq.read_table(tmp_path / d / "metadata.parquet") for d in ("forked", "one")]
    assert tables[0].equals(tables[1])


def test_uid_array_is_datacomps_for_any_case_and_falls_back_for_odd_uids():
    rng = np.random.default_rng(0)
    uids = [rng.bytes(16).hex() for _ in range(500)] + ["ABCDEF0123456789abcdef0123456789", "f" * 32, "0" * 32]

    def reference(us):
        arr = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in us], np.dtype("u8,u8"))
        arr.sort()
        return arr

    for col in (pd.Series(uids, dtype="str"), pd.Series(uids, dtype=object), uids, uids[:0]):
        assert uid_array(col).tobytes() == reference(list(col)).tobytes()
    odd = ["0x" + "a" * 30, "b" * 32]  # int(.., 16) reads these too
    assert uid_array(pd.Series(odd, dtype="str")).tobytes() == reference(odd).tobytes()


def test_drop_reasons_are_arrow_lists_in_rule_order():
    matrix = np.array([[0, 0, 0], [1, 0, 1], [0, 1, 0], [1, 1, 1]], bool)
    labels = np.array(["a", "b", "c"], object)
    got = pd.Series(reason_lists(matrix, labels))
    assert [list(r) for r in got] == [[], ["a", "c"], ["b"], ["a", "b", "c"]]
    df = pd.DataFrame({"keep": ~matrix.any(1), "drop_reason": [None, "a", "b", "a"], "drop_reasons": got})
    assert summarize(df)["failing_by_rule"] == {"a": 2, "b": 2, "c": 2}
    df["drop_reasons"] = [np.array(list(r), object) for r in got]  # as read back from metadata.parquet
    assert summarize(df)["failing_by_rule"] == {"a": 2, "b": 2, "c": 2}


def test_metadata_parquet_reads_back_as_before(tmp_path):
    write_pool(tmp_path / "pool", shards=3)
    cfg = {"clip": [{"precomputed": "l14"}], "filters": [{"type": "basic", "min_side": 0},
                                                          {"type": "clip_score", "fraction": 0.5}]}
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", cfg, progress=False)
    md = pd.read_parquet(tmp_path / "out" / "metadata.parquet")
    assert md["drop_reasons"].dtype == object and all(isinstance(r, np.ndarray) for r in md["drop_reasons"])
    assert len(md) == m["samples_in"] == 30 and int(md["keep"].sum()) == m["kept"] == m["uid_count"]
    counts = pd.Series([x for r in md["drop_reasons"] for x in r]).value_counts().to_dict()
    assert counts == m["failing_by_rule"]


def test_worker_processes_give_the_same_output(tmp_path):
    write_pool(tmp_path / "pool", shards=3)
    cfg = {"clip": [{"precomputed": "l14"}], "filters": [{"type": "basic", "min_side": 0},
                                                          {"type": "clip_score", "fraction": 0.5}]}
    one = run_curation(str(tmp_path / "pool"), tmp_path / "one", cfg, progress=False, workers=1)
    two = run_curation(str(tmp_path / "pool"), tmp_path / "two", cfg, progress=False, workers=2)
    assert (tmp_path / "one" / "uids.npy").read_bytes() == (tmp_path / "two" / "uids.npy").read_bytes()
    tables = [pq.read_table(tmp_path / d / "metadata.parquet") for d in ("one", "two")]
    assert tables[0].equals(tables[1])
    paths = ("run", "root", "uids", "metadata", "report", "output_shards")
    assert {k: v for k, v in one.items() if k not in paths} == {k: v for k, v in two.items() if k not in paths}


def test_the_language_stage_reads_no_caption_the_ingest_stage_read(tmp_path, monkeypatch):
    """Within one shard's pass the pool parquet's columns are read once (the basic filter's language
    stage takes the ingest stage's captions); the columns are the same as read apart."""
    import pipeline.metadata as md

    pool = write_pool(tmp_path / "pool", shards=2)
    reads = []
    real = pq.read_table
    monkeypatch.setattr(md.pq, "read_table", lambda src, columns=None, **k: reads.append((str(src), columns)) or
                        real(src, columns=columns, **k))
    run_curation(str(tmp_path / "pool"), tmp_path / "out", {"filters": [{"type": "basic", "min_side": 0}]},
                 progress=False)
    pool_reads = [r for r in reads if r[0].startswith(str(tmp_path / "pool"))]
    assert len(pool_reads) == len(pool) and all("text" in cols for _, cols in pool_reads)
    got = pd.read_parquet(tmp_path / "out" / "metadata.parquet")
    want = pd.concat([lang_table(p).to_pandas() for p in pool], ignore_index=True)
    assert got["caption_lang"].tolist() == want["caption_lang"].tolist()
