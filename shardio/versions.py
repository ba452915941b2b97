"""Which curated version a reader uses, and holds that keep a version in use from being deleted.

A curation output (pipeline/publish.py) is ``<out>/versions/vNNNNNN/`` plus ``<out>/current``, a link to
the newest. ``resolve`` turns a data spec into one version, resolving ``current`` once: the output
folder, its ``shards`` link, ``<out>/current/shards``, a version folder or its ``shards/``, or shard
paths/patterns inside one version. The shards it lists lie inside that version folder, so a later
publish never changes what the reader opens. Plain shards (no curated output) have no version.

A reader that runs for long (a training) holds its version: ``<out>/holds/<version>--<holder>.json``,
written whole and refreshed by a heartbeat thread, deleted on release. The publisher keeps held
versions (``live_holds``) and removes stale holds: heartbeat older than ``STALE_AFTER_S``, or a pid
that is gone on the same host (a killed run). Removal of a version is announced first by a
``<version>.removing`` object beside the holds, then the holds are read again; a reader takes its hold
and then checks for that object. Either the publisher sees the hold or the reader sees the removal and
picks again. Holds and markers are whole objects named after what they say (put, get, list, delete),
so an object-store bucket can carry them as a folder does: no locks, no renames needed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

VERSION = re.compile(r"v\d+")
HEARTBEAT_S = 60.0  # a hold is rewritten this often
STALE_AFTER_S = 600.0  # a hold whose heartbeat is older than this is a dead run's


class VersionGone(FileNotFoundError):
    """The version asked for no longer exists (or is being removed)."""


@dataclass(frozen=True)
class DataVersion:
    """What a reader reads: ``shards`` inside ``root`` (a version folder), or plain shards (no version)."""

    shards: list[str]
    out: str | None = None
    version: str | None = None
    manifest_sha256: str | None = None

    @property
    def root(self) -> Path | None:
        return Path(self.out) / "versions" / self.version if self.version else None

    @property
    def record(self) -> dict | None:
        """``{out, version, manifest_sha256}`` as runs record it; None for plain shards."""
        if self.version is None:
            return None
        return {"out": self.out, "version": self.version, "manifest_sha256": self.manifest_sha256}


# ---- the store: a folder now; an object-store prefix offers the same four operations ----

class FolderStore:
    """Whole objects by name: ``put`` (replace), ``get`` (None if absent), ``names``, ``delete``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def put(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp{os.getpid()}.{threading.get_ident()}"
        tmp.write_bytes(data)
        os.replace(tmp, self.root / name)  # a folder's way to a whole-object put

    def get(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))

    def age(self, name: str) -> float | None:
        try:
            return time.time() - (self.root / name).stat().st_mtime
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)


class ObjectStore:
    """FolderStore's operations on an object-store prefix (fsspec): a put is one whole-object PUT."""

    def __init__(self, url: str) -> None:
        from shardio import storage

        self.fs, root = storage.filesystem(url)
        self.root = root.rstrip("/")

    def put(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(f"{self.root}/{name}", data)

    def get(self, name: str) -> bytes | None:
        try:
            return self.fs.cat_file(f"{self.root}/{name}")
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        self.fs.invalidate_cache(self.root)
        try:
            found = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        from shardio import storage

        return sorted(n for n in map(storage.name, found) if not n.startswith("."))

    def age(self, name: str) -> float | None:
        try:
            info = self.fs.info(f"{self.root}/{name}")
        except FileNotFoundError:
            return None
        t = info.get("LastModified") or info.get("mtime")
        return None if t is None else time.time() - (t.timestamp() if hasattr(t, "timestamp") else float(t))

    def delete(self, name: str) -> None:
        try:
            self.fs.rm(f"{self.root}/{name}")
        except FileNotFoundError:
            pass


def store(out: str | Path) -> FolderStore | ObjectStore:
    from shardio import storage

    if storage.is_url(out):
        return ObjectStore(storage.join(str(out).rstrip("/"), "holds"))
    return FolderStore(Path(out) / "holds")


def _url_version(url: str) -> tuple[str, str] | None:
    """(output URL, version) for a bucket output (its ``current`` pointer read once), one of its
    ``versions/<id>`` or their ``shards/``; None for anything else."""
    from shardio import storage

    parts = url.rstrip("/").split("/")
    if parts[-1] == "shards":
        parts = parts[:-1]
    if len(parts) > 2 and parts[-2] == "versions" and VERSION.fullmatch(parts[-1]):
        return "/".join(parts[:-2]), parts[-1]
    base = "/".join(parts)
    try:
        vid = storage.read_text(base + "/current").strip()
    except (FileNotFoundError, IsADirectoryError, OSError):
        return None
    return (base, vid) if VERSION.fullmatch(vid) else None


def _manifest(out: str | Path, name: str) -> bytes | None:
    """A version's manifest bytes; None when it is gone or was never completed."""
    from shardio import storage

    try:
        if storage.is_url(out):
            return storage.read_bytes(storage.join(str(out).rstrip("/"), f"versions/{name}/manifest.json"))
        return (Path(out) / "versions" / name / "manifest.json").read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


# ---- resolving a data spec to one version ----

def resolve(spec: str | Path | Iterable[str | Path]) -> DataVersion:
    """One version of a curated output (``current`` read once), or plain shards."""
    from shardio.shards import expand

    from shardio import storage

    if isinstance(spec, (str, Path)) and storage.is_url(spec):
        hit = _url_version(str(spec))
        if hit is not None:  # a bucket output: the version its pointer names, held like a folder's
            return _open(*hit)
    if isinstance(spec, (str, Path)) and not storage.is_url(spec):
        p = Path(spec)
        if p.is_dir() and (p / "current").is_symlink():
            p = p / "current"  # an output folder
        hit = _version_of(p)
        if hit is not None:
            return _open(*hit)
        if p.is_dir() and (p / "manifest.json").is_file() and (p / "shards").is_dir():
            return DataVersion(expand(p / "shards"), out=str(p.resolve()),  # written before versioning
                               manifest_sha256=_sha(p / "manifest.json"))
    shards = expand(spec)
    if any(storage.is_url(s) for s in shards):  # a bucket output: expand read its `current` once; not held
        return DataVersion(shards)
    owners = {_version_of(Path(os.path.realpath(s)).parent) for s in shards}
    found = owners - {None}
    if not found:
        return DataVersion(shards)
    if len(found) > 1:
        raise ValueError(f"the shards of {spec!r} lie in {len(found)} curated versions "
                         f"({', '.join(sorted(f'{o}/versions/{v}' for o, v in found))}); give one version")
    (out, name), = found
    dv = _open(out, name)
    inside = set(dv.shards)
    real = [os.path.realpath(s) for s in shards]
    return DataVersion([r if r in inside else s for s, r in zip(shards, real)], dv.out, dv.version,
                       dv.manifest_sha256)


def resolve_record(record: dict) -> DataVersion:
    """The version a run recorded, exactly (same manifest), or ``VersionGone`` naming it."""
    out, name, sha = record["out"], record["version"], record.get("manifest_sha256")
    dv = _open(out, name)
    if sha and dv.manifest_sha256 != sha:
        raise VersionGone(f"{out} version {name} now has another manifest (sha256 {dv.manifest_sha256[:12]}, "
                          f"recorded {sha[:12]}): it is not the data this run read")
    return dv


def _version_of(p: Path) -> tuple[Path, str] | None:
    """(output folder, version) when ``p`` resolves to a version folder or its ``shards/``."""
    real = Path(os.path.realpath(p))
    folder = real.parent if real.name == "shards" else real
    if VERSION.fullmatch(folder.name) and folder.parent.name == "versions":
        return folder.parent.parent, folder.name
    return None


def _open(out: str | Path, name: str) -> DataVersion:
    from shardio import storage
    from shardio.shards import expand

    if store(out).get(f"{name}.removing") is not None:
        raise VersionGone(f"{out} version {name} is being removed by a publish; train on the current version")
    manifest = _manifest(out, name)
    if manifest is None:
        raise VersionGone(f"{out} version {name} no longer exists (a publish removed it, or it never completed)")
    shards = (storage.join(str(out).rstrip("/"), f"versions/{name}/shards") if storage.is_url(out)
              else Path(out) / "versions" / name / "shards")
    return DataVersion(expand(shards), out=str(out), version=name, manifest_sha256=hashlib.sha256(manifest).hexdigest())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def usable(dv: DataVersion) -> bool:
    """The version is complete and no publish is removing it."""
    return (dv.version is not None and _manifest(dv.out, dv.version) is not None
            and store(dv.out).get(f"{dv.version}.removing") is None)


# ---- holds ----

@dataclass
class Hold:
    """A reader's claim on one version, kept fresh by a heartbeat thread until ``release``."""

    out: str
    version: str
    purpose: str = ""
    heartbeat_s: float = HEARTBEAT_S
    holder: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.name = f"{self.version}--{self.holder}.json"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def body(self) -> bytes:
        return json.dumps({"holder": self.holder, "version": self.version, "out": self.out, "pid": os.getpid(),
                           "host": socket.gethostname(), "started": self.started, "heartbeat": time.time(),
                           "purpose": self.purpose}, indent=1).encode()

    def take(self) -> "Hold":
        store(self.out).put(self.name, self.body())
        self._thread = threading.Thread(target=self._beat, name=f"hold-{self.version}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        s = store(self.out)
        while not self._stop.wait(self.heartbeat_s):
            if s.get(self.name) is None:
                log.warning("the hold on %s version %s was removed as stale (was this process paused?); "
                            "a publish may have deleted the version", self.out, self.version)
            s.put(self.name, self.body())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        store(self.out).delete(self.name)

    def __enter__(self) -> "Hold":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child nobody has waited for yet
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stale(hold: dict, now: float | None = None, stale_after: float = STALE_AFTER_S) -> str | None:
    """Why a hold belongs to a dead run (None while it looks alive)."""
    now = time.time() if now is None else now
    age = now - float(hold.get("heartbeat", 0))
    if age > stale_after:
        return f"heartbeat {age / 60:.0f} min old"
    if hold.get("host") == socket.gethostname() and not _pid_alive(int(hold.get("pid", -1))):
        return f"pid {hold.get('pid')} gone on this host"
    return None


def live_holds(out: str | Path, stale_after: float = STALE_AFTER_S) -> dict[str, list[dict]]:
    """version -> its live holds; stale holds are deleted here (and logged)."""
    s = store(out)
    live: dict[str, list[dict]] = {}
    for name in s.names():
        if "--" not in name or not name.endswith(".json"):
            continue
        raw = s.get(name)
        if raw is None:
            continue  # released meanwhile
        try:
            hold = json.loads(raw)
            why = stale(hold, stale_after=stale_after)
        except (ValueError, TypeError):
            age = s.age(name)
            hold, why = {"holder": name}, "unreadable" if age is not None and age > stale_after else None
        if why:
            log.info("removing stale hold %s on %s (%s)", name, name.split("--")[0], why)
            s.delete(name)
            continue
        live.setdefault(name.split("--")[0], []).append(hold)
    return live


def remove_version(out: str | Path, name: str, stale_after: float = STALE_AFTER_S) -> list[dict]:
    """Delete an unheld version: announce it, read the holds again, then delete. Returns the holds that
    appeared meanwhile (then the version stays)."""
    s = store(out)
    marker = f"{name}.removing"
    s.put(marker, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode())
    held = live_holds(out, stale_after).get(name, [])
    if not held and isinstance(s, ObjectStore):
        s.fs.rm(f"{s.root.rsplit('/', 1)[0]}/versions/{name}", recursive=True)
    elif not held:
        shutil.rmtree(Path(out) / "versions" / name, ignore_errors=True)
    s.delete(marker)
    return held


# ---- pinning: resolve, hold, check ----

class Pinned:
    """A resolved version and its hold; a context manager that releases the hold."""

    def __init__(self, data: DataVersion, hold: Hold | None) -> None:
        self.data, self.hold = data, hold

    @property
    def shards(self) -> list[str]:
        return self.data.shards

    @property
    def record(self) -> dict | None:
        return self.data.record

    def release(self) -> None:
        if self.hold is not None:
            self.hold.release()
            self.hold = None

    def __enter__(self) -> "Pinned":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def pin(spec, recorded: dict | None = None, purpose: str = "", heartbeat_s: float = HEARTBEAT_S) -> Pinned:
    """Resolve ``spec`` (or exactly the ``recorded`` version, for a resume) and hold it."""
    for _ in range(3):
        dv = resolve_record(recorded) if recorded else resolve(spec)
        if dv.version is None:
            return Pinned(dv, None)
        try:
            hold = Hold(dv.out, dv.version, purpose, heartbeat_s).take()
        except OSError as e:
            log.warning("cannot hold %s version %s (%s): a publish may delete it during this run",
                        dv.out, dv.version, e)
            return Pinned(dv, None)
        if usable(dv):
            log.info("reading %s version %s (manifest sha256 %s), held as %s", dv.out, dv.version,
                     dv.manifest_sha256[:12], hold.name)
            return Pinned(dv, hold)
        hold.release()  # a publish removed it between resolving and holding: resolve again
    raise VersionGone(f"{spec}: its version kept being removed while this run started; try again")
