"""Export: filtered webdataset shards, DataComp's sorted ``u8,u8`` uid array, metadata, manifest.

Everything is written into a staging folder; pipeline/publish.py makes it visible in one step.
"""
from __future__ import annotations

import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from pipeline.faults import point
from pipeline.ingest import CAPTION_EXTS, MAX_CAPTION_CHARS
from pipeline.uids import UidOrder, uid_order
from shardio.shards import ShardWriter, shard_id
from shardio.sidecar import RETRY_COLUMNS, not_downloaded_rows
from shardio.tar import iter_samples


def uid_array(uids, keep: np.ndarray | None = None, order: UidOrder | None = None) -> np.ndarray:
    """DataComp's subset format: sorted structured array of (upper, lower) 64-bit halves (of the rows
    ``keep`` marks, when given). ``order``: the uids' ``uid_order``, when the run has it already."""
    order = order if order is not None else uid_order(uids)
    if order is None:
        picked = uids if keep is None else [u for u, k in zip(uids, keep) if k]
        arr = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in picked], np.dtype("u8,u8"))
        arr.sort()
        return arr
    return order.pairs(keep)


def write_shards(df: pd.DataFrame, shards: list[str], out_dir: Path, samples_per_shard: int,
                 captions: dict[tuple[str, str], str] | None = None) -> list[str]:
    """Copy kept samples' members verbatim into new shards (a caption longer than the limit, or
    rewritten by a caption transform, replaces the ``.txt``). A key already written from another
    source shard is prefixed with its shard id (then ``<id>.2/``, ...), so no output shard holds one key twice."""
    kept = df.loc[df["keep"], ["shard", "key"]]
    want: dict[str, set[str]] = {}
    for sid, key in zip(kept["shard"], kept["key"]):
        want.setdefault(sid, set()).add(key)
    captions = captions or {}
    writer = ShardWriter(out_dir, samples_per_shard)
    written = 0
    half = len(kept) // 2
    for path in shards:
        sid = shard_id(path)
        keys = want.get(sid)
        if not keys:
            continue
        for s in iter_samples(path):
            if s.duplicate or s.key not in keys:
                continue
            members = dict(s.members)
            new_caption = captions.get((sid, s.key))
            if new_caption is not None:
                members["txt"] = new_caption.encode("utf-8")
            else:
                cap = next((e for e in CAPTION_EXTS if e in members), None)  # the member ingest read
                if cap is not None and len(members[cap]) > MAX_CAPTION_CHARS:
                    members[cap] = members[cap].decode("utf-8", "replace")[:MAX_CAPTION_CHARS].encode("utf-8")
            writer.write_raw(writer.free_key(s.key, sid), members)
            written += 1
            if written == half:
                point("export:mid")
    paths = writer.close()
    if written != len(kept):
        raise RuntimeError(f"export wrote {written} samples but {len(kept)} were kept: a source shard changed "
                           "since it was annotated; rerun to re-annotate it")
    return [str(Path(out_dir.name) / Path(p).name) for p in paths]


NO_BYTES = ("member_name:",)  # rows for stray tar members: no sample to copy


def write_dropped(df: pd.DataFrame, shards: list[str], out_dir: Path, samples_per_shard: int) -> dict:
    """Copy dropped samples' members verbatim into shards under ``out_dir/<first reason>/`` (the reason
    made a safe folder name), for inspection. Samples that fail to decode or have bad metadata still
    have their bytes and are copied as read (members over the size limit were never read, so are left
    out); rows with no bytes are counted in ``not_written``: every row of a metadata-only shard, and a
    stray tar member's row (``member_name``: it belongs to no sample). Returns the manifest's
    ``dropped_samples`` (folders, written and not_written by reason)."""
    dropped = df.loc[~df["keep"], ["shard", "key", "drop_reason", "ingest_error"]]
    tar_ids = {shard_id(p) for p in shards}
    err = dropped["ingest_error"].fillna("").astype(str)
    stray = err.str.startswith(NO_BYTES) | ~dropped["shard"].isin(tar_ids)
    dup = err.str.startswith("duplicate_key:")
    want: dict[str, dict[str, str]] = {}  # shard -> key -> reason, for each key's first sample
    again: dict[str, dict[str, list[str]]] = {}  # shard -> key -> reasons of its repeats, in shard order
    for sid, key, reason, is_dup in zip(dropped["shard"][~stray], dropped["key"][~stray],
                                        dropped["drop_reason"][~stray], dup[~stray]):
        if is_dup:
            again.setdefault(sid, {}).setdefault(key, []).append(reason)
        else:
            want.setdefault(sid, {})[key] = reason
    folders: dict[str, str] = {}
    writers: dict[str, ShardWriter] = {}
    written: dict[str, int] = {}
    for path in shards:
        sid = shard_id(path)
        first, repeats = want.get(sid, {}), {k: list(v) for k, v in again.get(sid, {}).items()}
        if not first and not repeats:
            continue
        for s in iter_samples(path):
            pending = repeats.get(s.key) if s.duplicate else None
            reason = pending.pop(0) if pending else (None if s.duplicate else first.pop(s.key, None))
            if reason is None:
                continue
            if reason not in writers:
                folders[reason] = _folder(reason, set(folders.values()))
                writers[reason] = ShardWriter(out_dir / folders[reason], samples_per_shard)
            w = writers[reason]
            w.write_raw(w.free_key(s.key, sid), dict(s.members))
            written[reason] = written.get(reason, 0) + 1
    for w in writers.values():
        w.close()
    from pipeline.decide import reason_counts

    total = reason_counts(dropped["drop_reason"]).to_dict()
    not_written = {r: int(n) - written.get(r, 0) for r, n in total.items() if int(n) != written.get(r, 0)}
    return {"folders": {r: f"{out_dir.name}/{f}" for r, f in sorted(folders.items())},
            "written": dict(sorted(written.items())), "not_written": dict(sorted(not_written.items()))}


def _folder(reason: str, taken: set[str]) -> str:
    """A folder name for a drop reason: letters, digits, ``._-`` (others become ``_``), unique."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", reason).strip(".") or "reason"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}.{n}"
    return name


def write_not_downloaded(path: Path, shards: list[str]) -> int:
    """``not_downloaded.parquet``: the rows the shards' img2dataset parquets list with a status other than
    "success", ready to feed back to img2dataset (``--input_format parquet --url_col url --caption_col
    caption``; ``--save_additional_columns '["uid"]'`` keeps the uids). Columns: url, caption, uid,
    status, error_message, key, shard (strings, None where the parquet had none). Returns the row count."""
    rows = [{**r, "shard": shard_id(s)} for s in shards for r in not_downloaded_rows(s)]
    schema = pa.schema([pa.field(c, pa.string()) for c in (*RETRY_COLUMNS, "shard")])
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    os.replace(tmp, path)
    return len(rows)


def metadata_table(df: pd.DataFrame, declared: dict[str, str]) -> pa.Table:
    """The metadata table with every column checked against its contract: schemas/columns.json for the
    core columns, the filter instances' declared outputs, float32 for scorer columns."""
    fields = []
    for name in df.columns:
        if name in declared:
            t = schemas.TYPES[declared[name]]
        else:
            try:
                t = schemas.arrow_type(name)
            except KeyError:
                raise RuntimeError(f"column {name!r} is declared nowhere (schemas/columns.json or a filter's "
                                   "outputs)") from None
        fields.append(pa.field(name, t))
    from pipeline.decide import plain_reasons

    tbl = pa.Table.from_pandas(plain_reasons(df), schema=pa.schema(fields), preserve_index=False)
    # Arrow-backed columns (decide's drop_reasons) are recorded as the object columns they read back as
    arrow = {n for n in df.columns if isinstance(df[n].dtype, pd.ArrowDtype)}
    meta = json.loads(tbl.schema.metadata[b"pandas"]) if arrow and tbl.schema.metadata else None
    if meta:
        for c in meta["columns"]:
            if c["name"] in arrow:
                c["numpy_type"] = "object"
        tbl = tbl.replace_schema_metadata({**tbl.schema.metadata, b"pandas": json.dumps(meta).encode()})
    return tbl


UNIQUE = ("uid", "key", "url", "caption", "sha256")
HEX = ("uid", "key", "sha256")


# what ``export.metadata: decisions`` leaves out of metadata.parquet: the pool's own columns (a sample's
# url, caption, checksum, sizes and caption counts), which join back by uid
POOL_COLUMNS = ("url", "caption", "image_ext", "image_bytes", "sha256", "original_width", "original_height",
                "width", "height", "caption_words", "caption_chars")


def write_metadata(path: Path, df: pd.DataFrame, declared: dict[str, str], rows: int = 1 << 17,
                   lean=None, decisions: bool = False) -> None:
    """metadata.parquet, converted and written ``rows`` at a time (no second copy of the table).
    ``lean``: the ``pipeline.decide.Lean`` of a lean decide, which puts back the columns it left on disk
    (the first slice through pandas, as a full table is written; the others in Arrow). ``decisions``:
    without POOL_COLUMNS (a lean decide's deferred columns are among them: nothing is read back), nor
    ``key`` where it is the uid again (a metadata pool's)."""
    drop = [*POOL_COLUMNS, *(["key"] if lean is not None and lean.key_is_uid else [])] if decisions else []

    def part(lo: int) -> pa.Table:
        s = df.iloc[lo:lo + rows]
        if decisions:
            s = s.drop(columns=[c for c in drop if c in s.columns])
            return metadata_table(lean.plain(s) if lean is not None else s, declared)
        if lean is None:
            return metadata_table(s, declared)
        if lo == 0:  # its schema, pandas metadata included, is the file's
            return metadata_table(lean.restore(s, lo), declared)
        return lean.restore_table(s, lo, lambda chunk: metadata_table(chunk, declared))

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    first = part(0)
    # dictionaries where values repeat; a uid, url or caption column would only fall back to plain, and
    # a score column (random floats) fits a slice's 2^17 values in one 1 MiB dictionary page: larger than
    # plain, and hashing every value took 0.6 of the 2.5 s to write 12.8M rows
    repeat = [leaf(first.schema.field(c)) for c in first.column_names
              if c not in UNIQUE and not pa.types.is_floating(first.schema.field(c).type)]
    # random hex (uid, key, sha256) gains ~25% from snappy at a third of the write's time, scores
    # (random floats) nothing: stored plain
    comp = {leaf(first.schema.field(c)): "none" if c in HEX or pa.types.is_floating(first.schema.field(c).type)
            else "snappy" for c in first.column_names}
    starts = list(range(rows, len(df), rows))
    # the next slice is converted while this one is encoded and written (both mostly outside the GIL)
    with pq.ParquetWriter(tmp, first.schema, use_dictionary=repeat, compression=comp) as w, \
            ThreadPoolExecutor(1) as ahead:
        w.write_table(first)
        nxt = ahead.submit(part, starts[0]) if starts else None
        for i in range(len(starts)):
            t = nxt.result()
            nxt = ahead.submit(part, starts[i + 1]) if i + 1 < len(starts) else None
            w.write_table(t)
    os.replace(tmp, path)


def leaf(field: pa.Field) -> str:
    """The parquet column path a writer option names: a list column's values are ``<name>.list.element``
    (an option keyed by the list's own name is silently not applied)."""
    return f"{field.name}.list.element" if pa.types.is_list(field.type) else field.name


class Background:
    """``fn(*args)`` on a thread (parquet writing releases the GIL); ``join`` waits and re-raises,
    ``result`` also returns what it returned."""

    def __init__(self, fn, *args):
        self.error: BaseException | None = None
        self.value = None
        self.thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self.thread.start()

    def _run(self, fn, args):
        try:
            self.value = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised by join
            self.error = e

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error

    def result(self):
        self.join()
        return self.value


def export(df: pd.DataFrame, shards: list[str], out: str | Path, samples_per_shard: int, manifest: dict,
           declared: dict[str, str] | None = None, captions: dict | None = None, metadata: bool = True,
           order: UidOrder | None = None) -> dict:
    """Write shards, uids.npy and metadata.parquet into ``out`` (a staging folder); return the manifest
    with the outputs added (the caller writes it last, after the report). ``metadata=False``: the
    caller writes metadata.parquet itself (``write_metadata``), e.g. while the report is drawn. ``order``:
    the uids' ``pipeline.uids.uid_order`` from decide."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = write_shards(df, shards, out / "shards", samples_per_shard, captions) if shards else []
    uids = uid_array(df["uid"], df["keep"].to_numpy(bool), order)
    tmp = out / ".uids.tmp.npy"
    np.save(tmp, uids)
    tmp.replace(out / "uids.npy")
    if metadata:
        write_metadata(out / "metadata.parquet", df, declared or {})
    manifest = {**manifest, "output_shards": written, "uids": "uids.npy", "metadata": "metadata.parquet",
                "uid_count": int(len(uids))}
    return manifest
