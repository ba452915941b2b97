"""Gathering groups of rows (k-means clusters, samples) from a pool bigger than the page cache.

Read in place, each group's rows are scattered over the whole pool: at 12.8M rows (19.7 GB of float16
L/14 embeddings, on a 24 GB machine) SemDeDup's gather read for over 20 minutes. Instead, when the
groups' rows are bigger than half the machine's memory and the view has a scratch folder with room,
one sequential pass copies each batch of groups (BATCH bytes as stored) into its own file, rows in pool
order, and each batch is then read back whole (as NeMo Curator writes each cluster's rows to its own
files before its pairwise step). The rows come back exactly as a ``take`` gives them.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.embeddings import View

BATCH = 256 << 20  # bytes (as stored) of groups written to one file
ROOM = 1 << 30  # free bytes left on the scratch disk after the spill (and a quarter of the spill)
MEMORY_SHARE = 0.5  # spill when the rows to gather pass this share of physical memory


def memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: never spill for memory's sake
        return 1 << 62


def where(x: View, rows: int) -> Path | None:
    """The folder to spill ``rows`` rows of ``x`` into, or None to read them in place."""
    need = rows * x.shape[1] * x.dtype.itemsize
    if x.scratch is None or need <= MEMORY_SHARE * memory_bytes():
        return None
    Path(x.scratch).mkdir(parents=True, exist_ok=True)
    return Path(x.scratch) if shutil.disk_usage(x.scratch).free >= need * 1.25 + ROOM else None


def batches(groups: list[np.ndarray], row_bytes: int, limit: int) -> list[list[int]]:
    """Consecutive group indices, up to ``limit`` bytes a batch (a bigger group alone)."""
    out, cur, size = [], [], 0
    for i, g in enumerate(groups):
        if cur and (size + len(g)) * row_bytes > limit:
            out.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += len(g)
    return out + [cur] if cur else out


def spilled(x: View, groups: list[np.ndarray], folder: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(group rows, their float32 vectors) for each of ``groups`` (disjoint rows of ``x``) in turn, through
    one file per batch of groups in ``folder``; the files are removed as they are read, and on exit."""
    d, dt = x.shape[1], x.dtype
    plan = batches(groups, d * dt.itemsize, BATCH)
    batch_of = np.full(len(x), -1, np.int32)
    for b, members in enumerate(plan):
        for i in members:
            batch_of[groups[i]] = b
    with tempfile.TemporaryDirectory(prefix="spill-", dir=folder) as tmp:
        files = [open(Path(tmp) / f"{b}.bin", "wb") for b in range(len(plan))]
        try:
            step = x.chunk_rows()
            for start in range(0, len(x), step):
                where_b = batch_of[start:start + step]
                rows = np.flatnonzero(where_b >= 0)
                if len(rows) == 0:
                    continue
                block = x.take(rows + start, np.empty((len(rows), d), dt))
                b_of = where_b[rows]
                order = np.argsort(b_of, kind="stable")
                cuts = np.flatnonzero(np.diff(b_of[order])) + 1
                for part in np.split(order, cuts):
                    files[b_of[part[0]]].write(block[part].tobytes())
        finally:
            for f in files:
                f.close()
        for b, members in enumerate(plan):
            path = Path(tmp) / f"{b}.bin"
            block = np.fromfile(path, dt).reshape(-1, d)
            path.unlink()
            stored = np.sort(np.concatenate([groups[i] for i in members]))  # the file's rows, pool order
            for i in members:
                yield groups[i], block[np.searchsorted(stored, groups[i])].astype(np.float32)
            del block
