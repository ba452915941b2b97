import json
import tarfile

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.decide import clip_threshold
from pipeline.export import uid_array
from pipeline.run import run_curation
from pipeline.shards import expand, iter_tar_samples
from schemas.config import ClipScoreFilter, load_config
from tests.shardmaker import make_pool, uid

PLANT = {3: "corrupt", 10: "truncated", 30: "empty", 41: "noimage", 52: "missing"}
CONFIG = {"clip": [{"model": "curate-tiny", "batch_size": 16}],
          "filters": [{"type": "clip_score", "fraction": 0.3}]}


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("cur")
    make_pool(root / "pool", n=60, per_shard=25, plant=PLANT)
    manifest = run_curation(str(root / "pool" / "{00000..00002}.tar"), root / "out", CONFIG, progress=False)
    return root, manifest, pd.read_parquet(root / "out" / "metadata.parquet")


def test_every_sample_accounted_for(curated):
    _, m, meta = curated
    assert m["samples_in"] == 60 == len(meta)
    assert m["kept"] + m["dropped"] == m["samples_in"]
    assert m["kept"] + sum(m["dropped_by_reason"].values()) == 60
    assert sorted(meta["uid"]) == sorted(uid(i) for i in range(60))


def test_planted_problems_get_exactly_a_decode_reason(curated):
    _, _, meta = curated
    bad = meta[meta["decode_error"].notna()].set_index("uid")["decode_error"]
    assert set(bad.index) == {uid(i) for i in PLANT}
    assert bad[uid(3)].startswith("unidentified_image")
    assert bad[uid(10)].startswith("broken_image")
    assert bad[uid(30)].startswith("empty_image")
    assert bad[uid(41)].startswith("no_image")
    assert bad[uid(52)].startswith("missing_from_tar")
    assert (meta.set_index("uid").loc[list(bad.index), "drop_reason"] == "decode").all()
    assert meta.loc[meta["decode_error"].notna(), "clip_score"].isna().all()
    assert meta.loc[meta["decode_error"].isna(), "clip_score"].notna().all()


def test_top_fraction_matches_datacomp_rule_and_uids_are_byte_identical(curated):
    root, _, meta = curated
    scores = meta["clip_score"].to_numpy()
    finite = scores[np.isfinite(scores)]
    t = -np.sort(-finite)[int(len(finite) * 0.3)]  # DataComp baselines: n = int(len * fraction)
    expect = [u for u, s in zip(meta["uid"], scores) if s >= t]
    arr = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in expect], np.dtype("u8,u8"))
    arr.sort()
    assert (root / "out" / "uids.npy").read_bytes() == _npy_bytes(arr)
    assert len(expect) == int(meta["keep"].sum())
    dropped = meta[~meta["keep"] & meta["decode_error"].isna()]
    assert (dropped["drop_reason"] == "clip_score").all()


def _npy_bytes(arr):
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_exported_shards_hold_exactly_the_kept_samples_verbatim(curated):
    root, m, meta = curated
    kept = set(meta.loc[meta["keep"], "key"])
    source = {s["__key__"]: s for p in expand(str(root / "pool")) for s in iter_tar_samples(p)}
    out = [s for p in m["output_shards"] for s in iter_tar_samples(p)]
    assert {s["__key__"] for s in out} == kept
    for s in out:
        for member in ("jpg", "txt", "json"):
            assert s[member] == source[s["__key__"]][member]
    assert json.loads((root / "out" / "manifest.json").read_text())["kept"] == len(kept)


def test_rerun_skips_finished_stages_and_changed_config_recomputes_only_decide(curated):
    root, _, meta = curated
    m2 = run_curation(str(root / "pool"), root / "out", CONFIG, progress=False)
    assert m2["stage_runs"] == 0
    m3 = run_curation(str(root / "pool"), root / "out2", {**CONFIG, "filters": []}, progress=False,
                      work=root / "out")
    assert m3["stage_runs"] == 0 and m3["kept"] == 60 - len(PLANT)
    assert m3["dropped_by_reason"] == {"decode": len(PLANT)}


def test_ingest_columns_match_schema(curated):
    root, _, _ = curated
    import schemas

    for f in (root / "out" / "columns" / "ingest").glob("*.parquet"):
        tbl = pq.read_table(f)
        schemas.validate(tbl)
        assert tbl.column_names == [c for c in schemas.stage_columns("ingest")]


def test_broken_tars_are_recorded_not_fatal(tmp_path):
    make_pool(tmp_path / "pool", n=45, per_shard=15)
    cut = tmp_path / "pool" / "00001.tar"
    cut.write_bytes(cut.read_bytes()[:3000])  # cut mid-archive
    (tmp_path / "pool" / "00002.tar").write_bytes(b"this is not a tar file" * 100)
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", {"clip": [{"model": "curate-tiny"}]}, progress=False)
    meta = pd.read_parquet(tmp_path / "out" / "metadata.parquet")
    # every sample the shard parquets list is accounted for; the garbage tar gets one row naming it
    assert set(uid(i) for i in range(45)) <= set(meta["uid"])
    errs = meta.set_index("uid")["decode_error"]
    assert errs[[uid(i) for i in range(16, 30)]].str.startswith("missing_from_tar").all()
    assert errs[[uid(i) for i in range(30, 45)]].str.startswith("missing_from_tar").all()
    assert meta["decode_error"].dropna().str.startswith("broken_tar").sum() == 1
    assert errs[[uid(i) for i in range(15)]].isna().all()
    assert m["kept"] + m["dropped"] == len(meta) == 46


def test_clip_threshold_rule_edges():
    f = ClipScoreFilter(type="clip_score", fraction=1.0)
    assert clip_threshold(np.array([0.1, 0.2, np.nan], np.float32), f) == pytest.approx(0.1)
    f = ClipScoreFilter(type="clip_score", fraction=0.5)
    assert clip_threshold(np.array([0.4, 0.3, 0.2, 0.1], np.float32), f) == pytest.approx(0.2)


def test_uid_array_is_datacomp_format():
    a = uid_array(["ffffffffffffffff0000000000000001", "00000000000000010000000000000002"])
    assert a.dtype == np.dtype("u8,u8")
    assert a.tolist() == [(1, 2), (2 ** 64 - 1, 1)]


@pytest.mark.parametrize("bad, words", [
    ({"filters": [{"type": "clip_score", "fraction": 0.3}]}, "no clip scorer writes it"),
    ({"clip": [{"model": "x"}], "filters": [{"type": "clip_score"}]}, "exactly one of"),
    ({"clip": [{"model": "x", "column": "score"}]}, "clip.0.column"),
    ({"filters": [{"type": "nope"}]}, "filters.0"),
    ({"clip": [{"model": "x", "batch_size": 0}]}, "clip.0.batch_size"),
    ({"bogus": 1}, "bogus"),
])
def test_config_errors_are_readable(bad, words):
    with pytest.raises(ValueError, match="invalid curation config") as e:
        load_config(bad)
    assert words in str(e.value)


def test_unknown_model_is_a_clear_error(tmp_path):
    make_pool(tmp_path / "pool", n=5)
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        run_curation(str(tmp_path / "pool"), tmp_path / "out", {"clip": [{"model": "no-such-model"}]}, progress=False)


def test_config_json_schema_is_current():
    from schemas.config import SCHEMA_FILE, json_schema

    assert SCHEMA_FILE.read_text() == json_schema(), "run: python -m schemas.config"


def test_missing_shards_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        expand(str(tmp_path / "{00000..00002}.tar"))


def test_annotating_in_two_processes_gives_the_same_outputs(tmp_path):
    from bench.orchestration import checksums

    make_pool(tmp_path / "pool", n=60, per_shard=20, plant={3: "corrupt"})
    for w in (1, 2):
        run_curation(str(tmp_path / "pool"), tmp_path / f"w{w}", CONFIG, progress=False, workers=w)
    assert checksums(tmp_path / "w1") == checksums(tmp_path / "w2")
