"""Export: filtered webdataset shards, DataComp's sorted ``u8,u8`` uid array, metadata, manifest."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.shards import ShardWriter, atomic_write_bytes, atomic_write_table, iter_tar_samples, shard_id


def uid_array(uids) -> np.ndarray:
    """DataComp's subset format: sorted structured array of (upper, lower) 64-bit halves."""
    arr = np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))
    arr.sort()
    return arr


def write_shards(df: pd.DataFrame, shards: list[str], out_dir: Path, samples_per_shard: int) -> list[str]:
    """Copy kept samples' members verbatim into new shards; written aside, then swapped in."""
    keep = set(zip(df.loc[df["keep"], "shard"], df.loc[df["keep"], "key"]))
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = ShardWriter(tmp, samples_per_shard)
    written = 0
    for path in shards:
        sid = shard_id(path)
        try:
            for raw in iter_tar_samples(path):
                key = raw["__key__"].rsplit("/", 1)[-1]
                if (sid, key) in keep:
                    members = {k: v for k, v in raw.items() if not k.startswith("__")}
                    writer.write_raw(key, members)
                    written += 1
        except Exception:  # noqa: BLE001 - samples after tar damage were never kept (no image)
            pass
    paths = writer.close()
    if written != len(keep):
        raise RuntimeError(f"export wrote {written} samples but {len(keep)} were kept: source shards changed?")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return [str(out_dir / Path(p).name) for p in paths]


def export(df: pd.DataFrame, shards: list[str], out: str | Path, samples_per_shard: int,
           manifest: dict) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = write_shards(df, shards, out / "shards", samples_per_shard)
    uids = uid_array(df.loc[df["keep"], "uid"])
    tmp = out / ".uids.tmp.npy"
    np.save(tmp, uids)
    tmp.replace(out / "uids.npy")
    meta = df.copy()
    atomic_write_table(out / "metadata.parquet", pa.Table.from_pandas(meta, preserve_index=False))
    manifest = {**manifest, "output_shards": written, "uids": str(out / "uids.npy"),
                "metadata": str(out / "metadata.parquet"), "uid_count": int(len(uids))}
    atomic_write_bytes(out / "manifest.json", json.dumps(manifest, indent=2, default=str).encode())
    return manifest
