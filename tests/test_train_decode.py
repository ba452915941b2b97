"""Training images decoded on the device (issue #31), run on the CPU: the workers hand on plain JPEGs
undecoded with the crop box the CPU path would draw; the main process decodes, crops and resizes them
in one batch. Same boxes, pixels within a grey level or two of Pillow's, the same drops and reasons,
and a JPEG the device refuses decoded by Pillow exactly as on the CPU path. Where torchvision's
decode_jpeg cannot run (its image extension missing), a Pillow stand-in decodes to tensors, so the
batching, cropping and resizing are still the code under test."""
from __future__ import annotations

import io
import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

import shardio.gpu_decode as gd
import training.device_decode as dd
from fixtures.jpegs import planted
from shardio.compat import ensure_torchvision
from training.data import _batches
from training.device_decode import DeviceBatches
from training.transforms import fast_train_transform

ensure_torchvision()
PRE = __import__("open_clip").image_transform(64, is_train=True)  # open_clip's own train transform
FAST = fast_train_transform(PRE)


class PillowDecoder:
    """decode_jpeg's contract (a (3, H, W) uint8 tensor per image, None where refused) through Pillow."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __call__(self, datas):
        out = []
        for d in datas:
            try:
                out.append(torch.from_numpy(np.asarray(Image.open(io.BytesIO(d)).convert("RGB")).copy()).permute(2, 0, 1))
            except Exception:  # noqa: BLE001
                out.append(None)
        return out


@pytest.fixture(autouse=True)
def decoder(monkeypatch):
    if gd.decode_jpeg_works("cpu") is not None:
        monkeypatch.setattr(dd, "DeviceDecoder", PillowDecoder)
        monkeypatch.setattr(gd, "decode_jpeg_works", lambda device: None)


class Tokens:
    def __call__(self, captions):
        return torch.arange(len(captions)).view(-1, 1)


def samples(items):
    return [{"__key__": f"{i:05d}", "jpg": data, "txt": f"{kind} {i}".encode()} for i, (kind, data) in enumerate(items)]


def batches(items, device_decode, size=8):
    got = list(_batches(iter(samples(items)), PRE, Tokens(), size, seed=5, device_decode=device_decode))
    assert got, "no full batch"
    return got


def test_device_path_gives_the_cpu_path_pixels_and_drops():
    items = planted()
    cpu = batches(items, False)
    dev = [DeviceBatches(iter([b]), FAST, "cpu").finish(b[0], b[1], Counter(b[2]))
           for b in batches(items, True)]
    assert len(cpu) == len(dev)
    for (cx, ct, cbad), (dx, dt, dbad) in zip(cpu, dev):
        assert cbad == dbad  # the same samples dropped, for the same reasons
        assert torch.equal(ct, dt)
        diff = (cx - dx).abs() * 0.27 * 255  # back to grey levels
        assert diff.mean() < 1.0 and diff.max() <= 12  # antialiased bicubic, torch's vs Pillow's
    kinds = [isinstance(it, dd.Jpeg) for b in batches(items, True, size=1) for it in b[0]]
    usable = [d for k, d in items if k not in ("truncated", "corrupt", "garbage", "empty")]
    assert kinds == [gd.plain_jpeg(d) is not None for d in usable]  # only plain JPEGs wait for the device


def test_boxes_are_the_cpu_paths_draws():
    items = [it for it in planted() if gd.plain_jpeg(it[1])]
    rng = random.Random(5)
    want = [FAST.crop_box(*Image.open(io.BytesIO(d)).size, rng) for _, d in items]
    got = [it.box for b in batches(items, True, size=len(items)) for it in b[0]]
    assert got == want


def test_a_refused_jpeg_is_decoded_by_pillow_with_the_same_box(monkeypatch):
    items = [it for it in planted() if gd.plain_jpeg(it[1])][:8]
    (cpu_x, _, _), = batches(items, False)
    refuse_all = type("Refuse", (), {"__init__": lambda self, device: None,
                                     "__call__": lambda self, datas: [None] * len(datas)})
    monkeypatch.setattr(dd, "DeviceDecoder", refuse_all)
    b = batches(items, True)[0]
    x, _, bad = DeviceBatches(iter([b]), FAST, "cpu").finish(b[0], b[1], Counter())
    assert torch.equal(x, cpu_x) and bad == {}


def test_undecodable_after_the_header_is_dropped_with_a_reason(monkeypatch):
    """A JPEG whose header passes but that neither the device nor Pillow decodes leaves the batch (the
    batch is one shorter, its caption's tokens too) and is counted by the CPU path's reason."""
    good = [d for k, d in planted() if gd.plain_jpeg(d)][:5]
    monkeypatch.setattr(dd, "DeviceDecoder", type("Refuse", (), {
        "__init__": lambda self, device: None, "__call__": lambda self, datas: [None] * len(datas)}))
    real = dd.decode_image
    monkeypatch.setattr(dd, "decode_image", lambda d: (None, "decode: cut scan") if d == good[2] else real(d))
    b = batches([("jpeg", d) for d in good], True, size=5)[0]
    x, tokens, bad = DeviceBatches(iter([b]), FAST, "cpu").finish(b[0], b[1], Counter())
    assert x.shape[0] == tokens.shape[0] == 4 and tokens[:, 0].tolist() == [0, 1, 3, 4]
    assert bad == {"decode": 1}


def test_training_with_device_decode_counts_the_same_bad_samples(tmp_path):
    """``decode: device`` through train(): the same steps and bad-sample counts as the CPU run."""
    from fixtures.shardmaker import make_pool
    from training.train import TrainConfig, train

    make_pool(tmp_path / "pool", n=40, per_shard=40, plant={3: "corrupt", 7: "truncated", 9: "empty"})
    runs = {}
    for decode in ("cpu", "device"):
        runs[decode] = train(TrainConfig(train_data=str(tmp_path / "pool"), out_dir=str(tmp_path / decode),
                                         samples_seen=16 * 4, batch_size=16, workers=0, lr=1e-3, warmup=1,
                                         decode=decode))
    assert runs["device"]["steps"] == runs["cpu"]["steps"] == 4
    assert runs["device"]["bad_samples"] == runs["cpu"]["bad_samples"]
    assert abs(runs["device"]["final_loss"] - runs["cpu"]["final_loss"]) < 0.05
