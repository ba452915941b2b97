"""Atomic publish: a reader sees the previous complete output or the new complete one, never a mix.

    <out>/versions/<id>/   shards/, uids.npy, metadata.parquet, manifest.json, report.html (+ not_downloaded.parquet, dropped/)
    <out>/current          symlink to versions/<id>, switched by one rename
    <out>/shards, uids.npy, ...   symlinks through current (the paths users know)
A new output is written in ``<out>/.staging``, renamed into ``versions/`` and then ``current`` is
switched with ``os.replace`` (atomic on POSIX). The newest ``keep`` versions stay (default 2), and so
does every version a reader holds (a training: shardio/versions.py); stale holds of killed runs are
removed. Readers resolve ``current`` once (``published``) and read inside that folder.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from pipeline.faults import point
from shardio import versions as held

log = logging.getLogger(__name__)

ENTRIES = ("shards", "uids.npy", "metadata.parquet", "manifest.json", "report.html", "not_downloaded.parquet", "dropped")


class NotPublished(FileNotFoundError):
    pass


def staging(out: str | Path) -> Path:
    """A fresh, empty staging folder (whatever a killed run left there is discarded)."""
    s = Path(out) / ".staging"
    shutil.rmtree(s, ignore_errors=True)
    s.mkdir(parents=True)
    return s


def _next_id(versions: Path) -> str:
    ids = [int(p.name[1:]) for p in versions.glob("v*") if p.name[1:].isdigit()]
    return f"v{max(ids, default=0) + 1:06d}"


def commit(out: str | Path, staged: Path, keep: int = 2) -> Path:
    """Move a complete staged output into ``versions/``, switch ``current`` to it, then remove the
    versions that are neither among the newest ``keep`` nor held by a reader."""
    if keep < 1:
        raise ValueError(f"keep_versions must be at least 1 (the version just published), got {keep}")
    out = Path(out)
    if not (staged / "manifest.json").is_file():
        raise RuntimeError(f"{staged} has no manifest.json: refusing to publish an incomplete output")
    versions = out / "versions"
    versions.mkdir(exist_ok=True)
    target = versions / _next_id(versions)
    staged.rename(target)
    point("publish:renamed")
    tmp = out / ".current.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(Path("versions") / target.name, tmp)
    os.replace(tmp, out / "current")
    point("publish:switched")
    _links(out)
    prune(out, keep)
    return target


def prune(out: Path, keep: int = 2) -> dict[str, str]:
    """Remove each version that is not among the newest ``keep`` and not held; log what stays and why.
    Returns version -> what happened to it."""
    names = sorted((p.name for p in (out / "versions").iterdir() if held.VERSION.fullmatch(p.name) and p.is_dir()),
                   key=lambda n: int(n[1:]))
    holds = held.live_holds(out)
    fate: dict[str, str] = {}
    for name in names:
        if name in names[-keep:]:
            fate[name] = f"kept: one of the newest {keep}"
        elif name in holds:
            fate[name] = "kept: held by " + ", ".join(_who(h) for h in holds[name])
        else:
            late = held.remove_version(out, name)
            fate[name] = ("kept: held by " + ", ".join(_who(h) for h in late)) if late else "removed"
        log.info("version %s %s", name, fate[name])
    return fate


def _who(hold: dict) -> str:
    return f"{hold.get('purpose') or 'a reader'} (pid {hold.get('pid')} on {hold.get('host')})"


def _links(out: Path) -> None:
    for name in ENTRIES:
        link = out / name
        want = Path("current") / name
        if not (out / want).exists():  # e.g. no shards/ in a metadata-only output
            if link.is_symlink():
                link.unlink()
            continue
        if link.is_symlink():
            if Path(os.readlink(link)) == want:
                continue
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)  # an output written before versioned publishing
        elif link.exists():
            link.unlink()
        os.symlink(want, link)


def current_version(out: str | Path) -> Path | None:
    link = Path(out) / "current"
    if not link.is_symlink():
        return None
    target = (Path(out) / os.readlink(link)).resolve()
    return target if (target / "manifest.json").is_file() else None


def published(out: str | Path) -> Path:
    """The complete output a reader should use (a version folder), or a clear error."""
    out = Path(out)
    v = current_version(out)
    if v is not None:
        return v
    if (out / "manifest.json").is_file() and not (out / "manifest.json").is_symlink():
        return out  # an output written before versioned publishing
    raise NotPublished(f"{out} holds no complete curation output (never finished, or a run is still writing "
                       "it); run `curate run` on it first")


def manifest(out: str | Path) -> dict:
    return json.loads((published(out) / "manifest.json").read_text())


def checksums(out: str | Path) -> dict[str, str]:
    """sha256 of everything a reader consumes in the published output: shards, their parquets,
    uids.npy, metadata.parquet and the manifest without its ``run`` facts (timings, stages run)."""
    import hashlib

    root = published(out)
    files = [f for f in sorted((root / "shards").glob("*")) if not f.name.endswith("_stats.json")]  # has timings
    files += [root / "uids.npy", root / "metadata.parquet"]
    sums = {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}
    m = json.loads((root / "manifest.json").read_text())
    m.pop("run", None)
    sums["manifest.json"] = hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()
    return sums
