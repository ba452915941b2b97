"""Gathering groups of rows (k-means clusters, samples) from a pool bigger than the page cache.

Read in place, each group's rows are scattered over the whole pool: at 12.8M rows (19.7 GB of float16
L/14 embeddings, on a 24 GB machine) SemDeDup's gather read for over 20 minutes. Instead, when the
view is bigger than half the machine's memory and has a scratch folder with room,
one sequential pass copies each batch of groups (BATCH bytes as stored) into its own file, rows in pool
order, and each batch is then read back whole (as NeMo Curator writes each cluster's rows to its own
files before its pairwise step); a disk with less room takes them in rounds, a pass each. The rows come
back exactly as a ``take`` gives them.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.embeddings import View

log = logging.getLogger(__name__)

BATCH = 256 << 20  # bytes (as stored) of groups written to one file
ROOM = 1 << 30  # free bytes left on the scratch disk (and a fifth of what is written)
MEMORY_SHARE = 0.5  # spill when the view's embeddings pass this share of physical memory
MAX_ROUNDS = 4  # when the disk holds less than a quarter of the rows at once, read in place instead


def memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: never spill for memory's sake
        return 1 << 62


def where(x: View, rows: int) -> tuple[Path, int] | None:
    """(folder, bytes it may hold at once) to spill ``rows`` rows of ``x`` into, or None to read them in
    place (``x`` fits in the page cache, or no scratch). A disk that holds less than all of them takes
    them in rounds: a pass over the pool each."""
    row_bytes = x.shape[1] * x.dtype.itemsize
    need = rows * row_bytes
    if x.scratch is None or len(x) * row_bytes <= MEMORY_SHARE * memory_bytes():
        return None
    Path(x.scratch).mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(x.scratch).free
    room = int((free - ROOM) / 1.25)
    if room * MAX_ROUNDS < need:
        log.warning("reading %.1f GB of embeddings in place (slow for a pool bigger than the page cache): %s has "
                    "%.1f GB free, a copy in %d rounds needs %.1f GB", need / 1e9, x.scratch, free / 1e9,
                    MAX_ROUNDS, (need / MAX_ROUNDS * 1.25 + ROOM) / 1e9)
        return None
    return Path(x.scratch), room


def pack(sizes: list[int], limit: int) -> list[list[int]]:
    """Consecutive indices of ``sizes``, up to ``limit`` in total a pack (a bigger one alone)."""
    out, cur, used = [], [], 0
    for i, size in enumerate(sizes):
        if cur and used + size > limit:
            out.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += size
    return out + [cur] if cur else out


def batches(groups: list[np.ndarray], row_bytes: int, limit: int) -> list[list[int]]:
    """Consecutive group indices, up to ``limit`` bytes a batch (a bigger group alone)."""
    return pack([len(g) * row_bytes for g in groups], limit)


def spilled(x: View, groups: list[np.ndarray], folder: Path, room: int = 1 << 62
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(group rows, their float32 vectors) for each of ``groups`` (disjoint rows of ``x``) in turn, through
    one file per batch of groups in ``folder``, at most ``room`` bytes of files at a time (a pass over
    ``x`` a round); each file is removed once read, and all on exit."""
    row_bytes = x.shape[1] * x.dtype.itemsize
    plan = batches(groups, row_bytes, BATCH)
    sizes = [sum(len(groups[i]) for i in b) * row_bytes for b in plan]
    with tempfile.TemporaryDirectory(prefix="spill-", dir=folder) as tmp:
        for this_round in pack(sizes, room):  # a round: the batch files that fit on the disk together
            first = this_round[0]
            write(x, groups, plan[first:this_round[-1] + 1], Path(tmp), first)
            for b in this_round:
                path = Path(tmp) / f"{b}.bin"
                block = np.fromfile(path, x.dtype).reshape(-1, x.shape[1])
                path.unlink()
                stored = np.sort(np.concatenate([groups[i] for i in plan[b]]))  # the file's rows, pool order
                for i in plan[b]:
                    yield groups[i], x.finish(block[np.searchsorted(stored, groups[i])])
                del block


def write(x: View, groups: list[np.ndarray], plan: list[list[int]], tmp: Path, first: int) -> None:
    """One sequential pass over ``x``: each batch's rows, as stored and in pool order, to ``<first + b>.bin``."""
    batch_of = np.full(len(x), -1, np.int32)
    for b, members in enumerate(plan):
        for i in members:
            batch_of[groups[i]] = b
    files = [open(tmp / f"{first + b}.bin", "wb") for b in range(len(plan))]
    try:
        step = x.chunk_rows()
        for start in range(0, len(x), step):
            rows = np.flatnonzero(batch_of[start:start + step] >= 0)
            if len(rows) == 0:
                continue
            block = x.take_stored(rows + start)
            b_of = batch_of[rows + start]
            order = np.argsort(b_of, kind="stable")
            for part in np.split(order, np.flatnonzero(np.diff(b_of[order])) + 1):
                files[b_of[part[0]]].write(block[part].tobytes())
    finally:
        for f in files:
            f.close()
