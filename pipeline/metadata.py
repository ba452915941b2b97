"""Metadata-only pools, as DataComp ships them: a folder of hash-named ``<h>.parquet`` (uid, url, text,
original_width/height, clip_b32/l14_similarity_score, sha256) beside ``<h>.npz`` (b32_img, b32_txt,
l14_img, l14_txt; float16). Filtering happens before any image is downloaded; the uid list then goes
to a resharder (``curate reshard``). Each parquet is treated as one "shard" of the pool: its rows
are the samples, in file order, with the same columns and accounting as a shard of images.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from pipeline.embeddings import Shards, _header
from pipeline.ingest import INGEST_COLUMNS, MAX_CAPTION_CHARS, ShardInfo, caption_languages, derive_uid, valid_uid
from schemas.config import ClipModel
from shardio import storage
from shardio.shards import shard_base

NEEDED = ("uid", "text")
READ = ("uid", "url", "text", "original_width", "original_height", "sha256")


def is_metadata(path: str | Path) -> bool:
    return str(path).endswith(".parquet")


TAIL = 64 << 10  # a URL's footer: its last 64 KiB (what pyarrow reads for it), one request; more for a larger one
_OPENED: ContextVar[dict] = ContextVar("curate_parquets", default={})


@contextmanager
def _source(path):
    """What pyarrow reads: a local path, or a URL's file read by range requests (the footer, then only
    the column chunks asked for); inside ``fetched`` for that URL, its bytes already in memory."""
    if not storage.is_url(path):
        yield path
        return
    held = _OPENED.get().get(str(path))
    f = held if held is not None else _opened(str(path))
    f.seek(0)
    yield f


def _opened(url: str) -> storage.Ranges:
    """A URL's parquet with its footer in memory."""
    f = storage.Ranges(url)
    f.fetch([(f.size - TAIL, f.size)])
    tail = f.get(max(0, f.size - 8), f.size)
    if len(tail) == 8 and tail[4:] == b"PAR1":
        f.fetch([(f.size - 8 - int.from_bytes(tail[:4], "little"), f.size)])
    return f


@contextmanager
def fetched(path, columns):
    """Inside: every read of the URL ``path`` (schema, ``columns``, each stage's) comes from memory,
    its footer and the chunks of ``columns`` it has fetched in one set of range requests (nearby chunks
    merged, fetched concurrently). A local path: nothing to do."""
    if not storage.is_url(path):
        yield
        return
    ahead = _AHEAD.get("run")
    f = (ahead.take(str(path), columns) if ahead is not None else None) or _opened(str(path))
    _fetch_columns(f, columns)
    token = _OPENED.set({**_OPENED.get(), str(path): f})
    try:
        yield
    finally:
        _OPENED.reset(token)


def _fetch_columns(f: storage.Ranges, columns) -> storage.Ranges:
    try:
        meta = pq.read_metadata(f)
    except Exception:  # noqa: BLE001 - not a parquet: the stage's own read says so
        return f
    f.fetch(chunk_ranges(meta, columns))
    return f


def _prefetch(url: str, columns) -> storage.Ranges:
    return _fetch_columns(_opened(url), columns)


_AHEAD: dict[str, "ReadAhead"] = {}


class ReadAhead:
    """While one parquet of a bucket pool is worked on, the next ``depth`` ones (in job order) are
    fetched on two threads, with the columns that one read: their round trips overlap the work
    instead of adding to it. It starts with the first parquet that is read (a run whose stages are
    all cached fetches nothing); memory: ``depth`` parquets' fetched bytes."""

    def __init__(self, paths: list, depth: int = 3):
        self.order = [str(p) for p in paths if storage.is_url(p) and is_metadata(p)]
        self.index = {p: i for i, p in enumerate(self.order)}
        self.depth = depth
        self.futures: dict = {}  # url -> its fetch, until taken
        self.started: set[str] = set()
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="curate-read-ahead") if self.order else None

    def take(self, url: str, columns) -> storage.Ranges | None:
        """``url``'s prefetched file (None when it was not fetched ahead, or failed: read it then)."""
        i = self.index.get(url)
        if i is None:
            return None
        for nxt in self.order[i + 1:i + 1 + self.depth]:
            if nxt not in self.started:
                self.started.add(nxt)
                self.futures[nxt] = self.pool.submit(_prefetch, nxt, list(columns))
        self.started.add(url)
        fut = self.futures.pop(url, None)
        for old in [u for u in self.futures if self.index[u] < i]:  # skipped (cached): let go of their bytes
            self.futures.pop(old).cancel()
        try:
            return fut.result() if fut is not None else None
        except Exception:  # noqa: BLE001 - read again by the stage, which reports what fails
            return None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def read_ahead(paths: list):
    """Inside: this process's ``fetched`` reads ahead through ``paths`` (a bucket metadata pool's
    parquets, annotated one after the other in this process)."""
    ahead = ReadAhead(paths)
    _AHEAD["run"] = ahead
    try:
        yield
    finally:
        _AHEAD.pop("run", None)
        ahead.close()


def chunk_ranges(meta: pq.FileMetaData, columns) -> list[tuple[int, int]]:
    """(start, end) of every row group's chunk of the top-level ``columns`` (those the file has)."""
    want = set(columns)
    out = []
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for c in range(rg.num_columns):
            col = rg.column(c)
            if col.path_in_schema.split(".", 1)[0] not in want:
                continue
            start = col.data_page_offset
            if col.has_dictionary_page and col.dictionary_page_offset:
                start = min(start, col.dictionary_page_offset)
            out.append((start, start + col.total_compressed_size))
    return out


_READ: ContextVar[dict | None] = ContextVar("curate_parquet_reads", default=None)


@contextmanager
def read_once():
    """Inside: a parquet's columns read by one stage are not read again by the next (the language
    stage's captions are the ingest stage's); one shard's tables are held until the end."""
    token = _READ.set({})
    try:
        yield
    finally:
        _READ.reset(token)


def read_table(path, columns=None) -> pa.Table:
    held = _READ.get()
    if held is not None and columns is not None:
        for cols, t in held.get(str(path), []):
            if set(columns) <= set(cols):
                return t.select(list(columns))
    with _source(path) as src:
        t = pq.read_table(src, columns=columns)
    if held is not None and columns is not None:
        held.setdefault(str(path), []).append((list(t.column_names), t))
    return t


def read_schema(path) -> pa.Schema:
    with _source(path) as src:
        return pq.read_schema(src)


def _stem(path) -> str:
    return storage.name(str(path)).removesuffix(".parquet") if storage.is_url(path) else Path(path).stem


def npz_path(parquet):
    """The ``.npz`` beside a metadata parquet (a URL stays a URL string)."""
    if storage.is_url(parquet):
        return str(parquet).removesuffix(".parquet") + ".npz"
    return Path(parquet).with_suffix(".npz")


def npz_identity(npz) -> dict | None:
    """Size and mtime (a URL: size and the store's version) of an npz; None when there is none."""
    if not storage.is_file(npz):
        return None
    if storage.is_url(npz):
        ident = storage.identity(npz)
        return {"size": ident["size"], "version": ident["version"]}
    st = Path(npz).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


# the pool columns each ingest column is made from (uid is always read: it names the rows)
SOURCES = {"url": ("url",), "caption": ("text",), "caption_words": ("text",), "caption_chars": ("text",),
           "sha256": ("sha256",), "original_width": ("original_width",), "original_height": ("original_height",)}


def ingest_table(parquet: str | Path, wanted=None) -> tuple[pa.Table, ShardInfo]:
    """The ingest columns of one metadata parquet (no image: sizes from ``original_width/height``);
    ``wanted``: only those (in INGEST_COLUMNS' order), read from only the pool columns they are made of."""
    path = parquet if storage.is_url(parquet) else Path(parquet)
    have = pool_schema(path)
    wanted = [c for c in INGEST_COLUMNS if wanted is None or c in wanted]
    t = read_table(path, columns=pool_columns(wanted, have))
    return ingest_of(t, have, path, wanted)


def pool_schema(path, have: list[str] | None = None) -> list[str]:
    """The column names of a metadata parquet (``have``, when its schema is read), checked to hold what
    ingest needs."""
    have = read_schema(path).names if have is None else have
    missing = [c for c in NEEDED if c not in have]
    if missing:
        raise ValueError(f"{path} is not DataComp metadata: it has no {', '.join(missing)} column "
                         f"(columns: {', '.join(have[:12])})")
    return have


def pool_columns(wanted, have) -> list[str]:
    """The columns of a metadata parquet (whose columns are ``have``) that ingest's ``wanted`` are made of."""
    need = {"uid"}.union(*(SOURCES.get(c, ()) for c in wanted))
    return [c for c in READ if c in need and c in have]


def ingest_of(t: pa.Table, have, path, wanted=INGEST_COLUMNS, halves=False) -> tuple[pa.Table, ShardInfo]:
    """``ingest_table`` of the pool columns ``t`` read from ``path`` (a parquet whose columns are ``have``;
    ``halves``: its uid column's, as ``_uids`` takes them)."""
    stem = _stem(path)
    sizes = [c for c in ("original_width", "original_height") if c not in have]
    n = t.num_rows
    uids, bad = _uids(t.column("uid"), stem, halves)
    cols = {"uid": uids, "key": uids, "image_ext": pa.nulls(n, pa.string()), "image_bytes": np.zeros(n, np.int64),
            "width": pa.nulls(n, pa.int32()), "height": pa.nulls(n, pa.int32()),
            # a size the basic filter needs and the metadata lacks is said, not guessed
            "ingest_error": _uid_errors(bad, n) if bad else pa.nulls(n, pa.string())}
    if "shard" in wanted:
        cols["shard"] = pa.repeat(pa.scalar(stem), n) if n else pa.array([], pa.string())
    for name in ("url", "sha256"):
        cols[name] = t.column(name) if name in t.column_names else pa.nulls(n)
    for name in ("original_width", "original_height"):
        cols[name] = _size(t.column(name) if name in t.column_names else pa.nulls(n))
    if {"caption", "caption_words", "caption_chars"} & set(wanted):
        # each distinct caption is measured once, then spread to its rows
        uniq, codes = _distinct_arrow(t.column("text"))
        words, chars, cut = caption_counts(uniq)
        cols.update(caption=cut.take(codes), caption_words=words.take(codes), caption_chars=chars.take(codes))
    info = ShardInfo(stem, str(path), samples_found=n)
    if sizes:
        info.problems.append(f"no {' / '.join(sizes)} column: image sizes unknown (the basic filter drops them)")
    return pa.table({c: _typed(cols[c], c) for c in wanted}), info


def lang_table(parquet: str | Path) -> pa.Table:
    """The language columns of one metadata parquet."""
    return lang_columns(read_table(parquet, columns=["text"]).column("text"))


def lang_columns(texts) -> pa.Table:
    """The language columns of captions (an arrow string column or a list), each distinct caption
    identified once."""
    col = texts if isinstance(texts, pa.ChunkedArray) else pa.chunked_array(
        [texts if isinstance(texts, pa.Array) else pa.array(texts, pa.string())])
    uniq, codes = _distinct(col)
    langs = caption_languages(uniq)
    codes = pa.array(codes, pa.int64())
    return pa.table({"caption_lang": _typed(pa.array([x for x, _ in langs], pa.string()).take(codes), "caption_lang"),
                     "caption_lang_score": _typed(pa.array([x for _, x in langs], pa.float32()).take(codes),
                                                  "caption_lang_score")})


def _typed(values, name: str):
    want = schemas.arrow_type(name)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if values.type == want else values.cast(want)
    return pa.array(values, type=want)


def _uids(col: pa.ChunkedArray, stem: str, halves=False) -> tuple[pa.Array, dict[int, object]]:
    """Lower-cased uids, and row -> value of the rows whose uid is not 32 hex characters: those get a
    uid derived from the file and row (they drop as ``metadata``; never in a uid list). ``halves``: the
    column's ``uids.hex_halves`` (None: not all 32 hex characters), when made (False: not made)."""
    if pa.types.is_string(col.type) and col.null_count == 0 and (
            halves is not None if halves is not False
            else pc.all(pc.match_substring_regex(col, "^[0-9a-fA-F]{32}$")).as_py() in (True, None)):
        whole = col.combine_chunks()
        return (whole if halves is not False and not halves[2] else pc.utf8_lower(whole)), {}
    out, bad = [], {}
    for i, u in enumerate(col.to_pylist()):
        v = valid_uid(u)
        if v is None:
            bad[i], v = u, derive_uid(stem, f"row{i}")
        out.append(v)
    return pa.array(out, pa.string()), bad


def _uid_errors(bad: dict[int, object], n: int) -> pa.Array:
    errors = [None] * n
    for i, u in bad.items():
        errors[i] = f"metadata: uid {str(u)[:80]!r} is not 32 hex characters"
    return pa.array(errors, pa.string())


def _size(col) -> pa.Array:
    """original_width/height as int32: NaN, infinite, out-of-range or non-numeric values are unknown."""
    if pa.types.is_int32(col.type) or pa.types.is_null(col.type):
        return col
    if pa.types.is_integer(col.type):  # DataComp's int64: cast whole when every value fits
        lo, hi = pc.min_max(col).values()
        if lo.as_py() is None or (lo.as_py() >= -2**31 and hi.as_py() < 2**31):
            return col.cast(pa.int32())
    try:
        v = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.nulls(len(col), pa.int32())
    ok = np.isfinite(v) & (v >= -2**31) & (v < 2**31)
    return pa.array(np.where(ok, v, 0).astype(np.int32), pa.int32(), mask=~ok)


def caption_counts(captions: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(words, characters, caption cut to MAX_CAPTION_CHARS) of non-null strings, as Python's
    ``len(x.split())``, ``len(x)`` and ``x[:MAX_CAPTION_CHARS]`` give them, without a Python loop:
    Arrow's Unicode whitespace is Python's (tests/test_metadata_fast.py sweeps every code point), and
    a split's empty pieces (between two spaces, or at either end) are not words."""
    pieces = pc.utf8_split_whitespace(captions)
    flat = pc.list_flatten(pieces)
    parents = pc.list_parent_indices(pieces).to_numpy()
    nonempty = pc.greater(pc.binary_length(flat), 0).to_numpy(zero_copy_only=False)
    words = np.bincount(parents[nonempty], minlength=len(captions)).astype(np.int32)
    chars = pc.utf8_length(captions).cast(pa.int32())
    return pa.array(words, pa.int32()), chars, pc.utf8_slice_codeunits(captions, 0, MAX_CAPTION_CHARS)


def _distinct_arrow(col: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(distinct captions as an Arrow string array, each row's index into them); a missing caption is ''."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        enc = pc.dictionary_encode(pc.fill_null(col, "").combine_chunks())
        return enc.dictionary.cast(pa.string()), enc.indices
    uniq, codes = _distinct(col)
    return pa.array(uniq, pa.string()), pa.array(codes, pa.int64())


def _distinct(col: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """(distinct captions, each row's index into them); a missing caption is ''."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        enc = pc.dictionary_encode(pc.fill_null(col, "").combine_chunks())
        return enc.dictionary.to_pylist(), enc.indices.to_numpy()
    seen: dict[str, int] = {}
    rows = [seen.setdefault(x if isinstance(x, str) else "", len(seen)) for x in col.to_pylist()]
    return list(seen), np.array(rows, np.int64)


def score_column(precomputed: str) -> str:
    """DataComp's column of a precomputed scorer's scores (``l14`` -> ``clip_l14_similarity_score``)."""
    return f"clip_{precomputed}_similarity_score"


def check_score_column(parquet, have, precomputed: str) -> None:
    """A clear error when a parquet (whose columns are ``have``) lacks a precomputed scorer's column."""
    if score_column(precomputed) not in have:
        raise ValueError(f"{parquet} has no '{score_column(precomputed)}' column for the precomputed "
                         f"'{precomputed}' scorer")


def precomputed_score(parquet: str | Path, spec: ClipModel) -> np.ndarray:
    """The precomputed score column of a metadata parquet, with the column's own dtype."""
    col = score_column(spec.precomputed)
    with _source(parquet) as src:
        f = pq.ParquetFile(src)
        check_score_column(parquet, f.schema_arrow.names, spec.precomputed)
        return f.read(columns=[col]).column(col).to_numpy(zero_copy_only=False)


def precomputed(parquet: str | Path, spec: ClipModel, n: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(score with the column's own dtype, image and text embeddings or None) of a metadata parquet."""
    score = precomputed_score(parquet, spec)
    npz = npz_path(parquet)
    if not storage.is_file(npz):
        return score, None, None
    with storage.open_read(npz, 8 << 20) as f, np.load(f) as z:  # a URL's: only its two members are fetched
        if not {f"{spec.precomputed}_img.npy", f"{spec.precomputed}_txt.npy"} <= set(z.zip.namelist()):
            return score, None, None  # an npz without this scorer's embeddings: the scores alone
        img, txt = z[f"{spec.precomputed}_img"], z[f"{spec.precomputed}_txt"]
    if len(img) != n:
        raise ValueError(f"{npz} holds {len(img)} embeddings for {n} rows of {storage.name(str(parquet))}")
    return score, img.astype(np.float16, copy=False), txt.astype(np.float16, copy=False)


def npz_member(npz: str | Path, name: str) -> tuple[tuple, bool, np.dtype, int] | None:
    """(shape, fortran order, dtype, byte offset of the data) of ``name`` inside an ``.npz``, when it
    is stored uncompressed (``np.savez``) and so can be memory-mapped; None otherwise."""
    at = _member_start(npz, name)
    return None if at is None else _header(npz, at)


def _member_start(npz: str | Path, name: str) -> int | None:
    """Byte offset where ``name``'s ``.npy`` starts inside an uncompressed npz member; None otherwise."""
    import zipfile

    with zipfile.ZipFile(npz) as z:
        try:
            info = z.getinfo(f"{name}.npy")
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(npz, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if local[:4] != b"PK\x03\x04":
        return None
    name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def npz_embeddings(npz: Path, tag: str, n: int) -> dict | None:
    """Where a view reads ``<tag>_img`` / ``<tag>_txt`` of a DataComp npz in place (both float16,
    uncompressed, ``n`` rows), or None when they must be copied out instead (always for a URL: a
    view maps local files)."""
    if storage.is_url(npz):
        return None
    out = {"npz": str(npz.resolve()), "size": npz.stat().st_size, "mtime_ns": npz.stat().st_mtime_ns}
    for part in ("img", "txt"):
        head = npz_member(npz, f"{tag}_{part}")
        if head is None or head[2] != np.float16 or len(head[0]) != 2 or head[1]:
            return None
        if head[0][0] != n:
            raise ValueError(f"{npz} holds {head[0][0]} embeddings for {n} rows of {npz.stem}.parquet")
        out[part] = f"{tag}_{part}"
    return out


def embedding_view(parts: list):
    """A row-aligned view (pipeline/embeddings.py) over per-shard parts: ``.npy`` paths, or pointers
    into npz files (``npz_embeddings``'s dict plus ``member``), each mapped only while read."""
    located = []
    for p in parts:
        if isinstance(p, dict):
            npz = Path(p["npz"])
            st = npz.stat() if npz.is_file() else None
            if st is None or (st.st_size, st.st_mtime_ns) != (p["size"], p["mtime_ns"]):
                raise FileNotFoundError(f"{npz} is missing or changed since it was annotated: rerun the annotate step")
            located.append((npz, _member_start(npz, p["member"])))
        else:
            located.append(p)
    return Shards(located)


def sidecars(shard: str | Path) -> tuple[Path | str, Path | str]:
    """A tar's DataComp sidecar files: ``<shard>.parquet`` (scores) and ``<shard>.npz`` (embeddings)."""
    base = shard_base(shard)
    if storage.is_url(base):
        return base + ".parquet", base + ".npz"
    return Path(base + ".parquet"), Path(base + ".npz")


def sidecar_identity(shard: str | Path) -> dict:
    if storage.is_url(shard):
        return {p: (i["size"], i["version"]) for p in sidecars(shard) if storage.is_file(p) for i in [storage.identity(p)]}
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sidecars(shard) if p.is_file()}


def sidecar_scores(shard: str | Path, spec: ClipModel, uids: list[str]):
    """(every listed row's score, each sample's score, image and text embeddings or None) of a
    precomputed scorer for a tar's samples, matched by uid (NaN / zeros where the sidecar lacks one)."""
    pq_path, npz_path = sidecars(shard)
    col = score_column(spec.precomputed)
    if not storage.is_file(pq_path):
        raise FileNotFoundError(f"{shard}: precomputed '{spec.precomputed}' scores need {pq_path}")
    side = read_table(pq_path).to_pandas()
    if col not in side or "uid" not in side:
        raise ValueError(f"{pq_path} has no 'uid' and '{col}' columns (DataComp metadata)")
    pos = {u: i for i, u in enumerate(side["uid"].astype(str).str.lower())}
    where = np.array([pos.get(u, -1) for u in uids], np.int64)
    have = where >= 0
    every = side[col].to_numpy()  # the column's own dtype: a float64 cutoff is not rounded
    score = np.full(len(uids), np.nan, np.float64)
    score[have] = every[where[have]]
    emb = []
    if storage.is_file(npz_path):
        with storage.open_read(npz_path, 8 << 20) as f, np.load(f) as z:
            for part in ("img", "txt"):
                arr = z[f"{spec.precomputed}_{part}"]
                out = np.zeros((len(uids), arr.shape[1]), np.float16)
                out[have] = arr[where[have]]
                emb.append(out)
    return every, score, *(emb or (None, None))
