"""Pools in object storage: fsspec URLs (``s3://``, ``gs://``, ``az://``, ``https://``) wherever a pool is read.

``s3://`` goes through s3fs (a dependency), ``gs://`` / ``az://`` through gcsfs / adlfs (the ``cloud``
extra), ``http(s)://`` through fsspec's HTTP filesystem (read only). Local paths never come here.

Credentials and endpoints come the ecosystem's way, in this order of precedence:
- ``storage_options`` in the curation config, per URL scheme (``{s3: {endpoint_url: ..., profile: ...}}``),
  handed to ``configure`` by the run and to its workers with each job;
- fsspec's own config (``~/.config/fsspec/*.json``, ``FSSPEC_S3_ENDPOINT_URL`` and the like);
- the environment of the SDK underneath (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``,
  ``GOOGLE_APPLICATION_CREDENTIALS``, ...).
Options are never written to a manifest or a log: ``Options`` shows only which schemes it holds.
"""
from __future__ import annotations

import io
import logging

import re
from pathlib import Path
from typing import Any, BinaryIO

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*(?:::[A-Za-z][A-Za-z0-9+.-]*)*://")  # fsspec chains: filecache::s3://
READ_ONLY = ("http", "https")


class Options(dict):
    """``scheme -> fsspec filesystem options``; its repr never shows the values (credentials)."""

    def __repr__(self) -> str:
        return f"<storage options for {', '.join(sorted(self)) or 'no scheme'}>"

    __str__ = __repr__


_OPTIONS = Options()


def configure(options: dict[str, dict[str, Any]] | None) -> None:
    """Use ``options`` (``scheme -> options``) for every URL this process opens from now on."""
    global _OPTIONS
    _OPTIONS = Options({str(k).lower(): dict(v or {}) for k, v in (options or {}).items()})


_USERINFO = re.compile(r"(?<=://)[^/@\s\"']+@")
_SIGNED = re.compile(r"(?i)([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|"
                     r"x-goog-credential|awsaccesskeyid|signature|sig|se|sv|token|access_token|key)=)[^&#\s\"']*")


class Redact(logging.Filter):
    """A log handler's filter that redacts every record (``redact``) before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True


def redact(text: str) -> str:
    """``text`` with what URLs may carry as secrets replaced by ``***``: ``user:password@`` and signed
    query values (presigned S3 / GCS URLs, Azure SAS tokens)."""
    return _SIGNED.sub(r"\1***", _USERINFO.sub("***@", text))


def current() -> Options:
    return _OPTIONS


def is_url(path: Any) -> bool:
    return isinstance(path, str) and bool(_URL.match(path))


def scheme(url: str) -> str:
    """The store's scheme (``s3``), also behind fsspec's cache layers (``filecache::s3://``)."""
    return url.split("://", 1)[0].split("::")[-1].lower()


def filesystem(url: str):
    """``(fsspec filesystem, path inside it)`` for ``url``, with this process's options for its scheme
    (and, for a chained URL such as ``filecache::s3://``, for each layer: ``{filecache: {cache_storage: ...}}``)."""
    from fsspec.core import url_to_fs

    layers = url.split("://", 1)[0].lower().split("::")
    if len(layers) > 1:
        kwargs = {layer: dict(_OPTIONS[layer]) for layer in layers if layer in _OPTIONS}
    else:
        kwargs = _OPTIONS.get(layers[0], {})
    try:
        return url_to_fs(url, **kwargs)
    except ImportError as e:
        raise ImportError(f"{scheme(url)}:// needs an fsspec backend that is not installed ({e}); "
                          "gs:// and az:// come with pip install 'curate[cloud]'") from None


def full(fs, path: str, like: str | None = None) -> str:
    """A path from ``fs`` (listings drop the scheme) as a URL again, with the cache layers of ``like``."""
    head = like.split("://", 1)[0] if like else ""
    if "::" not in head:
        return fs.unstrip_protocol(path)
    if "://" in path:  # stores whose paths are URLs (http)
        return head.rsplit("::", 1)[0] + "::" + path
    return f"{head}://{path}"


def parent(path: str) -> str:
    """The folder of a URL or local path, as the same kind of string."""
    if is_url(path):
        head, _, _ = path.rstrip("/").rpartition("/")
        return head
    return str(Path(path).parent)


def join(folder: str, name: str) -> str:
    if is_url(folder):
        return folder.rstrip("/") + "/" + name.lstrip("/")
    return str(Path(folder) / name)


def name(path: str) -> str:
    return path.rstrip("/").rpartition("/")[2] if is_url(path) else Path(path).name


def is_file(path: str | Path) -> bool:
    if not is_url(path):
        return Path(path).is_file()
    fs, p = filesystem(path)
    try:
        return fs.isfile(p)
    except OSError:
        return False


def is_dir(path: str | Path) -> bool:
    if not is_url(path):
        return Path(path).is_dir()
    fs, p = filesystem(path)
    try:
        return fs.isdir(p)
    except OSError:
        return False


def size(path: str | Path) -> int:
    if not is_url(path):
        return Path(path).stat().st_size
    fs, p = filesystem(path)
    return int(fs.size(p))


def identity(path: str | Path) -> dict:
    """What says a file changed: local path, size and mtime (as the per-shard cache always keyed on);
    for a URL its size and the store's version of it (ETag, else its modification time)."""
    if not is_url(path):
        st = Path(path).stat()
        return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    fs, p = filesystem(path)
    info = fs.info(p)
    version = info.get("ETag") or info.get("etag") or info.get("md5") or info.get("LastModified") \
        or info.get("last_modified") or info.get("mtime")
    return {"path": str(path), "size": int(info.get("size") or 0), "version": str(version)}


class Ranges(io.RawIOBase):
    """A URL's object as a read-only file whose fetched parts stay in memory: a read inside them costs
    no request; any other read fetches just its range. ``fetch`` brings many ranges at once (fsspec's
    ``cat_ranges``: concurrent requests), ranges less than ``gap`` bytes apart merged into one. Made
    for readers that know what they will read (a parquet's footer, then its column chunks)."""

    def __init__(self, url: str, gap: int = 64 << 10):
        self.url, self.gap = url, gap
        self.fs, self.path = filesystem(url)
        self.size = int(self.fs.size(self.path))  # a listed object's size: from the listing, no request
        self.parts: list[tuple[int, bytes]] = []
        self.pos = 0
        self.requests = 0  # ranges fetched (each one GET)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: self.size}[whence] + offset
        return self.pos

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        data = self.get(self.pos, end)
        self.pos += len(data)
        return data

    def get(self, start: int, end: int) -> bytes:
        """Bytes ``start:end``, from memory when a fetched part holds them."""
        end = min(end, self.size)
        if start >= end:
            return b""
        for attempt in (0, 1):
            for at, data in self.parts:
                if at <= start and end <= at + len(data):
                    return data[start - at:end - at]
            if not attempt:
                self.fetch([(start, end)])
        raise OSError(f"{redact(self.url)}: bytes {start}..{end} could not be read (the object changed while read?)")

    def fetch(self, ranges: list[tuple[int, int]]) -> None:
        """Bring ``ranges`` ((start, end) pairs) into memory, those already held left out."""
        todo = sorted((max(0, s), min(self.size, e)) for s, e in ranges
                      if s < e and not any(a <= s and e <= a + len(d) for a, d in self.parts))
        merged: list[list[int]] = []
        for s, e in todo:
            if merged and s - merged[-1][1] <= self.gap:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        if not merged:
            return
        got = self.fs.cat_ranges([self.path] * len(merged), [s for s, _ in merged], [e for _, e in merged],
                                 on_error="raise")
        self.requests += len(merged)
        self.parts.extend((s, bytes(d)) for (s, _), d in zip(merged, got))


def open_read(path: str | Path, block_size: int | None = None, cache: str = "readahead") -> BinaryIO:
    """A binary file to read. A URL's is read by range requests (``cache``: fsspec's cache type, ``none``
    for one request per read, as the parquet reader wants)."""
    if not is_url(path):
        return open(path, "rb")
    fs, p = filesystem(path)
    kw = {"cache_type": cache}
    if block_size is not None:
        kw["block_size"] = block_size
    return fs.open(p, "rb", **kw)


def read_bytes(path: str | Path) -> bytes:
    if not is_url(path):
        return Path(path).read_bytes()
    fs, p = filesystem(path)
    return fs.cat_file(p)


def read_text(path: str | Path) -> str:
    return read_bytes(path).decode("utf-8")
