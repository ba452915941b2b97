"""The work folder's layout, in one place: nothing else builds these paths.

    columns/<stage>/<sid>.parquet        a stage's columns; written last, its completion marker
    columns/<column>/<sid>.pool.npy      every listed row's score of a precomputed scorer column
    embeddings/<column>/<sid>.img.npy    image / text embeddings (float16), row-aligned with ingest
    embeddings/<column>/<sid>.txt.npy
    embeddings/<column>/<sid>.npz.json   metadata-only pools: where in DataComp's npz they lie instead
    thumbs/<sid>.npy                     uint8 (n, 32, 32) grey thumbnails
    global/...                           pool-wide caches (k-means centroids, eval thumbnails)

A run's spool (remote tars kept for the run, shardio/tar.py ``spooling``) is not in the work folder:
it is ``<out>/.spool/`` of the run's local output folder (``spool_dir``), which the output's lock
keeps to one run, and it is removed when the run ends.

A shard id may be a path relative to the pool root (``part-a/00000``): each ``/`` is a sub-folder
(made on write). Ids are checked so that two ids never name one file: no empty, ``.`` or ``..``
part, no leading ``/``, no NUL (a backslash is an ordinary character: ``shard_id`` writes
undecodable bytes of a name as ``\xe9``).
"""
from __future__ import annotations

from pathlib import Path


def check_id(sid: str) -> str:
    """``sid`` when it is a safe relative name; a ValueError naming what is wrong otherwise."""
    if not isinstance(sid, str) or not sid:
        raise ValueError(f"shard id {sid!r} is empty")
    if "\x00" in sid:
        raise ValueError(f"shard id {sid!r} holds a NUL")
    if any(part in ("", ".", "..") for part in sid.split("/")):
        raise ValueError(f"shard id {sid!r} is not a plain relative path (empty, '.' or '..' part)")
    return sid


def check_name(name: str) -> str:
    """A stage or column folder name: one path part."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"{name!r} cannot name a work-folder sub-folder")
    return name


class WorkDir:
    """Paths of one work folder (``<out>`` by default, ``--work`` when given)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"WorkDir({str(self.root)!r})"

    def _file(self, folder: Path, sid: str, suffix: str) -> Path:
        return folder / f"{check_id(sid)}{suffix}"

    def stage_dir(self, stage: str) -> Path:
        return self.root / "columns" / check_name(stage)

    def columns(self, stage: str, sid: str) -> Path:
        return self._file(self.stage_dir(stage), sid, ".parquet")

    def pool_scores(self, column: str, sid: str) -> Path:
        return self._file(self.stage_dir(column), sid, ".pool.npy")

    def embeddings(self, column: str, sid: str, part: str) -> Path:
        if part not in ("img", "txt"):
            raise ValueError(f"embedding part {part!r} is not img or txt")
        return self._file(self.root / "embeddings" / check_name(column), sid, f".{part}.npy")

    def npz_pointer(self, column: str, sid: str) -> Path:
        return self._file(self.root / "embeddings" / check_name(column), sid, ".npz.json")

    def thumbs(self, sid: str) -> Path:
        return self._file(self.root / "thumbs", sid, ".npy")

    def global_dir(self, *parts: str) -> Path:
        return self.root.joinpath("global", *(check_name(p) for p in parts))


def spool_dir(out: str | Path) -> Path:
    """The run's private spool in its local output folder (a bucket output's: this machine's folder)."""
    return Path(out) / ".spool"
