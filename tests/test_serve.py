"""Serving: `curate serve` against a real local Prefect server puts an active schedule on
the nightly chain only; the curate flow's artifacts land on the run that was started; the serving
options and prefect.yaml agree."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fixtures.shardmaker import make_pool, make_task

ROOT = Path(__file__).parents[1]
CONFIG = "clip:\n  - {model: curate-tiny, batch_size: 16}\nfilters:\n  - {type: clip_score, fraction: 0.5}\n"


def artifacts_of(client, run_id) -> list:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))


def serve(log, *args):
    """``curate serve ARGS`` against the test server."""
    from prefect.settings import PREFECT_API_URL

    fh = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", *args], cwd=ROOT, stdout=fh,
                            stderr=subprocess.STDOUT, env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()})
    proc.log = fh
    return proc


def stop(proc) -> None:
    proc.terminate()
    proc.wait(timeout=60)
    proc.log.close()


def wait_for_deployment(client, name: str, proc, timeout: float = 90):
    from prefect.exceptions import ObjectNotFound

    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, f"curate serve exited with {proc.returncode}"
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            time.sleep(1)
    raise TimeoutError(f"{name} was not served within {timeout}s")


def test_served_nightly_is_scheduled_and_curate_artifacts_land_on_the_started_run(tmp_path, prefect_server):
    from prefect.client.orchestration import get_client

    from flows.curate import curate

    make_pool(tmp_path / "pool", n=40, per_shard=20)
    (tmp_path / "c.yaml").write_text(CONFIG)
    pool, out, cfg = str(tmp_path / "pool"), str(tmp_path / "out"), str(tmp_path / "c.yaml")
    proc = serve(tmp_path / "serve.log", "--pool", pool, "--out", out, "--config", cfg,
                 "--cron", "30 3 * * *", "--timezone", "Europe/Berlin")
    try:
        state = curate(pool=pool, out=out, config=cfg, return_state=True)  # while the server starts serving
        m = state.result()
        with get_client(sync_client=True) as client:
            arts = artifacts_of(client, state.state_details.flow_run_id)
            [summary] = [a for a in arts if a.type == "markdown"]
            [progress] = [a for a in arts if a.type == "progress"]
            assert summary.key == "curation-summary" and progress.data == 100.0
            assert str(m["thresholds"]["clip_score[top0.5]"]) in summary.data
            assert m["report"] in summary.data and m["report"].endswith("report.html")

            nightly = wait_for_deployment(client, "curate-train-eval/nightly", proc)
            [s] = nightly.schedules
            assert (s.schedule.cron, s.schedule.timezone, s.active) == ("30 3 * * *", "Europe/Berlin", True)
            assert not nightly.paused
            assert nightly.parameters == {"pool": pool, "out": out, "config": cfg}
            assert wait_for_deployment(client, "curate/laion-subset", proc).schedules == []
            assert wait_for_deployment(client, "train-eval/on-curated", proc).parameters == {"curated": out}
    finally:
        stop(proc)
    assert "serving curate/laion-subset, train-eval/on-curated, curate-train-eval/nightly" in \
        (tmp_path / "serve.log").read_text()
    proc = serve(tmp_path / "again.log", "--no-schedule", "--deployments", "nightly")  # the one flag turns it off
    try:
        with get_client(sync_client=True) as client:
            end = time.time() + 90
            while [s.active for s in client.read_deployment_by_name("curate-train-eval/nightly").schedules] != [False]:
                assert proc.poll() is None and time.time() < end, (tmp_path / "again.log").read_text()[-2000:]
                time.sleep(1)
    finally:
        stop(proc)


def test_nightly_run_carries_the_evaluation_table(tmp_path, prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from flows.nightly import curate_train_eval

    make_pool(tmp_path / "pool", n=40, per_shard=20)
    (tmp_path / "c.yaml").write_text(CONFIG)
    state = curate_train_eval(pool=str(tmp_path / "pool"), out=str(tmp_path / "out"), config=str(tmp_path / "c.yaml"),
                              samples_seen=32, batch_size=16, task=str(make_task(tmp_path / "task", per_class=2)),
                              return_state=True)
    lineage = state.result()
    with get_client(sync_client=True) as client:
        run_id = state.state_details.flow_run_id
        arts = {a.key: a for a in artifacts_of(client, run_id)}
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))
        below = {r.name: [a.key for a in artifacts_of(client, r.id)] for r in children}
    assert len(children) == 2 and set(arts) >= {"train-eval", "curation-summary"}
    acc1 = lineage["eval"]["metrics"]["acc1"]
    assert f"| {lineage['eval']['task']} | {acc1:.4f} |" in arts["train-eval"].data
    assert lineage["curation"]["version"] in arts["train-eval"].data
    assert not any("train-eval" in keys for keys in below.values()), below  # only on the run the user started


def test_serve_options(capsys):
    from app.cli import main
    from flows.serve import CRON, deployments

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and text.startswith("usage: curate serve")
    assert "--no-schedule" in text and CRON in text and "--timezone" in text and "--deployments" in text
    by_name = {d.name: d for d in deployments(pool="p", out="o", config="c.yaml")}
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in by_name["nightly"].schedules] == [(CRON, "UTC", True)]
    assert by_name["laion-subset"].schedules == [] and by_name["on-curated"].parameters == {"curated": "o"}
    [off] = deployments(active=False, names=["nightly"])
    assert [(s.schedule.cron, s.active) for s in off.schedules] == [(CRON, False)]
    for bad, words in ((["--cron", "61 2 * * *"], "Invalid cron"), (["--timezone", "Mars/Olympus"], "IANA"),
                       (["--deployments", "weekly"], "invalid choice")):
        with pytest.raises(SystemExit) as e:
            main(["serve", *bad])
        assert e.value.code == 2 and words in capsys.readouterr().err


def test_prefect_yaml_schedules_like_serve():
    from flows.serve import CRON, deployments

    spec = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    served = {d.name: d for d in deployments()}
    for name, d in spec.items():
        assert d["parameters"] == served[name].parameters, name
    assert spec["nightly"]["schedules"] == [{"cron": CRON, "timezone": "UTC", "active": True}]
    assert not spec["laion-subset"].get("schedules")  # one schedule per output folder
    assert spec["laion-subset"]["parameters"]["out"] == spec["nightly"]["parameters"]["out"]


def test_train_eval_refuses_an_unpublished_output(tmp_path):
    from flows.train_eval import train_eval
    from pipeline.publish import NotPublished

    (tmp_path / "out" / ".staging").mkdir(parents=True)  # a run that never published
    with pytest.raises(NotPublished, match="holds no complete curation output"):
        train_eval.fn(curated=str(tmp_path / "out"))
