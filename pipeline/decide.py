"""Decide: turn columns into ``keep`` plus drop reasons for every row. Nothing is lost.

Rules run in order: a sample that cannot be used drops first, with its real cause (``duplicate_key``,
``metadata``, ``no_image``, ``format``, ``decode``), then a repeated uid (``duplicate_uid``, first in
pool order kept), then each configured filter instance (pipeline/filters/). ``drop_reason`` is the
first failing rule, ``drop_reasons`` every failing rule. A filter only judges usable samples.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from pipeline.embeddings import Shards
from pipeline.filters import Context, Filter
from pipeline.ingest import INGEST_COLUMNS
from pipeline.metadata import embedding_view
from pipeline.stages import plan_for
from pipeline.uids import UidOrder, uid_order
from pipeline.workdir import WorkDir

READERS = 2  # threads reading the shards' columns
INGEST_REASONS = ("duplicate_key", "metadata", "no_image", "format", "decode")
_NP = {"string": object, "float32": np.float32, "int32": np.int32, "int64": np.int64, "bool": bool}


def load_columns(run_dir: str | Path, shard_ids: list[str], config, lean: Lean | None = None,
                 read=None) -> pd.DataFrame:
    """Join every stage's columns for the given shards into one table (row order = pool order): ingest's,
    ``row``, then each later stage's in plan order (pipeline/stages/); null for a stage the config
    does not run (language id when nothing reads it), so what a run writes depends on its config.
    ``lean`` (metadata-only runs): its deferred columns stay on disk, ``key`` shares ``uid``'s values
    when they are equal and ``shard`` is held as a category (``Lean.restore`` gives them back).
    ``read(sid)``: a shard's (ingest table, the wanted stages' tables) from elsewhere than the work
    folder (pipeline/direct.py); by default its files there."""
    work = WorkDir(run_dir)
    quiet_allocator()
    stages = later_stages(config)
    wanted = [c for c in INGEST_COLUMNS if lean is None or c not in lean.deferred]
    if lean is not None:
        lean.counts = []  # (again, when keys that are not uids make it read the shards a second time)

    def from_work(sid):  # on reader threads: parquet decoding releases the GIL
        return (pq.read_table(work.columns("ingest", sid), columns=wanted),
                [pq.read_table(work.columns(st.folder, sid), columns=["uid", *st.out_columns()])
                 for st in stages if st.wanted()])

    read = read or from_work

    parts = []
    with ThreadPoolExecutor(READERS) as readers:
        for sid, (t, read_stages) in zip(shard_ids, readers.map(read, shard_ids)):
            if lean is not None:
                t = lean.shrink(t)
            t = t.append_column("row", pa.array(np.arange(t.num_rows, dtype=np.int64)))
            read_stages = iter(read_stages)
            for st in stages:
                cols = list(st.out_columns())
                if not st.wanted():
                    for c in cols:
                        t = t.append_column(c, pa.nulls(t.num_rows, schemas.TYPES[st.out_columns()[c]]))
                    continue
                c = next(read_stages)
                if not c.column("uid").equals(t.column("uid")):
                    raise RuntimeError(f"{st.folder} columns for shard {sid} are out of step with ingest; rerun it")
                for col in cols:
                    t = t.append_column(col, c.column(col))
            parts.append(t.replace_schema_metadata(None))
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in ("uid", "key", "shard", "ingest_error")})
    if lean is not None and lean.share_key and lean.key_is_uid is False:  # keys that are not uids: read again
        del parts
        lean.share_key = False
        return load_columns(run_dir, shard_ids, config, lean, read)
    table = pa.concat_tables(parts)
    del parts
    df = table.to_pandas(split_blocks=True, self_destruct=True)
    if lean is not None and lean.key_is_uid:
        df.insert(INGEST_COLUMNS.index("key"), "key", df["uid"])  # the same values, held once
    return df


def later_stages(config) -> list:
    """The stages after ingest that have columns, in plan order (``load_columns`` joins theirs)."""
    return [st for st in plan_for(config, metadata=False) if st.folder != "ingest" and st.out_columns()]


# ingest columns no rule of decide reads (a filter may: Lean.deferred_for keeps those it names); the
# caption too when no filter reads it (Filter.reads_captions)
DEFERRABLE = ("url", "image_ext", "image_bytes", "sha256", "width", "height")
# deferred too when no filter reads a sample's own columns (Filter.reads_captions)
SAMPLE_COLUMNS = ("caption", "caption_words", "caption_chars", "original_width", "original_height")


class Lean:
    """What a metadata-only run's decide step leaves out of memory, and how metadata.parquet gets it back:
    the ``deferred`` ingest columns (those no filter reads) are read again shard by shard as the file is
    written, ``shard`` goes back from a category to a string column, so the file is the same bytes."""

    def __init__(self, run_dir: str | Path, shard_ids: list[str], deferred: list[str], share_key: bool = True):
        self.work, self.sids, self.deferred = WorkDir(run_dir), shard_ids, [c for c in INGEST_COLUMNS if c in deferred]
        self.share_key = share_key
        self.key_is_uid: bool | None = None  # None: no shard seen yet
        self.string = pa.array([], pa.string()).to_pandas().dtype  # a string column's dtype once loaded
        self._next, self._buf, self._start = 0, [], 0
        self.counts: list[int] = []  # rows of each shard, as shrunk
        self.source = None  # (sid, columns) -> those ingest columns of a shard; None: its ingest file

    def _read(self, sid: str, columns: list[str]) -> pa.Table:
        if self.source is not None:
            return self.source(sid, columns)
        return pq.read_table(self.work.columns("ingest", sid), columns=columns)

    @staticmethod
    def deferred_for(config) -> list[str]:
        """The deferrable columns that no filter reads (named in its settings, or sha256 for exact_dedup)."""
        said = json.dumps([f.model_dump(mode="json") for f in config.filters])
        exact = any(f.type == "exact_dedup" for f in config.filters)
        out = [c for c in DEFERRABLE if f'"{c}"' not in said and not (c == "sha256" and exact)]
        if not any(f.reads_captions for f in config.filters):  # the report reads the few it shows (``values``)
            out.extend(c for c in SAMPLE_COLUMNS if f'"{c}"' not in said)
        return [c for c in INGEST_COLUMNS if c in out]

    def values(self, column: str, rows) -> dict[int, object]:
        """Row -> value of a deferred column, for a few rows (the report's)."""
        rows = np.unique(np.asarray(list(rows), np.int64))
        out: dict[int, object] = {}
        start = 0
        for sid, n in zip(self.sids, self.counts):
            hit = rows[(rows >= start) & (rows < start + n)]
            if len(hit):
                col = self._read(sid, [column]).column(column)
                out.update({int(r): col[int(r - start)].as_py() for r in hit})
            start += n
        return out

    def shrink(self, t: pa.Table) -> pa.Table:
        """One shard's ingest table without the deferred columns (and ``key`` when it equals ``uid``)."""
        self.counts.append(t.num_rows)
        t = t.drop_columns([c for c in self.deferred if c in t.column_names])
        if self.share_key and self.key_is_uid is not False:
            self.key_is_uid = t.column("key").equals(t.column("uid"))
        if self.share_key and self.key_is_uid:
            t = t.drop_columns(["key"])
        i = t.schema.get_field_index("shard")
        shard = t.column("shard")
        return t if pa.types.is_dictionary(shard.type) else t.set_column(i, "shard", pc.dictionary_encode(shard))

    def _rows(self, lo: int, hi: int) -> pa.Table:
        """Rows ``lo:hi`` of the deferred columns (calls go forward through the pool)."""
        while self._start + sum(b.num_rows for b in self._buf) < hi and self._next < len(self.sids):
            self._buf.append(self._read(self.sids[self._next], self.deferred).replace_schema_metadata(None))
            self._next += 1
        while self._buf and self._start + self._buf[0].num_rows <= lo:
            self._start += self._buf.pop(0).num_rows
        return pa.concat_tables(self._buf).slice(lo - self._start, hi - lo)

    def releasable(self) -> list[str]:
        """Ingest columns in memory that a filter may read but nothing after the filters does: decide
        drops them once the filters have run (``release``), and they are read back like the others."""
        return [c for c in ("caption",) if c not in self.deferred]

    def released(self, cols: list[str]) -> None:
        self.deferred = [c for c in INGEST_COLUMNS if c in self.deferred or c in cols]

    def restore_table(self, chunk: pd.DataFrame, lo: int, to_table) -> pa.Table:
        """``to_table(restore(chunk, lo))`` built in Arrow: the deferred columns are not converted to
        pandas and back (``to_table``: the slice's Arrow table, its pandas metadata aside)."""
        t = to_table(chunk)
        back = self._rows(lo, lo + len(chunk)) if self.deferred else None
        for c in self.deferred:
            t = t.add_column(INGEST_COLUMNS.index(c), pa.field(c, schemas.arrow_type(c)),
                             back.column(c).cast(schemas.arrow_type(c)))
        return t

    def plain(self, chunk: pd.DataFrame) -> pd.DataFrame:
        """A slice of decide's table with ``shard`` a string column again."""
        chunk = chunk.copy(deep=False)
        shard = category_strings(chunk["shard"]).to_pandas()
        chunk["shard"] = shard.set_axis(chunk.index) if shard.dtype == self.string else shard.astype(self.string)
        return chunk

    def restore(self, chunk: pd.DataFrame, lo: int) -> pd.DataFrame:
        """A slice of decide's table (rows ``lo:``) with every column a full load would have held."""
        chunk = self.plain(chunk)
        if self.deferred:
            back = self._rows(lo, lo + len(chunk)).to_pandas()
            for c in self.deferred:
                chunk.insert(INGEST_COLUMNS.index(c), c, back[c].set_axis(chunk.index))
        return chunk


def quiet_allocator() -> None:
    """Arrow's system allocator: mimalloc kept the parquet reader's freed buffers, adding to the peak RSS.
    glibc's malloc then maps blocks of 1 MiB and more on their own and gives them back when freed (its
    moving threshold otherwise keeps large freed blocks on the heap: ~90 MB a million rows here)."""
    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD (fixes it, so it no longer moves)
        libc.mallopt(-1, 1 << 20)  # M_TRIM_THRESHOLD


def trim() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``): a dropped column's
    per-shard buffers (under 1 MiB each, so on the heap) otherwise stay in the process's RSS."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc():
    """glibc, or None on another C library."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError):
        return None


class Arrays:
    """Row-aligned per-shard arrays of a run: thumbnails (loaded on first use) and embeddings (a view of
    the per-shard files, pipeline/embeddings.py: memory-mapped, read a chunk or a cluster at a time)."""

    def __init__(self, run_dir: str | Path | None, shard_ids: list[str], listed: dict | None = None):
        self.run = Path(run_dir) if run_dir is not None else None
        self.work = WorkDir(run_dir) if run_dir is not None else None
        self.sids = shard_ids
        self.listed = listed or {}  # score column -> every listed row's score, when read with the pool
        self._cache: dict = {}

    def _paths(self, where) -> list[Path]:
        """``where(sid)`` for each shard, each checked to exist."""
        if self.work is None:
            raise ValueError("this filter needs the run folder (thumbnails / embeddings); pass work=")
        paths = [where(sid) for sid in self.sids]
        for sid, path in zip(self.sids, paths):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: rerun the annotate step for shard {sid}")
        return paths

    def pool_scores(self, column: str) -> np.ndarray | None:
        """Every listed row's score (precomputed columns: downloaded or not), when each shard has them."""
        if column in self.listed:
            return self.listed[column]
        if self.work is None:
            return None
        paths = [self.work.pool_scores(column, sid) for sid in self.sids]
        if not paths or not all(p.is_file() for p in paths):
            return None
        return np.concatenate([np.load(p) for p in paths])

    def thumbs(self) -> np.ndarray:
        if "thumbs" not in self._cache:
            parts = [np.load(p, mmap_mode="r") for p in self._paths(self.work.thumbs if self.work else None)]
            self._cache["thumbs"] = np.concatenate(parts) if parts else np.zeros((0, 32, 32), np.float32)
        return self._cache["thumbs"].astype(np.uint8, copy=False)

    def image(self, column: str) -> Shards:
        return self._embeddings(column, "img")

    def text(self, column: str) -> Shards:
        return self._embeddings(column, "txt")

    def _embeddings(self, column: str, part: str) -> Shards:
        """Per-shard ``.npy`` files, or (metadata-only pools) the npz members their pointers name; a
        gather from a big pool spills under the work folder's ``global/spill``."""
        if self.work is None:
            return Shards(self._paths(None))
        v = self._located(column, part)
        v.scratch = self.work.global_dir("spill")
        return v

    def _located(self, column: str, part: str) -> Shards:
        parts: list = []
        for sid in self.sids:
            npy = self.work.embeddings(column, sid, part)
            ptr = self.work.npz_pointer(column, sid)
            if not npy.is_file() and ptr.is_file():
                where = json.loads(ptr.read_text())
                parts.append({**where, "member": where[part]})
            else:
                parts.append(npy)
        if all(isinstance(p, Path) for p in parts):
            return Shards(self._paths(lambda sid: self.work.embeddings(column, sid, part)))
        missing = [(sid, p) for sid, p in zip(self.sids, parts) if isinstance(p, Path) and not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0][1]} is missing: rerun the annotate step for shard {missing[0][0]}")
        return embedding_view(parts)


def ingest_reasons(df: pd.DataFrame) -> np.ndarray:
    """The drop reason an ingest error names (the text before its first colon), or None."""
    err = df["ingest_error"]
    has = err.notna().to_numpy()
    out = np.full(len(df), None, object)
    if has.any():
        out[has] = err[has].str.split(":", n=1).str[0].to_numpy(object)
    return out


def decide(df: pd.DataFrame, config, arrays: Arrays | None = None, run: str | Path | None = None,
           order: UidOrder | None = None, release: list[str] = ()) -> tuple[pd.DataFrame, dict, dict]:
    """Add keep / drop_reason / drop_reasons and each filter instance's columns; return the table, what
    each instance used (thresholds, counts) and the seconds each took. ``order``: the uids'
    ``uid_order``, when the caller keeps it for export. ``release``: columns dropped from ``df`` once the
    filters have run (a lean decide reads them back from disk as it writes)."""
    arrays = arrays or Arrays(None, [])
    n = len(df)
    cause = ingest_reasons(df) if n else np.zeros(0, object)
    usable = df["ingest_error"].isna().to_numpy(bool) if n else np.zeros(0, bool)
    dup_uid = repeated_uids(df["uid"], usable, order)
    ok = usable & ~dup_uid
    names = sorted(set(pd.unique(cause[~usable])), key=lambda r: (r not in INGEST_REASONS, r))
    fails: list[tuple[str, np.ndarray]] = [(r, cause == r) for r in names] + [("duplicate_uid", dup_uid)]
    info: dict = {}
    seconds: dict = {}
    new_cols: dict = {}
    ctx = Context(df, ok, arrays, config, Path(run) if run is not None else arrays.run)
    for f in config.filters:
        t0 = time.time()
        res = f.compute(ctx) if n else _empty_result(f)
        ctx.done[f.instance] = res
        unknown = set(res.fails) - set(f.checks)
        if unknown:
            raise RuntimeError(f"filter {f.instance!r} returned checks {sorted(unknown)} it does not declare")
        for check, mask in res.fails.items():
            fails.append((f.reason(check), np.asarray(mask, bool) & ok))
        for out, values in res.columns.items():
            if out not in f.outputs:
                raise RuntimeError(f"filter {f.instance!r} wrote column {out!r} it does not declare")
            new_cols[f.out_column(out)] = _typed(values, f.outputs[out], n)
        info[f.instance] = {"type": f.type, "reasons": f.reasons(), "columns": [f.out_column(o) for o in f.outputs],
                            **res.info}
        seconds[f.instance] = round(time.time() - t0, 3)
    if release:  # in place: the caller's table lets go of them too (it reads them back from disk)
        df.drop(columns=[c for c in release if c in df.columns], inplace=True)
        trim()
    df = df.assign(**new_cols)
    matrix = np.stack([m for _, m in fails], axis=1) if n else np.zeros((0, len(fails)), bool)
    labels = np.array([r for r, _ in fails], dtype=object)
    del fails
    keep = ~matrix.any(axis=1)
    df["keep"] = keep
    if keep.all():  # no reason at all: an object column of None, as pandas makes of one
        df["drop_reason"] = np.full(n, None, object)
    else:  # a category (a byte a row, not a string; metadata.parquet stores strings): null where kept
        names, code = np.unique(np.array([str(x) for x in labels], object), return_inverse=True)
        first = code.astype(np.int32)[matrix.argmax(axis=1)]
        first[keep] = -1
        df["drop_reason"] = pd.Categorical.from_codes(first, categories=names)
    df["drop_reasons"] = reason_lists(matrix, labels)
    return df, info, seconds


def repeated_uids(uid: pd.Series, usable: np.ndarray, order: UidOrder | None = None) -> np.ndarray:
    """Usable rows whose uid an earlier usable row has. Hex uids all in lower case (a metadata pool's)
    are compared as two 64-bit halves, with ``order`` (``uid_order``) when given; others as strings."""
    if order is None and len(uid):
        order = uid_order(uid)
    if order is None or order.upper:
        return uid.where(usable).duplicated(keep="first").to_numpy() & usable if len(uid) else np.zeros(0, bool)
    return order.repeated(usable)


def reason_lists(matrix: np.ndarray, labels: np.ndarray) -> pd.arrays.ArrowExtensionArray:
    """Each row's failing rules in rule order, as an Arrow ``list<dictionary<string>>`` column (no
    Python list a row, no string a rule: metadata.parquet stores ``list<string>``)."""
    step = 1 << 20  # rows at a time: the flat positions are int64
    cols = np.empty(int(np.count_nonzero(matrix)), np.int32)
    at = 0
    for lo in range(0, len(matrix), step):
        pos = np.flatnonzero(matrix[lo:lo + step])  # C order: row by row; only the column of each is kept
        cols[at:at + len(pos)] = pos % max(1, matrix.shape[1])
        at += len(pos)
    offsets = np.zeros(len(matrix) + 1, np.int32)
    np.cumsum(np.count_nonzero(matrix, axis=1), out=offsets[1:])
    values = pa.DictionaryArray.from_arrays(pa.array(cols), pa.array([str(x) for x in labels], pa.string()))
    return pd.arrays.ArrowExtensionArray(pa.ListArray.from_arrays(pa.array(offsets), values))


def _empty_result(f: Filter):
    from pipeline.filters import Result

    return Result({c: np.zeros(0, bool) for c in f.checks}, {o: [] for o in f.outputs}, {"empty_pool": True})


def _typed(values, kind: str, n: int):
    if kind == "string" and isinstance(values, pa.Array):  # kept in Arrow (large_string: as pandas holds it)
        if len(values) != n:
            raise RuntimeError(f"a filter column has {len(values)} values for {n} rows")
        return values.cast(pa.large_string()).to_pandas().array
    arr = np.asarray(values, dtype=_NP[kind]) if kind != "string" else np.array(
        [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values], dtype=object)
    if len(arr) != n:
        raise RuntimeError(f"a filter column has {len(arr)} values for {n} rows")
    return arr


def summarize(df: pd.DataFrame) -> dict:
    keep = df["keep"].to_numpy(bool)
    by_reason = reason_counts(df["drop_reason"][~keep])
    return {"samples_in": int(len(df)), "kept": int(keep.sum()), "dropped": int((~keep).sum()),
            "dropped_by_reason": {k: int(v) for k, v in by_reason.items()},
            "failing_by_rule": dict(sorted(rule_counts(df["drop_reasons"]).items()))}


def reason_counts(col: pd.Series) -> pd.Series:
    """Rows per reason, by name (a category's unused reasons left out)."""
    counts = col.value_counts()
    counts = counts[counts > 0]
    return counts.set_axis(counts.index.astype(str)).sort_index()


def plain_reasons(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` (a slice) with decide's reason columns as the strings metadata.parquet stores (built in
    Arrow by taking from the few distinct values: no Python string a row, no dictionary cast)."""
    out = {}
    if "drop_reason" in df.columns and isinstance(df["drop_reason"].dtype, pd.CategoricalDtype):
        out["drop_reason"] = pd.arrays.ArrowExtensionArray(category_strings(df["drop_reason"]))
    arr = df["drop_reasons"].array if "drop_reasons" in df.columns else None
    if isinstance(arr, pd.arrays.ArrowExtensionArray) and pa.types.is_list(arr._pa_array.type) \
            and pa.types.is_dictionary(arr._pa_array.type.value_type):
        out["drop_reasons"] = pd.arrays.ArrowExtensionArray(
            pa.chunked_array([_plain_list(c) for c in arr._pa_array.chunks], pa.list_(pa.string())))
    return df.assign(**out) if out else df


def category_strings(col: pd.Series) -> pa.Array:
    """A categorical column's values as an Arrow string array (missing: null)."""
    codes = col.cat.codes.to_numpy()
    cats = pa.array(np.asarray(col.cat.categories, object), pa.string())
    return cats.take(pa.array(codes, mask=codes < 0))


def _plain_list(chunk: pa.ListArray) -> pa.ListArray:
    """``list<dictionary<string>>`` as ``list<string>``, the same rows (a slice's offsets rebased)."""
    flat = chunk.flatten()
    offsets = pc.subtract(chunk.offsets, chunk.offsets[0]) if len(chunk) else pa.array([0], pa.int32())
    return pa.ListArray.from_arrays(offsets, flat.dictionary.take(flat.indices),
                                    mask=chunk.is_null() if chunk.null_count else None)


def as_lists(col: pd.Series) -> pa.ChunkedArray:
    """A ``drop_reasons`` column as Arrow lists (decide's own, or Python / numpy lists read back)."""
    arr = col.array
    if isinstance(arr, pd.arrays.ArrowExtensionArray) and pa.types.is_list(arr._pa_array.type):
        return arr._pa_array
    return pa.chunked_array([pa.array([[] if r is None else [str(x) for x in r] for r in col], pa.list_(pa.string()))])


def rule_counts(col: pd.Series) -> dict[str, int]:
    flat = pc.list_flatten(as_lists(col))
    counts = pc.value_counts(flat) if len(flat) else []
    return {c["values"].as_py(): int(c["counts"].as_py()) for c in counts}


def failing(col: pd.Series, rules) -> np.ndarray:
    """Rows whose drop_reasons hold any of ``rules``."""
    hit = np.zeros(len(col), bool)
    wanted = pa.array(sorted(rules), pa.string())
    base = 0
    for chunk in as_lists(col).chunks:  # a chunk at a time: no combined copy
        flat = chunk.flatten()
        if len(flat):
            parent = pc.list_parent_indices(chunk).to_numpy()
            if pa.types.is_dictionary(flat.type):  # which codes are the rules, then each value's code looked up
                among = pc.is_in(flat.dictionary, value_set=wanted).to_numpy(zero_copy_only=False)
                match = among[flat.indices.to_numpy(zero_copy_only=False)]
            else:
                match = pc.is_in(flat, value_set=wanted).to_numpy(zero_copy_only=False)
            hit[base + parent[match]] = True
        base += len(chunk)
    return hit
