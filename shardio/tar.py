"""Read webdataset tar shards without losing samples to real-world damage.

``iter_samples(path, report)`` yields one :class:`TarSample` per key and records in ``report``
everything it could not use, instead of raising. It reads in two passes:

1. headers only: for every regular member its data offset and size, grouped by key. Plain
   archives of regular files (what webdataset and img2dataset write) are walked directly; anything
   else - pax / GNU long names, links, folders, damage - by the standard library's ``tarfile``. Damage (a cut, a garbage header, a
   file that is no tar at all) ends this pass and is written to ``report.error`` before the first
   sample is yielded.
2. data: each sample's members are read with positioned reads (``os.pread``), samples in the order
   of their first member, so the usual adjacent layout is read front to back.

Only the byte offsets of the members are held between the passes, never the shard's data.
A shard in object storage (a URL, shardio/storage.py) is streamed: up to ``REMOTE_WHOLE_BYTES`` it
is fetched in one request and read from memory, a larger one by range requests (both passes then
fetch it). Inside a run's ``spooling`` it is also kept in the run's private spool as it is fetched
(a larger one streamed there first and read from disk), and later reads in the run read that copy:
each byte fetched once a run, no user-visible cache. Gzip-compressed shards are decompressed into a ``SpooledTemporaryFile`` (memory up to
``SPOOL_MAX_BYTES``, disk beyond) and read the same way.

Grouping rules (see ``tests/test_tar_reader.py``):

- key = the member path with its basename cut at the basename's FIRST dot; the folder is kept
  (``cats/0001.jpg`` and ``dogs/0001.jpg`` are two samples, ``train.v1/0001.jpg`` has key
  ``train.v1/0001``); extension = everything after that dot, lower-cased (``seg.png``, ``jpg``).
- members sharing a key anywhere in the shard form one sample (they need not be adjacent).
- a member whose extension the key's latest occurrence already has opens a new occurrence of the
  key flagged ``duplicate=True`` (``a.jpg a.txt a.jpg a.txt`` -> ``a``, then duplicate ``a``).
- a leading ``./`` is dropped silently; absolute names lose the leading ``/`` and ``.`` / ``..`` /
  empty components are dropped, with a note in the sample's ``problems``.
- names whose basename starts with a dot (``._0001.jpg`` from macOS, ``.DS_Store``) are skipped as
  ``hidden_file``, as webdataset does.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

from shardio import storage

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")  # lower-case, in preference order

BLOCK = 512
SPOOL_MAX_BYTES = 64 << 20  # decompressed gzip shards larger than this spill to a temporary file
MAX_MEMBER_BYTES = 256 << 20  # a larger member is not read (its sample drops, see TarSample.too_big)
REMOTE_WHOLE_BYTES = 256 << 20  # a stored shard up to this size is fetched in one request, into memory
REMOTE_BLOCK = 8 << 20  # a larger one: range requests of this size
SPOOL_RESERVE = 1 << 30  # the run's spool keeps a shard only while the disk keeps this much (and 2%) free
log = logging.getLogger(__name__)
_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_COMPRESSION = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
                      b"PK\x03\x04": "zip"}
_FILE_TYPES = tarfile.REGULAR_TYPES
_KNOWN_TYPES = set(tarfile.SUPPORTED_TYPES)


@dataclass
class TarSample:
    key: str                     # folder-qualified, sanitised key, e.g. "cats/0001"; never absolute, never has ".." parts
    members: dict[str, bytes]    # lower-cased extension (all after the basename's FIRST dot: "jpg", "json", "seg.png") -> bytes
    problems: list[str] = field(default_factory=list)  # human-readable notes, e.g. "unsafe_name: '/etc/0001.jpg' read as 'etc/0001.jpg'"
    duplicate: bool = False      # a repeat of a key already seen in this shard (the caller drops it as duplicate_key)
    too_big: dict[str, int] = field(default_factory=dict)  # ext -> size of members over MAX_MEMBER_BYTES, left unread


@dataclass
class TarReport:
    path: str
    samples: int = 0             # samples yielded (duplicates included)
    error: str | None = None     # why reading stopped early or failed: "truncated: ...", "not_a_tar: ...", "corrupt: ...", "empty_file: 0 bytes", "unreadable: ..."
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (member name, reason) for members in no sample: "symlink", "hardlink", "directory", "special_file", "no_extension", "hidden_file", "truncated_member", "empty_name"


class _Entry:
    """One sample as found in pass 1: ext -> (data offset, size)."""

    __slots__ = ("key", "members", "problems", "duplicate")

    def __init__(self, key: str, duplicate: bool):
        self.key = key
        self.members: dict[str, tuple[int, int]] = {}
        self.problems: list[str] | None = None
        self.duplicate = duplicate


def iter_samples(path: str | Path, report: TarReport | None = None) -> Iterator[TarSample]:
    """Yield the samples of the tar (or gzip'd tar) at ``path``; never raises for damaged data.

    ``report`` (optional) receives the count of yielded samples, the skipped members and, when
    reading stopped early or failed, ``error``. Damage found while indexing the headers is in
    ``report.error`` before the first sample is yielded.
    """
    if report is None:
        report = TarReport(path=str(path))
    if storage.is_url(path):
        yield from _iter_url(str(path), report)
        return
    try:
        f = open(path, "rb")
    except OSError as e:
        report.error = f"unreadable: {e}"
        return
    with f:
        try:
            head = f.read(2)
            size = os.fstat(f.fileno()).st_size
        except OSError as e:
            report.error = f"unreadable: {e}"
            return
        if size == 0:
            report.error = "empty_file: 0 bytes"
            return
        if head == _GZIP_MAGIC:
            yield from _iter_gzip(f, report)
            return
        f.seek(0)
        yield from _iter_tar(f, size, report, pread=_pread_for(f))


_SPOOL: list[Path | None] = [None]  # this process's run spool (``spooling``)


@contextmanager
def spooling(folder: str | Path | None):
    """Inside: a shard read from a URL is kept in ``folder`` (one file per shard, written as it is
    fetched) and every later read of it in the run is served from there, so each byte of a stored
    pool is fetched once a run. The run owns the folder and removes it (pipeline/run.py); a shard
    that would leave the disk short (``SPOOL_RESERVE``) is not kept, and later reads fetch it again."""
    before = _SPOOL[0]
    _SPOOL[0] = Path(folder) if folder is not None else None
    try:
        yield
    finally:
        _SPOOL[0] = before


def spooled(url: str) -> Path | None:
    """Where the run's spool keeps ``url`` (None: no spool in this process)."""
    folder = _SPOOL[0]
    return None if folder is None else folder / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".shard")


def _room(local: Path, size: int) -> bool:
    try:
        local.parent.mkdir(parents=True, exist_ok=True)
        du = shutil.disk_usage(local.parent)
    except OSError:
        return False
    return du.free - size >= max(SPOOL_RESERVE, du.total // 50)


def _keep(local: Path, write) -> bool:
    """``write(file)`` into ``local``, atomically; False (nothing left behind) when the disk refuses."""
    tmp = local.with_name(f"{local.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, local)
        return True
    except OSError as e:
        log.info("spool: %s not kept (%s); later reads fetch it again", local.name, e)
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _iter_url(url: str, report: TarReport) -> Iterator[TarSample]:
    local = spooled(url)
    if local is not None and local.is_file():  # fetched earlier in this run
        yield from iter_samples(local, report)
        return
    try:
        size = storage.size(url)
        keep = local is not None and _room(local, size)
        if size > REMOTE_WHOLE_BYTES and keep and _keep(local, lambda out: _copy(url, out)):
            f = None  # a large shard: streamed to the spool once, read there
        else:
            data = storage.read_bytes(url) if size <= REMOTE_WHOLE_BYTES else None
            if keep and data is not None:
                _keep(local, lambda out: out.write(data))
            f = io.BytesIO(data) if data is not None else storage.open_read(url, REMOTE_BLOCK)
    except Exception as e:  # noqa: BLE001 - the store's: no such object, access denied, network
        report.error = f"unreadable: {type(e).__name__}: {e}"
        return
    if f is None:
        yield from iter_samples(local, report)
        return
    with f:
        if size == 0:
            report.error = "empty_file: 0 bytes"
            return
        try:
            head = f.read(2)
        except OSError as e:
            report.error = f"unreadable: {e}"
            return
        if head == _GZIP_MAGIC:
            yield from _iter_gzip(f, report)
            return
        if data is not None:
            yield from _iter_tar(f, size, report, pread=lambda offset, n: data[offset:offset + n])
            return

        def read_at(offset: int, n: int) -> bytes:
            f.seek(offset)
            return f.read(n)
        f.seek(0)
        yield from _iter_tar(f, size, report, pread=read_at)


def _copy(url: str, out: BinaryIO) -> None:
    with storage.open_read(url, REMOTE_BLOCK) as f:
        shutil.copyfileobj(f, out, REMOTE_BLOCK)


def _pread_for(f: BinaryIO):
    fd = f.fileno()
    if hasattr(os, "pread"):
        return lambda offset, n: os.pread(fd, n, offset)

    def read_at(offset: int, n: int) -> bytes:  # pragma: no cover - platforms without pread
        f.seek(offset)
        return f.read(n)
    return read_at


def _iter_gzip(f: BinaryIO, report: TarReport) -> Iterator[TarSample]:
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES) as spool:
        f.seek(0)
        n = 0
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                while True:
                    chunk = gz.read1(1 << 20)  # read() would drop the chunk a cut stream ends in
                    if not chunk:
                        break
                    spool.write(chunk)
                    n += len(chunk)
        except EOFError as e:
            report.error = f"truncated: gzip stream ends early after {n} decompressed bytes ({e})"
        except (gzip.BadGzipFile, zlib.error) as e:
            what = "not_a_tar: gzip stream unreadable" if n == 0 else "corrupt: gzip stream damaged"
            report.error = f"{what} after {n} decompressed bytes ({e})"
        except OSError as e:  # the disk, not the data
            report.error = f"unreadable: {e}"
            return
        if n == 0:
            if report.error is None:
                report.error = "empty_file: 0 bytes (after gzip decompression)"
            return

        def read_at(offset: int, k: int) -> bytes:
            spool.seek(offset)
            return spool.read(k)
        spool.seek(0)
        yield from _iter_tar(spool, n, report, pread=read_at)


def _iter_tar(f: BinaryIO, size: int, report: TarReport, pread) -> Iterator[TarSample]:
    try:
        entries, error = _index(f, size, report, pread)
    except OSError as exc:  # the disk failing while pass 1 looked at a stop position
        report.error = f"unreadable: {exc}"
        return
    if error is not None and report.error is None:
        report.error = error
    for e in entries:
        members: dict[str, bytes] = {}
        too_big: dict[str, int] = {}
        for ext, (offset, n) in e.members.items():
            if n > MAX_MEMBER_BYTES:  # a 2 GB "image" would be read whole into every worker's memory
                too_big[ext] = n
                continue
            try:
                data = pread(offset, n)
            except OSError as exc:
                report.error = f"unreadable: {exc} (reading {e.key}.{ext} at byte {offset})"
                return
            if len(data) != n:
                report.error = (f"truncated: the file shrank while reading ({e.key}.{ext} needs bytes "
                                f"{offset}..{offset + n}, got {len(data)} bytes)")
                return
            members[ext] = data
        report.samples += 1
        yield TarSample(e.key, members, e.problems or [], e.duplicate, too_big)


def _index(f: BinaryIO, size: int, report: TarReport, pread) -> tuple[list[_Entry], str | None]:
    """Pass 1: walk the headers; return the samples (member offsets only) and why it stopped early."""
    entries: list[_Entry] = []
    latest: dict[str, _Entry] = {}
    skipped = report.skipped
    plain = _plain_members(pread, size)
    if plain is not None:  # the common case, read without tarfile: same members, same order
        for name, offset, n in plain:
            _group(name, offset, n, entries, latest, skipped)
        return entries, None
    start = 0  # where the current (possibly concatenated) archive begins
    while True:
        f.seek(start)
        try:
            tar = tarfile.open(fileobj=f, mode="r:", encoding="utf-8", errors="surrogateescape")
        except OSError as e:  # tarfile.ReadError is not an OSError: a failing disk or fs is
            return entries, f"unreadable: {e}"
        except Exception:  # ReadError and friends: damage at the archive's first header
            return entries, _why_stopped(start, size, pread, len(entries), first=start == 0)
        pos = start  # header position of the member about to be read
        while True:
            try:
                info = tar.next()
            except OSError as e:
                return entries, f"unreadable: {e}"
            except Exception:
                return entries, _why_stopped(pos, size, pread, len(entries), first=pos == 0)
            if info is None:
                break
            if len(tar.members) > 256:
                tar.members.clear()  # we never look members up by name; don't hold them all
            pos = tar.offset
            name = info.name
            t = info.type
            if (t in _FILE_TYPES and info.sparse is None) or t not in _KNOWN_TYPES:
                # regular file; an unknown type is read as one too (as tarfile and GNU tar do)
                end = info.offset_data + info.size
                if end > size:
                    skipped.append((name, "truncated_member"))
                    return entries, (f"truncated: member {name!r} needs bytes {info.offset_data}..{end} "
                                     f"but the file ends at byte {size}")
            else:
                skipped.append((name, _skip_reason(info)))
                continue
            _group(name, info.offset_data, info.size, entries, latest, skipped)
        # tarfile stopped at ``pos``: a clean end-of-archive marker, or damage
        error = _why_stopped(pos, size, pread, len(entries), first=pos == 0)
        if error is not None:
            return entries, error
        nxt = _after_zeros(pos, size, pread)
        if nxt is None:
            return entries, None
        start = nxt  # more data after the end marker: a concatenated archive (cat a.tar b.tar)


def _group(name: str, offset: int, n: int, entries: list[_Entry], latest: dict[str, _Entry],
           skipped: list) -> None:
    """File member ``name`` (data at ``offset``, ``n`` bytes) joins its key's latest sample."""
    key, ext, note = _split(name)
    if key is None:
        skipped.append((name, ext))
        return
    e = latest.get(key)
    if e is None:
        e = latest[key] = _Entry(key, False)
        entries.append(e)
    elif ext in e.members:
        e = latest[key] = _Entry(key, True)
        entries.append(e)
    e.members[ext] = (offset, n)
    if note is not None:
        if e.problems is None:
            e.problems = []
        e.problems.append(note)


_POSIX, _GNU = b"ustar\x0000", b"ustar  \x00"


def _plain_members(pread, size: int) -> list[tuple[str, int, int]] | None:
    """``(name, data offset, size)`` of every member when the archive is what webdataset writers
    produce - ustar / GNU headers with valid checksums, regular files only, octal sizes, one archive
    ending in a zero block, nothing cut - else None, and tarfile reads it. The names are the ones
    tarfile gives (POSIX prefix joined, UTF-8 with surrogateescape)."""
    out = []
    pos = 0
    while pos + BLOCK <= size:
        block = pread(pos, BLOCK)
        if len(block) != BLOCK:
            return None
        if block[0] == 0:  # end-of-archive: only zeros may follow
            return out if block.count(0) == BLOCK and _after_zeros(pos, size, pread) is None else None
        magic, kind = block[257:265], block[156:157]
        if (magic != _POSIX and magic != _GNU) or kind not in (b"0", b"\0") or block[124] & 0x80:
            return None
        try:
            n = int(block[124:136].rstrip(b" \0") or b"0", 8)
            chk = int(block[148:156].rstrip(b" \0"), 8)
        except ValueError:
            return None
        if chk != sum(block[:148]) + 256 + sum(block[156:]):  # the checksum field counts as spaces
            return None
        name = block[:100].split(b"\0", 1)[0]
        if magic == _POSIX and block[345] != 0:
            name = block[345:500].split(b"\0", 1)[0] + b"/" + name
        name = name.decode("utf-8", "surrogateescape")
        if name.endswith("/"):  # a directory written the V7 way
            return None
        data = pos + BLOCK
        if data + n > size:
            return None
        out.append((name, data, n))
        pos = data + -(-n // BLOCK) * BLOCK
    return None


def _skip_reason(info: tarfile.TarInfo) -> str:
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.isdir():
        return "directory"
    return "special_file"  # device, fifo, sparse file


def _after_zeros(pos: int, size: int, pread) -> int | None:
    """First block-aligned offset at or after ``pos`` whose block is not all zeros, or None at EOF."""
    while pos < size:
        chunk = pread(pos, 1 << 16)
        if not chunk:
            return None
        stripped = chunk.lstrip(b"\0")
        if stripped:
            return pos + (len(chunk) - len(stripped)) // BLOCK * BLOCK
        pos += len(chunk)
    return None


def _why_stopped(pos: int, size: int, pread, n_samples: int, first: bool) -> str | None:
    """Why tarfile found no member header at byte ``pos``; None for a clean end-of-archive block."""
    if pos >= size:
        if first:
            return "empty_file: 0 bytes"
        return (f"truncated: the file ends at byte {size} where the next header or end-of-archive "
                f"marker should start (byte {pos}; {n_samples} samples before it)")
    block = pread(pos, BLOCK)
    if len(block) == BLOCK and not block.strip(b"\0"):
        return None  # end-of-archive marker
    if len(block) < BLOCK:
        if pos == 0 and not _plausible_partial_header(block):
            return f"not_a_tar: {_describe(block)}"
        return (f"truncated: the file ends at byte {size}, inside the header at byte {pos} "
                f"({n_samples} samples before it)")
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as e:
        if pos == 0:
            return f"not_a_tar: {_describe(block)} ({e})"
        return (f"corrupt: invalid tar header at byte {pos} ({e}); the {size - pos} bytes from there "
                f"on are not read ({n_samples} samples before it)")
    # the header block itself is fine: what follows it (pax / GNU long-name data, the header
    # those describe) is cut or damaged
    need = pos + BLOCK + -(-max(info.size, 0) // BLOCK) * BLOCK + BLOCK
    if need > size:
        return (f"truncated: the file ends at byte {size}, inside the extended header of "
                f"{info.name!r} at byte {pos} ({n_samples} samples before it)")
    what = "not_a_tar" if pos == 0 else "corrupt"
    return f"{what}: unreadable extended header of {info.name!r} at byte {pos} ({n_samples} samples before it)"


def _plausible_partial_header(buf: bytes) -> bool:
    """Could ``buf`` (< 512 bytes) be the start of a tar header, i.e. a tar cut inside its first header?"""
    name = buf[:100]
    nul = name.find(b"\0")
    if nul == -1:
        if len(buf) >= 100:
            return False  # a header's name field is NUL-padded (a 100-byte name is rare enough to ignore)
        nul = len(buf)
    if nul == 0 or name[nul:].strip(b"\0") or any(c < 32 or c == 127 for c in name[:nul]):
        return False
    for lo, hi in ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148)):  # numeric fields
        field_ = buf[lo:hi].strip(b" \0")
        if field_ and not all(48 <= c <= 55 for c in field_) and not (buf[lo] & 0x80):
            return False
    return True


def _describe(buf: bytes) -> str:
    for magic, kind in _OTHER_COMPRESSION.items():
        if buf.startswith(magic):
            return f"looks {kind}-compressed, not a tar"
    return f"no tar header at byte 0 (starts with {buf[:16]!r})"


def _split(name: str) -> tuple[str | None, str, str | None]:
    """``name`` -> (key, ext, problem note or None); (None, skip reason, None) when it has no key."""
    orig = name
    note = None
    if name.startswith("./"):
        while name.startswith("./"):
            name = name[2:]
    if name.startswith("/") or "//" in name or "/." in name or name.startswith(".") or name.endswith("/"):
        parts = [p for p in name.split("/") if p not in ("", ".", "..")]
        clean = "/".join(parts)
        if clean != name:
            note = f"unsafe_name: {orig!r} read as {clean!r}"
            name = clean
    if not name:
        return None, "empty_name", None
    if not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes came through as surrogates
            clean = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            note = f"undecodable_name: {orig!r} read as {clean!r}"
            name = clean
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot == -1 or dot == len(name) - 1:
        return None, "no_extension", None
    if dot == slash:
        return None, "hidden_file", None
    return name[:dot], name[dot + 1:].lower(), note
