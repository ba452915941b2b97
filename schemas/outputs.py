"""What a curation run hands back: the manifest (``<out>/manifest.json``) and what one shard's job
returns. ``manifest.schema.json`` is generated from ``Manifest`` (``python -m schemas.outputs``); a
test keeps the two equal. Field order is the JSON's order: do not reorder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.config import ClipModel

SCHEMA_FILE = Path(__file__).parent / "manifest.schema.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShardInfo(_Strict):
    """One shard's accounting, filled while its samples are read."""
    shard: str = Field(description="shard id (the file name without its extension)")
    path: str = Field(description="the shard's path as given")
    samples_found: int = Field(0, ge=0, description="samples read from the tar (or rows of a metadata parquet)")
    error: str | None = Field(None, description="why the tar is broken (truncated, not a tar); the samples "
                                                "before the damage are kept")
    skipped_members: dict[str, int] = Field(default_factory=dict,
                                            description="tar members not read, by reason (symlinks, truncated)")
    not_downloaded: dict[str, int] = Field(default_factory=dict,
                                           description="img2dataset status -> rows listed in the shard's parquet "
                                                       "with no sample in the tar")
    listed_missing: int = Field(0, ge=0, description="rows listed as downloaded in the parquet, absent from the tar")
    sidecar_error: str | None = Field(None, description="why the shard's parquet / npz sidecar could not be read")
    problems: list[str] = Field(default_factory=list, description="the first few per-sample notes (unsafe names)")


class ShardResult(_Strict):
    """What one shard's annotate job returns (pipeline/run.py ``annotate_job``)."""
    shard: str = Field(description="shard id")
    ran: list[str] = Field(description="stages computed by this job (empty: every stage was cached)")
    rows: int = Field(ge=0, description="rows in the shard's columns")
    info: ShardInfo = Field(description="the shard's accounting")


class BrokenShard(_Strict):
    shard: str = Field(description="path of a shard whose tar is damaged")
    error: str = Field(description="what is wrong with it")
    samples_recovered: int = Field(ge=0, description="samples read before the damage (curated as usual)")


class ShardError(_Strict):
    shard: str = Field(description="shard path")
    error: str = Field(description="the error, as '<ExceptionType>: <message>'")


class FilterSummary(BaseModel):
    """What a filter instance used; filters add their own keys (thresholds, counts) after these."""
    model_config = ConfigDict(extra="allow")
    type: str = Field(description="the filter's type (pipeline/filters/)")
    reasons: list[str] = Field(description="the drop reasons it can record")
    columns: list[str] = Field(description="the metadata columns it wrote")


class UnreadFile(_Strict):
    """A file under a folder pool that the run did not read."""
    path: str = Field(description="the file (a URL's secrets redacted)")
    why: str = Field(description="not_a_shard, hidden, dangling_link, link_loop, unreadable, not_a_regular_file "
                                 "or outside_shards, with detail after a colon")


class RunFacts(_Strict):
    """What this run did and how long it took: differs between reruns of the same input."""
    annotate_seconds: float | None = Field(None, description="wall-clock seconds of the per-shard pass")
    annotate_samples_per_s: float | None = Field(None, description="rows annotated per second (null: no time)")
    stage_runs: int | None = Field(None, description="per-shard stages computed (not cached), over all shards")
    shards_annotated: int | None = Field(None, description="shards with at least one stage computed")
    read_in_place: bool | None = Field(None, description="a metadata pool read in place, not annotated "
                                                         "(a run of its columns alone on one machine)")
    filter_seconds: dict[str, float] | None = Field(None, description="seconds each filter instance took")
    decide_export_seconds: float | None = Field(None, description="seconds from loading columns to the "
                                                                  "staged output")


class DroppedSamples(_Strict):
    """What ``--write-dropped`` wrote: the dropped samples as shards, one folder per first reason."""
    folders: dict[str, str] = Field(description="drop reason -> its folder of shards, relative to the version")
    written: dict[str, int] = Field(description="drop reason -> samples copied there verbatim")
    not_written: dict[str, int] = Field(description="drop reason -> dropped samples with no bytes to copy "
                                                    "(metadata-only rows, stray tar members)")


class PluginUse(_Strict):
    """A filter or stage of the config that an installed package provides (shardio/plugins.py)."""
    kind: Literal["filter", "stage"] = Field(description="a filter (`filters:`) or a stage (`stages:`)")
    type: str = Field(description="its `type` in the config")
    qualname: str = Field(description="module.Class")
    entry_point: str = Field(description="the entry point's name")
    package: str = Field(description="the installed distribution that declares it")
    version: str = Field(description="that distribution's version")


class Manifest(_Strict):
    """``<out>/manifest.json``: what a curation run found, dropped and wrote. Paths of outputs are
    relative to the published version folder."""
    samples_in: int = Field(ge=0, description="samples found in the pool (one metadata row each)")
    kept: int = Field(ge=0, description="samples kept")
    dropped: int = Field(ge=0, description="samples dropped")
    dropped_by_reason: dict[str, int] = Field(description="drops by their first reason (drop_reason)")
    failing_by_rule: dict[str, int] = Field(description="samples failing each rule, all rules counted "
                                                        "(drop_reasons)")
    listed_not_downloaded: dict[str, int] = Field(description="rows img2dataset listed but never downloaded, "
                                                              "by status")
    listed_missing_from_tar: int = Field(ge=0, description="rows listed as downloaded, absent from their tar")
    broken_shards: list[BrokenShard] = Field(description="damaged tars, curated up to the damage")
    not_processed_shards: list[ShardError] = Field(description="shards whose job kept failing (published without "
                                                               "them: on_failure='partial')")
    skipped_members: dict[str, int] = Field(description="tar members not read, by reason")
    pool_files_not_read: list[UnreadFile] = Field(default_factory=list, description="files under a folder pool "
                                                  "that are not read, each with why (not a shard, hidden, dangling "
                                                  "link, link loop, unreadable, outside the shards/ folder)")
    sidecar_errors: list[ShardError] = Field(description="shards whose parquet / npz sidecar could not be read")
    filters: dict[str, FilterSummary] = Field(description="each filter instance, by name, in config order")
    thresholds: dict[str, float | None] = Field(description="the cut-off each thresholding filter used")
    scorers: list[ClipModel] = Field(description="the CLIP scorers of the config")
    config: dict[str, Any] = Field(description="the curation config as run (schemas/curate_config.schema.json)")
    config_hash: str = Field(description="first 12 hex digits of the config's sha256")
    plugins: list[PluginUse] = Field(default_factory=list, description="filters and stages from installed "
                                     "plug-ins, with their package and version (empty: built-in ones only)")
    input_shards: list[str] = Field(description="the shards curated, in pool order")
    run: RunFacts = Field(description="timings and work done: differs between reruns")
    output_shards: list[str] = Field(description="filtered webdataset shards written")
    uids: str = Field(description="kept uids: sorted u8,u8 array (DataComp's subset format)")
    metadata: str = Field(description="metadata.parquet: one row per sample found")
    uid_count: int = Field(ge=0, description="uids in the uid array")
    report: str = Field(description="the HTML report")
    not_downloaded: str | None = Field(None, description="not_downloaded.parquet: the rows of listed_not_downloaded "
                                       "(url, caption, uid, status, error_message, key, shard), to feed back to "
                                       "img2dataset; None when every listed row was downloaded")
    dropped_samples: DroppedSamples | None = Field(None, description="the dropped samples' shards (curate run "
                                                   "--write-dropped); None when not asked for")

    def as_dict(self) -> dict:
        """The manifest as plain data (``run`` leaves out what was not measured)."""
        out = self.model_dump()
        out["run"] = self.run.model_dump(exclude_unset=True)
        return out

    def to_json(self) -> str:
        """The manifest file's text."""
        return json.dumps(self.as_dict(), indent=2, default=str)


def json_schema() -> str:
    return json.dumps(Manifest.model_json_schema(), indent=2) + "\n"


if __name__ == "__main__":
    SCHEMA_FILE.write_text(json_schema())
