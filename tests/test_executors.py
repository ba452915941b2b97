"""Worker processes for model-scoring jobs: forked from a server that imported torch and open_clip once."""
from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from pipeline import executors
from pipeline.run import run_curation
from fixtures.shardmaker import make_pool

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


class Flaky:
    """Fails ``times`` times with ``error``, then returns its item; counts calls in a folder (the calls
    may happen in other processes)."""

    def __init__(self, folder, error: BaseException, times: int = 1):
        self.folder, self.error, self.times = folder, error, times

    def __call__(self, item):
        n = len(list(self.folder.glob(f"{item}.*")))
        (self.folder / f"{item}.{n}").touch()
        if n < self.times:
            raise self.error
        return item * 10


def calls(folder, item) -> int:
    return len(list(folder.glob(f"{item}.*")))


@pytest.mark.parametrize("make", [lambda: executors.InProcess(retries=2),
                                  lambda: executors.ProcessPool(2, retries=2, torch=False)], ids=["inprocess", "pool"])
def test_transient_errors_are_retried_and_deterministic_ones_are_not(tmp_path, make):
    io, bug = tmp_path / "io", tmp_path / "bug"
    io.mkdir(), bug.mkdir()
    assert list(make().map(Flaky(io, OSError("disk hiccup"), times=2), [1])) == [(1, 10, None)]
    assert calls(io, 1) == 3
    for error in (ValueError("bad data"), TypeError("a bug"), KeyError("uid")):
        [(item, result, message)] = list(make().map(Flaky(bug, error, times=9), [len(error.args[0])]))
        assert result is None and message.startswith(type(error).__name__) and calls(bug, item) == 1
    [(_, _, message)] = list(make().map(Flaky(io, TimeoutError("slow disk"), times=9), [2]))
    assert message.startswith("TimeoutError") and calls(io, 2) == 3  # retried, then given up


def _dies_once(args):
    folder, item = args
    marker = folder / f"died.{item}"
    if item == 0 and not marker.exists():
        marker.touch()
        os._exit(1)  # the worker dies: the pool breaks
    return item


def test_jobs_lost_with_a_dead_worker_run_again(tmp_path):
    jobs = [(tmp_path, i) for i in range(4)]
    got = sorted((item[1], result, error) for item, result, error in
                 executors.ProcessPool(2, retries=1, torch=False).map(_dies_once, jobs))
    assert got == [(i, i, None) for i in range(4)]
    (tmp_path / "died.0").unlink()
    got = list(executors.ProcessPool(2, retries=0, torch=False).map(_dies_once, jobs))
    assert any(error and error.startswith("BrokenProcessPool") for _, _, error in got)


def test_the_prefect_task_retries_only_transient_errors():
    from prefect.states import Failed

    from flows.curate import annotate_task, transient_failure

    assert annotate_task.retry_condition_fn is transient_failure
    for error, retry in ((OSError("nfs"), True), (TimeoutError(), True), (ValueError("bad"), False),
                         (KeyError("k"), False), (TypeError("bug"), False)):
        assert transient_failure(annotate_task, None, Failed(data=error)) is retry


def test_dask_retries_only_transient_errors(tmp_path):
    distributed = pytest.importorskip("distributed")
    io, bug = tmp_path / "io", tmp_path / "bug"
    io.mkdir(), bug.mkdir()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        ex = executors.Dask(c.scheduler_address, retries=2)
        assert list(ex.map(Flaky(io, OSError("hiccup"), times=2), [1])) == [(1, 10, None)] and calls(io, 1) == 3
        assert list(ex.map(Flaky(bug, ValueError("bad data"), times=9), [2])) == [(2, None, "ValueError: bad data")]
        assert calls(bug, 2) == 1
