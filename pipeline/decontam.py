"""Decontamination: find pool images that copy an evaluation image (re-encoded, resized or not).

Every image becomes a 16x16 grey thumbnail, standardised (zero mean, unit variance) so that drawings
on white do not all look alike. faiss searches the pool against an index of the evaluation images
(pool x eval, never pool x pool) for the nearest one; a pool image whose RMS difference to it is at
most ``max_rms`` (in standard deviations) is a copy. Near-uniform images (grey std < 2 levels) carry
too little structure to call and are never flagged. Copies from crops or heavy edits are
out of reach of this test (semantic near-dup search is the tool for those).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.decode import decode_image
from pipeline.ingest import read_shard
from pipeline.shards import shard_id

SIDE = 16


MIN_STD = 2.0


def thumb(im: Image.Image) -> np.ndarray:
    """Standardised 16x16 grey thumbnail; NaN when the image is near-uniform."""
    t = np.asarray(im.convert("L").resize((SIDE, SIDE), Image.BOX), np.float32).ravel()
    sd = t.std()
    return (t - t.mean()) / sd if sd >= MIN_STD else np.full_like(t, np.nan)


def task_folders(paths: list[str]) -> list[Path]:
    """Each path is a task folder (``test/nshards.txt``) or a folder of task folders."""
    out = []
    for p in map(Path, paths):
        if (p / "test" / "nshards.txt").is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(d for d in p.iterdir() if (d / "test" / "nshards.txt").is_file())
        if not out:
            raise FileNotFoundError(f"decontaminate: no evaluation task at {p} (need <task>/test/nshards.txt)")
    return out


def eval_thumbs(paths: list[str]) -> tuple[np.ndarray, list[str]]:
    from pipeline.sample_pool.evaltask import iter_split

    thumbs, names = [], []
    for task in task_folders(paths):
        for name, im, _ in iter_split(task, skip_bad=True):  # an unreadable eval image has nothing to match
            t = thumb(im)
            if not np.isnan(t).any():
                thumbs.append(t)
                names.append(name)
    return np.stack(thumbs), names


def pool_thumbs(df: pd.DataFrame, shards: list[str]) -> np.ndarray:
    """Thumbnails in ``df`` row order (NaN rows for undecodable samples)."""
    where = {(r.shard, r.key): i for i, r in enumerate(df[["shard", "key"]].itertuples(index=False))}
    out = np.full((len(df), SIDE * SIDE), np.nan, np.float32)
    for path in shards:
        sid = shard_id(path)
        for s in read_shard(path):
            i = where.get((sid, s.key))
            if i is not None and s.image is not None:
                im, _ = decode_image(s.image)
                if im is not None:
                    out[i] = thumb(im)
    return out


def contaminated(df: pd.DataFrame, shards: list[str], eval_dirs: list[str], max_rms: float) -> tuple[np.ndarray, list]:
    """(flag per row, nearest eval image name or None per row)."""
    import faiss

    ev, names = eval_thumbs(eval_dirs)
    pool = pool_thumbs(df, shards)
    ok = ~np.isnan(pool).any(1)
    index = faiss.IndexFlatL2(ev.shape[1])
    index.add(ev)
    dist, idx = index.search(np.ascontiguousarray(pool[ok]), 1)
    rms = np.sqrt(np.maximum(dist[:, 0], 0) / ev.shape[1])
    flags = np.zeros(len(df), bool)
    flags[np.flatnonzero(ok)] = rms <= max_rms
    nearest = [None] * len(df)
    for j, i in enumerate(np.flatnonzero(ok)):
        if flags[i]:
            nearest[i] = names[idx[j, 0]]
    return flags, nearest
