"""The stage protocol: a per-shard stage is one module holding one ``Stage`` subclass.

A stage declares
  - ``name``: its registry name; ``folder``: its instance's folder under ``columns/`` (a scorer's is
    its score column);
  - ``version``: its part of the cache key (bump it when its outputs change), with ``key_config``;
  - ``columns``: the columns it writes, ``{column: arrow type}``; a column schemas/columns.json
    declares must have that type there (``out_columns`` for names chosen per instance);
  - ``needs``: what it reads of a sample (raw bytes and json, caption, pixels at ``input_side``);
  - ``device`` and ``batch_size`` (the pass's batches are the smallest asked for);
  - ``device_pixels``: its ``step`` also takes images decoded on a device (torch tensors, (3, H, W)
    uint8, full size); the pass decodes JPEGs there only when every pixel stage does, on the
    ``decode_device`` a stage asks for (a scorer's, by its ``decode`` setting);
  - ``step(batch)``: consume a batch of samples; ``finish(src)``: write its other files and return
    its table (``uid`` first), which the pass writes last, with the cache key, as the marker.
Stages that read no sample (a precomputed column, a head over stored embeddings) only ``finish``.
A stage users configure has a pydantic ``Config`` with ``type: Literal[...]`` (config ``stages:``),
optionally with a ``check()`` that raises a ValueError before any work starts (a head's weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

import schemas

if TYPE_CHECKING:
    from pipeline.ingest import Sample, ShardInfo
    from pipeline.workdir import WorkDir


@dataclass(frozen=True)
class Needs:
    """What a stage reads of each sample; with any of them the pass reads the tar."""
    raw: bool = False  # the sample's stored bytes and json (``Sample``)
    caption: bool = False  # its caption
    pixels: bool = False  # its image decoded (at the pass's side, >= ``input_side``)

    @property
    def samples(self) -> bool:
        return self.raw or self.caption or self.pixels


@dataclass
class Batch:
    """Consecutive samples of a shard, each with its decode outcome (when some stage needs pixels)."""
    rows: list[int]
    samples: list["Sample"]
    images: list[Any]  # PIL images at the pass's decode side, or device tensors (``device_pixels``);
    # None: not decoded or undecodable
    sizes: list[tuple[int | None, int | None]]  # the header's (full) size, (None, None) if unknown
    errors: list[str | None]  # decode errors


@dataclass
class Source:
    """The shard a pass works on, shared by its stages."""
    path: str
    sid: str
    work: "WorkDir"
    metadata: bool  # a DataComp metadata parquet, not a tar
    side: int | None = None  # the pass's decode side (part of pixel stages' keys)
    keys: dict[str, str] = field(default_factory=dict)  # folder -> cache key, of the stages before
    info: "ShardInfo | None" = None
    uids: Any = None  # list of str (a tar pass) or an Arrow column (read from the ingest table)


class Stage:
    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    columns: ClassVar[dict[str, str]] = {}
    needs: ClassVar[Needs] = Needs()
    Config: ClassVar[type | None] = None  # pydantic model with ``type: Literal[...]`` if users configure it
    order: ClassVar[int] = 100  # built-in stages: their place in a pass

    @classmethod
    def instances(cls, clip: list, languages: bool, metadata: bool) -> list["Stage"]:
        """A built-in stage's instances for a run's scorers (``clip``) and language setting."""
        return []

    input_side: int | None = 0  # pixel stages: the side they need (0: any; None: a full decode)
    batch_size: int | None = None
    device: str = "cpu"
    device_pixels: bool = False
    decode_device: str | None = None

    @property
    def folder(self) -> str:
        return self.name

    def out_columns(self) -> dict[str, str]:
        return dict(self.columns)

    def key_config(self, src: Source) -> dict:
        return {"version": self.version}

    def wanted(self) -> bool:
        """False: planned (its columns are null in the pool's table) but not run."""
        return True

    def step(self, batch: Batch) -> None:
        """Consume a batch (stages whose ``needs`` read the tar)."""

    def finish(self, src: Source) -> pa.Table:  # pragma: no cover - every stage defines it
        raise NotImplementedError

    def marker_metadata(self, src: Source) -> dict[str, str]:
        """Extra key-values stored in its marker's schema metadata."""
        return {}


def check_columns(stage: Stage, tbl: pa.Table) -> None:
    """A stage's table holds exactly ``uid`` (``row``) and its declared columns, each of its type."""
    declared = stage.out_columns()
    names = set(tbl.column_names)
    missing = set(declared) - names
    extra = names - set(declared) - {"uid", "row"}
    if missing or extra:
        raise RuntimeError(f"stage {stage.folder!r} wrote columns {sorted(names)}: missing {sorted(missing)}, "
                           f"undeclared {sorted(extra)}")
    for c, kind in declared.items():
        if tbl.schema.field(c).type != schemas.TYPES[kind]:
            raise RuntimeError(f"stage {stage.folder!r} wrote {c} as {tbl.schema.field(c).type}, declared {kind}")


def check_declaration(cls: type[Stage], columns: dict[str, str]) -> None:
    """Columns schemas/columns.json declares keep its type; others must have a known type name."""
    for c, kind in columns.items():
        if kind not in schemas.TYPES:
            raise TypeError(f"stage {cls.name!r} declares {c} with unknown type {kind!r}")
        try:
            want = schemas.arrow_type(c)
        except KeyError:
            continue
        if want != schemas.TYPES[kind]:
            raise TypeError(f"stage {cls.name!r} declares {c} as {kind}; schemas/columns.json says {want}")
