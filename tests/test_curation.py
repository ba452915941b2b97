import io
import json
import tarfile

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.export import uid_array
from pipeline.filters.clip_score import top_fraction_threshold
from pipeline.publish import checksums
from pipeline.run import run_curation
from shardio.shards import expand, iter_tar_samples
from fixtures.oracles import datacomp_top_fraction_uids
from fixtures.shardmaker import make_pool, uid

PLANT = {3: "corrupt", 10: "truncated", 30: "empty", 41: "noimage", 52: "missing"}
CONFIG = {"clip": [{"model": "curate-tiny", "batch_size": 16}],
          "filters": [{"type": "clip_score", "fraction": 0.3}]}
REASON = "clip_score[top0.3]"


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("cur")
    make_pool(root / "pool", n=60, per_shard=25, plant=PLANT)
    manifest = run_curation(str(root / "pool" / "{00000..00002}.tar"), root / "out", CONFIG, progress=False)
    return root, manifest, pd.read_parquet(root / "out" / "metadata.parquet")


def test_every_sample_in_the_tars_is_a_row_and_the_listed_but_absent_one_is_counted(curated):
    _, m, meta = curated
    in_tars = {uid(i) for i in range(60)} - {uid(52)}  # sample 52 was removed from its tar
    assert sorted(meta["uid"]) == sorted(in_tars)
    assert m["samples_in"] == 59 and m["listed_missing_from_tar"] == 1
    assert m["dropped_by_reason"][REASON] + m["kept"] + 4 == 59


def test_planted_problems_get_exactly_their_reason(curated):
    _, _, meta = curated
    by_uid = meta.set_index("uid")
    expect = {3: "format", 10: "decode", 30: "decode", 41: "no_image"}
    assert set(meta.loc[meta["ingest_error"].notna(), "uid"]) == {uid(i) for i in expect}
    for i, reason in expect.items():
        assert by_uid.loc[uid(i), "drop_reason"] == reason
        assert by_uid.loc[uid(i), "drop_reasons"].tolist() == [reason]  # not also failing the score filter
    assert meta.loc[meta["ingest_error"].notna(), "clip_score"].isna().all()
    assert meta.loc[meta["ingest_error"].isna(), "clip_score"].notna().all()


def test_top_fraction_and_uid_file_match_datacomp(curated):
    root, _, meta = curated
    expect = datacomp_top_fraction_uids(meta["uid"], meta["clip_score"].to_numpy(np.float64), 0.3)
    buf = io.BytesIO()
    np.save(buf, expect)
    assert (root / "out" / "uids.npy").read_bytes() == buf.getvalue()
    assert len(expect) == int(meta["keep"].sum())


def test_threshold_rule_edges():
    assert top_fraction_threshold(np.array([0.1, 0.2, np.nan]), 1.0) == pytest.approx(0.1)
    assert top_fraction_threshold(np.array([0.4, 0.3, 0.2, 0.1]), 0.5) == pytest.approx(0.2)
    assert top_fraction_threshold(np.array([np.nan]), 0.5) == float("inf")
    x = np.array([0.30000001, 0.3, 0.29999999], np.float64)  # float64 is not rounded to float32
    assert top_fraction_threshold(x, 0.34) == 0.3


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
    root, _, _ = curated
    m2 = run_curation(str(root / "pool"), root / "out", CONFIG, progress=False)
    assert m2["run"]["stage_runs"] == 0
    m3 = run_curation(str(root / "pool"), root / "out2", {**CONFIG, "filters": []}, progress=False,
                      work=root / "out")
    assert m3["run"]["stage_runs"] == 0 and m3["kept"] == 59 - 4
    assert m3["dropped_by_reason"] == {"decode": 2, "format": 1, "no_image": 1}


def test_ingest_columns_match_schema(curated):
    root, _, _ = curated
    import schemas

    for f in (root / "out" / "columns" / "ingest").glob("*.parquet"):
        tbl = pq.read_table(f)
        schemas.validate(tbl)
        assert tbl.column_names == [c for c, spec in schemas.columns().items() if spec["stage"] == "ingest"]


def _complete_keys(data: bytes, cut: int) -> set[str]:
    """Keys with at least one member whose data ends before ``cut`` (independent of the reader)."""
    keys = set()
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for m in t.getmembers():
            if m.offset_data + m.size <= cut:
                keys.add(m.name.split(".", 1)[0])
    return keys


def test_broken_tars_keep_every_complete_sample_and_are_named(tmp_path):
    make_pool(tmp_path / "pool", n=45, per_shard=15)
    cut = tmp_path / "pool" / "00001.tar"
    data = cut.read_bytes()
    cut.write_bytes(data[:3000])  # cut mid-archive
    (tmp_path / "pool" / "00002.tar").write_bytes(b"this is not a tar file" * 100)
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", {"clip": [{"model": "curate-tiny"}]}, progress=False)
    meta = pd.read_parquet(tmp_path / "out" / "metadata.parquet")
    recovered = _complete_keys(data, 3000)
    assert set(meta.loc[meta["shard"] == "00001", "key"]) == recovered
    assert len(meta) == 15 + len(recovered) == m["samples_in"]
    broken = {b["shard"].rsplit("/", 1)[-1]: b for b in m["broken_shards"]}
    assert set(broken) == {"00001.tar", "00002.tar"}
    assert broken["00001.tar"]["error"].startswith("truncated") and broken["00002.tar"]["error"].startswith("not_a_tar")
    assert broken["00001.tar"]["samples_recovered"] == len(recovered) and broken["00002.tar"]["samples_recovered"] == 0
    assert m["listed_missing_from_tar"] == 30 - len(recovered)


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
    ({"clip": [{"model": "x"}], "filters": [{"type": "clip_score", "fraction": 0.3},
                                             {"type": "clip_score", "fraction": 0.3}]}, "give one of them a 'name:'"),
])
def test_config_errors_are_readable(bad, words):
    with pytest.raises(ValueError, match="invalid curation config") as e:
        load_config(bad)
    assert words in str(e.value)


def test_presets_resolve_by_name_and_broken_yaml_is_one_line(tmp_path):
    assert load_config("datacomp/basic").filters[0].type == "basic"
    assert load_config("basic").filters[0].type == "basic"
    with pytest.raises(ValueError, match="no preset name"):
        load_config("no-such-preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("clip:\n  - model: [unclosed\n")
    with pytest.raises(ValueError, match=r"not valid YAML \(line") as e:
        load_config(bad)
    assert "\n" not in str(e.value)


def test_missing_scorer_is_caught_before_any_work(tmp_path):
    make_pool(tmp_path / "pool", n=5)
    with pytest.raises(ValueError, match="unknown scorer model 'no-such-model'"):
        run_curation(str(tmp_path / "pool"), tmp_path / "out", {"clip": [{"model": "no-such-model"}]}, progress=False)
    with pytest.raises(FileNotFoundError, match="weights file"):
        run_curation(str(tmp_path / "pool"), tmp_path / "out",
                     {"clip": [{"model": "curate-tiny", "checkpoint": str(tmp_path / "nope.pt")}]}, progress=False)
    assert not (tmp_path / "out").exists()  # no lock file, no half output


def test_config_json_schema_is_current():
    from pipeline.config import SCHEMA_FILE, json_schema

    assert SCHEMA_FILE.read_text() == json_schema(), "run: python -m pipeline.config"


def test_missing_shards_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        expand(str(tmp_path / "{00000..00002}.tar"))


def test_annotating_in_two_processes_gives_the_same_outputs(tmp_path):
    make_pool(tmp_path / "pool", n=60, per_shard=20, plant={3: "corrupt"})
    for w in (1, 2):
        run_curation(str(tmp_path / "pool"), tmp_path / f"w{w}", CONFIG, progress=False, workers=w)
    assert checksums(tmp_path / "w1") == checksums(tmp_path / "w2")
