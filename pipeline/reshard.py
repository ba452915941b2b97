"""Reshard: a uid list (DataComp's ``u8,u8`` array, e.g. from a metadata-only run) plus the pool's
shards -> filtered shards, like DataComp's resharder. Published atomically like a curation output."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from pipeline import objstore, publish
from pipeline.ingest import sample_uid
from pipeline.lock import exclusive
from shardio import storage
from shardio.shards import ShardWriter, expand, shard_id
from shardio.sidecar import read_sidecar
from shardio.tar import iter_samples


def load_uids(uids_file: str | Path) -> np.ndarray:
    """A uid array from a path or a URL (e.g. a metadata-only run published to a bucket)."""
    if storage.is_url(str(uids_file)):
        return np.load(io.BytesIO(storage.read_bytes(str(uids_file))))
    return np.load(uids_file)


def uid_strings(uids_file: str | Path) -> set[str]:
    arr = load_uids(uids_file)
    if arr.dtype != np.dtype("u8,u8"):
        raise ValueError(f"{uids_file} is not a DataComp uid array (dtype u8,u8), it holds {arr.dtype}")
    return {f"{int(a):016x}{int(b):016x}" for a, b in arr.tolist()}


def reshard(uids_file: str | Path, pool: str | list[str], out: str | Path, samples_per_shard: int = 10_000) -> dict:
    """Copy every sample whose uid is in the list (first occurrence) into new shards; return the manifest."""
    t0 = time.time()
    want = uid_strings(uids_file)
    shards = expand(pool)
    url = None
    if storage.is_url(str(out)):  # staged here, then published by pointer (pipeline/objstore.py)
        objstore.check_writable(str(out))
        url = str(out).rstrip("/")
        out = Path(tempfile.gettempdir()) / "curate-out" / hashlib.sha256(url.encode()).hexdigest()[:16]
    out = Path(out)
    with exclusive(out), (objstore.exclusive(url) if url else nullcontext()):
        stage = publish.staging(out)
        writer = ShardWriter(stage / "shards", samples_per_shard)
        found: set[str] = set()
        too_big: set[str] = set()  # a member over the reader's limit was not read: never written incomplete
        for path in shards:
            sid = shard_id(path)
            listed = read_sidecar(path).rows  # the uid a curation run gave: json, else this parquet, else derived
            for s in iter_samples(path):
                u = sample_uid(s, sid, listed)
                if s.duplicate or u not in want or u in found:
                    continue
                if s.too_big:
                    too_big.add(u)
                    continue
                found.add(u)
                writer.write_raw(writer.free_key(s.key, sid), dict(s.members))
        written = writer.close()
        np.save(stage / "uids.npy", load_uids(uids_file))
        manifest = {"uids_in_list": len(want), "written": len(found), "not_found": len(want - found - too_big),
                    "not_written_member_too_big": sorted(too_big - found),
                    "input_shards": shards, "uid_list": str(uids_file),
                    "output_shards": [str(Path("shards") / Path(p).name) for p in written],
                    "run": {"seconds": round(time.time() - t0, 2)}}
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if url is not None:
            version = objstore.publish(url, stage)
            shutil.rmtree(stage, ignore_errors=True)
        else:
            version = publish.commit(out, stage)
    return {**manifest, "root": str(version)}
