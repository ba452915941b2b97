"""bench/scale.py: its smoke path on a few thousand rows (no DataComp venv, no Dask cluster, our runs in
this process) writes the JSON the full benchmark writes, and our CLIP-score uids are DataComp's rule
(fixtures/oracles.py); its measuring of a subprocess records peak RSS, a timeout and a memory cap."""
import json
import sys

import numpy as np
import pandas as pd

from bench import scale
from fixtures.oracles import datacomp_top_fraction_uids

STEPS = ["clip_score_l14", "basic", "image_based"]


def test_smoke_json_shape_and_clip_score_uids_match_the_oracle(tmp_path):
    out = tmp_path / "scale.json"
    scale.main(["--smoke", "--n-max", "1200", "--no-peer", "--no-dask", "--in-process", "--workers", "1",
                "--steps", ",".join(STEPS), "--work", str(tmp_path / "work"), "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["complete"] and res["n_max"] == 1200 and res["sizes"] == [300, 600, 1200]
    assert isinstance(res["machine"], str) and res["pool"]["shards"] == 20
    for n in res["sizes"]:
        for step in STEPS:
            r = res["by_size"][str(n)][step]
            assert r["status"] == "ok" and r["samples_in"] == n and r["seconds"] > 0 and r["peak_rss_mb"] > 0
            assert {"annotate", "finish", "load_columns", "decide", "export"} <= set(r["phases"])
            assert r["decide_peak_rss_mb"] > 0
    assert set(res["exponents"]) == set(STEPS) and all(isinstance(e, float) for e in res["exponents"].values())
    assert res["decide_peak_rss_at_n"] == 1200 and res["decide_peak_rss_mb_1m"] > 0
    assert res["datacomp_identical"] == {} and res["ours_vs_datacomp_seconds"] == {} and "dask" not in res
    assert set(res["targets_met"]) == {"exponents", "decide_peak_rss", "ours_vs_datacomp_seconds",
                                       "datacomp_identical", "dask_identical", "near_dedup"}
    ib = res["by_size"]["1200"]["image_based"]  # metadata alone: its targets are embeddings, no model
    assert ib["status"] == "ok" and ib["kept"] > 0 and res["steps"]["image_based"]["filters"][0]["targets"][0].endswith(".npy")

    pool = tmp_path / "work" / "pools" / "1200"
    md = pd.concat([pd.read_parquet(p) for p in sorted(pool.glob("*.parquet"))])
    assert md["uid"].is_unique and len(md) == 1200
    expect = datacomp_top_fraction_uids(md["uid"], md["clip_l14_similarity_score"].to_numpy(), 0.3)
    got = np.load(scale.ROOT / res["by_size"]["1200"]["clip_score_l14"]["uids_file"])
    assert got.dtype == np.dtype("u8,u8") and got.tobytes() == expect.tobytes()
    assert res["by_size"]["1200"]["clip_score_l14"]["kept"] == len(expect)


def test_measure_records_peak_rss_timeout_and_memory_cap():
    py = sys.executable
    r = scale.measure([py, "-c", "import time; b = bytearray(150 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
                                 "time.sleep(0.5)"], timeout=60, mem_cap_mb=10_000)
    assert r["status"] == "ok" and r["peak_rss_mb"] >= 150 and r["peak_tree_rss_mb"] >= 100
    r = scale.measure([py, "-c", "import time; time.sleep(30)"], timeout=1, mem_cap_mb=10_000)
    assert r["status"] == "timeout" and r["seconds"] < 20
    r = scale.measure([py, "-c", "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
                                 "time.sleep(30)"], timeout=60, mem_cap_mb=100)
    assert r["status"] == "out_of_memory" and r["seconds"] < 20
