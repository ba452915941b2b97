"""Training data: resampled webdataset shards -> (images, tokens) batches, bad samples skipped and counted.

DataComp trains for a fixed number of samples seen whatever the dataset size, so shards are drawn
with replacement (``ResampledShards``), as open_clip's ``--dataset-resampled`` does.
"""
from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import torch
import webdataset as wds

from shardio.decode import decode_image
from shardio.shards import expand
from shardio.tar import IMAGE_EXTS
from training.transforms import fast_train_transform

log = logging.getLogger(__name__)


def empty_draws_allowed(shards: int) -> int:
    """Shard draws in a row that may yield no sample before the loader stops: with one readable shard
    among ``shards`` drawn with replacement, missing it this often has odds of ~e^-20."""
    return max(100, 20 * shards)


def _samples(src: Iterator[dict], shards: int = 1) -> Iterator[dict]:
    """Shard urls -> samples through the shared reader (shardio/tar.py): every complete sample of a
    truncated or odd tar is used; a broken shard is logged once per shard, never fatal on its own.
    When no drawn shard yields a sample for ``empty_draws_allowed`` draws in a row (the shards were
    removed, or none is readable), it raises instead of drawing forever."""
    from shardio.tar import TarReport, iter_samples

    told: set[str] = set()
    empty = 0
    for item in src:
        report = TarReport(item["url"])
        got = 0
        for s in iter_samples(item["url"], report):
            if not s.duplicate:
                got += 1
                yield {"__key__": s.key, **s.members}
        if report.error and item["url"] not in told:
            told.add(item["url"])
            log.warning("shard %s: %s (its complete samples were used)", item["url"], report.error)
        empty = 0 if got else empty + 1
        if empty >= empty_draws_allowed(shards):
            raise RuntimeError(f"no training sample in the last {empty} shard draws (of {shards} shards; the last, "
                               f"{item['url']}: {report.error or 'no complete sample'}): were the shards moved or "
                               "deleted after the run started?")


def _batches(src: Iterator[dict], preprocess: Callable, tokenizer: Callable, batch_size: int, seed: int,
             device_decode: bool = False):
    """Decode, transform and collate; each batch carries the bad-sample counts since the last one.
    ``device_decode``: plain JPEGs stay undecoded with their crop box (training/device_decode.py)."""
    from training.device_decode import worker_item

    fast = fast_train_transform(preprocess)
    rng = random.Random(seed)
    images, captions, bad = [], [], Counter()
    told: set[str] = set()
    for sample in src:
        data = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
        caption = sample.get("txt")
        if device_decode and caption is not None:
            img, reason = worker_item(data, fast, rng)
        else:
            img, reason = decode_image(data)
        if img is None or caption is None:
            kind = (reason or "no_caption").split(":")[0]
            bad[kind] += 1
            if kind not in told:  # one line per reason, not per sample; counts go to the summary
                told.add(kind)
                log.warning("skipping samples that cannot be trained on (%s), e.g. %s; counted by reason",
                            kind, sample.get("__key__"))
            continue
        try:
            images.append(img if device_decode else fast.image(img, rng) if fast else preprocess(img))
        except Exception as e:  # noqa: BLE001 - a transform failing on one image skips that image
            bad[f"transform_failed:{type(e).__name__}"] += 1
            continue
        captions.append(caption.decode("utf-8", "replace") if isinstance(caption, bytes) else caption)
        if len(images) == batch_size:
            pixels = images if device_decode else fast.batch(images) if fast else torch.stack(images)
            yield pixels, tokenizer(captions), dict(bad)
            images, captions, bad = [], [], Counter()


def train_loader(data: str | list[str], preprocess: Callable, tokenizer: Callable, batch_size: int,
                 seed: int = 0, workers: int = 1, shuffle: int = 2000, decode_on: str | None = None):
    """An endless loader of ``(images, tokens, bad_counts)`` batches of ``batch_size`` per process.

    ``seed`` should differ per rank and per resume so streams do not repeat. ``decode_on``: a device
    whose JPEG decoder takes the batches' plain JPEGs (then the images come out on that device); only
    with open_clip's standard train transform, else the CPU decodes as always."""
    from training.device_decode import DeviceBatches

    urls = expand(data)
    fast = fast_train_transform(preprocess) if decode_on else None
    if decode_on and fast is None:
        log.info("decode on %s: not with this train transform; the loader decodes on the CPU", decode_on)
    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed, deterministic=True),
        _Stage(_samples, len(urls)),
        wds.shuffle(shuffle, initial=min(shuffle, 500), seed=seed),
        _Stage(_batches, preprocess, tokenizer, batch_size, seed, fast is not None),
    )
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=workers,
                                         persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    return DeviceBatches(iter(loader), fast, decode_on) if fast is not None else loader


class _Stage:
    """A picklable pipeline stage (lambdas do not survive worker start-up with spawn)."""

    def __init__(self, fn: Callable, *args) -> None:
        self.fn, self.args = fn, args

    def __call__(self, src):
        return self.fn(src, *self.args)


def pin_data(cfg, run_dir: str | Path, label: str | None = None):
    """The curated version this run reads, held until released (shardio/versions.py): on a resume (a
    saved state in ``run_dir``) the version its train_config.json recorded, else ``cfg.train_data``
    resolved now. Under torchrun rank 0 resolves and the other ranks take the same version.
    ``label``: how the hold names the run (default: ``run_dir``)."""
    from shardio.versions import VersionGone, pin
    from training import dist

    run_dir = Path(run_dir)
    recorded = None
    if (run_dir / "checkpoints" / "state_latest.pt").is_file() and (run_dir / "train_config.json").is_file():
        old = json.loads((run_dir / "train_config.json").read_text())
        if old.get("train_data") == cfg.train_data:
            recorded = old.get("data_version")
    rank, world, _ = dist.setup()
    purpose = f"training {label or run_dir.resolve()}"
    try:
        if world == 1:
            return pin(cfg.train_data, recorded, purpose)
        box = [None]
        if rank == 0:
            pinned = pin(cfg.train_data, recorded, purpose)
            box = [pinned.record]
        torch.distributed.broadcast_object_list(box, src=0)
        return pinned if rank == 0 else pin(cfg.train_data, box[0] or recorded, purpose)
    except VersionGone as e:
        if not recorded:
            raise
        raise VersionGone(f"cannot resume {run_dir}: it trained on {recorded['out']} version {recorded['version']} "
                          f"(manifest sha256 {str(recorded.get('manifest_sha256'))[:12]}), and resuming reads the "
                          f"same data: {e}. Use a new run folder to train on the current version.") from e
