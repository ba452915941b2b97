"""The GPU code path run on the CPU (issue #31): JPEGs decoded with torchvision's decode_jpeg on the
scorer's device and resized there give the Pillow path's scores within 0.01, the same drop reasons
(other formats and refused JPEGs fall back to the CPU path), and batching does not change outputs.
The multi-GPU spread of annotate workers assigns every shard once."""
from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import pipeline.annotate as annotate
import shardio.gpu_decode as gd
from fixtures.jpegs import SIZES, encode, picture, planted
from pipeline import executors
from pipeline.neardup import thumbnail
from pipeline.stages.thumbs import device_thumbnails
from pipeline.workdir import WorkDir
from schemas.config import ClipModel
from shardio.pixels import FastValTransform
from shardio.shards import ShardWriter

WHY = gd.decode_jpeg_works("cpu")
needs_decode_jpeg = pytest.mark.skipif(WHY is not None, reason=f"device decode cannot run here: {WHY} "
                                                               "(run in a Python 3.12 venv with torchvision's ops)")


def write_shard(folder, items) -> str:
    with ShardWriter(folder, len(items)) as w:
        for i, (kind, data) in enumerate(items):
            w.write(f"{i:09d}", data, "jpg", f"a {kind} picture number {i}", {"uid": f"{i:032x}"})
    return str(folder / "00000.tar")


def run(shard, out, decode, batch=8, device="cpu"):
    spec = ClipModel(model="curate-tiny", batch_size=batch, decode=decode, device=device)
    annotate.annotate_shard(shard, out, [spec], False)
    work = WorkDir(out)
    ingest = pq.read_table(work.columns("ingest", "00000")).to_pandas()
    score = pq.read_table(work.columns("clip_score", "00000")).column("clip_score").to_numpy()
    return ingest, score, np.load(work.thumbs("00000")), np.load(work.embeddings("clip_score", "00000", "img"))


@pytest.fixture
def counted(monkeypatch):
    """How many images the device decoder was given."""
    seen = []
    real = gd.DeviceDecoder.__call__

    def call(self, datas):
        seen.extend(datas)
        return real(self, datas)

    monkeypatch.setattr(gd.DeviceDecoder, "__call__", call)
    return seen


@needs_decode_jpeg
def test_device_decode_matches_the_pillow_path(tmp_path, counted):
    items = planted()
    shard = write_shard(tmp_path / "pool", items)
    cpu_ingest, cpu_score, cpu_thumbs, _ = run(shard, tmp_path / "cpu", "cpu")
    assert counted == []
    dev_ingest, dev_score, dev_thumbs, _ = run(shard, tmp_path / "dev", "device")
    plain = [d for k, d in items if k in ("jpeg", "grey", "progressive") and gd.plain_jpeg(d)]
    assert len(plain) == len(SIZES) * 3 + 2 - 3  # all but the three 2000 x 37 (beyond MAX_ASPECT)
    assert sorted(counted) == sorted(plain)  # every plain JPEG went to the device, nothing else
    cols = ["uid", "width", "height", "ingest_error"]
    assert cpu_ingest[cols].equals(dev_ingest[cols])  # same sizes, same drop reasons
    errors = {k: e if isinstance(e, str) else None for (k, _), e in zip(items, cpu_ingest["ingest_error"])}
    assert all(errors[k] for k in ("truncated", "corrupt", "garbage", "empty"))
    assert not any(errors[k] for k in ("jpeg", "grey", "progressive", "png", "webp", "gif", "cmyk"))
    ok = ~np.isnan(cpu_score)
    assert (ok == ~np.isnan(dev_score)).all() and ok.sum() == len(items) - 4
    assert np.abs(cpu_score[ok] - dev_score[ok]).max() <= 0.01
    cut = np.quantile(cpu_score[ok], 0.5)  # keep decisions of a 50% cut-off: same except within 0.01 of it
    near = np.abs(cpu_score[ok] - cut) <= 0.01
    assert ((cpu_score[ok] >= cut) == (dev_score[ok] >= cut))[~near].all()
    assert np.abs(cpu_thumbs.astype(int) - dev_thumbs.astype(int)).mean() < 2.0


@needs_decode_jpeg
def test_a_jpeg_the_device_refuses_takes_the_cpu_path(tmp_path, monkeypatch):
    items = planted()[:6]
    shard = write_shard(tmp_path / "pool", items)
    cpu = run(shard, tmp_path / "cpu", "cpu")
    real = gd.DeviceDecoder.__call__
    refused = items[2][1]
    monkeypatch.setattr(gd.DeviceDecoder, "__call__",
                        lambda self, datas: [None if d == refused else t for d, t in zip(datas, real(self, datas))])
    dev = run(shard, tmp_path / "dev", "device")
    assert cpu[0].equals(dev[0])
    assert abs(cpu[1][2] - dev[1][2]) < 1e-6  # decoded by Pillow, as on the CPU path


@needs_decode_jpeg
@pytest.mark.parametrize("decode", ["cpu", "device"])
def test_batch_size_does_not_change_outputs(tmp_path, decode):
    shard = write_shard(tmp_path / "pool", planted())
    a = run(shard, tmp_path / "a", decode, batch=4)
    b = run(shard, tmp_path / "b", decode, batch=64)
    assert a[0].equals(b[0]) and (a[2] == b[2]).all()
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)
    np.testing.assert_allclose(a[3].astype(np.float32), b[3].astype(np.float32), atol=2e-3)


def test_default_batch_follows_the_device():
    from pipeline.clip_stage import default_batch

    assert default_batch(ClipModel(model="curate-tiny", device="cpu")) == 256
    assert default_batch(ClipModel(model="curate-tiny", device="cpu", batch_size=7)) == 7


@pytest.mark.parametrize("w,h", [s for s in SIZES if max(s) <= 16 * min(s)] + [(224, 224), (10, 150)])
def test_tensor_resize_crop_is_the_pillow_geometry(w, h):
    """The device path's resize + centre crop (torch, antialiased bicubic) against ``image`` (Pillow)."""
    fv = FastValTransform(224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    arr = picture(w, h, 3)
    want = fv.image(Image.fromarray(arr)).astype(np.float32)
    got = fv.tensors([torch.from_numpy(arr).permute(2, 0, 1).contiguous()] * 2)
    assert got.shape == (2, 3, 224, 224)
    diff = np.abs(got[1].permute(1, 2, 0).numpy() - want)
    assert diff.mean() < 1.5 and np.quantile(diff, 0.99) < 12


def test_device_thumbnails_match_pillow_box():
    arrs = [picture(256, 256, 1), picture(256, 256, 2), picture(300, 200, 3), picture(20, 20, 4), picture(33, 100, 5)]
    got = device_thumbnails([torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in arrs])
    for a, g in zip(arrs, got):
        diff = np.abs(thumbnail(Image.fromarray(a)).astype(int) - g.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.25  # Pillow's fixed-point rounding aside, the same


def test_only_plain_jpegs_go_to_the_device():
    kinds = {k: gd.plain_jpeg(d) for k, d in planted()[len(SIZES) * 3:]}
    assert kinds["grey"] == (90, 120) and kinds["progressive"] == (150, 100)
    assert all(kinds[k] is None for k in ("png", "webp", "gif", "cmyk", "truncated", "corrupt", "garbage", "empty"))
    assert gd.plain_jpeg(encode(picture(3000, 2000))) is None  # too large: the CPU decodes it reduced
    assert gd.plain_jpeg(encode(picture(2000, 37))) is None  # beyond MAX_ASPECT: the CPU crops first


def test_decode_modes(monkeypatch):
    assert gd.use_device_decode("cpu", "cuda") is False
    monkeypatch.setattr(gd, "decode_jpeg_works", lambda device: None)
    assert gd.use_device_decode("auto", "cuda") is True
    assert gd.use_device_decode("auto", "cpu") is False  # the M/8 CPU decode is cheaper there
    assert gd.use_device_decode("device", "cpu") is True
    monkeypatch.setattr(gd, "decode_jpeg_works", lambda device: "no compiled ops")
    assert gd.use_device_decode("auto", "cuda") is False
    with pytest.raises(RuntimeError, match="decode: device was asked for, but no compiled ops"):
        gd.use_device_decode("device", "cuda")


@pytest.mark.parametrize("workers,devices", [(4, ["0", "1"]), (3, ["0", "1"]), (2, ["5", "6", "7"]), (8, ["a"])])
def test_device_slots_spread_evenly(workers, devices):
    slots = executors.device_slots(workers, devices)
    assert len(slots) == workers and set(slots) <= set(devices)
    counts = [slots.count(d) for d in devices[:workers]]
    assert max(counts) - min(counts) <= 1


def test_visible_gpus(monkeypatch):
    monkeypatch.setenv("CURATE_DEVICES", "2, 3")
    assert executors.visible_gpus() == ["2", "3"]
    monkeypatch.delenv("CURATE_DEVICES")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert executors.visible_gpus() == []


def _where(item):
    return item, os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()


def test_workers_spread_over_fake_devices_run_every_shard_once():
    items = [f"shard-{i}" for i in range(12)]
    out = list(executors.ProcessPool(2, devices=["7", "8"], torch=False).map(_where, items))
    assert sorted(i for i, _, _ in out) == sorted(items) and all(e is None for _, _, e in out)
    seen = {}
    for _, (_, dev, pid), _ in out:
        assert dev in ("7", "8")
        assert seen.setdefault(pid, dev) == dev  # a worker keeps its one device
    assert len(set(seen.values())) == len(seen)  # no two workers share a device


def test_make_spreads_a_pool_over_two_or_more_gpus(monkeypatch):
    monkeypatch.setenv("CURATE_DEVICES", "0,1")
    pool = executors.make(4)
    assert isinstance(pool, executors.ProcessPool) and pool.devices == ["0", "1"]
    assert isinstance(executors.make(1), executors.InProcess)  # one worker: the caller's own device
    monkeypatch.setenv("CURATE_DEVICES", "3")
    assert executors.make(4).devices == []  # one GPU: every worker shares it, nothing to spread
    assert executors.make(4, devices=["a", "b"]).devices == ["a", "b"]


def test_frame_markers():
    arr = picture(60, 40, 1)
    assert gd.frame_marker(encode(arr)) == gd.SOF_BASELINE
    assert gd.frame_marker(encode(arr, progressive=True)) == gd.SOF_PROGRESSIVE
    assert gd.frame_marker(b"\xff\xd8\xff\xe0\x00\x04ab\xff\xda\x00\x02") is None  # a scan, no frame
    lossless = bytearray(encode(arr))
    at = gd.frame_marker(bytes(lossless)) and bytes(lossless).index(b"\xff\xc0")
    lossless[at + 1] = 0xC3  # the same header marked lossless: the CPU path's
    assert gd.frame_marker(bytes(lossless)) == 0xC3 and gd.plain_jpeg(bytes(lossless)) is None
