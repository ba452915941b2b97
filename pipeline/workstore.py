"""A work folder in object storage (``--work s3://...``, the default when ``--out`` is a bucket): the
per-shard results live in the bucket and every process keeps only private scratch, so a cluster whose
machines share no disk works.

A shard job gets the names of its cached files (those named after its shard id under ``columns/``,
``embeddings/``, ``thumbs/``), downloads them into a private scratch folder, runs the per-shard pass
there (pipeline/annotate.py, unchanged: its cache keys decide what runs), uploads what it wrote or
changed (data first, each stage's parquet, its completion marker, last), deletes what it removed,
and drops the scratch. The client then brings the files of the run's shards into its own mirror
(only those whose version changed) for decide and export: it reads nothing from the workers' disks.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from shardio import storage

# per top folder: the suffixes after a shard id (longest first); the id may itself hold dots and '/'
SUFFIXES = {"columns": (".pool.npy", ".parquet"), "embeddings": (".img.npy", ".txt.npy", ".npz.json"),
            "thumbs": (".npy",)}
MIRROR = ".mirror.json"


def sid_of(rel: str) -> str | None:
    """The shard id a work-folder file belongs to (``columns/ingest/part-a/00000.parquet`` -> ``part-a/00000``)."""
    parts = rel.split("/")
    if any(p.startswith(".") for p in parts) or parts[0] not in SUFFIXES:
        return None
    name = "/".join(parts[1:] if parts[0] == "thumbs" else parts[2:])
    for suffix in SUFFIXES[parts[0]]:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def index(url: str) -> dict[str, dict[str, str]]:
    """shard id -> {path in the work folder: the store's version of it}, from one listing."""
    fs, root = storage.filesystem(url)
    root = root.rstrip("/")
    fs.invalidate_cache()
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    out: dict[str, dict[str, str]] = {}
    for path, info in found.items():
        rel = path[len(root) + 1:]
        sid = sid_of(rel)
        if sid is not None:
            out.setdefault(sid, {})[rel] = _version(info)
    return out


def _version(info: dict) -> str:
    return str(info.get("ETag") or info.get("etag") or info.get("md5") or info.get("LastModified")
               or info.get("mtime")) + f":{info.get('size')}"


def run_job(url: str, cached: list[str], fn: Callable[[Path], dict]) -> dict:
    """``fn(scratch)`` on a private copy of a shard's cached files; what it writes goes back to ``url``."""
    fs, root = storage.filesystem(url)
    root = root.rstrip("/")
    scratch = Path(tempfile.mkdtemp(prefix="curate-job-"))
    try:
        for rel in cached:
            (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{root}/{rel}", str(scratch / rel))
        before = _stats(scratch)
        result = fn(scratch)
        after = _stats(scratch)
        changed = sorted((rel for rel, st in after.items() if before.get(rel) != st), key=lambda r: r.endswith(".parquet"))
        for rel in changed:  # data first, the stage markers (parquets) last
            fs.put_file(str(scratch / rel), f"{root}/{rel}")
        for rel in sorted(set(before) - set(after)):  # e.g. embeddings a pointer replaced
            fs.rm_file(f"{root}/{rel}")
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _stats(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for f in folder.rglob("*"):
        rel = f.relative_to(folder).as_posix()
        if f.is_file() and sid_of(rel) is not None:
            st = f.stat()
            out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def pull(url: str, sids: list[str], mirror: Path) -> None:
    """Bring the work files of ``sids`` from ``url`` into the local ``mirror`` (those whose version
    changed since the last pull; files gone from the store go from the mirror too)."""
    fs, root = storage.filesystem(url)
    root = root.rstrip("/")
    mirror.mkdir(parents=True, exist_ok=True)
    known_path = mirror / MIRROR
    try:
        known = json.loads(known_path.read_text())
    except (OSError, ValueError):
        known = {}
    listing = index(url)
    for sid in sids:
        want = listing.get(sid, {})
        for rel, version in want.items():
            if known.get(rel) != version or not (mirror / rel).is_file():
                (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
                tmp = mirror / rel
                tmp = tmp.with_name(f".{tmp.name}.part")
                fs.get_file(f"{root}/{rel}", str(tmp))
                tmp.replace(mirror / rel)
                known[rel] = version
        for rel in [r for r in known if sid_of(r) == sid and r not in want]:
            (mirror / rel).unlink(missing_ok=True)
            known.pop(rel)
    known_path.write_text(json.dumps(known, sort_keys=True))
