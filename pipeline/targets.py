"""Filters that compare the pool with something outside it through the scorer's embeddings:

image-based (DataComp): k-means over the pool's image embeddings; each target image (DataComp used
ImageNet-1k train) is assigned to its nearest centroid; samples in those clusters are kept.
concept: a score per sample = max cosine between its image embedding and the embeddings of text
prompts describing the content (e.g. "a photo of a shoe"); kept above / below a threshold.
Both read the pool's embeddings as a view of per-shard files (pipeline/embeddings.py): k-means trains
on a sample and assigns a chunk at a time; concept scores are dot products a chunk at a time.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from pipeline.embeddings import view
from pipeline.vectors import kmeans, nearest, normalize, search, usable

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def task_train_splits(p: Path) -> list[Path] | None:
    """The evaluation task folders whose train splits ``p`` stands for: itself, or (a suite folder) its
    task folders that have one; None when ``p`` holds no task. A task with only a test split is an
    error when named on its own, and left out of a suite folder with a warning: scoring a pool by its
    similarity to test images would select the test set into the training data."""
    def has(d: Path, split: str) -> bool:
        return (d / split / "nshards.txt").is_file()

    if has(p, "train"):
        return [p]
    if has(p, "test"):
        raise ValueError(f"target set {p} is an evaluation task without a train split: its test images are "
                         "never targets (give its train split, or other images)")
    if not p.is_dir():
        return None
    children = sorted(d for d in p.iterdir() if d.is_dir() and (has(d, "train") or has(d, "test")))
    if not children:
        return None
    no_train = [d.name for d in children if not has(d, "train")]
    if no_train:
        log.warning("target set %s: %d task(s) without a train split left out (%s)", p, len(no_train),
                    ", ".join(no_train))
    return [d for d in children if has(d, "train")]


def iter_images(paths: list[str]) -> Iterator[Image.Image]:
    """Decodable images from webdataset shards (a .tar or a folder of them), task folders in
    CLIP_benchmark's layout (their train split: a test split is never a target), a folder of such task
    folders (each one's train split), or folders of image files."""
    from shardio.decode import decode_image
    from pipeline.ingest import read_shard
    from shardio.evaltask import iter_split
    from shardio.shards import expand

    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"target set {p} does not exist")
        tasks = task_train_splits(p)
        if tasks is not None:
            for task in tasks:
                yield from (im for _, im, _ in iter_split(task, "train", skip_bad=True))
        elif p.suffix == ".tar" or (p.is_dir() and any(p.glob("*.tar"))):
            for shard in expand(str(p)):
                for s in read_shard(shard):
                    im, _ = decode_image(s.image) if s.image is not None else (None, None)
                    if im is not None:
                        yield im
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    im, _ = decode_image(f.read_bytes())
                    if im is not None:
                        yield im
        else:
            raise ValueError(f"target set {p}: not a shard, a task folder or a folder of images")


def embed_targets(scorer, paths: list[str], limit: int | None = None) -> np.ndarray:
    images, out = [], []
    for im in iter_images(paths):
        images.append(im)
        if len(images) >= 1024:
            out.append(scorer.embed_images(images)), images.clear()
        if limit and sum(map(len, out)) + len(images) >= limit:
            break
    if images:
        out.append(scorer.embed_images(images))
    if not out:
        raise ValueError(f"target set {paths} holds no decodable image")
    return np.concatenate(out)[:limit]


def is_embeddings(path: str) -> bool:
    """A target given as its embeddings: a ``.npy`` file of (n, d) image embeddings."""
    return str(path).lower().endswith(".npy")


def target_embeddings(scorer, paths: list[str], limit: int | None = None) -> np.ndarray:
    """Target image embeddings: ``.npy`` files as they are (already in the pool scorer's space, e.g.
    ImageNet-1k train embedded by the CLIP that made the pool's embeddings), the rest embedded by
    ``scorer()`` (called only when some target is images)."""
    parts, left = [], limit
    for p in paths:
        if not is_embeddings(p) or left == 0:
            continue
        if not Path(p).is_file():
            raise FileNotFoundError(f"target embeddings {p} do not exist")
        a = np.load(p, mmap_mode="r")
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"target embeddings {p}: need a float (n, d) array, got {a.dtype} {a.shape}")
        parts.append(np.asarray(a[:left], np.float32))
        left = None if left is None else left - len(parts[-1])
    images = [p for p in paths if not is_embeddings(p)]
    if images and left != 0:
        parts.append(embed_targets(scorer(), images, left))
    if len({a.shape[1] for a in parts}) > 1:
        raise ValueError(f"target embeddings of different widths: {sorted({a.shape[1] for a in parts})}")
    return np.concatenate(parts)[:limit]


def image_based(pool_img, valid: np.ndarray, targets: np.ndarray, k: int, niter: int = 20,
                seed: int = 0, backend: str = "auto", fit=None) -> tuple[np.ndarray, np.ndarray, int]:
    """(in_target per row, cluster per row (-1 if not usable), number of target clusters).
    ``pool_img``: an array or a view. ``fit(x, k, niter) -> (centroids, assignment)`` replaces the
    k-means (e.g. saved centroids). A target goes to its nearest centroid that holds a pool sample (k may
    exceed the distinct samples)."""
    pool = view(pool_img)
    targets = np.asarray(targets, np.float32)
    if len(targets) and targets.shape[1] != pool.shape[1]:
        raise ValueError(f"target embeddings have {targets.shape[1]} dimensions, the pool's image embeddings "
                         f"{pool.shape[1]}: they must come from the same model")
    rows = np.flatnonzero(usable(pool, valid))
    targets = targets[usable(targets)] if len(targets) else targets
    cluster = np.full(len(pool), -1, np.int64)
    if len(rows) == 0 or len(targets) == 0:
        return np.zeros(len(pool), bool), cluster, 0
    x = pool.subset(rows)
    cent, assign = fit(x, k, niter) if fit else kmeans(x, k, niter, seed, backend)
    cluster[rows] = assign
    held = np.unique(assign)
    _, near = search(cent[held], normalize(targets), 1, backend)
    wanted = held[np.unique(near[:, 0])]
    return np.isin(cluster, wanted), cluster, int(len(wanted))


def load_centroids(path: str | Path) -> np.ndarray:
    """Pool centroids (k, d) from a ``.npy`` file, or from DataComp's published ``*_centroids_l14.pt``
    (a numpy array saved with ``torch.save``: a pickle, so only a file you trust)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image_based centroids {p} do not exist")
    if p.suffix.lower() == ".npy":
        a = np.load(p)
    else:
        a = torch.load(p, map_location="cpu", weights_only=False)
        a = a.numpy() if hasattr(a, "numpy") else np.asarray(a)
    a = np.asarray(a, np.float32)
    if a.ndim != 2 or len(a) == 0:
        raise ValueError(f"image_based centroids {p}: need a (k, d) array, got shape {a.shape}")
    return np.ascontiguousarray(a)


def image_based_given(pool_img, valid: np.ndarray, targets: np.ndarray,
                      centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """DataComp's image-based rule with given pool centroids (``baselines/apply_filter.py``,
    ``load_uids_with_image_filter``): each target and each pool row goes to the centroid of largest dot
    product (no normalization of either side); rows in a target's centroid are kept. Same return as
    ``image_based``. Rows without a usable embedding (NaN, inf, all zero) or not ``valid`` get -1 and are
    not kept (DataComp assigns them too: a NaN row's argmax is centroid 0)."""
    pool = view(pool_img)
    cent = torch.from_numpy(np.asarray(centroids, np.float32))
    targets = np.asarray(targets, np.float32)
    for what, width in (("the pool's image embeddings", pool.shape[1]), ("the target embeddings",
                                                                          targets.shape[1] if targets.ndim == 2 else -1)):
        if width != cent.shape[1]:
            raise ValueError(f"centroids have {cent.shape[1]} dimensions, {what} {width}: same model needed")
    targets = targets[usable(targets)] if len(targets) else targets
    # the largest dot product, first of ties (DataComp's get_centroid_ids_gpu), raw vectors on both sides
    wanted = np.unique(nearest(torch.from_numpy(np.ascontiguousarray(targets)), cent))
    cluster = np.full(len(pool), -1, np.int64)
    rows = np.flatnonzero(np.asarray(valid, bool))  # only these are read (a few, after a CLIP score filter)
    for start, block in pool.subset(rows).chunks():
        ok = usable(block)
        if ok.any():
            x = np.ascontiguousarray(np.asarray(block)[ok], np.float32)
            cluster[rows[start:start + len(block)][ok]] = nearest(torch.from_numpy(x), cent)
    return np.isin(cluster, wanted) & (cluster >= 0), cluster, int(len(wanted))


def concept_score(pool_img, valid: np.ndarray, prompt_emb: np.ndarray) -> np.ndarray:
    """Max cosine to a prompt per row; NaN where the row is not valid or has no embedding.
    ``pool_img``: an array or a view, read a chunk at a time."""
    pool = view(pool_img)
    out = np.full(len(pool), np.nan, np.float32)
    prompts = np.asarray(prompt_emb, np.float32)
    if len(prompts) == 0:
        return out
    prompts = normalize(prompts)
    valid = np.asarray(valid, bool)
    for start, block in pool.chunks():
        ok = usable(block, valid[start:start + len(block)])
        if ok.any():
            out[start:start + len(block)][ok] = (normalize(block[ok]) @ prompts.T).max(1)
    return out
