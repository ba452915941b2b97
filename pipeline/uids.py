"""Uids as DataComp's subset files hold them: two 64-bit halves of 32 hex characters, in sorted order.
One sort of a run's rows serves both decide (repeated uids) and export (``uids.npy``)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

_HEX = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = (10 + _i) | 16  # upper case: noted, then masked off
HALVES_ROWS = 1 << 20  # rows converted at a time (~150 bytes a row while converted)
PARALLEL_SORT = 1 << 22  # rows from which the sort and the gathers run on two threads


@dataclass
class UidOrder:
    """Every row's uid as (upper, lower) halves, whether any was written in upper case, and the rows
    in (upper, lower, row) order."""
    hi: np.ndarray
    lo: np.ndarray
    upper: bool
    order: np.ndarray

    def repeated(self, usable: np.ndarray) -> np.ndarray:
        """Usable rows whose uid an earlier usable row has (upper and lower case the same)."""
        s = self.order if usable.all() else self.order[usable[self.order]]
        hi, lo = taken(self.hi, self.lo, s)
        same = np.flatnonzero((hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1]))
        out = np.zeros(len(self.hi), bool)
        out[s[same + 1]] = True  # equal uids sit in row order: the first one stays
        return out

    def pairs(self, keep: np.ndarray | None = None) -> np.ndarray:
        """DataComp's sorted ``u8,u8`` array of the rows ``keep`` marks (all when None)."""
        s = self.order if keep is None else self.order[keep[self.order]]
        arr = np.empty(len(s), np.dtype("u8,u8"))
        arr["f0"], arr["f1"] = taken(self.hi, self.lo, s)
        return arr


def taken(a: np.ndarray, b: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(a[rows], b[rows])``; for many rows on two threads (numpy's gathers leave the GIL)."""
    if len(rows) < PARALLEL_SORT:
        return a[rows], b[rows]
    return tuple(on_two_threads(lambda v: v[rows], (a, b)))


def on_two_threads(fn, pair) -> list:
    """``[fn(x) for x in pair]``, the two calls on two threads."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(fn, pair))


def uid_order(uids, halves: tuple | None = None) -> UidOrder | None:
    """The uids' halves and sorted order; None when any is not 32 hex characters. ``halves``: those
    of ``uids``, already made (``hex_halves``'s result)."""
    got = halves if halves is not None else hex_halves(uids)
    if got is None:
        return None
    hi, lo, upper = got
    return UidOrder(hi, lo, upper, sorted_rows(hi, lo))


def sorted_rows(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Row numbers in (hi, lo, row) order. One value sort does it: each key is the upper half's top
    bits with the row number below them; the few rows whose top bits tie are then sorted whole."""
    n = len(hi)
    bits = max(1, (n - 1).bit_length())
    if bits > 40:
        return np.lexsort((np.arange(n), lo, hi))
    key = (hi >> np.uint64(bits) << np.uint64(bits)) | np.arange(n, dtype=np.uint64)
    if n >= PARALLEL_SORT:  # two halves sorted on two threads (numpy's sort leaves the GIL), then merged
        half = n // 2
        on_two_threads(np.ndarray.sort, (key[:half], key[half:]))
        key.sort(kind="stable")  # two sorted runs: the stable sort merges them in one pass
    else:
        key.sort()
    order = (key & np.uint64((1 << bits) - 1)).astype(np.int32 if bits < 31 else np.int64)
    top = key >> np.uint64(bits)
    del key
    tie = np.flatnonzero(top[1:] == top[:-1])
    del top
    if len(tie):
        pos = np.union1d(tie, tie + 1)
        rows = order[pos]
        order[pos] = rows[np.lexsort((rows, lo[rows], hi[rows]))]
    return order


def joined_halves(parts: list) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """``hex_halves`` of consecutive pieces of a column, joined (None when any piece's is)."""
    if not parts or any(h is None for h in parts):
        return None
    return np.concatenate([h[0] for h in parts]), np.concatenate([h[1] for h in parts]), any(h[2] for h in parts)


def hex_halves(uids) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """(upper, lower halves, any upper-case letter) of 32-hex-character uids, vectorised
    ``HALVES_ROWS`` at a time; None when any is not one."""
    if isinstance(uids, (pa.Array, pa.ChunkedArray)):
        arr = uids if isinstance(uids, pa.ChunkedArray) else pa.chunked_array([uids])
    elif isinstance(getattr(uids, "array", None), pd.arrays.ArrowExtensionArray):
        arr = uids.array._pa_array
    else:
        arr = pa.chunked_array([pa.array(list(uids), pa.string())])
    if arr.null_count:
        return None
    hi, lo = np.empty(len(arr), np.uint64), np.empty(len(arr), np.uint64)
    upper = False
    for at in range(0, len(arr), HALVES_ROWS):
        part = arr.slice(at, HALVES_ROWS)
        part = (part.combine_chunks() if part.num_chunks != 1 else part.chunk(0)).cast(pa.large_binary())
        offsets = np.frombuffer(part.buffers()[1], np.int64)[part.offset:part.offset + len(part) + 1]
        if not (np.diff(offsets) == 32).all():
            return None
        nib = _HEX[np.frombuffer(part.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]].reshape(len(part), 32)
        top = int(nib.max(initial=0))  # one pass: 255 not hex, 16+ an upper-case letter
        if top == 255:
            return None
        if top > 15:
            upper = True
            nib &= 15
        packed = np.ascontiguousarray((nib[:, 0::2] << 4) | nib[:, 1::2]).view(">u8")  # (n, 2) big-endian halves
        hi[at:at + len(part)], lo[at:at + len(part)] = packed[:, 0], packed[:, 1]
    return hi, lo, upper
