"""Worker processes for model-scoring jobs: forked from a server that imported torch and open_clip once."""
from __future__ import annotations

import os

import pyarrow.parquet as pq

from pipeline import executors
from pipeline.run import run_curation
from tests.shardmaker import make_pool

CONFIG = {"clip": [{"model": "curate-tiny", "batch_size": 16}],
          "filters": [{"type": "clip_score", "fraction": 0.5}]}


def test_scoring_workers_give_the_same_output(tmp_path):
    make_pool(tmp_path / "pool", n=60, per_shard=15)
    one = run_curation(str(tmp_path / "pool"), tmp_path / "one", CONFIG, progress=False, workers=1)
    two = run_curation(str(tmp_path / "pool"), tmp_path / "two", CONFIG, progress=False, workers=2)
    assert (tmp_path / "one" / "uids.npy").read_bytes() == (tmp_path / "two" / "uids.npy").read_bytes()
    a, b = (pq.read_table(tmp_path / d / "metadata.parquet").to_pandas() for d in ("one", "two"))
    assert list(a["uid"]) == list(b["uid"]) and (a["clip_score"] - b["clip_score"]).abs().max() < 1e-5
    assert one["kept"] == two["kept"] and one["samples_in"] == two["samples_in"] == 60


def _job(name):
    import sys

    return os.environ.get(name), "open_clip" in sys.modules, os.getppid()


def test_workers_see_the_callers_environment_and_the_preloaded_modules(monkeypatch):
    monkeypatch.setenv("CURATE_TEST_VALUE", "first")
    first = list(executors.ProcessPool(2).map(_job, ["CURATE_TEST_VALUE"]))
    monkeypatch.setenv("CURATE_TEST_VALUE", "second")
    second = list(executors.ProcessPool(2).map(_job, ["CURATE_TEST_VALUE"]))
    (_, (v1, clip1, parent1), e1), (_, (v2, clip2, _), e2) = first[0], second[0]
    assert (e1, e2) == (None, None) and (v1, v2) == ("first", "second")
    assert clip1 and clip2  # inherited from the fork server, not imported by the job
    assert parent1 != os.getpid()  # a child of the fork server
