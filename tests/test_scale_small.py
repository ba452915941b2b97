"""bench/scale_small.py on a few thousand rows (no DataComp venv, no Dask, our runs in this process): the
pool in DataComp's layout with only what the steps read, the JSON it writes, the cost model's numbers."""
import json

import numpy as np
import pyarrow.parquet as pq

from bench import cost_model, scale_small
from bench.scale_small_pool import make_small_pool, shard_columns
from fixtures.oracles import datacomp_top_fraction_uids


def test_pool_shards_hold_datacomps_columns_and_l14_embeddings_only(tmp_path):
    info = make_small_pool(tmp_path / "metadata", 3000, 1000, seed=0)
    assert info["rows"] == [1000] * 3 and not info["reused"]
    assert make_small_pool(tmp_path / "metadata", 3000, 1000, seed=0)["reused"]
    name = info["shards"][1]
    t = pq.read_table(tmp_path / "metadata" / f"{name}.parquet")
    assert t.column_names == ["uid", "url", "text", "original_width", "original_height",
                              "clip_b32_similarity_score", "clip_l14_similarity_score", "sha256"]
    with np.load(tmp_path / "metadata" / f"{name}.npz") as z:
        assert sorted(z.files) == ["l14_img", "l14_txt"]
        img, txt = z["l14_img"], z["l14_txt"]
    assert img.dtype == np.float16 and img.shape == (1000, 768) == txt.shape
    dots = (img.astype(np.float32) * txt.astype(np.float32)).sum(1)
    assert np.abs(dots - t.column("clip_l14_similarity_score").to_numpy()).max() < 1e-5
    uids = t.column("uid").to_pylist()
    assert len(set(uids)) == 1000 and all(len(u) == 32 and int(u, 16) >= 0 for u in uids)
    again, _ = shard_columns(1, 1000, 0)  # the same shard drawn again: the same rows
    assert again["uid"].to_pylist() == uids


def test_smoke_run_writes_the_results_and_clip_uids_are_datacomps_rule(tmp_path):
    out = tmp_path / "scale_small.json"
    scale_small.main(["--smoke", "--n-max", "4000", "--per-shard", "1000", "--sizes", "2000,4000",
                      "--steps", "no_filter,clip_score_l14", "--dask-sizes", "", "--no-peer", "--in-process", "--repeats", "2",
                      "--workers", "1", "--work", str(tmp_path / "work"), "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["complete"] and res["missing"] == [] and res["n_max"] == 4000 and not res["datacomp"]
    for n in (2000, 4000):
        nf, cs = res["by_size"][str(n)]["no_filter"], res["by_size"][str(n)]["clip_score_l14"]
        assert nf["status"] == cs["status"] == "ok" and nf["kept"] == nf["samples_in"] == n
        assert len(nf["seconds_runs"]) == 2 and nf["seconds"] == min(nf["seconds_runs"])  # the lower middle
    pool = tmp_path / "work" / "pools" / "4000"
    tables = [pq.read_table(p) for p in sorted(pool.glob("*.parquet"))]
    uids = [u for t in tables for u in t.column("uid").to_pylist()]
    scores = np.concatenate([t.column("clip_l14_similarity_score").to_numpy() for t in tables])
    got = np.load(res["by_size"]["4000"]["clip_score_l14"]["uids_file"])
    assert got.tobytes() == datacomp_top_fraction_uids(uids, scores, 0.3).tobytes()
    assert set(res["cost_per_step"]) == {"no_filter", "clip_score_l14"}
    assert set(res["projected"]) == {"medium_128m", "large_1_28b"}
    assert res["projection_error_at_4m"] is None and res["targets_met"]["projection_error_at_4m"] is False


def test_cost_model_numbers():
    run = {"status": "ok", "startup_rss_mb": 100.0, "annotate_seconds": 5.0, "run_seconds": 10.0}
    res = {"n_max": 4_000_000, "steps": {"s": {"clip": [], "filters": []}},
           "pool": {"parquet_bytes_per_row_by_column": {"uid": 16.0, "text": 10.0, "url": 30.0}},
           "by_size": {"1000000": {"s": {**run, "seconds": 10.0, "cpu_seconds": 10.0, "peak_rss_mb": 300.0},
                                   "datacomp:s": {"status": "ok", "seconds": 20.0, "identical_to_ours": True}},
                       "4000000": {"s": {**run, "seconds": 40.0, "cpu_seconds": 40.0, "peak_rss_mb": 900.0},
                                   "datacomp:s": {"status": "ok", "seconds": 80.0, "identical_to_ours": True}}},
           "dask": {"1000000": {"s": {"status": "ok", "seconds": 12.0}},
                    "4000000": {"s": {"status": "ok", "seconds": 60.0}}}}
    m = cost_model.model(res)
    c = m["cost_per_step"]["s"]
    assert c["cpu_exponent"] == 1.0 and c["cpu_seconds_per_million_rows"] == 10.0
    assert c["peak_rss_mb_per_million_rows"] == 200.0 and c["bytes_read_per_row"] == 26.0
    p = m["projected"]["medium_128m"]["s"]
    assert p["worker_hours"] == round(1280 / 3600, 2) and p["client_peak_mb"] == 100 + 200 * 128
    assert p["wall_hours"]["this_kind_x8"] == round((640 / 16 + 640) / 3600, 2)
    assert m["ours_vs_datacomp_seconds"] == {"s": 0.5} and m["datacomp_identical"] == {"1000000:s": True,
                                                                                       "4000000:s": True}
    # 12 s at 1M on Dask = 2 s fixed + 10 s a million rows (the local slope): 42 s projected at 4M, 60 measured
    assert m["projection_error_at_4m"] == round(abs(42 - 60) / 60, 3)
    check = m["dask_projection_check"]["s"]
    assert (check["fixed_s"], check["per_million_rows_s"], check["power_law_4m_s"]) == (2.0, 10.0, 48.0)
    assert m["largest_process_mb_at_n_max"] == 900.0


def test_repeated_runs_keep_the_median_and_a_failure_first():
    runs = [{"status": "ok", "seconds": s, "identical_to_ours": True} for s in (9.0, 7.0, 8.0)]
    m = scale_small._median(runs)
    assert m["seconds"] == 8.0 and m["seconds_runs"] == [9.0, 7.0, 8.0] and m["identical_to_ours"]
    runs[0]["identical_to_ours"] = False
    assert scale_small._median(runs)["identical_to_ours"] is False  # one differing run is reported
    runs[2] = {"status": "timeout", "seconds": 900.0}
    assert scale_small._median(runs)["status"] == "timeout"
