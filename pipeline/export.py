"""Export: filtered webdataset shards, DataComp's sorted ``u8,u8`` uid array, metadata, manifest.

Everything is written into a staging folder; pipeline/publish.py makes it visible in one step.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

import schemas
from pipeline.faults import point
from pipeline.ingest import MAX_CAPTION_CHARS
from shardio.shards import ShardWriter, atomic_write_table, shard_id
from shardio.tar import iter_samples


def uid_array(uids) -> np.ndarray:
    """DataComp's subset format: sorted structured array of (upper, lower) 64-bit halves."""
    arr = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))
    arr.sort()
    return arr


def write_shards(df: pd.DataFrame, shards: list[str], out_dir: Path, samples_per_shard: int,
                 captions: dict[tuple[str, str], str] | None = None) -> list[str]:
    """Copy kept samples' members verbatim into new shards (a caption longer than the limit, or
    rewritten by a caption transform, replaces the ``.txt``). A key already written from another
    source shard is prefixed with its shard id, so no output shard holds one key twice."""
    kept = df.loc[df["keep"], ["shard", "key"]]
    want: dict[str, set[str]] = {}
    for sid, key in zip(kept["shard"], kept["key"]):
        want.setdefault(sid, set()).add(key)
    captions = captions or {}
    writer = ShardWriter(out_dir, samples_per_shard)
    written = 0
    half = len(kept) // 2
    for path in shards:
        sid = shard_id(path)
        keys = want.get(sid)
        if not keys:
            continue
        for s in iter_samples(path):
            if s.duplicate or s.key not in keys:
                continue
            members = dict(s.members)
            new_caption = captions.get((sid, s.key))
            if new_caption is not None:
                members["txt"] = new_caption.encode("utf-8")
            elif "txt" in members and len(members["txt"]) > MAX_CAPTION_CHARS:
                members["txt"] = members["txt"].decode("utf-8", "replace")[:MAX_CAPTION_CHARS].encode("utf-8")
            writer.write_raw(s.key if s.key not in writer.keys else f"{sid}/{s.key}", members)
            written += 1
            if written == half:
                point("export:mid")
    paths = writer.close()
    if written != len(kept):
        raise RuntimeError(f"export wrote {written} samples but {len(kept)} were kept: a source shard changed "
                           "since it was annotated; rerun to re-annotate it")
    return [str(Path(out_dir.name) / Path(p).name) for p in paths]


def metadata_table(df: pd.DataFrame, declared: dict[str, str]) -> pa.Table:
    """The metadata table with every column checked against its contract: schemas/columns.json for the
    core columns, the filter instances' declared outputs, float32 for scorer columns."""
    fields = []
    for name in df.columns:
        if name in declared:
            t = schemas.TYPES[declared[name]]
        else:
            try:
                t = schemas.arrow_type(name)
            except KeyError:
                raise RuntimeError(f"column {name!r} is declared nowhere (schemas/columns.json or a filter's "
                                   "outputs)") from None
        fields.append(pa.field(name, t))
    return pa.Table.from_pandas(df, schema=pa.schema(fields), preserve_index=False)


def export(df: pd.DataFrame, shards: list[str], out: str | Path, samples_per_shard: int, manifest: dict,
           declared: dict[str, str] | None = None, captions: dict | None = None) -> dict:
    """Write shards, uids.npy and metadata.parquet into ``out`` (a staging folder); return the manifest
    with the outputs added (the caller writes it last, after the report)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = write_shards(df, shards, out / "shards", samples_per_shard, captions) if shards else []
    uids = uid_array(df.loc[df["keep"], "uid"])
    tmp = out / ".uids.tmp.npy"
    np.save(tmp, uids)
    tmp.replace(out / "uids.npy")
    atomic_write_table(out / "metadata.parquet", metadata_table(df, declared or {}))
    manifest = {**manifest, "output_shards": written, "uids": "uids.npy", "metadata": "metadata.parquet",
                "uid_count": int(len(uids))}
    return manifest
