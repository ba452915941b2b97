"""Curated versions in a bucket are held like a folder's (issue #34 on object storage): a reader pins
the version ``current`` names, a publish keeps a held version past the usual two and removes it once
the hold is released; a dead reader's hold does not keep it. Against moto's S3 server on 127.0.0.1."""
from __future__ import annotations

import json
import os
import socket

import pytest

from fixtures.buckets import start_server, stop_server
from fixtures.shardmaker import make_pool
from pipeline.run import run_curation
from shardio import storage
from shardio.versions import VersionGone, pin, resolve, resolve_record

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto.server")


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    proc, port = start_server(tmp_path / "moto.log")
    for k in list(os.environ):
        if k.startswith(("AWS_", "FSSPEC_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHOLDS")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "holds-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    s3fs.S3FileSystem.clear_instance_cache()
    storage.configure(None)
    fs = s3fs.S3FileSystem(endpoint_url=f"http://127.0.0.1:{port}", skip_instance_cache=True)
    fs.mkdir("held")
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()
    storage.configure(None)
    stop_server(proc)


def versions(fs) -> list[str]:
    fs.invalidate_cache()
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls("held/out/versions"))


def test_a_held_bucket_version_outlives_two_publishes(bucket, tmp_path):
    make_pool(tmp_path / "pool", n=20, per_shard=10)
    publish = lambda: run_curation(str(tmp_path / "pool"), "s3://held/out", {"filters": []}, progress=False)  # noqa: E731
    publish()
    pinned = pin("s3://held/out", purpose="a training run")
    assert pinned.record["version"] == "v000001" and pinned.record["out"] == "s3://held/out"
    assert pinned.shards and all(s.startswith("s3://held/out/versions/v000001/shards/") for s in pinned.shards)
    hold = bucket.glob("held/out/holds/*.json")
    assert len(hold) == 1 and json.loads(bucket.cat_file(hold[0]))["purpose"] == "a training run"
    publish()
    publish()
    assert versions(bucket) == ["v000001", "v000002", "v000003"]  # v1 held, v2 the previous, v3 current
    assert resolve_record(pinned.record).manifest_sha256 == pinned.record["manifest_sha256"]
    pinned.release()
    bucket.invalidate_cache()
    assert not bucket.glob("held/out/holds/*.json")
    publish()
    assert versions(bucket) == ["v000003", "v000004"]
    with pytest.raises(VersionGone, match="no longer exists"):
        resolve_record(pinned.record)
    assert resolve("s3://held/out/versions/v000003/shards").version == "v000003"


def test_a_dead_readers_hold_keeps_nothing(bucket, tmp_path):
    make_pool(tmp_path / "pool", n=20, per_shard=10)
    for _ in range(2):
        run_curation(str(tmp_path / "pool"), "s3://held/out", {"filters": []}, progress=False)
    dead = {"holder": "gone", "version": "v000001", "out": "s3://held/out", "pid": 2 ** 22 + 7,
            "host": socket.gethostname(), "started": 0, "heartbeat": 9e9, "purpose": "a killed run"}
    bucket.pipe_file("held/out/holds/v000001--gone.json", json.dumps(dead).encode())
    run_curation(str(tmp_path / "pool"), "s3://held/out", {"filters": []}, progress=False)
    assert versions(bucket) == ["v000002", "v000003"]
    bucket.invalidate_cache()
    assert not bucket.exists("held/out/holds/v000001--gone.json")
