"""Decontamination: find pool images that copy an evaluation image (re-encoded, resized or not).

Every image's 32x32 grey ingest thumbnail is pooled to 16x16, standardised (zero mean, unit variance) so that drawings
on white do not all look alike. faiss searches the pool against an index of the evaluation images
(pool x eval, never pool x pool) for the nearest one; a pool image whose RMS difference to it is at
most ``max_rms`` (in standard deviations) is a copy. Near-uniform images (grey std < 2 levels) carry
too little structure to call and are never flagged. Copies from crops or heavy edits are
out of reach of this test (semantic near-dup search is the tool for those). Each task's thumbnails
are kept in the run's work folder (``global/eval_thumbs``) while the task is unchanged, so reruns
and other configs do not read the evaluation images again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pipeline.neardup import thumbnail
from shardio.shards import atomic_save_npz

SIDE = 16
THUMBS_VERSION = 1  # in the eval thumbnail cache's key: bump when neardup.thumbnail changes
MIN_STD = 2.0


def standardised(thumbs: np.ndarray) -> np.ndarray:
    """(n, 32, 32) uint8 ingest thumbnails -> (n, 256) standardised 16x16; NaN rows when near-uniform."""
    t = thumbs.astype(np.float32).reshape(len(thumbs), SIDE, 2, SIDE, 2).mean((2, 4)).reshape(len(thumbs), SIDE * SIDE)
    sd = t.std(1, keepdims=True)
    out = (t - t.mean(1, keepdims=True)) / np.maximum(sd, 1e-6)
    out[sd[:, 0] < MIN_STD] = np.nan
    return out


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


def eval_thumbs(paths: list[str], cache: Path | None = None) -> tuple[np.ndarray, list[str]]:
    thumbs, names = [], []
    for task in task_folders(paths):
        t, n = task_thumbs(task, cache)
        thumbs.append(t)
        names += n
    if not names:
        raise ValueError(f"decontaminate: no readable evaluation image under {paths}")
    t = standardised(np.concatenate(thumbs))
    ok = ~np.isnan(t).any(1)
    return t[ok], [n for n, k in zip(names, ok) if k]


def task_thumbs(task: Path, cache: Path | None = None) -> tuple[np.ndarray, list[str]]:
    """One task's 32x32 grey thumbnails and image names; with ``cache`` (a folder), read back while the
    task's test split is unchanged (its files' names, sizes and mtimes), else made and saved there."""
    from shardio.evaltask import iter_split

    path = None
    if cache is not None:
        files = sorted(f for f in (task / "test").rglob("*") if f.is_file())
        ident = [THUMBS_VERSION, str(task.resolve())] + [[str(f.relative_to(task)), *_size_mtime(f)] for f in files]
        path = Path(cache) / f"{hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:20]}.npz"
        if path.is_file():
            with np.load(path) as z:
                return z["thumbs"], z["names"].tolist()
    thumbs, names = [], []
    for name, im, _ in iter_split(task, skip_bad=True):  # an unreadable eval image has nothing to match
        thumbs.append(thumbnail(im))
        names.append(name)
    t = np.stack(thumbs) if thumbs else np.zeros((0, 32, 32), np.uint8)
    if path is not None:
        atomic_save_npz(path, thumbs=t, names=np.array(names, dtype=str))
    return t, names


def _size_mtime(f: Path) -> tuple[int, int]:
    st = f.stat()
    return st.st_size, st.st_mtime_ns


def contaminated(thumbs: np.ndarray, eval_dirs: list[str], max_rms: float,
                 cache: Path | None = None) -> tuple[np.ndarray, list, np.ndarray]:
    """(flag per row, nearest eval image name or None per row, RMS to the nearest eval image or NaN)
    for the pool's ingest thumbnails. Near-uniform rows (and every row when no eval image has
    structure) get no flag and NaN."""
    import faiss

    ev, names = eval_thumbs(eval_dirs, cache)
    pool = standardised(thumbs)
    rows = np.flatnonzero(~np.isnan(pool).any(1))
    flags = np.zeros(len(thumbs), bool)
    dist_all = np.full(len(thumbs), np.nan, np.float32)
    nearest = [None] * len(thumbs)
    if len(rows) == 0 or len(ev) == 0:
        return flags, nearest, dist_all
    index = faiss.IndexFlatL2(ev.shape[1])
    index.add(ev)
    dist, idx = index.search(np.ascontiguousarray(pool[rows]), 1)
    rms = np.sqrt(np.maximum(dist[:, 0], 0) / ev.shape[1])
    flags[rows] = rms <= max_rms
    dist_all[rows] = rms
    for j in np.flatnonzero(rms <= max_rms):
        nearest[rows[j]] = names[idx[j, 0]]
    return flags, nearest, dist_all
