"""The per-shard parquet img2dataset / DataComp write beside a tar (``00000.tar`` -> ``00000.parquet``).

One row per URL the downloader tried, with its ``key`` and ``status`` ("success",
"failed_to_download", "failed_to_resize", ...). Only successful rows have a sample in the tar.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from shardio import storage

_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclass
class Sidecar:
    rows: dict[str, dict]              # key -> row, for rows that were downloaded (status == "success", or no status column)
    not_downloaded: dict[str, int]     # status -> count, for rows whose status is not "success" (img2dataset writes e.g. "failed_to_download", "failed_to_resize")
    error: str | None = None           # the parquet exists but cannot be read (truncated, not parquet): says what and where
    path: str | None = None            # the parquet's path if one exists


def sidecar_path(tar_path: str | Path) -> Path | str:
    """``a/00000.tar`` / ``a/00000.tar.gz`` / ``a/00000.tgz`` -> ``a/00000.parquet`` (a URL stays a URL string)."""
    if storage.is_url(tar_path):
        name = storage.name(tar_path)
        for suffix in _TAR_SUFFIXES:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                return storage.join(storage.parent(tar_path), name[: -len(suffix)] + ".parquet")
        return tar_path + ".parquet"
    p = Path(tar_path)
    name = p.name
    for suffix in _TAR_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return p.with_name(name[: -len(suffix)] + ".parquet")
    return p.with_name(name + ".parquet")


def read_sidecar(tar_path: str | Path) -> Sidecar:
    """Read the shard's parquet; never raises for a missing or damaged one.

    Rows without a key are ignored; a key listed twice keeps its first downloaded row.
    A null status is counted in ``not_downloaded`` as ``"null"``.
    """
    if storage.is_url(str(tar_path)) and "?" in str(tar_path):
        return Sidecar(rows={}, not_downloaded={})  # a signed URL: its sidecar would need a signature of its own
    path = sidecar_path(tar_path)
    if not storage.is_file(path):
        return Sidecar(rows={}, not_downloaded={})
    out = Sidecar(rows={}, not_downloaded={}, path=str(path))
    try:
        if storage.is_url(path):
            with storage.open_read(path, cache="none") as f:
                table = pq.read_table(f)
        else:
            table = pq.read_table(path)
    except Exception as e:  # ArrowInvalid (truncated, not parquet), OSError, ...
        out.error = f"unreadable_parquet: {path}: {type(e).__name__}: {e}"
        return out
    if "key" not in table.column_names:
        out.error = f"no_key_column: {path} has columns {table.column_names}"
        return out
    has_status = "status" in table.column_names
    rows = out.rows
    for row in table.to_pylist():
        if has_status:
            status = row.get("status")
            if status != "success":
                label = "null" if status is None else str(status)
                out.not_downloaded[label] = out.not_downloaded.get(label, 0) + 1
                continue
        key = row.get("key")
        if key is None:
            continue
        key = str(key)
        if key not in rows:
            rows[key] = row
    return out


# img2dataset's input columns (url, caption) first, then what says which row it was and why it failed
RETRY_COLUMNS = ("url", "caption", "uid", "status", "error_message", "key")


def not_downloaded_rows(tar_path: str | Path) -> list[dict]:
    """The shard parquet's rows whose status is not "success", with the columns img2dataset reads back
    (``url``, ``caption``; DataComp's ``text`` stands in for a missing or null ``caption``) and ``uid``,
    ``status``, ``error_message``, ``key`` where present (None where not). Empty when the parquet is
    missing, unreadable or has no status column (``read_sidecar`` reports those)."""
    path = sidecar_path(tar_path)
    try:
        if storage.is_url(str(path)):
            with storage.open_read(path, cache="none") as f:
                return _failed(pq.ParquetFile(f))
        return _failed(pq.ParquetFile(path))
    except Exception:  # noqa: BLE001 - missing or damaged: read_sidecar has said so
        return []


def _failed(pf: pq.ParquetFile) -> list[dict]:
    names = pf.schema_arrow.names
    if "status" not in names:
        return []
    wanted = [c for c in (*RETRY_COLUMNS, "text") if c in names]
    rows = pf.read(columns=wanted).to_pylist()  # only the columns a retry needs
    out = []
    for r in rows:
        if r.get("status") == "success":
            continue
        caption = r.get("caption") if r.get("caption") is not None else r.get("text")
        out.append({c: (None if r.get(c) is None else str(r[c])) for c in RETRY_COLUMNS} | {
            "caption": None if caption is None else str(caption),
            "status": "null" if r.get("status") is None else str(r["status"])})
    return out
