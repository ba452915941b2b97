"""Shard sets in img2dataset's layout: ``00000.tar`` + ``00000.parquet`` + ``00000_stats.json``.

Each sample is ``{key}.jpg|png`` + ``{key}.txt`` + ``{key}.json``; the json carries img2dataset's
fields (url, caption, key, status, width, height, original_width, original_height, sha256, ...)
plus DataComp's 128-bit ``uid`` as 32 hex characters. Files are written under a temporary name
and renamed, so a crash never leaves a half-written shard that looks finished.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from braceexpand import braceexpand



def expand(patterns: str | Path | Iterable[str | Path]) -> list[str]:
    """Expand shard patterns: braces (``pool/{00000..00009}.tar``), folders, globs, lists, ``.txt`` files
    listing shards (one path or pattern a line, relative to the file's folder; ``#`` comments)."""
    if isinstance(patterns, (str, Path)):
        patterns = [str(patterns)]
    out: list[str] = []
    for pat in patterns:
        pat = str(pat)
        for p in [pat] if Path(pat).exists() else braceexpand(pat):  # "pool{1}/" or "x{" may be a real name
            path = Path(p)
            if path.is_dir():
                path = shards_folder(path)
                out.extend(sorted(str(x) for x in path.iterdir() if SHARD_SUFFIX.search(x.name) and x.is_file()))
            elif path.suffix == ".txt" and path.is_file():  # a shard list: a path or pattern a line
                lines = [x.strip() for x in path.read_text().splitlines()]
                out.extend(expand([str(path.parent / x) for x in lines if x and not x.startswith("#")]))
            elif any(c in p for c in "*?[") and not path.is_file():
                out.extend(sorted(str(x) for x in Path().glob(p)) if not Path(p).is_absolute()
                           else sorted(str(x) for x in Path("/").glob(p.lstrip("/"))))
            else:
                out.append(p)
    missing = [p for p in out if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) not found, first: {missing[0]}")
    if not out:
        raise FileNotFoundError(f"no shards match {patterns!r}")
    return out


def shards_folder(path: Path) -> Path:
    """The folder of tars a folder stands for: a curation output's published ``current/shards``, or
    the ``shards/`` beside other things that every command writing shards makes (``curate run``,
    ``reshard``, ``build-pool``, ``build-interleaved``, ``interleave``), when the folder holds no
    tars itself; otherwise the folder."""
    if (path / "current" / "shards").is_dir():  # ``current`` read once: one version's shards
        return path / os.readlink(path / "current") / "shards"
    if (path / "shards").is_dir() and not any(SHARD_SUFFIX.search(x.name) for x in path.iterdir()):
        return path / "shards"
    return path


SHARD_SUFFIX = re.compile(r"(\.tar|\.tar\.gz|\.tgz)$", re.IGNORECASE)  # 00000.TAR is a shard too


def shard_id(path: str | Path) -> str:
    """The shard's name without ``.tar`` / ``.tar.gz`` (``00012``), the id of its per-shard outputs; a
    metadata-only shard (a DataComp ``.parquet``) is named by its stem."""
    name = Path(path).name
    if not name.isascii():  # non-UTF-8 bytes in the name as \xe9 (as tar member names are): Arrow stores text
        try:
            name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            name = clean_text(name)
    return name[: -len(".parquet")] if name.endswith(".parquet") else SHARD_SUFFIX.sub("", name)


def shard_base(path: str | Path) -> str:
    """The path without its tar suffix: sidecars are ``<base>.parquet``, ``<base>.npz``."""
    return SHARD_SUFFIX.sub("", str(path))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_table(path: str | Path, table: pa.Table, **options) -> None:
    """``options``: pyarrow.parquet.write_table's (compression, use_dictionary, ...)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp, **options)
    os.replace(tmp, path)


def atomic_save_npy(path: str | Path, arr: np.ndarray) -> None:
    """``np.save`` written aside, then renamed (its folder made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def atomic_save_npz(path: str | Path, **arrays) -> None:
    """``np.savez`` written aside, then renamed (its folder made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def clean_text(s: str) -> str:
    """``s`` with lone surrogates (json's ``"\\ud800"``, which Arrow cannot store) written as ``\\ud800``."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


class ShardWriter:
    """Write samples into numbered shards of ``samples_per_shard`` in img2dataset's layout."""

    def __init__(self, out_dir: str | Path, samples_per_shard: int = 10_000, start: int = 0):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.per_shard = samples_per_shard
        self.index = start
        self.rows: list[dict[str, Any]] = []
        self.tar: tarfile.TarFile | None = None
        self.t0 = time.time()
        self.paths: list[str] = []
        self.keys: set[str] = set()  # every key written, across shards

    def write(self, key: str, image: bytes | None, ext: str, caption: str, meta: dict[str, Any],
              extra: dict[str, bytes] | None = None) -> None:
        """Add one sample. ``meta`` fills the json; ``extra`` adds more members (``{key}.ext``)."""
        members = {"txt": caption.encode("utf-8")}
        if image is not None:
            members[ext] = image
        row = {"key": key, "caption": caption, "status": "success", "error_message": None, **meta}
        members["json"] = json.dumps(row, ensure_ascii=False).encode("utf-8")
        members.update(extra or {})
        self._add(key, members, row)

    def free_key(self, key: str, sid: str) -> str:
        """``key``, or when already written ``<sid>/key`` (then ``<sid>.2/key``, ...: an earlier source
        shard may hold the key ``<sid>/key`` itself)."""
        name, n = key, 0
        while name in self.keys:
            n += 1
            name = f"{sid}/{key}" if n == 1 else f"{sid}.{n}/{key}"
        return name

    def write_raw(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample's members verbatim (export copies samples unchanged)."""
        row: dict[str, Any] = {"key": key}
        if "json" in members:
            try:
                row.update(json.loads(members["json"]))
            except (ValueError, UnicodeDecodeError):
                pass
        self._add(key, members, row)

    def _add(self, key: str, members: dict[str, bytes], row: dict[str, Any]) -> None:
        if self.tar is None:
            self._open()
        self.keys.add(key)
        for suffix, data in members.items():
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size = len(data)
            info.mtime = 0  # deterministic bytes
            self.tar.addfile(info, io.BytesIO(data))
        self.rows.append(row)
        if len(self.rows) >= self.per_shard:
            self.close_shard()

    def _open(self) -> None:
        name = f"{self.index:05d}"
        self._tmp = self.out / f".{name}.tar.tmp"
        # pax: a ustar header per member, plus a pax record only for names ustar cannot hold (> 100
        # characters without a folder to split at, non-ASCII), as webdataset's writer does
        self.tar = tarfile.open(self._tmp, "w", format=tarfile.PAX_FORMAT)
        self.t0 = time.time()

    def close_shard(self) -> None:
        if self.tar is None:
            return
        self.tar.close()
        name = f"{self.index:05d}"
        os.replace(self._tmp, self.out / f"{name}.tar")
        try:
            atomic_write_table(self.out / f"{name}.parquet", pa.Table.from_pylist(self.rows))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, UnicodeEncodeError):
            # mixed json types, ints beyond int64, lone surrogates, {} (parquet has no empty struct): as text
            table = pa.Table.from_pylist([{clean_text(k): None if v is None else clean_text(str(v)) for k, v in r.items()}
                                          for r in self.rows])
            atomic_write_table(self.out / f"{name}.parquet", table)
        stats = {"count": len(self.rows), "successes": len(self.rows), "failed_to_download": 0,
                 "failed_to_resize": 0, "duration": round(time.time() - self.t0, 3),
                 "status_dict": {"success": len(self.rows)}}
        atomic_write_bytes(self.out / f"{name}_stats.json", json.dumps(stats, indent=2).encode())
        self.paths.append(str(self.out / f"{name}.tar"))
        self.tar, self.rows = None, []
        self.index += 1

    def close(self) -> list[str]:
        self.close_shard()
        return self.paths

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        elif self.tar is not None:
            self.tar.close()
            self._tmp.unlink(missing_ok=True)


def iter_tar_samples(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield ``{"__key__": key, ext: bytes, ...}`` per sample (webdataset's sample shape), through the
    reader that keeps every complete sample (shardio/tar.py); repeated keys after the first are left out."""
    from shardio.tar import iter_samples

    for s in iter_samples(path):
        if not s.duplicate:
            yield {"__key__": s.key, "__url__": str(path), **s.members}
