"""Pools in object storage, against a real S3 server: moto's standalone server in its own process over
HTTP on 127.0.0.1 (a free port), started here and stopped after. Nothing in fsspec or s3fs is mocked:
curate talks to the server as it would to AWS, MinIO or R2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.run import jobs, plan, run_curation
from shardio import storage
from shardio.shards import expand, shard_id
from fixtures.buckets import Relay, Requests, checksums, http_site, start_server, stop_server, wait_for_lease
from fixtures.shardmaker import make_pool, uid

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

KEY, SECRET = "AKIACURATETEST", "curate-secret-must-never-be-logged-7f3a"
CLIP = {"clip": [{"model": "curate-tiny", "batch_size": 16}],
        "filters": [{"type": "clip_score", "fraction": 0.5}, {"type": "exact_dedup"}]}


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """moto's S3 server on a free port of 127.0.0.1: (port, its log, one line a request)."""
    log = tmp_path_factory.mktemp("moto") / "server.log"
    proc, port = start_server(log)
    yield port, log
    stop_server(proc)


@pytest.fixture(scope="module")
def server(moto):
    """The server's endpoint URL."""
    return f"http://127.0.0.1:{moto[0]}"


@pytest.fixture
def env(server, monkeypatch):
    """Credentials and endpoint the way the AWS SDKs read them: the environment."""
    for k in list(os.environ):
        if k.startswith(("AWS_", "FSSPEC_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", server)
    s3fs.S3FileSystem.clear_instance_cache()
    storage.configure(None)
    yield server
    s3fs.S3FileSystem.clear_instance_cache()
    storage.configure(None)


def _client(endpoint: str):
    return s3fs.S3FileSystem(key=KEY, secret=SECRET, endpoint_url=endpoint, skip_instance_cache=True)


def _bucket(endpoint: str, bucket: str):
    fs = _client(endpoint)
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    return fs


def _upload(endpoint: str, local: Path, bucket: str, prefix: str) -> None:
    fs = _bucket(endpoint, bucket)
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.put_file(str(f), f"{bucket}/{prefix}/{f.relative_to(local).as_posix()}")


def _pool(root: Path) -> Path:
    """Two parts with same-named shards (img2dataset layout: tar + parquet + stats), a note, a hidden file."""
    make_pool(root / "pool" / "part-a", n=30, per_shard=12, plant={4: "corrupt", 7: "dup"})
    make_pool(root / "pool" / "part-b", n=20, per_shard=12)
    (root / "pool" / "README.md").write_text("crawl of 2026-12-01")
    (root / "pool" / "part-b" / ".DS_Store").write_bytes(b"x")
    return root / "pool"


def _same_outputs(a: dict, b: dict) -> None:
    ra, rb = Path(a["root"]), Path(b["root"])
    for name in ("uids.npy", "metadata.parquet"):
        assert (ra / name).read_bytes() == (rb / name).read_bytes(), name
    sa, sb = sorted((ra / "shards").iterdir()), sorted((rb / "shards").iterdir())
    assert [p.name for p in sa] == [p.name for p in sb] and sa
    for x, y in [(x, y) for x, y in zip(sa, sb) if not x.name.endswith("_stats.json")]:  # stats hold a duration
        assert x.read_bytes() == y.read_bytes(), x.name


def test_a_run_from_a_bucket_equals_the_run_on_local_copies(env, tmp_path):
    pool = _pool(tmp_path)
    _upload(env, pool, "crawl", "pool")
    local = run_curation(str(pool), tmp_path / "local", CLIP, progress=False)
    remote = run_curation("s3://crawl/pool/", tmp_path / "remote", CLIP, progress=False)
    _same_outputs(local, remote)
    assert remote["samples_in"] == 50 and remote["dropped_by_reason"]["format"] == 1
    meta = pd.read_parquet(remote["metadata"])
    assert sorted(set(meta["shard"])) == ["part-a/00000", "part-a/00001", "part-a/00002", "part-b/00000", "part-b/00001"]
    assert remote["input_shards"][0] == "s3://crawl/pool/part-a/00000.tar"
    notes = {u["path"]: u["why"].split(":")[0] for u in remote["pool_files_not_read"]}
    assert notes == {"s3://crawl/pool/README.md": "not_a_shard", "s3://crawl/pool/part-b/.DS_Store": "hidden"}
    assert {Path(u["path"]).name for u in local["pool_files_not_read"]} == {"README.md", ".DS_Store"}
    # braces, globs and a .txt list in the bucket give the same shards and ids
    ids = [shard_id(s) for s in expand("s3://crawl/pool/")]
    assert [shard_id(s) for s in expand("s3://crawl/pool/part-{a,b}/*.tar")] == ids
    assert [shard_id(s) for s in expand("s3://crawl/pool/{part-a/00000,part-b/00001}.tar")] == [ids[0], ids[4]]
    assert [shard_id(s) for s in expand("s3://crawl/pool/part-a/{00000..00002}.tar")] == ["00000", "00001", "00002"]
    fs = _client(env)
    fs.pipe_file("crawl/pool/list.txt", b"# part b only\npart-b/00000.tar\npart-b/00001.tar\n")
    assert [shard_id(s) for s in expand("s3://crawl/pool/list.txt")] == ids[3:]
    (tmp_path / "list.txt").write_text("s3://crawl/pool/part-b/00000.tar\n")  # a local list of URLs
    assert [shard_id(s) for s in expand(str(tmp_path / "list.txt"))] == ["00000"]
    with pytest.raises(FileNotFoundError, match="not found"):
        expand("s3://crawl/pool/part-a/{00000..00003}.tar")
    # fsspec's cache layer, configured like any store: each shard and sidecar fetched once into it
    cached = run_curation("filecache::s3://crawl/pool/", tmp_path / "cached", {**CLIP, "storage_options": {
        "filecache": {"cache_storage": str(tmp_path / "cache")}}}, progress=False)
    _same_outputs(local, cached)
    assert cached["input_shards"][0] == "filecache::s3://crawl/pool/part-a/00000.tar"
    assert len([f for f in (tmp_path / "cache").iterdir() if f.name != "cache"]) == 10  # 5 tars + 5 parquets
    # a rerun reads the cache: the store's ETag and size are the shard's identity
    again = run_curation("s3://crawl/pool/", tmp_path / "remote", CLIP, progress=False)
    assert again["run"]["stage_runs"] == 0
    _same_outputs(remote, again)


def _datacomp(folder: Path, shards=2, rows=40, seed=0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        ids = range(rows * s, rows * s + rows)
        pq.write_table(pa.table({
            "uid": [uid(i) for i in ids], "url": [f"https://example.com/{i}.jpg" for i in ids],
            "text": [f"a photo of thing {i}" for i in ids],
            "original_width": rng.integers(150, 600, rows), "original_height": rng.integers(150, 600, rows),
            "clip_l14_similarity_score": rng.uniform(0.1, 0.4, rows),
            "clip_b32_similarity_score": rng.uniform(0.1, 0.4, rows)}), folder / f"{s:08x}cafe.parquet")
        np.savez(folder / f"{s:08x}cafe.npz",
                 **{k: rng.normal(size=(rows, 8)).astype(np.float16) for k in ("l14_img", "l14_txt", "b32_img", "b32_txt")})


def test_a_datacomp_metadata_folder_in_a_bucket(env, tmp_path):
    _datacomp(tmp_path / "metadata")
    _upload(env, tmp_path / "metadata", "datacomp", "small/metadata")
    cfg = {"clip": [{"precomputed": "l14"}],
           "filters": [{"type": "clip_score", "fraction": 0.3}, {"type": "semantic_dedup", "clusters": 2, "eps": 0.5}]}
    local = run_curation(str(tmp_path / "metadata"), tmp_path / "local", cfg, progress=False)
    remote = run_curation("s3://datacomp/small/metadata", tmp_path / "remote", cfg, progress=False)
    for name in ("uids.npy", "metadata.parquet"):
        assert (Path(local["root"]) / name).read_bytes() == (Path(remote["root"]) / name).read_bytes(), name
    assert remote["samples_in"] == 80 and 0 < remote["kept"] < 24
    # the embeddings came through the store once, into the work folder (a view maps only local files)
    emb = tmp_path / "remote" / "embeddings" / "clip_score"
    got = np.load(emb / "00000000cafe.img.npy")
    assert np.array_equal(got, np.load(tmp_path / "metadata" / "00000000cafe.npz")["l14_img"])


def test_reshard_and_train_read_the_bucket(env, tmp_path):
    from pipeline.reshard import reshard
    from training.train import TrainConfig, train

    pool = _pool(tmp_path)
    _upload(env, pool, "shards", "pool")
    m = run_curation(str(pool), tmp_path / "cur", {"filters": [{"type": "exact_dedup"}]}, progress=False)
    a = reshard(m["uids"], str(pool), tmp_path / "local")
    b = reshard(m["uids"], "s3://shards/pool", tmp_path / "remote")
    assert b["written"] == a["written"] == m["kept"] and b["not_found"] == 0
    sa, sb = (sorted(p for p in (Path(r["root"]) / "shards").iterdir() if not p.name.endswith("_stats.json"))
              for r in (a, b))
    assert [x.read_bytes() for x in sa] == [x.read_bytes() for x in sb] and sa
    # a metadata-only run's uid list in the bucket, resharded from the bucket into the bucket
    _client(env).put_file(m["uids"], "shards/runs/dc/uids.npy")
    c = reshard("s3://shards/runs/dc/uids.npy", "s3://shards/pool", "s3://shards/resharded")
    assert c["written"] == m["kept"] and c["root"] == "s3://shards/resharded/versions/v000001"
    fs = _client(env)
    assert [fs.cat_file(f"shards/resharded/versions/v000001/shards/{x.name}") for x in sb] == [x.read_bytes() for x in sb]
    r = train(TrainConfig(train_data="s3://shards/pool/part-{a,b}", out_dir=str(tmp_path / "run"), samples_seen=16 * 3,
                          batch_size=16, workers=0, lr=1e-3, warmup=1, log_every=1))
    assert r["steps"] == 3 and set(r["bad_samples"]) <= {"decode", "format"}


def test_credentials_from_the_config_are_never_written(server, monkeypatch, tmp_path, capfd, caplog):
    for k in list(os.environ):
        if k.startswith(("AWS_", "FSSPEC_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups for credentials
    s3fs.S3FileSystem.clear_instance_cache()
    make_pool(tmp_path / "pool", n=12, per_shard=6)
    _upload(server, tmp_path / "pool", "private", "pool")
    cfg = {"filters": [], "storage_options": {"s3": {"key": KEY, "secret": SECRET, "endpoint_url": server,
                                                     "client_kwargs": {"region_name": "us-east-1"}}}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    try:
        # two worker processes: the options reach them with each job, not through the environment
        m = run_curation("s3://private/pool", tmp_path / "out", str(tmp_path / "cfg.json"), progress=False, workers=2)
        assert m["samples_in"] == m["kept"] == 12 and m["run"]["shards_annotated"] == 2
        p = plan("s3://private/pool", tmp_path / "o2", str(tmp_path / "cfg.json"))
        assert SECRET not in repr(jobs(p)) and SECRET not in repr(p) and SECRET not in str(p.config.model_dump())
    finally:
        storage.configure(None)
        s3fs.S3FileSystem.clear_instance_cache()
    written = [f for f in (tmp_path / "out").rglob("*") if f.is_file()]
    assert any(f.name == "manifest.json" for f in written) and any(f.name == "curate.log" for f in written)
    for f in written:
        data = f.read_bytes()
        assert SECRET.encode() not in data and KEY.encode() not in data, f
    out, err = capfd.readouterr()
    assert SECRET not in out + err + caplog.text
    # without the config's options the bucket cannot be read: the run used them, not something else
    with pytest.raises(Exception, match="[Cc]redentials") as e:
        expand("s3://private/pool")
    assert SECRET not in str(e.value)


def test_shards_with_datacomp_sidecars_large_and_gzipped_shards(env, tmp_path, monkeypatch):
    """Tars with DataComp's .parquet + .npz beside them (precomputed scores), a gzip'd tar, and shards
    larger than one request (read by range requests): the same outputs as on local copies."""
    import gzip

    import shardio.tar

    pool = tmp_path / "pool"
    make_pool(pool, n=36, per_shard=12, plant={5: "corrupt"})
    rng = np.random.default_rng(1)
    for s in range(3):
        side = pq.read_table(pool / f"{s:05d}.parquet")
        n = side.num_rows
        pq.write_table(side.append_column("clip_l14_similarity_score", pa.array(rng.uniform(0.1, 0.4, n))),
                       pool / f"{s:05d}.parquet")
        np.savez(pool / f"{s:05d}.npz", **{k: rng.normal(size=(n, 8)).astype(np.float16) for k in ("l14_img", "l14_txt")})
    (pool / "00002.tar.gz").write_bytes(gzip.compress((pool / "00002.tar").read_bytes(), mtime=0))
    (pool / "00002.tar").unlink()
    _upload(env, pool, "sidecars", "pool")
    cfg = {"clip": [{"precomputed": "l14"}], "filters": [{"type": "clip_score", "fraction": 0.5}]}
    local = run_curation(str(pool), tmp_path / "local", cfg, progress=False)
    monkeypatch.setattr(shardio.tar, "REMOTE_WHOLE_BYTES", 0)  # every shard by range requests
    monkeypatch.setattr(shardio.tar, "REMOTE_BLOCK", 4096)
    remote = run_curation("s3://sidecars/pool", tmp_path / "remote", cfg, progress=False)
    _same_outputs(local, remote)
    assert remote["samples_in"] == 36 and remote["kept"] == 19 and remote["pool_files_not_read"] == []
    for part in ("img", "txt"):  # the npz members came through the store into the work folder
        got = np.load(tmp_path / "remote" / "embeddings" / "clip_score" / f"00001.{part}.npy")
        assert np.array_equal(got, np.load(tmp_path / "local" / "embeddings" / "clip_score" / f"00001.{part}.npy"))


def test_missing_objects_and_outputs_in_a_bucket_are_named(env, tmp_path):
    make_pool(tmp_path / "pool", n=6, per_shard=6)
    _upload(env, tmp_path / "pool", "named", "pool")
    with pytest.raises(FileNotFoundError, match="1 shard.*not found.*s3://named/pool/00001.tar"):
        plan("s3://named/pool/{00000..00001}.tar", tmp_path / "o", {"filters": []})
    with pytest.raises(FileNotFoundError, match="not found.*s3://named/nothing-here"):
        plan("s3://named/nothing-here/", tmp_path / "o", {"filters": []})
    with pytest.raises(ValueError, match="--work https://example.com/w: https:// is read only"):
        plan("s3://named/pool", tmp_path / "o", {"filters": []}, work="https://example.com/w")


def test_https_pools_are_read_only_streams(tmp_path):
    """http(s):// through fsspec's HTTP filesystem (a local http.server here): braces, and folders from
    the server's index pages."""
    make_pool(tmp_path / "site" / "pool" / "part-a", n=12, per_shard=6)
    with http_site(tmp_path / "site") as base:
        url = base + "/pool/"
        assert [shard_id(s) for s in expand(url)] == ["part-a/00000", "part-a/00001"]
        remote = run_curation(url + "part-a/{00000..00001}.tar", tmp_path / "remote", {"filters": []}, progress=False)
        local = run_curation(str(tmp_path / "site" / "pool" / "part-a"), tmp_path / "local", {"filters": []}, progress=False)
        _same_outputs(local, remote)
        with pytest.raises(ValueError, match="--out http"):
            plan(url, url + "out", {"filters": []})
        # presigned URLs: their signatures are in no id, manifest or log
        signed = [url + f"part-a/{i:05d}.tar?X-Amz-Credential=AKIAX&X-Amz-Signature=SIGSECRET{i}" for i in range(2)]
        m = run_curation(signed, tmp_path / "signed", {"filters": []}, progress=False)
        assert [shard_id(x) for x in expand(signed)] == ["00000", "00001"] and m["kept"] == 12
        for f in (tmp_path / "signed").rglob("*"):
            if f.is_file() and f.suffix in (".json", ".log", ".html", ".parquet"):
                assert b"SIGSECRET" not in f.read_bytes() and b"AKIAX" not in f.read_bytes(), f
        assert "X-Amz-Signature=***" in json.dumps(m["input_shards"])


def test_output_and_work_folder_in_a_bucket(env, tmp_path):
    """--out s3://: the version is uploaded, then the pointer; the per-shard cache lives in the bucket,
    so another machine (a fresh mirror) reruns from it without annotating."""
    import shutil

    from pipeline.objstore import published_url
    from pipeline.run import _local

    pool = _pool(tmp_path)
    _upload(env, pool, "outs", "pool")
    local = run_curation(str(pool), tmp_path / "local", CLIP, progress=False)
    m = run_curation("s3://outs/pool", "s3://outs/run", CLIP, progress=False)
    assert m["root"] == published_url("s3://outs/run") == "s3://outs/run/versions/v000001"
    assert m["uids"] == "s3://outs/run/versions/v000001/uids.npy"
    fs = _client(env)
    for name in ("uids.npy", "metadata.parquet"):
        assert fs.cat_file(f"outs/run/versions/v000001/{name}") == (Path(local["root"]) / name).read_bytes()
    for f in sorted((Path(local["root"]) / "shards").glob("*.tar")):
        assert fs.cat_file(f"outs/run/versions/v000001/shards/{f.name}") == f.read_bytes()
    assert fs.isfile("outs/run/columns/ingest/part-b/00001.parquet") and fs.isfile("outs/run/thumbs/part-a/00000.npy")
    assert "curating 5 shards into s3://outs/run" in fs.cat_file("outs/run/curate.log").decode()
    shutil.rmtree(_local("curate-work", "s3://outs/run"))  # another machine: nothing of this one's
    again = run_curation("s3://outs/pool", "s3://outs/run", CLIP, progress=False)
    assert again["run"]["stage_runs"] == 0 and again["root"].endswith("v000002")
    from pipeline.publish import checksums as local_checksums

    here = {k: v for k, v in local_checksums(tmp_path / "local").items() if k != "manifest.json"}
    assert {k: v for k, v in checksums("s3://outs/run").items() if k != "manifest.json"} == here
    assert sorted(storage.name(v) for v in fs.ls("outs/run/versions")) == ["v000001", "v000002"]
    # the output as a pool (curate train --data, reshard --pool): the shards its pointer names
    got = expand("s3://outs/run")
    assert got[0].startswith("s3://outs/run/versions/v000002/shards/") and [shard_id(x) for x in got] == ["00000"]
    third = run_curation("s3://outs/pool", "s3://outs/run", CLIP, work=str(tmp_path / "w"), progress=False)
    fs.invalidate_cache()
    assert sorted(storage.name(v) for v in fs.ls("outs/run/versions")) == ["v000002", "v000003"]  # new + previous
    assert third["kept"] == m["kept"]


def test_a_second_run_on_a_bucket_output_is_refused(env, tmp_path):
    from pipeline.lock import OutputLocked
    from pipeline.objstore import exclusive

    make_pool(tmp_path / "pool", n=6, per_shard=6)
    _bucket(env, "outs")
    with exclusive("s3://outs/locked"):
        with pytest.raises(OutputLocked, match="s3://outs/locked is being written by another run \\(pid"):
            run_curation(str(tmp_path / "pool"), "s3://outs/locked", {"filters": []}, progress=False)
    m = run_curation(str(tmp_path / "pool"), "s3://outs/locked", {"filters": []}, progress=False)
    fs = _client(env)
    assert m["kept"] == 6 and not fs.exists("outs/locked/.curate.lock")  # released after the run
    # a killed run's lock: refused while its lease runs, taken over once it has run out
    dead = {"holder": "pid 1 on elsewhere", "token": "x", "expires": time.time() + 3600}
    fs.pipe_file("outs/locked/.curate.lock", json.dumps(dead).encode())
    with pytest.raises(OutputLocked, match="pid 1 on elsewhere, its lease runs"):
        run_curation(str(tmp_path / "pool"), "s3://outs/locked", {"filters": []}, progress=False)
    fs.pipe_file("outs/locked/.curate.lock", json.dumps({**dead, "expires": time.time() - 1}).encode())
    assert run_curation(str(tmp_path / "pool"), "s3://outs/locked", {"filters": []}, progress=False)["kept"] == 6
    with pytest.raises(ValueError, match="read only"):
        plan(str(tmp_path / "pool"), "https://example.com/out", {"filters": []})


def test_two_runs_finding_the_same_dead_lock_never_both_take_it(env, tmp_path):
    import threading

    from pipeline.lock import OutputLocked
    from pipeline.objstore import exclusive

    _bucket(env, "outs")
    fs = _client(env)
    dead = {"holder": "pid 1 on elsewhere", "token": "dead", "expires": time.time() - 1}
    for attempt in range(3):
        fs.pipe_file("outs/race/.curate.lock", json.dumps({**dead, "token": f"dead{attempt}"}).encode())
        start, results = threading.Barrier(4), []

        def contender():
            start.wait()
            try:
                with exclusive("s3://outs/race"):
                    results.append("held")
                    time.sleep(0.5)  # the others try while this one holds it
            except OutputLocked as e:
                results.append(str(e))

        threads = [threading.Thread(target=contender) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count("held") == 1, results
        fs.invalidate_cache()
        assert fs.find("outs/race") == []  # released, with its takeover marker


def test_a_run_whose_lock_was_taken_over_does_not_publish(env, tmp_path):
    from pipeline.lock import OutputLocked
    from pipeline.objstore import current_id, exclusive, publish

    _bucket(env, "outs")
    fs = _client(env)
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "manifest.json").write_text("{}")
    with exclusive("s3://outs/fenced"):
        publish("s3://outs/fenced", tmp_path / "v")
        # this run stalls past its lease; another takes the lock over
        fs.pipe_file("outs/fenced/.curate.lock", json.dumps({"holder": "pid 2 on other", "token": "theirs",
                                                             "expires": time.time() + 60}).encode())
        with pytest.raises(OutputLocked, match="taken over by pid 2 on other after its lease ran out; nothing was published"):
            publish("s3://outs/fenced", tmp_path / "v")
    fs.invalidate_cache()
    assert current_id(fs, "outs/fenced") == "v000001"
    assert fs.exists("outs/fenced/.curate.lock")  # theirs: not removed by this run


def _cli(pool, out, config, kill=None):
    env = {**os.environ, "CURATE_KILL_AT": kill or "", "CURATE_LOCK_LEASE_S": "2"}
    return subprocess.run([sys.executable, "-m", "app.cli", "run", "--pool", str(pool), "--out", str(out),
                           "--config", str(config)], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).parents[1])


def kill_and_rerun(env, tmp_path, points) -> None:
    make_pool(tmp_path / "pool", n=40, per_shard=10, plant={3: "corrupt", 8: "dup"})
    _bucket(env, "kills")
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps({"filters": []}))
    new.write_text(json.dumps({"filters": [{"type": "exact_dedup"}, {"type": "basic", "min_side": 30}]}))
    assert _cli(tmp_path / "pool", "s3://kills/clean", new).returncode == 0
    want = checksums("s3://kills/clean")
    for point in points:
        out = f"s3://kills/{point.replace(':', '_')}"
        assert _cli(tmp_path / "pool", out, old).returncode == 0
        before = checksums(out)
        r = _cli(tmp_path / "pool", out, new, kill=point)
        assert r.returncode == -9, (point, r.stderr[-2000:])
        seen = checksums(out)  # the pointer names the previous complete version, or the new one once switched
        assert seen == (want if point == "publish:switched" else before), point
        wait_for_lease(out)  # the killed run's lock is taken over once its lease runs out
        assert _cli(tmp_path / "pool", out, new).returncode == 0, point
        assert checksums(out) == want, point


def test_kills_while_publishing_to_a_bucket_lose_nothing(env, tmp_path):
    kill_and_rerun(env, tmp_path, ["publish:renamed"])


@pytest.mark.slow
def test_a_kill_at_any_point_with_a_bucket_output_shows_no_mix(env, tmp_path):
    from pipeline.faults import POINTS

    kill_and_rerun(env, tmp_path, list(POINTS))


def test_a_dask_cluster_sharing_no_disk_gives_the_local_outputs(env, tmp_path):
    """Two Dask worker processes whose scratch is their own folder: per-shard results go through the
    bucket (work folder there), the client reads them from it; outputs equal a one-process local run."""
    distributed = pytest.importorskip("distributed")

    pool = _pool(tmp_path)
    _upload(env, pool, "cluster", "pool")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker scores (Dask starts them with one thread): the same float sums
    try:
        local = run_curation(str(pool), tmp_path / "local", CLIP, progress=False)
    finally:
        torch.set_num_threads(threads)
    scratch = tmp_path / "workers"
    scratch.mkdir()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  local_directory=str(scratch), env={"TMPDIR": str(scratch)}) as cluster:
        m = run_curation("s3://cluster/pool", "s3://cluster/out", CLIP, progress=False,
                         dask_address=cluster.scheduler_address)
        with distributed.Client(cluster) as client:
            where = client.run(lambda: __import__("tempfile").gettempdir())
    assert set(where.values()) == {str(scratch)}  # the workers' private scratch, not the client's
    assert not list(scratch.glob("curate-job-*"))  # each job's scratch dropped after its upload
    fs = _client(env)
    for name in ("uids.npy", "metadata.parquet"):
        assert fs.cat_file(f"cluster/out/versions/v000001/{name}") == (Path(local["root"]) / name).read_bytes()
    for f in sorted((Path(local["root"]) / "shards").glob("*.tar")):
        assert fs.cat_file(f"cluster/out/versions/v000001/shards/{f.name}") == f.read_bytes()
    assert m["run"]["stage_runs"] == 15  # ingest, thumbnails and clip per shard, all on the workers


def test_a_bucket_metadata_pool_copies_embeddings_only_for_a_filter_that_reads_them(env, tmp_path, monkeypatch):
    """A CLIP-score-only run reads the parquets' scores and no npz byte; a later run on the same work
    folder whose filter reads embeddings computes the scorer stage again and copies them out."""
    _datacomp(tmp_path / "metadata", seed=3)
    _upload(env, tmp_path / "metadata", "datacomp", "lazy/metadata")
    opened = []
    real = storage.open_read

    def spy(path, *a, **k):
        opened.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(storage, "open_read", spy)
    scores = {"clip": [{"precomputed": "l14"}], "filters": [{"type": "clip_score", "fraction": 0.3}]}
    dedup = {**scores, "filters": [*scores["filters"], {"type": "semantic_dedup", "clusters": 2, "eps": 0.5}]}
    emb = tmp_path / "work" / "embeddings" / "clip_score"

    def same(a, b):
        assert np.array_equal(np.load(Path(a["root"]) / "uids.npy"), np.load(Path(b["root"]) / "uids.npy"))

    bucket, work = "s3://datacomp/lazy/metadata", tmp_path / "work"
    remote = run_curation(bucket, tmp_path / "r1", scores, progress=False, work=work)
    same(remote, run_curation(str(tmp_path / "metadata"), tmp_path / "l1", scores, progress=False))
    assert remote["kept"] == 25 and not any(p.endswith(".npz") for p in opened), opened
    assert not emb.exists() or not [p.name for p in emb.iterdir()]  # no copy and no pointer
    # the same work folder, a filter that reads the embeddings: the scorer stage runs again and copies them
    remote = run_curation(bucket, tmp_path / "r2", dedup, progress=False, work=work)
    same(remote, run_curation(str(tmp_path / "metadata"), tmp_path / "l2", dedup, progress=False))
    assert remote["run"]["stage_runs"] == 2 and 0 < remote["kept"] < 25
    assert sorted(p for p in opened if p.endswith(".npz")) == [f"{bucket}/{s:08x}cafe.npz" for s in (0, 1)]
    for s in (0, 1):
        z = np.load(tmp_path / "metadata" / f"{s:08x}cafe.npz")
        for part in ("img", "txt"):
            assert np.array_equal(np.load(emb / f"{s:08x}cafe.{part}.npy"), z[f"l14_{part}"])
    again = run_curation(bucket, tmp_path / "r3", dedup, progress=False, work=work)
    assert again["run"]["stage_runs"] == 0
    same(remote, again)


def test_a_local_metadata_pool_keeps_its_npz_pointer_whatever_the_filters(tmp_path):
    """On local disk a run of columns alone reads the pool in place and writes nothing per shard; a run
    whose filter reads embeddings records pointers into the npz (never a copy), which a later run with
    any filters reuses (nothing runs again)."""
    _datacomp(tmp_path / "metadata", seed=4)
    scores = {"clip": [{"precomputed": "l14"}], "filters": [{"type": "clip_score", "fraction": 0.3}]}
    dedup = {**scores, "filters": [*scores["filters"], {"type": "semantic_dedup", "clusters": 2, "eps": 0.5}]}
    first = run_curation(str(tmp_path / "metadata"), tmp_path / "a", scores, progress=False, work=tmp_path / "work")
    emb = tmp_path / "work" / "embeddings" / "clip_score"
    assert first["run"]["stage_runs"] == 0 and not (tmp_path / "work" / "columns").exists() and not emb.exists()
    second = run_curation(str(tmp_path / "metadata"), tmp_path / "b", dedup, progress=False, work=tmp_path / "work")
    names = sorted(p.name for p in emb.iterdir())
    assert second["run"]["stage_runs"] > 0 and names and not any(n.endswith(".npy") for n in names)
    third = run_curation(str(tmp_path / "metadata"), tmp_path / "c", dedup, progress=False, work=tmp_path / "work")
    assert third["run"]["stage_runs"] == 0 and sorted(p.name for p in emb.iterdir()) == names
    fresh = run_curation(str(tmp_path / "metadata"), tmp_path / "d", dedup, progress=False)
    assert np.array_equal(np.load(Path(third["root"]) / "uids.npy"), np.load(Path(fresh["root"]) / "uids.npy"))
    again = run_curation(str(tmp_path / "metadata"), tmp_path / "e", scores, progress=False, work=tmp_path / "work")
    assert np.array_equal(np.load(Path(first["root"]) / "uids.npy"), np.load(Path(again["root"]) / "uids.npy"))


@pytest.fixture
def counted(moto, env, monkeypatch):
    """Every request of the test through a byte-counting relay (``.down``: bytes the server sent), and
    the server's log of them (``.requests``)."""
    relay = Relay(moto[0])
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{relay.port}")
    s3fs.S3FileSystem.clear_instance_cache()
    relay.requests = Requests(moto[1])
    yield relay
    relay.close()
    s3fs.S3FileSystem.clear_instance_cache()


def _gets(counts, suffix: str) -> dict[str, int]:
    return {p: n for (m, p), n in counts.items() if m == "GET" and p.endswith(suffix)}


def test_a_bucket_metadata_pool_fetches_each_parquet_once_and_only_its_read_columns(counted, tmp_path):
    """A metadata-only run reads each parquet's footer and the chunks of the columns its stages read in
    one set of range requests (the next parquets fetched while one is worked on); a column no stage
    reads is never fetched; a rerun whose stages are cached fetches nothing."""
    _datacomp(tmp_path / "metadata", shards=3, rows=3000, seed=5)
    rng = np.random.default_rng(5)
    junk = 0
    for f in sorted((tmp_path / "metadata").glob("*.parquet")):  # a large column no stage reads, last
        t = pq.read_table(f)
        pq.write_table(t.append_column("face_bboxes", pa.array([rng.bytes(100) for _ in range(t.num_rows)])), f,
                       compression="none")
        junk += pq.read_metadata(f).row_group(0).column(t.num_columns).total_compressed_size
    _upload(os.environ["AWS_ENDPOINT_URL"], tmp_path / "metadata", "datacomp", "once")
    parquet_bytes = sum(f.stat().st_size for f in (tmp_path / "metadata").glob("*.parquet"))
    cfg = {"clip": [{"precomputed": "l14"}], "filters": [{"type": "clip_score", "fraction": 0.3}]}
    local = run_curation(str(tmp_path / "metadata"), tmp_path / "local", cfg, progress=False)
    counted.reset()
    counted.requests.mark()
    remote = run_curation("s3://datacomp/once", tmp_path / "remote", cfg, progress=False)
    got = counted.requests.count()
    assert (Path(local["root"]) / "uids.npy").read_bytes() == (Path(remote["root"]) / "uids.npy").read_bytes()
    parquets = _gets(got, ".parquet")
    assert sorted(parquets) == [f"datacomp/once/{s:08x}cafe.parquet" for s in range(3)]
    # the footer, then the chunks: ingest's columns and the score are adjacent, so one range each
    assert set(parquets.values()) == {2}, got
    assert not [k for k in got if k[0] == "HEAD" and k[1].endswith((".parquet", ".npz"))], got
    assert not _gets(got, ".npz")
    from pipeline.metadata import TAIL

    read = parquet_bytes - junk + 3 * TAIL  # the columns read, each footer's request (its tail) and headers
    assert read - 3 * TAIL - 20_000 < counted.down < read + 20_000, (counted.down, read)
    counted.requests.mark()
    again = run_curation("s3://datacomp/once", tmp_path / "remote", cfg, progress=False)
    assert again["run"]["stage_runs"] == 0 and not _gets(counted.requests.count(), ".parquet")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_streamed_tar_pool_is_fetched_once_per_run(counted, tmp_path, workers):
    """No cache configured: the per-shard pass keeps each tar it fetches in the run's spool, and export,
    the dropped samples' shards and the report's gallery read it there; the outputs are the local run's
    and the spool is gone after the run. A rerun that annotates nothing fetches each tar once, for export."""
    from pipeline.workdir import spool_dir

    pool = _pool(tmp_path)
    _upload(os.environ["AWS_ENDPOINT_URL"], pool, "spool", "pool")
    # as many processes as the bucket run: the scores' last bits follow the scorer's thread count
    local = run_curation(str(pool), tmp_path / "local", CLIP, progress=False, write_dropped=True, workers=workers)
    counted.requests.mark()
    remote = run_curation("s3://spool/pool", tmp_path / "remote", CLIP, progress=False, workers=workers,
                          write_dropped=True)
    _same_outputs(local, remote)
    assert (Path(remote["root"]) / "report.html").read_bytes().count(b"data:image/jpeg") == \
        (Path(local["root"]) / "report.html").read_bytes().count(b"data:image/jpeg") > 0
    tars = sorted(f"spool/pool/{p.relative_to(pool).as_posix()}" for p in pool.rglob("*.tar"))
    assert _gets(counted.requests.count(), ".tar") == {t: 1 for t in tars}
    assert not spool_dir(tmp_path / "remote").exists()
    counted.requests.mark()
    again = run_curation("s3://spool/pool", tmp_path / "remote", CLIP, progress=False, write_dropped=True,
                         workers=workers)
    assert again["run"]["stage_runs"] == 0
    assert _gets(counted.requests.count(), ".tar") == {t: 1 for t in tars}
    _same_outputs(local, again)
