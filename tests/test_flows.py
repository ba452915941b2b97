"""The curate flow under Prefect: once on a temporary local server (default suite), once as a real
served deployment started with `prefect deployment run` (slow)."""
import json

import pandas as pd
import pytest

from fixtures.shardmaker import make_pool, make_task

CONFIG = "clip:\n  - {model: curate-tiny, batch_size: 16}\nfilters:\n  - {type: clip_score, fraction: 0.5}\n"


def test_curate_flow_runs_under_prefect_and_equals_the_library(tmp_path, prefect_server):
    from flows.curate import curate
    from pipeline.publish import checksums
    from pipeline.run import run_curation

    make_pool(tmp_path / "pool", n=40, per_shard=20, plant={4: "corrupt", 9: "noimage", 13: "dup"})
    (tmp_path / "c.yaml").write_text(CONFIG)
    pool = str(tmp_path / "pool" / "{00000..00001}.tar")
    m = curate(pool=pool, out=str(tmp_path / "out"), config=str(tmp_path / "c.yaml"))
    meta = pd.read_parquet(tmp_path / "out" / "metadata.parquet")
    assert m["samples_in"] == 40 == len(meta)
    assert m["dropped_by_reason"]["format"] == 1 and m["dropped_by_reason"]["no_image"] == 1
    assert m["kept"] == 20  # DataComp rule on 38 scored: n = int(38 * .5) = 19 -> 20 at or above
    run_curation(pool, tmp_path / "lib", str(tmp_path / "c.yaml"), progress=False)
    assert checksums(tmp_path / "out") == checksums(tmp_path / "lib")


def test_bad_config_fails_the_flow_with_a_clear_message(tmp_path):
    from flows.curate import curate

    (tmp_path / "c.yaml").write_text("filters:\n  - {type: clip_score, fraction: 2}\n")
    with pytest.raises(ValueError, match="fraction"):
        curate.fn(pool=str(tmp_path), out=str(tmp_path / "out"), config=str(tmp_path / "c.yaml"))


def test_curate_then_train_eval_records_lineage(tmp_path, prefect_server):
    from flows.curate import curate
    from flows.train_eval import train_eval

    make_pool(tmp_path / "pool", n=40, per_shard=20)
    (tmp_path / "c.yaml").write_text(CONFIG)
    curate(pool=str(tmp_path / "pool"), out=str(tmp_path / "out"), config=str(tmp_path / "c.yaml"))
    lineage = train_eval(curated=str(tmp_path / "out"), samples_seen=64, batch_size=16,
                         task=str(make_task(tmp_path / "task", per_class=2)))
    assert lineage["train"]["samples_seen"] == 64
    assert lineage["curation"]["data_version"]["version"] == "v000001"  # the version it read, held while it ran
    assert lineage["curation"]["kept"] == 21 and lineage["curation"]["config"]["filters"][0]["fraction"] == 0.5
    assert (tmp_path / "out" / "train" / "final" / "open_clip_config.json").is_file()
    assert json.loads((tmp_path / "out" / "train" / "results.jsonl").read_text())["n"] == 8


@pytest.mark.parametrize("path", ["library", "flow"])
def test_one_failure_policy_for_the_library_and_the_flow(tmp_path, prefect_server, monkeypatch, path):
    import pipeline.annotate
    from flows.curate import curate
    from pipeline.publish import checksums
    from pipeline.run import ShardsFailed, run_curation

    make_pool(tmp_path / "pool", n=80, per_shard=20)  # 4 shards
    real = pipeline.annotate.annotate_shard

    def flaky(shard, *a, **k):  # a disk error on one shard, every try
        if str(shard).endswith("00003.tar"):
            raise OSError(f"simulated I/O error reading {shard}")
        return real(shard, *a, **k)

    monkeypatch.setattr(pipeline.annotate, "annotate_shard", flaky)
    (tmp_path / "c.yaml").write_text(CONFIG)
    (tmp_path / "p").mkdir()
    for name in ("00000.tar", "00001.tar"):
        (tmp_path / "p" / name).symlink_to(tmp_path / "pool" / name)
    out = tmp_path / "out"

    def run(**kw):
        if path == "flow":
            return curate(pool=str(tmp_path / "p"), out=str(out), config=str(tmp_path / "c.yaml"), retries=0, **kw)
        return run_curation(str(tmp_path / "p"), out, str(tmp_path / "c.yaml"), progress=False, retries=0, **kw)

    m1 = run()
    # stages per shard: ingest, thumbs, clip_score
    assert (m1["run"]["shards_annotated"], m1["run"]["stage_runs"], m1["samples_in"]) == (2, 6, 40)
    before = checksums(out)
    for name in ("00002.tar", "00003.tar"):
        (tmp_path / "p" / name).symlink_to(tmp_path / "pool" / name)
    with pytest.raises(ShardsFailed, match="00003.tar.*simulated I/O error"):
        run()
    assert checksums(out) == before  # nothing published: the previous output stays whole
    m2 = run(on_failure="partial")
    assert (m2["run"]["shards_annotated"], m2["samples_in"]) == (0, 60)  # shard 2 was annotated by the failed run
    assert [f["shard"].endswith("00003.tar") for f in m2["not_processed_shards"]] == [True]
    assert "simulated I/O error" in m2["not_processed_shards"][0]["error"]
    assert set(pd.read_parquet(out / "metadata.parquet")["shard"]) == {"00000", "00001", "00002"}


def test_the_flow_retries_an_io_error_and_not_bad_data(tmp_path, prefect_server, monkeypatch):
    import pipeline.annotate
    from flows.curate import curate

    make_pool(tmp_path / "pool", n=40, per_shard=20)
    real, tries = pipeline.annotate.annotate_shard, {}

    def flaky(shard, *a, **k):
        name = str(shard)[-9:]
        tries[name] = tries.get(name, 0) + 1
        if name == "00000.tar" and tries[name] == 1:
            raise OSError("simulated NFS hiccup")
        if name == "00001.tar":
            raise ValueError("simulated bad data")
        return real(shard, *a, **k)

    monkeypatch.setattr(pipeline.annotate, "annotate_shard", flaky)
    (tmp_path / "c.yaml").write_text("filters: []\n")
    m = curate(pool=str(tmp_path / "pool"), out=str(tmp_path / "out"), config=str(tmp_path / "c.yaml"), retries=2,
               on_failure="partial")
    assert tries == {"00000.tar": 2, "00001.tar": 1}
    assert m["samples_in"] == 20 and [f["error"] for f in m["not_processed_shards"]] == ["ValueError: simulated bad data"]


def test_two_runs_on_one_output_are_refused(tmp_path):
    from pipeline.lock import OutputLocked, exclusive
    from pipeline.run import run_curation

    make_pool(tmp_path / "pool", n=20, per_shard=20)
    with exclusive(tmp_path / "out"):
        with pytest.raises(OutputLocked, match="being written by another run"):
            run_curation(str(tmp_path / "pool"), tmp_path / "out", {"filters": []}, progress=False)
    run_curation(str(tmp_path / "pool"), tmp_path / "out", {"filters": []}, progress=False)  # released


@pytest.mark.slow
def test_dask_runner_gives_the_same_outputs(tmp_path, prefect_server):
    from bench.orchestration import checksums
    from flows.curate import curate

    make_pool(tmp_path / "pool", n=60, per_shard=20, plant={7: "corrupt"})
    (tmp_path / "c.yaml").write_text(CONFIG)
    kw = dict(pool=str(tmp_path / "pool"), config=str(tmp_path / "c.yaml"))
    curate(out=str(tmp_path / "threads"), **kw)
    curate(out=str(tmp_path / "dask"), runner="dask", dask_workers=2, **kw)
    assert checksums(tmp_path / "threads") == checksums(tmp_path / "dask")


@pytest.mark.slow
def test_served_deployment_run_completes(tmp_path):
    from bench.prefect_deployment import run_deployment

    make_pool(tmp_path / "pool", n=40, per_shard=20)
    (tmp_path / "c.yaml").write_text(CONFIG)
    r = run_deployment(str(tmp_path / "pool"), str(tmp_path / "out"), str(tmp_path / "c.yaml"), timeout=300)
    assert r["deployment_run_completed"], json.dumps(r, indent=1)
    assert r["output_shards_exist"] and r["samples_in"] == 40


def test_prefect_yaml_entrypoints_exist_and_take_their_parameters():
    import importlib
    import inspect
    from pathlib import Path

    import yaml

    spec = yaml.safe_load((Path(__file__).parents[1] / "prefect.yaml").read_text())
    assert {d["name"] for d in spec["deployments"]} == {"laion-subset", "nightly"}
    for d in spec["deployments"]:
        path, name = d["entrypoint"].split(":")
        fn = getattr(importlib.import_module(path[:-3].replace("/", ".")), name)
        assert set(d["parameters"]) <= set(inspect.signature(fn.fn).parameters)


def test_nightly_flow_curates_then_trains_on_the_output(tmp_path, prefect_server):
    from flows.nightly import curate_train_eval

    make_pool(tmp_path / "pool", n=40, per_shard=20)
    (tmp_path / "c.yaml").write_text(CONFIG)
    lineage = curate_train_eval(pool=str(tmp_path / "pool"), out=str(tmp_path / "out"), config=str(tmp_path / "c.yaml"),
                                samples_seen=32, batch_size=16, task=str(make_task(tmp_path / "task", per_class=2)))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert lineage["curation"]["kept"] == manifest["kept"] and lineage["train"]["samples_seen"] == 32
    assert str(tmp_path / "out" / "train") in lineage["train"]["checkpoint"]
