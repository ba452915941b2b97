"""The curate flow under Prefect: once on a temporary local server (default suite), once as a real
served deployment started with `prefect deployment run` (slow)."""
import json

import pandas as pd
import pytest

from tests.shardmaker import make_pool, make_task

CONFIG = "clip:\n  - {model: curate-tiny, batch_size: 16}\nfilters:\n  - {type: clip_score, fraction: 0.5}\n"


def test_curate_flow_runs_under_prefect(tmp_path, prefect_server):
    from flows.curate import curate

    make_pool(tmp_path / "pool", n=40, per_shard=20, plant={4: "corrupt"})
    (tmp_path / "c.yaml").write_text(CONFIG)
    m = curate(pool=str(tmp_path / "pool" / "{00000..00001}.tar"), out=str(tmp_path / "out"),
               config=str(tmp_path / "c.yaml"))
    meta = pd.read_parquet(tmp_path / "out" / "metadata.parquet")
    assert m["samples_in"] == 40 == len(meta)
    assert m["kept"] + m["dropped"] == 40
    assert m["dropped_by_reason"]["decode"] == 1
    assert m["kept"] == 20  # DataComp rule on 39 scored: n = int(39 * .5) = 19 -> 20 at or above


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
    assert lineage["curation"]["kept"] == 21 and lineage["curation"]["config"]["filters"][0]["fraction"] == 0.5
    assert (tmp_path / "out" / "train" / "final" / "open_clip_config.json").is_file()
    assert json.loads((tmp_path / "out" / "train" / "results.jsonl").read_text())["n"] == 8


def test_second_run_annotates_only_new_shards_and_a_bad_shard_fails_alone(tmp_path, prefect_server, monkeypatch):
    import flows.curate as fc
    from flows.curate import curate

    make_pool(tmp_path / "pool", n=80, per_shard=20)  # 4 shards
    real = fc.annotate_shard

    def flaky(shard, *a, **k):  # a disk error on one shard, every try
        if shard.endswith("00003.tar"):
            raise OSError(f"simulated I/O error reading {shard}")
        return real(shard, *a, **k)

    monkeypatch.setattr(fc, "annotate_shard", flaky)
    (tmp_path / "c.yaml").write_text(CONFIG)
    (tmp_path / "p").mkdir()
    for name in ("00000.tar", "00001.tar"):
        (tmp_path / "p" / name).symlink_to(tmp_path / "pool" / name)
    kw = dict(pool=str(tmp_path / "p"), out=str(tmp_path / "out"), config=str(tmp_path / "c.yaml"), retries=0)
    m1 = curate(**kw)
    assert (m1["shards_annotated"], m1["stage_runs"], m1["samples_in"]) == (2, 4, 40)
    (tmp_path / "p" / "00002.tar").symlink_to(tmp_path / "pool" / "00002.tar")
    (tmp_path / "p" / "00003.tar").symlink_to(tmp_path / "pool" / "00003.tar")
    m2 = curate(**kw)
    assert (m2["shards_annotated"], m2["stage_runs"], m2["samples_in"]) == (1, 2, 60)
    assert [f["shard"].endswith("00003.tar") for f in m2["failed_shards"]] == [True]
    assert "simulated I/O error" in m2["failed_shards"][0]["error"]
    assert m2["kept"] + m2["dropped"] == 60


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
    assert r["output_shards_exist"] and r["kept"] + r["dropped"] == 40


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
