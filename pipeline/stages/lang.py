"""Language id: ``caption_lang`` and its probability (fasttext lid.176) for each caption, fed the raw
caption. Runs only when a filter reads it or the config asks (``languages``): it is most of a
metadata-only pass; otherwise its columns are null."""
from __future__ import annotations

import pyarrow as pa

import schemas
from pipeline.ingest import LANG_COLUMNS
from pipeline.metadata import lang_columns, lang_table
from pipeline.stages.base import Batch, Needs, Source, Stage


class Lang(Stage):
    name = "lang"
    version = 1
    columns = {c: schemas.columns()[c]["type"] for c in LANG_COLUMNS}
    needs = Needs(caption=True)
    order = 20

    @classmethod
    def instances(cls, clip, languages, metadata):
        return [cls(languages)]

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.captions: list[str] = []

    def wanted(self) -> bool:
        return self.enabled

    def key_config(self, src: Source) -> dict:
        return {"version": self.version, **({"metadata": True} if src.metadata else {})}

    def step(self, batch: Batch) -> None:
        self.captions.extend(s.caption_full for s in batch.samples)

    def finish(self, src: Source) -> pa.Table:
        if src.metadata:
            return lang_table(src.path).add_column(0, "uid", src.uids)
        if len(self.captions) != len(src.uids):
            raise RuntimeError(f"shard {src.path} changed while it was read ({len(self.captions)} captions, "
                               f"{len(src.uids)} rows)")
        uid = pa.array(list(src.uids), schemas.arrow_type("uid"))
        return lang_columns(self.captions).add_column(0, "uid", uid)
