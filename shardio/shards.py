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

from shardio import storage


class ShardPath(str):
    """A shard's path that carries its id (``.sid``): ``expand`` makes them, ``shard_id`` reads them.
    It is the plain path string everywhere else (open, json, logs); it pickles with its id."""

    sid: str

    def __new__(cls, path: str, sid: str) -> "ShardPath":
        obj = super().__new__(cls, path)
        obj.sid = sid
        return obj

    def __reduce__(self):
        return ShardPath, (str(self), self.sid)


def expand(patterns: str | Path | Iterable[str | Path], unread: list[dict] | None = None) -> list[ShardPath]:
    """Expand shard patterns: braces (``pool/{00000..00009}.tar``), folders, globs, lists, ``.txt`` files
    listing shards (one path or pattern a line, relative to the file's folder; ``#`` comments).

    Shard ids (``shard_id``) are the shard's path relative to the pool root, without the tar suffix, in
    ``/`` form: the folder given, the fixed folder before a pattern's first ``{`` ``*`` ``?`` ``[``, a
    ``.txt`` list's folder for its relative lines, a single file's own folder. So a flat pool keeps the
    ids ``00000``, ``00001`` and ``part-a/00000.tar`` / ``part-b/00000.tar`` are two shards.

    Folders are read recursively, with two exceptions, both other tools' or our own outputs:
    - a curation output (``current/shards`` inside; in a bucket, a ``current`` pointer beside ``versions/``)
      means its published shards;
    - a folder with no tar of its own and a ``shards/`` subfolder (``curate build-pool``'s pool, beside
      ``trusted/`` and ``eval/``) means that subfolder; its other top-level entries are listed as
      ``outside_shards``.
    Every other file under a folder that is not read goes to ``unread`` (when given) as
    ``{"path", "why"}``: ``not_a_shard``, ``hidden`` (a name starting with a dot), ``dangling_link``,
    ``link_loop``, ``unreadable``, ``not_a_regular_file``. A shard's img2dataset sidecars
    (``<base>.parquet``, ``<base>.npz``, ``<base>_stats.json``) belong to it and are not listed."""
    if isinstance(patterns, (str, Path)):
        patterns = [str(patterns)]
    notes: list[dict] = [] if unread is None else unread
    out: list[ShardPath] = []
    for pat in patterns:
        out.extend(_expand_one(str(pat), None, notes))
    missing = _missing(out)
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) not found, first: {missing[0]}")
    if not out:
        raise FileNotFoundError(f"no shards match {patterns!r}")
    return out


_PATTERN = "{*?["


def _missing(paths: list[str]) -> list[str]:
    """The paths that are no file: local ones each looked at, URLs by one listing per folder."""
    out, listed = [], {}
    for p in paths:
        if not storage.is_url(p) or "?" in p:  # a signed URL is in no listing: asked for itself
            if not storage.is_file(p):
                out.append(p)
            continue
        folder = storage.parent(p)
        if folder not in listed:
            fs, fp = storage.filesystem(folder)
            try:
                listed[folder] = {storage.full(fs, x["name"], p) for x in fs.ls(fp, detail=True) if x["type"] == "file"}
            except (FileNotFoundError, NotADirectoryError):
                listed[folder] = set()
        if p not in listed[folder]:
            out.append(p)
    return out


def _expand_one(pat: str, root: str | None, notes: list[dict]) -> list[ShardPath]:
    """One pattern's shards; ``root``: the folder ids are relative to (a ``.txt`` list's), else the
    pattern's own."""
    if storage.is_url(pat):
        return _expand_url(pat, root, notes)
    out: list[ShardPath] = []
    literal = Path(pat).exists() or Path(pat).is_symlink()  # "pool{1}/" or "x{" may be a real name
    if root is None and not literal and any(c in pat for c in _PATTERN):
        root = pattern_root(pat)
    for p in [pat] if literal else braceexpand(pat):
        path = Path(p)
        if path.is_dir():
            out.extend(_folder(path, root, notes))
        elif path.suffix == ".txt" and path.is_file():  # a shard list: a path or pattern a line
            lines = [x.strip() for x in path.read_text().splitlines()]
            for x in lines:
                if storage.is_url(x):  # a local list may name shards in a store
                    out.extend(_expand_one(x, None, notes))
                elif x and not x.startswith("#"):
                    out.extend(_expand_one(str(path.parent / x), None if Path(x).is_absolute() else str(path.parent), notes))
        elif any(c in p for c in "*?[") and not path.is_file():
            found = sorted(str(x) for x in Path().glob(p)) if not Path(p).is_absolute() \
                else sorted(str(x) for x in Path("/").glob(p.lstrip("/")))
            for x in found:
                if Path(x).is_dir():
                    out.extend(_folder(Path(x), root, notes))
                else:
                    out.append(ShardPath(x, _rel_id(x, root or str(Path(x).parent))))
        else:
            out.append(ShardPath(p, _rel_id(p, root or str(path.parent))))
    return out


def _folder(path: Path, root: str | None, notes: list[dict]) -> list[ShardPath]:
    """The shards under a folder, ids relative to ``root`` (else the folder it means)."""
    folder = pool_folder(path, notes)
    base = str(folder) if folder != path or root is None else root
    return [ShardPath(f, _rel_id(f, base)) for f in _walk(folder, notes, {os.path.realpath(folder)})]


def _expand_url(pat: str, root: str | None, notes: list[dict]) -> list[ShardPath]:
    """``_expand_one`` for a URL: the same rules, through the store's listings (fresh ones: fsspec keeps
    filesystems and their listings for the life of the process, e.g. a served nightly deployment)."""
    fs, whole = storage.filesystem(pat)
    fs.invalidate_cache()
    literal = fs.exists(whole)
    if root is None and not literal and any(c in whole for c in _PATTERN):
        root = pattern_root(pat)
    out: list[ShardPath] = []
    for p in [pat] if literal else braceexpand(pat):
        fs, path = storage.filesystem(p)
        if any(c in path for c in "*?[") and not fs.exists(path):
            for x in sorted(fs.glob(path), key=lambda x: x.split("/")):
                url = storage.full(fs, x, p)
                if fs.isdir(x):
                    out.extend(_folder_url(url, root, notes))
                else:
                    out.append(ShardPath(url, _rel_id(url, root or storage.parent(url))))
        elif p.endswith(".txt") and fs.isfile(path):
            for x in (x.strip() for x in storage.read_text(p).splitlines()):
                if x and not x.startswith("#"):
                    absolute = storage.is_url(x) or x.startswith("/")
                    line = x if storage.is_url(x) else storage.join(storage.parent(p), x)
                    out.extend(_expand_one(line, None if absolute else storage.parent(p), notes))
        elif fs.isdir(path):
            out.extend(_folder_url(p, root, notes))
        else:
            out.append(ShardPath(p, _rel_id(p, root or storage.parent(p))))
    return out


def _folder_url(url: str, root: str | None, notes: list[dict]) -> list[ShardPath]:
    """``_folder`` for a folder in a store: one recursive listing; no links there."""
    fs, path = storage.filesystem(url)
    base = url.rstrip("/")
    names = sorted((x[len(path.rstrip("/")) + 1:] for x in fs.find(path)), key=lambda r: r.split("/"))
    tops = {r.split("/", 1)[0] for r in names}
    if "current" in names and any(r.startswith("versions/") for r in names):  # a curation output in a bucket:
        vid = storage.read_text(base + "/current").strip()  # the version its pointer names (pipeline/objstore.py)
        return _folder_url(f"{base}/versions/{vid}/shards", None, notes)
    if any(r.startswith("current/shards/") for r in names):  # a curation output: its published shards
        return _folder_url(base + "/current/shards", None, notes)
    if any(r.startswith("shards/") for r in names) and not any("/" not in r and SHARD_SUFFIX.search(r) for r in names):
        notes.extend({"path": f"{base}/{t}", "why": "outside_shards: a folder with a shards/ subfolder and no tar of "
                      "its own is read as that subfolder"} for t in sorted(tops) if t != "shards")
        return _folder_url(base + "/shards", None, notes)
    bases = {SHARD_SUFFIX.sub("", r) for r in names if SHARD_SUFFIX.search(r)}
    out, hidden = [], set()
    for r in names:
        parts = r.split("/")
        dot = next((i for i, x in enumerate(parts) if x.startswith(".")), None)
        if dot is not None:
            where = "/".join(parts[:dot + 1])
            if where not in hidden:
                hidden.add(where)
                notes.append({"path": f"{base}/{where}", "why": "hidden: a name starting with a dot"})
            continue
        if SHARD_SUFFIX.search(parts[-1]):
            out.append(ShardPath(f"{base}/{r}", _rel_id(f"{base}/{r}", root or base)))
        elif not _is_sidecar(r, bases):
            notes.append({"path": f"{base}/{r}", "why": "not_a_shard: not a .tar / .tar.gz / .tgz"})
    return out


def pattern_root(pat: str) -> str:
    """The fixed folder in front of a pattern: ``pool/part-{a,b}/*.tar`` -> ``pool``."""
    parts = pat.split("/")
    fixed = []
    for part in parts[:-1]:
        if any(c in part for c in _PATTERN):
            break
        fixed.append(part)
    if not fixed:
        return "."
    return "/".join(fixed) or "/"


def pool_folder(path: Path, notes: list[dict]) -> Path:
    """The folder a pool folder means (see ``expand``): itself, or its published / built ``shards``."""
    if (path / "current" / "shards").is_dir():  # a curation output: its published shards, ``current`` read once
        return path / os.readlink(path / "current") / "shards"
    shards = path / "shards"
    if shards.is_dir():
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            return path
        if not any(SHARD_SUFFIX.search(e.name) for e in entries):
            notes.extend({"path": e.path, "why": "outside_shards: a folder with a shards/ subfolder and no tar of "
                          "its own is read as that subfolder"} for e in entries if e.name != "shards")
            return shards
    return path


def _walk(folder: Path, notes: list[dict], ancestors: set[str]) -> list[str]:
    """Every shard under ``folder`` (depth first, names sorted); what is not read goes to ``notes``."""
    def note(p: str, why: str) -> None:
        notes.append({"path": p, "why": why})

    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        note(str(folder), f"unreadable: {e.strerror or e}")
        return []
    bases = {SHARD_SUFFIX.sub("", e.name) for e in entries if SHARD_SUFFIX.search(e.name)}
    out: list[str] = []
    for e in entries:
        if e.name.startswith("."):
            note(e.path, "hidden: a name starting with a dot")
            continue
        try:
            if e.is_symlink() and not os.path.exists(e.path):
                note(e.path, f"dangling_link: points to {os.readlink(e.path)}")
            elif e.is_dir():
                real = os.path.realpath(e.path)
                if real in ancestors:
                    note(e.path, f"link_loop: leads back to {real}")
                else:
                    out.extend(_walk(Path(e.path), notes, ancestors | {real}))
            elif not e.is_file():
                note(e.path, "not_a_regular_file")
            elif SHARD_SUFFIX.search(e.name):
                if os.access(e.path, os.R_OK):
                    out.append(e.path)
                else:
                    note(e.path, "unreadable: permission denied")
            elif not _is_sidecar(e.name, bases):
                note(e.path, "not_a_shard: not a .tar / .tar.gz / .tgz")
        except OSError as exc:
            note(e.path, f"unreadable: {exc.strerror or exc}")
    return out


def _is_sidecar(name: str, bases: set[str]) -> bool:
    for suffix in (".parquet", ".npz", "_stats.json"):
        if name.endswith(suffix) and name[: -len(suffix)] in bases:
            return True
    return False


def _rel_id(path: str, root: str) -> str:
    """``path`` relative to ``root`` (``/`` separated, tar suffix cut); its name alone when outside it."""
    if storage.is_url(path):
        path = re.split(r"[?#]", path, 1)[0]  # a presigned URL's query is no part of the shard's identity
        head = root.rstrip("/") + "/"
        return _id(path[len(head):] if path.startswith(head) else storage.name(path))
    rel = os.path.relpath(path, root) if root else path
    if rel.startswith("..") or os.path.isabs(rel):
        rel = os.path.basename(path)
    return _id(rel.replace(os.sep, "/"))


SHARD_SUFFIX = re.compile(r"(\.tar|\.tar\.gz|\.tgz)$", re.IGNORECASE)  # 00000.TAR is a shard too


def shard_id(path: str | Path) -> str:
    """The shard's id, the key of its per-shard outputs and derived uids: ``expand``'s id (the path
    relative to the pool root: ``00012``, ``part-a/00012``), else the name without ``.tar`` /
    ``.tar.gz``; a metadata-only shard (a DataComp ``.parquet``) is named by its stem."""
    sid = getattr(path, "sid", None)
    return sid if sid is not None else _id(Path(path).name)


def _id(name: str) -> str:
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
                meta = json.loads(members["json"])
            except (ValueError, UnicodeDecodeError, RecursionError):  # a dropped sample's json may be anything
                meta = None
            if isinstance(meta, dict):
                row.update(meta)
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
