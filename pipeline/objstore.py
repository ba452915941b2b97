"""Outputs in object storage (``--out s3://...``): publishing by pointer and a lease lock, no renames.

    <out>/versions/<id>/   a complete version, uploaded file by file, its manifest.json last
    <out>/current          the pointer: one small object naming the version, written last (one PUT)
    <out>/.curate.lock     created only if absent (a conditional create: If-None-Match), renewed while
                           the run lives; a lease that has run out (a killed run's) is taken over by the
                           one run that creates <out>/.curate.lock.after-<its token> (also conditional),
                           so two runs finding the same dead lock never both hold it; a run whose lock
                           was taken over (it stalled past its lease) does not switch the pointer
    <out>/curate.log       the run log, appended per run
A reader follows ``current`` (``published_url``) and reads inside that version, so it sees the previous
complete output or the new one, never a mix. A version no pointer names (a killed run's upload) is
deleted by the next publish; the new and the previous version are kept (a reader may be in it).
The output is first written to a local folder as for a local ``--out`` (pipeline/publish.py), then
uploaded: byte for byte what a local run writes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from pipeline.faults import point
from pipeline.lock import OutputLocked
from pipeline.publish import NotPublished
from shardio import storage

LOCK, POINTER, LOG = ".curate.lock", "current", "curate.log"
_log = logging.getLogger(__name__)


def lease_seconds() -> float:
    """How long a lock lives without renewal (``CURATE_LOCK_LEASE_S``, default 120 s); renewed every third."""
    return float(os.environ.get("CURATE_LOCK_LEASE_S", "120"))


def check_writable(url: str, what: str = "--out") -> None:
    if storage.scheme(url) in storage.READ_ONLY:
        raise ValueError(f"{what} {url}: {storage.scheme(url)}:// is read only; give a local folder or a bucket "
                         "(s3://, gs://, az://)")


def _create(fs, path: str, data: bytes) -> bool:
    """Write ``path`` only if it does not exist (a conditional PUT); False when it exists."""
    try:
        with fs.open(path, "xb") as f:
            f.write(data)
        return True
    except FileExistsError:
        return False
    except OSError as e:  # stores that answer the failed precondition (412) as a plain error
        if "412" in str(e) or "PreconditionFailed" in str(e) or "Precondition" in type(e).__name__:
            return False
        raise


def _read_json(fs, path: str) -> dict | None:
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}


@contextmanager
def exclusive(url: str):
    """One run per output prefix: a lock object made by a conditional create, with a renewed lease."""
    fs, root = storage.filesystem(url)
    root = root.rstrip("/")
    lock = f"{root}/{LOCK}"
    token = uuid.uuid4().hex
    lease = lease_seconds()
    holder = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"

    def body() -> bytes:
        return json.dumps({"holder": holder, "token": token, "expires": time.time() + lease}).encode()

    fs.invalidate_cache()
    mine = _acquire(fs, lock, body, url)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease / 3):
            held = _read_json(fs, lock)
            if not held or held.get("token") != token:
                return  # taken over (this run was presumed dead): its publish checks again
            fs.pipe_file(lock, body())

    beat = threading.Thread(target=renew, daemon=True)
    beat.start()
    guard = _HELD.set((fs, lock, token, url))
    try:
        yield
    finally:
        _HELD.reset(guard)
        stop.set()
        beat.join()
        now = _read_json(fs, lock)
        if now and now.get("token") == token:
            fs.rm_file(lock)
            if mine is not None:
                fs.rm_file(mine)


_HELD: ContextVar[tuple | None] = ContextVar("curate_bucket_lock", default=None)


def _acquire(fs, lock: str, body, url: str) -> str | None:
    """Take the lock; returns the takeover marker this run created (None when the lock was free)."""
    if _create(fs, lock, body()):
        return None
    held = _read_json(fs, lock)
    if held is None:  # released between the two calls: free again
        if _create(fs, lock, body()):
            return None
    elif held.get("expires", 0) > time.time():
        raise OutputLocked(f"{url} is being written by another run ({held.get('holder', 'unknown holder')}, "
                           f"its lease runs {held['expires'] - time.time():.0f} s more); wait for it to finish "
                           "or give another output")
    # the lease ran out (its run was killed): the one contender that creates the marker replaces it
    if held is None or not _create(fs, _after(lock, held), body()):
        raise OutputLocked(f"{url} was just taken by another run; wait for it to finish or give another output")
    fs.pipe_file(lock, body())
    for stale in _markers(fs, lock):  # earlier takeovers' markers (this run's own goes at release)
        if stale != _after(lock, held):
            fs.rm_file(stale)
    return _after(lock, held)


def _after(lock: str, held: dict) -> str:
    """The marker whose conditional create wins the takeover of the lock ``held``."""
    return f"{lock}.after-{held.get('token') or hashlib.sha256(json.dumps(held, sort_keys=True).encode()).hexdigest()[:16]}"


def _markers(fs, lock: str) -> list[str]:
    parent, name = lock.rsplit("/", 1)
    try:
        return [p for p in fs.ls(parent, detail=False) if p.rsplit("/", 1)[-1].startswith(f"{name}.after-")]
    except FileNotFoundError:
        return []


def still_held() -> None:
    """Inside ``exclusive``: raise when another run has taken this run's lock over (this run stalled
    past its lease and was presumed dead), so it does not switch the pointer under that run."""
    held = _HELD.get()
    if held is None:
        return
    fs, lock, token, url = held
    fs.invalidate_cache()
    now = _read_json(fs, lock)
    if not now or now.get("token") != token:
        raise OutputLocked(f"{url}: this run's lock was taken over by {(now or {}).get('holder', 'another run')} "
                           "after its lease ran out; nothing was published (its upload is removed by the next "
                           "publish)")


def _versions(fs, root: str) -> list[str]:
    try:
        names = [storage.name(x) for x in fs.ls(f"{root}/versions", detail=False)]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith("v") and n[1:].isdigit())


def current_id(fs, root: str) -> str | None:
    try:
        return fs.cat_file(f"{root}/{POINTER}").decode().strip() or None
    except FileNotFoundError:
        return None


def publish(url: str, version: Path, log: Path | None = None) -> str:
    """Upload the complete local ``version`` folder as a new version under ``url``, then point
    ``current`` at it; return the new version's URL. Call it holding ``exclusive(url)``."""
    fs, root = storage.filesystem(url)
    root = root.rstrip("/")
    fs.invalidate_cache()
    previous = current_id(fs, root)
    have = _versions(fs, root)
    for v in have:  # a killed run's upload: no pointer names it
        if v != previous and (previous is None or v > previous):
            fs.rm(f"{root}/versions/{v}", recursive=True)
    vid = f"v{max([int(v[1:]) for v in have] + [0]) + 1:06d}"
    target = f"{root}/versions/{vid}"
    files = sorted(p for p in version.rglob("*") if p.is_file())
    for f in sorted(files, key=lambda p: p.name == "manifest.json"):  # the manifest last: it marks a complete version
        fs.put_file(str(f), f"{target}/{f.relative_to(version).as_posix()}")
    point("publish:renamed")
    still_held()
    fs.pipe_file(f"{root}/{POINTER}", (vid + "\n").encode())  # the switch: one PUT of one small object
    point("publish:switched")
    from shardio import versions as held

    holds = held.live_holds(url)
    for v in _versions(fs, root):  # older versions go, unless a reader (a training run) holds one
        if v in (vid, previous):
            continue
        late = holds.get(v) or held.remove_version(url, v)
        if late:
            _log.info("kept %s/versions/%s: held by %s", url, v, ", ".join(h.get("holder", "?") for h in late))
    if log is not None and log.is_file():
        try:
            old = fs.cat_file(f"{root}/{LOG}")
        except FileNotFoundError:
            old = b""
        fs.pipe_file(f"{root}/{LOG}", old + log.read_bytes())
    return storage.full(fs, target)


def published_url(url: str) -> str:
    """The complete version a reader should use, as a URL; a clear error when there is none."""
    fs, root = storage.filesystem(url)
    root = root.rstrip("/")
    fs.invalidate_cache()
    vid = current_id(fs, root)
    if vid is None or not fs.isfile(f"{root}/versions/{vid}/manifest.json"):
        raise NotPublished(f"{url} holds no complete curation output (never finished, or a run is still writing "
                           "it); run `curate run` on it first")
    return storage.full(fs, f"{root}/versions/{vid}")
