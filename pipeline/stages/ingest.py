"""Ingest: one row per sample found (uid, key, caption, sizes, sha256, why it cannot be used). From a
tar pass (width/height: the image header's, i.e. a full decode's size) or, for a metadata-only pool,
from DataComp's metadata parquet. Its table also stores the shard's accounting (``ShardInfo``)."""
from __future__ import annotations

import json

import pyarrow as pa

import schemas
from pipeline.ingest import INGEST_COLUMNS, ingest_row
from pipeline.metadata import ingest_table
from pipeline.stages.base import Batch, Needs, Source, Stage

SHARD_INFO = "curate_shard_info"


class Ingest(Stage):
    name = "ingest"
    version = 5  # 5: JPEGs decoded at any M/8 scale (shardio.decode.fine_scale)
    columns = {c: schemas.columns()[c]["type"] for c in INGEST_COLUMNS}
    needs = Needs(raw=True, caption=True, pixels=True)  # decode errors are ingest's
    order = 0
    device_pixels = True  # reads only whether an image decoded

    @classmethod
    def instances(cls, clip, languages, metadata):
        return [cls()]

    def __init__(self):
        self.rows: list[dict] = []

    def key_config(self, src: Source) -> dict:
        # the decode side shapes which images decode, so it is in the key
        return {"version": self.version, **({"metadata": True} if src.metadata else {"decode_side": src.side})}

    def step(self, batch: Batch) -> None:
        for s, im, size, err in zip(batch.samples, batch.images, batch.sizes, batch.errors):
            wh = size if im is not None else (None, None)
            self.rows.append(ingest_row(s, *wh, err, size or (None, None)))

    def finish(self, src: Source) -> pa.Table:
        if not src.metadata:  # the pass holds the uids and the accounting
            return schemas.table({c: [r[c] for r in self.rows] for c in INGEST_COLUMNS}, INGEST_COLUMNS)
        tbl, src.info = ingest_table(src.path)
        src.uids = tbl.column("uid")
        return tbl

    def marker_metadata(self, src: Source) -> dict[str, str]:
        return {SHARD_INFO: json.dumps(src.info.as_dict())}
