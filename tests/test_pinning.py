"""A training pins the curated version it started on: publishes landing during it neither change what it
reads nor delete it; its hold is released at the end, and a killed run's hold goes stale."""
import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

import shardio.tar
from pipeline import publish
from shardio import versions
from shardio.shards import ShardWriter
from fixtures.shardmaker import COLOURS, image_bytes, make_task, uid
from training.train import TrainConfig, train

NAMES = list(COLOURS)


def publish_version(out, first, n=32, per_shard=16, keep=2):
    """Publish ``n`` samples with uids ``first..first+n-1`` into ``out`` through the real publisher."""
    stage = publish.staging(out)
    with ShardWriter(stage / "shards", per_shard) as w:
        for i in range(first, first + n):
            colour = NAMES[i % len(NAMES)]
            w.write(f"{i:09d}", image_bytes(colour, seed=i), "jpg", f"a {colour} square", {"uid": uid(i)})
    (stage / "manifest.json").write_text(json.dumps({"kept": n, "first": first}))
    return publish.commit(out, stage, keep)


def on_disk(out):
    return sorted(p.name for p in (out / "versions").iterdir())


def hold_files(out):
    return versions.store(out).names()


def cfg(tmp_path, data, run="run", **kw):
    base = dict(train_data=str(data), out_dir=str(tmp_path / run), samples_seen=16 * 4, batch_size=16,
                workers=0, warmup=1, log_every=1, checkpoints=4)
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def reads(monkeypatch):
    """Every shard the trainer opens and every uid it reads; ``hooks[n]`` runs when the n-th shard opens."""
    real = shardio.tar.iter_samples
    seen = {"opened": [], "uids": set(), "hooks": {}}

    def spy(path, report=None):
        seen["opened"].append(str(path))
        hook = seen["hooks"].get(len(seen["opened"]))
        if hook:
            hook()
        for s in real(path, report):
            if "json" in s.members:  # eval task shards have none
                seen["uids"].add(json.loads(s.members["json"])["uid"])
            yield s

    monkeypatch.setattr(shardio.tar, "iter_samples", spy)
    return seen


def test_two_publishes_during_a_training_change_nothing_it_reads_and_keep_its_version(tmp_path, reads, caplog):
    out = tmp_path / "out"
    publish_version(out, 0)  # v000001: the training's
    during = []

    def second_publish():  # keep=2 would remove v000001 now, were it not held
        publish_version(out, 2000)
        during.append((on_disk(out), hold_files(out)))
        assert "v000001" in during[0][0], "the publish removed the version a training reads"  # fails fast

    reads["hooks"] = {2: lambda: publish_version(out, 1000), 4: second_publish}
    with caplog.at_level(logging.INFO, logger="pipeline.publish"):
        r = train(cfg(tmp_path, out / "shards"))
    assert r["steps"] == 4
    assert during[0][0] == ["v000001", "v000002", "v000003"]
    assert [h.split("--")[0] for h in during[0][1]] == ["v000001"]
    assert any("version v000001 kept: held by training" in m for m in caplog.messages)
    v1 = os.path.realpath(out / "versions" / "v000001" / "shards")
    assert len(reads["opened"]) > 4 and {os.path.dirname(os.path.realpath(p)) for p in reads["opened"]} == {v1}
    assert reads["uids"] == {uid(i) for i in range(32)}  # its version's samples, every one, and nothing else
    want = {"out": str(out.resolve()), "version": "v000001",
            "manifest_sha256": versions.resolve(out / "versions" / "v000001").manifest_sha256}
    assert r["data_version"] == want
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["data_version"] == want
    assert json.loads((tmp_path / "run" / "result.json").read_text())["data_version"] == want
    assert hold_files(out) == [] and "v000001" in on_disk(out)  # released; removed by the next publish
    publish_version(out, 3000)
    assert on_disk(out) == ["v000003", "v000004"]


def test_a_killed_trainings_hold_goes_stale_and_the_next_publish_cleans_it(tmp_path, caplog):
    out = tmp_path / "out"
    publish_version(out, 0, n=4, keep=1)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    now = time.time()
    host = socket.gethostname()

    def plant(version, holder, pid, host, heartbeat):
        versions.store(out).put(f"{version}--{holder}.json", json.dumps(
            {"holder": holder, "version": version, "pid": pid, "host": host, "started": now - 7200,
             "heartbeat": heartbeat, "purpose": f"training {holder}"}).encode())

    plant("v000001", "killed", dead, host, now)  # fresh heartbeat, but its process is gone
    with caplog.at_level(logging.INFO, logger="shardio.versions"):
        publish_version(out, 100, n=4, keep=1)
    assert on_disk(out) == ["v000002"] and hold_files(out) == []
    assert any(f"pid {dead} gone on this host" in m for m in caplog.messages)

    plant("v000002", "silent", 1, "elsewhere", now - versions.STALE_AFTER_S - 60)  # another host, no heartbeat
    plant("v000002", "alive", 1, "elsewhere", now)
    with caplog.at_level(logging.INFO, logger="pipeline.publish"):
        publish_version(out, 200, n=4, keep=1)
    assert on_disk(out) == ["v000002", "v000003"] and hold_files(out) == ["v000002--alive.json"]
    assert any("v000002 kept: held by training alive (pid 1 on elsewhere)" in m for m in caplog.messages)
    versions.store(out).delete("v000002--alive.json")
    publish_version(out, 300, n=4, keep=1)
    assert on_disk(out) == ["v000004"]


def test_a_hold_taken_while_a_publish_removes_the_version_is_seen_by_one_side(tmp_path):
    out = tmp_path / "out"
    publish_version(out, 0, n=4)
    publish_version(out, 100, n=4)
    # the publisher announced removal of v000001 before the reader's hold landed: the reader must back off
    versions.store(out).put("v000001.removing", b"{}")
    with pytest.raises(versions.VersionGone, match="v000001 is being removed"):
        versions.pin(out / "versions" / "v000001")
    assert hold_files(out) == ["v000001.removing"]
    versions.store(out).delete("v000001.removing")
    # the reader's hold landed before the publisher read the holds again: the version stays
    with versions.pin(out / "versions" / "v000001", purpose="reader") as p:
        assert versions.remove_version(out, "v000001")[0]["purpose"] == "reader"
        assert "v000001" in on_disk(out) and versions.usable(p.data)
    assert versions.remove_version(out, "v000001") == [] and on_disk(out) == ["v000002"]


def test_every_way_to_name_an_output_records_the_same_version_and_eval_reports_it(tmp_path, reads):
    from app.cli import main
    from training.evalsuite import write_tables
    from training.lora import FinetuneConfig, finetune
    from training.ssl import SSLConfig, pretrain
    from training.zeroshot import evaluate_zeroshot

    out = tmp_path / "out"
    publish_version(out, 0)
    publish_version(out, 100)  # current: v000002
    specs = {"folder": out, "shards": out / "shards", "current": out / "current" / "shards",
             "version": out / "versions" / "v000002", "version_shards": out / "versions" / "v000002" / "shards",
             "pattern": str(out / "shards" / "{00000..00001}.tar")}
    for name, spec in specs.items():
        main(["train", "--data", str(spec), "--out", str(tmp_path / name), "--samples-seen", "16",
              "--batch-size", "16", "--workers", "0"])
    recorded = [json.loads((tmp_path / n / "train_config.json").read_text())["data_version"] for n in specs]
    assert [d["version"] for d in recorded] == ["v000002"] * len(specs) and len({json.dumps(d) for d in recorded}) == 1
    assert all(json.loads((tmp_path / n / "result.json").read_text())["data_version"] == recorded[0] for n in specs)
    assert {os.path.dirname(p) for p in reads["opened"]} == {str(out.resolve() / "versions" / "v000002" / "shards")}
    assert versions.resolve(out / "versions" / "v000001").version == "v000001"  # an older version by name
    assert versions.resolve(out / "versions" / "v000001" / "shards").version == "v000001"

    ckpt = tmp_path / "folder" / "final"
    ft = finetune(FinetuneConfig(train_data=str(out), out_dir=str(tmp_path / "ft"), model=str(ckpt), lora=2,
                                 samples_seen=16, batch_size=16, workers=0))
    ssl = pretrain(SSLConfig(train_data=str(out / "shards"), out_dir=str(tmp_path / "ssl"), samples_seen=16,
                             batch_size=16, workers=0))
    for run in ("ft", "ssl"):
        assert json.loads((tmp_path / run / "result.json").read_text())["data_version"] == recorded[0]
    assert ft["data_version"] == ssl["data_version"] == recorded[0]
    assert hold_files(out) == []

    ev = evaluate_zeroshot(str(ckpt), make_task(tmp_path / "task", per_class=2))
    assert ev["data_version"] == recorded[0]
    write_tables({"suite": "mini", "checkpoint": str(ckpt), "tasks_covered": 0, "tasks_scored": 0, "average": None,
                  "groups": {}, "rows": [], "data_version": ev["data_version"]}, tmp_path / "r.jsonl")
    assert f"Trained on curated `{out.resolve()}` version `v000002`" in (tmp_path / "r.md").read_text()
    from pipeline.report import _training

    assert "version <b>v000002</b>" in "".join(_training(tmp_path / "folder"))
    plain = versions.resolve(out / "versions" / "v000001" / "shards" / "00000.tar")  # a shard list in a version
    assert plain.version == "v000001" and plain.shards == [str(out.resolve() / "versions/v000001/shards/00000.tar")]
    with ShardWriter(tmp_path / "pool", 4) as w:
        w.write("k", image_bytes("red"), "jpg", "a red square", {"uid": uid(0)})
    plain = versions.resolve(tmp_path / "pool")  # not a curated output: no version, nothing held
    assert plain.record is None and plain.shards == [str(tmp_path / "pool" / "00000.tar")]


def test_a_resume_reads_the_version_it_started_on_or_refuses_naming_it(tmp_path, reads):
    out = tmp_path / "out"
    publish_version(out, 0)
    c = cfg(tmp_path, out)
    assert train(c.model_copy(update={"max_steps": 2}))["steps"] == 2  # a crash after step 2's state
    publish_version(out, 1000)  # current moves on; v000001 is still among the newest two
    reads["opened"].clear()
    reads["uids"].clear()
    r = train(c)
    assert r["resumed_from_step"] == 2 and r["data_version"]["version"] == "v000001"
    assert reads["uids"] <= {uid(i) for i in range(32)}
    v1 = os.path.realpath(out / "versions" / "v000001" / "shards")
    assert {os.path.dirname(os.path.realpath(p)) for p in reads["opened"]} == {v1}

    c2 = cfg(tmp_path, out, run="run2")
    train(c2.model_copy(update={"max_steps": 2}))  # on v000002
    publish_version(out, 2000)
    publish_version(out, 3000)  # no run holds v000002 between the crash and the resume: removed
    assert on_disk(out) == ["v000003", "v000004"]
    with pytest.raises(versions.VersionGone, match=r"cannot resume .*run2.* version v000002 .*no longer exists"):
        train(c2)
    assert hold_files(out) == []


def test_curate_run_keeps_the_newest_n_and_logs_why(tmp_path):
    from app.cli import main
    from fixtures.shardmaker import make_pool

    make_pool(tmp_path / "pool", n=8, per_shard=4)
    (tmp_path / "c.json").write_text(json.dumps({"filters": []}))
    out = tmp_path / "out"
    run = ["run", "--pool", str(tmp_path / "pool"), "--out", str(out), "--config", str(tmp_path / "c.json")]
    for _ in range(3):
        main(run + ["--keep-versions", "2"])
    assert on_disk(out) == ["v000002", "v000003"]
    with versions.pin(out, purpose="a reader") as p:  # holds v000003 while two more runs publish
        assert p.data.version == "v000003"
        main(run + ["--keep-versions", "1"])
        main(run + ["--keep-versions", "1"])
        assert on_disk(out) == ["v000003", "v000005"]
    main(run + ["--keep-versions", "1"])
    assert on_disk(out) == ["v000006"]
    log = (out / "curate.log").read_text()
    assert "version v000003 kept: held by a reader" in log and "version v000005 kept: one of the newest 1" in log
    assert "version v000001 removed" in log


def test_a_hold_beats_until_released_and_comes_back_if_removed(tmp_path, caplog):
    out = tmp_path / "out"
    publish_version(out, 0, n=4)
    hold = versions.Hold(str(out), "v000001", "beating", heartbeat_s=0.01).take()
    first = json.loads(versions.store(out).get(hold.name))
    assert {k: first[k] for k in ("version", "pid", "host", "purpose")} == {
        "version": "v000001", "pid": os.getpid(), "host": socket.gethostname(), "purpose": "beating"}

    def wait_for(cond):  # polls the heartbeat thread's effect; no timing is asserted
        for _ in range(2000):
            if cond():
                return True
            time.sleep(0.005)
        return False

    def beat():
        return json.loads(versions.store(out).get(hold.name) or b"{}").get("heartbeat", 0)

    assert wait_for(lambda: beat() > first["heartbeat"])
    with caplog.at_level(logging.WARNING, logger="shardio.versions"):
        versions.store(out).delete(hold.name)  # as a publisher does with a hold it judged stale
        assert wait_for(lambda: versions.store(out).get(hold.name) is not None)
    assert any("removed as stale" in m for m in caplog.messages)
    hold.release()
    assert hold_files(out) == [] and not hold._thread.is_alive()
