"""Row-aligned views of a pool's embeddings, one ``.npy`` file a shard, memory-mapped and never
concatenated: the global steps read them a chunk or a few clusters at a time, so their memory follows
the chunk, not the pool.

A view has ``len``, ``shape`` (rows, dim) and
  ``take(rows, out)`` float32 rows, only those asked for (any order; sorted reads fastest), written
                     into ``out`` (a (len(rows), dim) float32 array or view of one) when given;
  ``chunks(size)``   (start row, float32 block) in row order, ~32 MB a block by default;
  ``sample(n, seed)`` (sorted rows, their float32 block): n distinct rows drawn with a seeded generator;
  ``subset(rows)``   a view of those rows (position i is row rows[i]);
  ``unit``           True when its rows are known to be unit length (nothing to normalise);
  ``dtype``          the dtype its rows are stored in (float16 for DataComp's npz); ``take_stored(rows)``
                     gives them so and ``finish(block)`` as ``take`` would;
  ``scratch``        a folder where a gather may spill rows in cluster order (pipeline/spill.py), or None.
Shard files also give ``stored(size)``: (start row, block as stored, e.g. float16) in row order.
``view(x)`` wraps a plain array (small inputs, tests) and passes a view through.
A shard's file is mapped only while a read touches it, so what was read leaves the process's RSS.
A sparse read (rows more than SPARSE_GAP bytes apart on average) asks the kernel for those pages only
(MADV_RANDOM): by default each page fault reads 128 KB around it, and 21,000 rows scattered over a
12.8M-row pool that the page cache cannot hold took 17.1 s that way, 1.8 s with MADV_RANDOM.
"""
from __future__ import annotations

import mmap
from pathlib import Path
from typing import Iterator

import numpy as np

CHUNK_BYTES = 32 << 20  # float32 bytes a chunk
SPARSE_GAP = 64 << 10  # bytes of a shard's span per row read, above which reads are random (MADV_RANDOM)


class View:
    shape: tuple[int, int]
    unit = False  # rows known to be unit length (nothing to normalise)
    dtype = np.dtype(np.float32)  # as stored
    scratch: Path | None = None  # where a gather may spill (pipeline/spill.py)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def take_stored(self, rows: np.ndarray) -> np.ndarray:
        """Rows as stored (``dtype``); ``finish`` makes them what ``take`` gives."""
        return self.take(rows, np.empty((len(rows), self.shape[1]), self.dtype))

    def finish(self, block: np.ndarray) -> np.ndarray:
        return block.astype(np.float32)

    def chunk_rows(self) -> int:
        return max(1, CHUNK_BYTES // (4 * max(1, self.shape[1])))

    def chunks(self, size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        size = size or self.chunk_rows()
        for start in range(0, len(self), size):
            yield start, self.take(np.arange(start, min(len(self), start + size)))

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        if n >= len(self):
            rows = np.arange(len(self))
        else:
            rows = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return rows, self.take(rows)

    def subset(self, rows: np.ndarray) -> "View":
        return Subset(self, rows)

    def load(self) -> np.ndarray:
        """Every row as one float32 array: for small pools only."""
        return self.take(np.arange(len(self)))


class Shards(View):
    """Per-shard parts one after another: ``.npy`` paths, or ``(path, offset)`` of a ``.npy`` stored at
    that byte offset inside another file (an uncompressed npz member), mapped on each read; or arrays
    in memory."""

    def __init__(self, parts: list, dim: int = 1):
        self.parts, lens, widths = [], [], []
        for p in parts:
            if isinstance(p, (str, Path, tuple)):
                path, at = (p, 0) if isinstance(p, (str, Path)) else p
                shape, fortran, dtype, offset = _header(path, at)
                self.parts.append((str(path), shape, "F" if fortran else "C", dtype, offset))
            else:
                p = np.asarray(p)
                p = p.reshape(len(p), -1) if p.ndim != 2 else p
                self.parts.append(p)
                shape = p.shape
            lens.append(shape[0])
            widths.append(shape[1] if len(shape) > 1 else 1)
        dims = {w for w, n in zip(widths, lens) if n} or set(widths[:1]) or {dim}  # empty parts: any width
        if len(dims) > 1:
            raise ValueError(f"embedding parts differ in width: {sorted(dims)}")
        self.starts = np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])
        self.shape = (int(self.starts[-1]), dims.pop())
        kinds = {p[3] if isinstance(p, tuple) else p.dtype for p in self.parts}
        self.dtype = np.dtype(np.result_type(*kinds)) if kinds else np.dtype(np.float32)

    def _open(self, i: int) -> np.ndarray:
        p = self.parts[i]
        if isinstance(p, np.ndarray):
            return p
        path, shape, order, dtype, offset = p
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)

    def stored(self, size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(start row, block) in row order as stored (e.g. float16), a shard's file mapped in turn."""
        size = size or self.chunk_rows()
        for i, start in enumerate(self.starts[:-1].tolist()):
            arr = self._open(i)
            for lo in range(0, len(arr), size):
                yield start + lo, np.asarray(arr[lo:lo + size]).reshape(min(size, len(arr) - lo), -1)
            del arr

    def take(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        rows = np.asarray(rows, np.int64).ravel()
        out = np.empty((len(rows), self.shape[1]), np.float32) if out is None else out
        if len(rows) == 0:
            return out
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"rows outside 0..{len(self) - 1}")
        order = None if (rows[1:] >= rows[:-1]).all() else np.argsort(rows, kind="stable")
        srt = rows if order is None else rows[order]
        part = np.searchsorted(self.starts, srt, side="right") - 1
        cuts = np.flatnonzero(np.diff(part)) + 1
        for lo, hi in zip([0, *cuts], [*cuts, len(srt)]):
            local = srt[lo:hi] - self.starts[part[lo]]
            arr = self._open(int(part[lo]))
            span = (local[-1] - local[0] + 1) * arr.itemsize * self.shape[1]
            if isinstance(arr, np.memmap) and span > SPARSE_GAP * (hi - lo) and hasattr(mmap, "MADV_RANDOM"):
                arr._mmap.madvise(mmap.MADV_RANDOM)
            whole = local[-1] - local[0] + 1 == hi - lo and (np.diff(local) == 1).all()
            block = arr[local[0]:local[-1] + 1] if whole else arr[local]
            if order is None:
                out[lo:hi] = block
            else:
                out[order[lo:hi]] = block
            del arr, block  # unmap before the next shard
        return out


class Subset(View):
    def __init__(self, base: View, rows: np.ndarray):
        self.base, self.rows, self.unit = base, np.asarray(rows, np.int64), base.unit
        self.dtype, self.scratch = base.dtype, base.scratch
        self.shape = (len(self.rows), base.shape[1])

    def take(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return self.base.take(self.rows[np.asarray(rows, np.int64)], out)

    def subset(self, rows: np.ndarray) -> View:
        return Subset(self.base, self.rows[np.asarray(rows, np.int64)])


def view(x) -> View:
    """``x`` itself when it is a view, else a view of the array ``x``."""
    if isinstance(x, View):
        return x
    x = np.asarray(x)
    return Shards([x.reshape(len(x), -1) if len(x) else x.reshape(0, x.shape[-1] if x.ndim == 2 else 1)])


def _header(path, at: int = 0) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) of a ``.npy`` file, or of one that starts at byte ``at``."""
    from numpy.lib import format as npy

    with open(path, "rb") as f:
        f.seek(at)
        version = npy.read_magic(f)
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran, dtype = read(f)
        return shape, fortran, dtype, f.tell()
