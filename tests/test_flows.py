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


@pytest.mark.slow
def test_served_deployment_run_completes(tmp_path):
    from bench.prefect_deployment import run_deployment

    make_pool(tmp_path / "pool", n=40, per_shard=20)
    (tmp_path / "c.yaml").write_text(CONFIG)
    r = run_deployment(str(tmp_path / "pool"), str(tmp_path / "out"), str(tmp_path / "c.yaml"), timeout=300)
    assert r["deployment_run_completed"], json.dumps(r, indent=1)
    assert r["output_shards_exist"] and r["kept"] + r["dropped"] == 40
