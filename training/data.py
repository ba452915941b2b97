"""Training data: resampled webdataset shards -> (images, tokens) batches, bad samples skipped and counted.

DataComp trains for a fixed number of samples seen whatever the dataset size, so shards are drawn
with replacement (``ResampledShards``), as open_clip's ``--dataset-resampled`` does.
"""
from __future__ import annotations

import logging
import random
from collections import Counter
from typing import Callable, Iterator

import torch
import webdataset as wds

from shardio.decode import decode_image
from shardio.shards import expand
from shardio.tar import IMAGE_EXTS
from training.transforms import fast_train_transform

log = logging.getLogger(__name__)


def _warn_tar_error(exn: Exception) -> bool:
    """webdataset handler: a broken tar member or stream is logged and skipped, never fatal."""
    log.warning("skipping unreadable shard data: %r", exn)
    return True


def _batches(src: Iterator[dict], preprocess: Callable, tokenizer: Callable, batch_size: int, seed: int):
    """Decode, transform and collate; each batch carries the bad-sample counts since the last one."""
    fast = fast_train_transform(preprocess)
    rng = random.Random(seed)
    images, captions, bad = [], [], Counter()
    for sample in src:
        data = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
        img, reason = decode_image(data)
        caption = sample.get("txt")
        if img is None or caption is None:
            bad[(reason or "no_caption").split(":")[0]] += 1
            continue
        try:
            images.append(fast.image(img, rng) if fast else preprocess(img))
        except Exception as e:  # noqa: BLE001 - a transform failing on one image skips that image
            bad[f"transform_failed:{type(e).__name__}"] += 1
            continue
        captions.append(caption.decode("utf-8", "replace") if isinstance(caption, bytes) else caption)
        if len(images) == batch_size:
            pixels = fast.batch(images) if fast else torch.stack(images)
            yield pixels, tokenizer(captions), dict(bad)
            images, captions, bad = [], [], Counter()


def train_loader(data: str | list[str], preprocess: Callable, tokenizer: Callable, batch_size: int,
                 seed: int = 0, workers: int = 1, shuffle: int = 2000) -> torch.utils.data.DataLoader:
    """An endless loader of ``(images, tokens, bad_counts)`` batches of ``batch_size`` per process.

    ``seed`` should differ per rank and per resume so streams do not repeat."""
    urls = expand(data)
    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed, deterministic=True),
        wds.tarfile_to_samples(handler=_warn_tar_error),
        wds.shuffle(shuffle, initial=min(shuffle, 500), seed=seed),
        _Stage(_batches, preprocess, tokenizer, batch_size, seed),
    )
    return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=workers,
                                       persistent_workers=workers > 0, prefetch_factor=4 if workers else None)


class _Stage:
    """A picklable pipeline stage (lambdas do not survive worker start-up with spawn)."""

    def __init__(self, fn: Callable, *args) -> None:
        self.fn, self.args = fn, args

    def __call__(self, src):
        return self.fn(src, *self.args)

