"""Checkpoints, evaluation data and training runs as URLs, against a real S3 server (moto's standalone
server in its own process on 127.0.0.1, fixtures/buckets.py). Nothing in fsspec or s3fs is mocked."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from fixtures.buckets import http_site, start_server, stop_server
from fixtures.shardmaker import COLOURS, image_bytes, make_pool, make_task, write_members
from shardio import models, storage

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

KEY, SECRET = "AKIACURATEURLTEST", "curate-url-secret-never-written-91c2"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, port = start_server(tmp_path_factory.mktemp("moto") / "server.log")
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


def _clean_env(monkeypatch, tmp_path: Path) -> None:
    for k in list(os.environ):
        if k.startswith(("AWS_", "FSSPEC_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path / "cache"))  # the checkpoint copies of this test only
    monkeypatch.setattr(models, "_COPIES", {})  # a fresh process: nothing copied yet
    s3fs.S3FileSystem.clear_instance_cache()
    storage.configure(None)


@pytest.fixture
def env(server, monkeypatch, tmp_path):
    """Credentials and endpoint the way the AWS SDKs read them: the environment."""
    _clean_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", server)
    yield server
    s3fs.S3FileSystem.clear_instance_cache()
    storage.configure(None)


def _fs(endpoint: str):
    return s3fs.S3FileSystem(key=KEY, secret=SECRET, endpoint_url=endpoint, skip_instance_cache=True)


def _upload(endpoint: str, local: Path, url: str) -> None:
    fs = _fs(endpoint)
    bucket = url[5:].split("/")[0]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for f in files:
        fs.put_file(str(f), url[5:] + ("" if f == local else "/" + f.relative_to(local).as_posix()))


def _checkpoint(folder: Path, seed: int) -> Path:
    """A curate-tiny checkpoint folder whose weights are not the seed-0 start a scorer would build."""
    from training.model import load_clip, save_checkpoint_dir

    torch.manual_seed(seed)
    clip = load_clip("curate-tiny")
    return save_checkpoint_dir(folder, clip.model, clip.model_cfg, {"seed": seed})


def _mini_suite(monkeypatch, name: str = "builtin") -> None:
    import schemas.tasks as tasks

    monkeypatch.setitem(tasks.SUITES, name, [
        tasks._t("builtin/colours", "colours", "ImageNet"),
        tasks._t("builtin/colours_retrieval", "colours_retrieval", "Retrieval", "mean_recall@1", "retrieval"),
        tasks._t("builtin/absent", "absent", "VTAB")])


def _eval_data(root: Path) -> Path:
    make_task(root / "colours", per_class=3)
    members = []
    for i, colour in enumerate(COLOURS):
        members += [(f"s{i:07d}.png", image_bytes(colour, fmt="PNG", seed=i)), (f"s{i:07d}.txt", f"a {colour} square".encode())]
    write_members(root / "colours_retrieval" / "test" / "0.tar", members)
    (root / "colours_retrieval" / "test" / "nshards.txt").write_text("1\n")
    return root


def _scores(summary: dict) -> list:
    return [(r["task"], r["status"], r["main"], r["se"], r["few_shot"], r["data_sha256"]) for r in summary["rows"]]


def test_eval_with_tasks_and_checkpoint_in_a_bucket_equals_local_copies(env, tmp_path, monkeypatch):
    from training.evalsuite import run_suite

    _mini_suite(monkeypatch)
    ckpt, data = _checkpoint(tmp_path / "ckpt", seed=7), _eval_data(tmp_path / "eval")
    _upload(env, ckpt, "s3://models/run1/final")
    _upload(env, data, "s3://evalsets/builtin")
    local = run_suite(str(ckpt), data, "builtin", results=tmp_path / "local.jsonl", few_shot=1)
    remote = run_suite("s3://models/run1/final", "s3://evalsets/builtin", "builtin", results=tmp_path / "remote.jsonl",
                       few_shot=1)
    assert _scores(remote) == _scores(local)
    assert [r[1] for r in _scores(local)] == ["ok", "ok", "missing"] and remote["average"] == local["average"]
    rows = [json.loads(x) for x in (tmp_path / "remote.jsonl").read_text().splitlines()]
    assert [r["metrics"] for r in rows] == [json.loads(x)["metrics"] for x in (tmp_path / "local.jsonl").read_text().splitlines()]
    assert rows[0]["checkpoint"] == "s3://models/run1/final"
    # the checkpoint was copied once into the local cache; a new process finds that copy, copies nothing
    copies = list((tmp_path / "cache" / "checkpoints").glob("*/final"))
    assert len(copies) == 1 and sorted(p.name for p in copies[0].iterdir()) == ["open_clip_config.json",
                                                                                 "open_clip_model.safetensors"]
    stamp = (copies[0] / "open_clip_model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(models, "_COPIES", {})
    again = run_suite("s3://models/run1/final", "s3://evalsets/builtin", "builtin", results=tmp_path / "again.jsonl")
    assert [r["main"] for r in again["rows"]] == [r["main"] for r in local["rows"]]
    assert (copies[0] / "open_clip_model.safetensors").stat().st_mtime_ns == stamp
    assert len(list((tmp_path / "cache" / "checkpoints").glob("*/final"))) == 1
    # the same folder name with other weights in the bucket (a new ETag): copied again, scored again
    _upload(env, _checkpoint(tmp_path / "other" / "final", seed=8), "s3://models/run1/final")
    monkeypatch.setattr(models, "_COPIES", {})
    other = run_suite("s3://models/run1/final", "s3://evalsets/builtin", "builtin", results=tmp_path / "other.jsonl")
    assert len(list((tmp_path / "cache" / "checkpoints").glob("*/final"))) == 2
    assert [r["main"] for r in other["rows"]] != [r["main"] for r in local["rows"]]


def test_eval_results_in_a_bucket_are_whole_after_each_task_and_read_back(env, tmp_path, monkeypatch):
    from shardio import storage
    from training.evalsuite import run_suite

    _mini_suite(monkeypatch)
    ckpt, data = _checkpoint(tmp_path / "ckpt", seed=7), _eval_data(tmp_path / "eval")
    local = run_suite(str(ckpt), data, "builtin", results=tmp_path / "local.jsonl")
    _fs(env).mkdir("results")
    url = "s3://results/evals/run1.jsonl"
    remote = run_suite(str(ckpt), data, "builtin", results=url)
    assert remote["results"] == url and remote["markdown"] == (tmp_path / "local.md").read_text().replace(
        str(tmp_path / "local.jsonl"), url)
    rows = [json.loads(x) for x in storage.read_text(url).splitlines()]
    assert [r["main"] for r in rows] == [r["main"] for r in local["rows"] if r["status"] == "ok"]
    assert storage.is_file("s3://results/evals/run1.md") and storage.is_file("s3://results/evals/run1.csv")
    # a rerun reads the bucket's rows back and scores nothing again
    monkeypatch.setattr("training.evalsuite.evaluate_task", lambda *a, **k: pytest.fail("scored again"))
    again = run_suite(str(ckpt), data, "builtin", results=url)
    assert [r["main"] for r in again["rows"]] == [r["main"] for r in local["rows"]]
    assert len(storage.read_text(url).splitlines()) == len(rows)


def test_eval_command_with_a_bucket_and_missing_objects(env, tmp_path, monkeypatch, capsys):
    """`curate eval` on a bucket with the environment's credentials; missing objects named."""
    from app.cli import main

    _mini_suite(monkeypatch)
    ckpt, data = _checkpoint(tmp_path / "ckpt", seed=7), _eval_data(tmp_path / "eval")
    _upload(env, ckpt, "s3://models/cli/final")
    _upload(env, data, "s3://evalsets/cli")
    monkeypatch.chdir(tmp_path)
    main(["eval", "--checkpoint", "s3://models/cli/final", "--suite", "builtin", "--data-root", "s3://evalsets/cli"])
    rows = [json.loads(x) for x in (tmp_path / "eval_builtin.jsonl").read_text().splitlines()]  # local: cwd
    assert [r["task"] for r in rows] == ["builtin/colours", "builtin/colours_retrieval"]
    assert "| builtin/absent | VTAB |" in capsys.readouterr().out
    # one task by URL, zero-shot
    main(["eval", "--checkpoint", "s3://models/cli/final", "--task", "s3://evalsets/cli/colours"])
    one = json.loads(capsys.readouterr().out)
    assert one["task"] == "colours" and one["metrics"]["acc1"] == rows[0]["metrics"]["acc1"]
    for argv, missing in ((["--checkpoint", "s3://models/none/final", "--task", "s3://evalsets/cli/colours"],
                           "s3://models/none/final does not exist"),
                          (["--checkpoint", "s3://models/cli/final", "--task", "s3://evalsets/cli/absent"],
                           "missing s3://evalsets/cli/absent/classnames.txt")):
        with pytest.raises(SystemExit) as e:
            main(["eval", *argv])
        assert e.value.code == 2 and missing in capsys.readouterr().err
    # the environment's credentials are written nowhere either (results, caches, output)
    for f in (f for f in tmp_path.rglob("*") if f.is_file()):
        assert SECRET.encode() not in f.read_bytes() and KEY.encode() not in f.read_bytes(), f


def _curate(pool, out, model: str, workers: int = 1, options: dict | None = None) -> dict:
    from pipeline.run import run_curation

    cfg = {"clip": [{"model": model, "batch_size": 16}], "filters": [{"type": "clip_score", "fraction": 0.5}],
           **({"storage_options": options} if options else {})}
    return run_curation(str(pool), out, cfg, progress=False, workers=workers)


def _outputs(root: str) -> dict[str, bytes]:
    root = Path(root)
    files = [root / "uids.npy", root / "metadata.parquet"] + sorted((root / "shards").glob("*.tar"))
    return {f.name: f.read_bytes() for f in files}


def test_a_scorer_checkpoint_in_a_bucket_gives_the_local_checkpoints_outputs(env, tmp_path, monkeypatch):
    import pandas as pd

    make_pool(tmp_path / "pool", n=40, per_shard=20)
    ckpt = _checkpoint(tmp_path / "dfn" / "final", seed=11)
    _upload(env, ckpt, "s3://models/dfn/final")
    local = _curate(tmp_path / "pool", tmp_path / "local", str(ckpt))
    remote = _curate(tmp_path / "pool", tmp_path / "remote", "s3://models/dfn/final", workers=2)
    assert _outputs(remote["root"]) == _outputs(local["root"]) and remote["kept"] == local["kept"] == 21
    assert remote["run"]["shards_annotated"] == 2  # scored in two worker processes, each from the one cache copy
    assert len(list((tmp_path / "cache" / "checkpoints").glob("*/final"))) == 1
    # the checkpoint's weights were used: the seed-0 start of the same architecture scores otherwise
    plain = _curate(tmp_path / "pool", tmp_path / "plain", "curate-tiny")
    ours, start = (pd.read_parquet(m["metadata"])["clip_score"] for m in (local, plain))
    assert ours.notna().all() and not ours.equals(start)
    # a weights file in the bucket for a named model (the config's clip.checkpoint)
    from pipeline.run import run_curation

    _upload(env, ckpt / "open_clip_model.safetensors", "s3://models/dfn/weights.safetensors")
    named = run_curation(str(tmp_path / "pool"), tmp_path / "named", {
        "clip": [{"model": "curate-tiny", "checkpoint": "s3://models/dfn/weights.safetensors", "batch_size": 16}],
        "filters": [{"type": "clip_score", "fraction": 0.5}]}, progress=False)
    assert _outputs(named["root"]) == _outputs(local["root"])
    # a scorer that is not in the bucket: refused before any work, naming it
    with pytest.raises(FileNotFoundError, match="s3://models/gone does not exist"):
        _curate(tmp_path / "pool", tmp_path / "gone", "s3://models/gone")


def _train(data: str, out: str, **kw):
    from training.train import TrainConfig, train

    return train(TrainConfig(train_data=data, out_dir=out, samples_seen=16 * 4, batch_size=16, workers=0, lr=1e-3,
                             warmup=1, log_every=1, checkpoints=4, **kw))


def test_training_writes_to_and_resumes_from_a_bucket(env, tmp_path):
    make_pool(tmp_path / "pool", n=40, per_shard=20)
    data = str(tmp_path / "pool")
    fs = _fs(env)
    fs.mkdir("runs")
    # interrupted after 2 of 4 steps, then resumed: in a bucket and locally, the same weights
    a = _train(data, "s3://runs/r1", max_steps=2)
    assert "checkpoint" not in a and fs.exists("runs/r1/checkpoints/state_latest.pt")
    assert [json.loads(x)["step"] for x in fs.cat_file("runs/r1/metrics.jsonl").decode().splitlines()] == [1, 2]
    b = _train(data, "s3://runs/r1")
    assert b["resumed_from_step"] == 2 and b["checkpoint"] == "s3://runs/r1/final"
    _train(data, str(tmp_path / "r1"), max_steps=2)
    c = _train(data, str(tmp_path / "r1"))
    assert c["resumed_from_step"] == 2
    weights = "final/open_clip_model.safetensors"
    assert fs.cat_file(f"runs/r1/{weights}") == (tmp_path / "r1" / weights).read_bytes()
    assert [json.loads(x)["step"] for x in fs.cat_file("runs/r1/metrics.jsonl").decode().splitlines()] == [1, 2, 3, 4]
    assert json.loads(fs.cat_file("runs/r1/result.json"))["steps"] == 4
    # a new run starting from the bucket's checkpoint (--init), written to the bucket
    d = _train(data, "s3://runs/r2", init_checkpoint="s3://runs/r1/final")
    assert d["steps"] == 4 and fs.exists(f"runs/r2/{weights}")
    e = _train(data, str(tmp_path / "r2"), init_checkpoint=str(tmp_path / "r1" / "final"))
    assert fs.cat_file(f"runs/r2/{weights}") == (tmp_path / "r2" / weights).read_bytes()
    assert e["steps"] == 4
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("curate-train-*"))  # staging folders removed
    # training on a curated output in the bucket: the version its `current` pointer names
    from pipeline.run import run_curation

    m = run_curation(data, "s3://runs/curated", {"filters": [{"type": "exact_dedup"}]}, progress=False)
    f = _train("s3://runs/curated", "s3://runs/r3")
    assert m["kept"] == 40 and f["steps"] == 4 and f["checkpoint"] == "s3://runs/r3/final"


def test_no_secret_lands_in_outputs_results_or_logs(server, monkeypatch, tmp_path, capfd, caplog):
    """Credentials given in a storage-options file (and in a curation config) reach every store call
    and are written nowhere: not in a manifest, metrics, checkpoint, eval result, cache or log."""
    from app.cli import main

    _clean_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    caplog.set_level(logging.INFO)
    _mini_suite(monkeypatch)
    options = {"s3": {"key": KEY, "secret": SECRET, "endpoint_url": server, "client_kwargs": {"region_name": "us-east-1"}}}
    (tmp_path / "store.yaml").write_text(json.dumps({"storage_options": options}))
    make_pool(tmp_path / "pool", n=40, per_shard=20)
    _upload(server, tmp_path / "pool", "s3://vault/pool")
    _upload(server, _eval_data(tmp_path / "eval"), "s3://vault/eval")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    try:
        main(["train", "--data", "s3://vault/pool", "--out", "s3://vault/runs/a", "--samples-seen", "32",
              "--batch-size", "16", "--workers", "0", "--storage-options", str(tmp_path / "store.yaml")])
        main(["eval", "--checkpoint", "s3://vault/runs/a/final", "--suite", "builtin", "--data-root", "s3://vault/eval",
              "--few-shot", "1", "--storage-options", str(tmp_path / "store.yaml")])
        storage.configure(None)
        m = _curate("s3://vault/pool", str(work / "curated"), "s3://vault/runs/a/final", workers=2, options=options)
        assert m["samples_in"] == 40
    finally:
        storage.configure(None)
        s3fs.S3FileSystem.clear_instance_cache()
    fs = _fs(server)
    bucket = {f: fs.cat_file(f) for f in fs.find("vault/runs")}
    assert "vault/runs/a/final/open_clip_config.json" in bucket and "vault/runs/a/metrics.jsonl" in bucket
    written = {str(f): f.read_bytes() for f in tmp_path.rglob("*") if f.is_file() and "pool" not in f.parts}
    assert any(f.endswith("eval_builtin.jsonl") for f in written) and any(f.endswith("manifest.json") for f in written)
    assert any(f.endswith("curate.log") for f in written)
    for name, data in {**written, **bucket}.items():
        if name.endswith("store.yaml"):
            continue
        assert SECRET.encode() not in data and KEY.encode() not in data, name
    out, err = capfd.readouterr()
    assert SECRET not in out + err + caplog.text and KEY not in out + err + caplog.text
    # without the options file the bucket cannot be read: the commands used it, not something else
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", "s3://vault/runs/a/final", "--task", "s3://vault/eval/colours"])
    assert SECRET not in capfd.readouterr().err


def test_https_checkpoints_are_read_and_never_written(tmp_path, monkeypatch):
    """A checkpoint folder and a presigned weights file over http(s) (a local http.server): read into the
    cache, same weights as the local folder; a run folder there is refused."""
    from training.model import load_clip

    _clean_env(monkeypatch, tmp_path)
    ckpt = _checkpoint(tmp_path / "site" / "m" / "final", seed=5)
    with http_site(tmp_path / "site") as base:
        url = base + "/m/final"
        want = load_clip(str(ckpt)).model.state_dict()
        for got in (load_clip(url), load_clip("curate-tiny", url + "/open_clip_model.safetensors?X-Amz-Signature=SIG")):
            assert all(torch.equal(v, got.model.state_dict()[k]) for k, v in want.items())
        names = sorted(p.name for p in (tmp_path / "cache" / "checkpoints").glob("*/*"))
        assert names == ["final", "open_clip_model.safetensors"]  # no signature in a cached name
        with pytest.raises(ValueError, match="read only"):
            _train(str(tmp_path / "site"), url.rsplit("/", 1)[0] + "/run")
