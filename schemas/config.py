"""Curation config: what the scorer is, which filters decide, how export writes.

A config file (YAML or JSON) is validated here; errors name the field and what is wrong.
``schemas/curate_config.schema.json`` is the JSON Schema generated from these models
(``python -m schemas.config`` rewrites it; a test checks it is current).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClipModel(_Strict):
    """An open_clip scorer: a name / JSON config / checkpoint folder, plus an optional weights file.
    With ``precomputed`` (DataComp pools), scores and embeddings are read from each shard's sidecar
    ``<shard>.parquet`` (``clip_<tag>_similarity_score``) and ``<shard>.npz`` (``<tag>_img``,
    ``<tag>_txt``) instead of running a model; ``model`` is then only needed by filters that embed
    something new (image-based targets, concept prompts)."""
    model: str | None = Field(None, description="open_clip name, project preset, JSON config, or checkpoint folder")
    precomputed: Literal["b32", "l14"] | None = Field(
        None, description="read DataComp's precomputed scores/embeddings for this model instead")
    checkpoint: str | None = Field(None, description="local weights file for a named model (offline)")
    column: str = Field("clip_score", pattern=r"^clip_score(_[a-z0-9]+)?$",
                        description="score column written: clip_score or clip_score_<tag>")
    batch_size: int = Field(256, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU, fp32 on a CPU; bf16 on a CPU with AVX-512 BF16 "
                            "runs the forward pass 2-2.7x faster (scores move by < 0.01)")

    @model_validator(mode="after")
    def _source(self):
        if self.model is None and self.precomputed is None:
            raise ValueError("a clip scorer needs 'model' (open_clip) or 'precomputed' (b32 / l14 sidecar files)")
        return self


# settings that change how fast scores come, not what they are: left out of cache keys
RUNTIME_FIELDS = {"batch_size", "device"}


class ClipScoreFilter(_Strict):
    """Keep samples whose CLIP score is in the top ``fraction`` of the pool, or >= ``threshold``.

    The fraction uses one global threshold over the whole pool, as DataComp does:
    ``t = sorted(scores, descending)[int(n * fraction)]``, keep ``score >= t``.
    """
    type: Literal["clip_score"]
    column: str = "clip_score"
    fraction: float | None = Field(None, gt=0, le=1)
    threshold: float | None = Field(None, ge=-1, le=1)

    @model_validator(mode="after")
    def _one_of(self):
        if (self.fraction is None) == (self.threshold is None):
            raise ValueError("clip_score filter needs exactly one of 'fraction' or 'threshold'")
        return self

    @property
    def name(self) -> str:
        return f"clip_score_top{self.fraction:g}" if self.fraction is not None else f"clip_score>={self.threshold:g}"


class BasicFilter(_Strict):
    """DataComp's "basic" filter: English caption, > 2 words, > 5 characters, min side >= 200 px,
    aspect ratio <= 3 (of the original image). Each check is its own drop reason ``basic:<check>``.
    The sample pool's originals are 28-128 px: use ``min_side: 24`` there."""
    type: Literal["basic"]
    english: bool = Field(True, description="caption_lang must be 'en' (fasttext lid.176 top-1)")
    min_lang_score: float = Field(0.0, ge=0, le=1, description="and its probability at least this")
    min_words: int = Field(3, ge=0, description="DataComp: more than 2 words")
    min_chars: int = Field(6, ge=0, description="DataComp: more than 5 characters")
    min_side: int = Field(200, ge=0, description="smaller side of the original image, pixels")
    max_aspect: float = Field(3.0, ge=1, description="longer side / shorter side")

    @property
    def name(self) -> str:
        return "basic"


class ExactDedupFilter(_Strict):
    """Byte-identical images (sha256): keep the first in pool order (shard, then row), drop the rest."""
    type: Literal["exact_dedup"]

    @property
    def name(self) -> str:
        return "exact_dedup"


class TextFilter(_Strict):
    """DataComp's text-based filter: keep captions that name a target class (whole words, case
    insensitive, plural 's' allowed). Classes: a classnames file or a task folder holding one
    (e.g. an eval task), else open_clip's ImageNet-1k class names."""
    type: Literal["text_based"]
    classnames: str | list[str] | None = Field(None, description="file, task folder, or list of names")

    @property
    def name(self) -> str:
        return "text_based"


class DecontaminateFilter(_Strict):
    """Drop pool images that copy an evaluation image (standardised 16x16 grey thumbnails within
    ``max_rms`` standard deviations of the nearest eval image, found with faiss). ``eval_dirs``: task
    folders in CLIP_benchmark's layout, or folders of them (e.g. data/sample_pool/eval)."""
    type: Literal["decontaminate"]
    eval_dirs: list[str] = Field(min_length=1)
    max_rms: float = Field(0.03, gt=0, le=2)

    @property
    def name(self) -> str:
        return "decontaminate"


class NearDedupFilter(_Strict):
    """Re-encoded, resized or cropped copies (pipeline/neardup.py): multi-crop thumbnail descriptors
    propose ``k`` candidates per image; each pair is aligned and its 32x32 grey thumbnails compared
    (3x3-smoothed, which damps JPEG and resampling noise). A pair is a duplicate when its aligned RMS
    is at most ``max_rms`` grey levels, or at most ``ratio_max_rms`` and at most ``ratio`` times the
    RMS from either image to its nearest other look-alike (``ratio`` 0 turns that test off). The first
    of a group in pool order is kept."""
    type: Literal["near_dedup"]
    max_rms: float = Field(4.5, gt=0, le=255)
    ratio: float = Field(0.75, ge=0, lt=1)
    ratio_max_rms: float = Field(7.0, gt=0, le=255)
    k: int = Field(5, ge=1, le=100)

    @model_validator(mode="after")
    def _band(self):
        if self.ratio > 0 and self.ratio_max_rms < self.max_rms:
            raise ValueError(f"near_dedup: ratio_max_rms ({self.ratio_max_rms}) is below max_rms ({self.max_rms}): "
                             "the ratio test only looks at pairs between the two; raise it or set ratio: 0")
        return self

    @property
    def name(self) -> str:
        return "near_dedup"


class SemanticDedupFilter(_Strict):
    """SemDeDup over the image embeddings of scorer ``column``: ``clusters`` k-means clusters, and
    inside each an item more similar than ``1 - eps`` to an item kept before it is dropped. Keep order:
    ``farthest`` from the centroid first (SemDeDup), highest ``score`` column first, or pool ``first``."""
    type: Literal["semantic_dedup"]
    column: str = "clip_score"
    clusters: int = Field(100, ge=1)
    eps: float = Field(0.05, gt=0, lt=1)
    keep: Literal["farthest", "score", "first"] = "farthest"

    @property
    def name(self) -> str:
        return "semantic_dedup"


class ImageBasedFilter(_Strict):
    """DataComp's image-based filter: k-means (``clusters``) over the pool's image embeddings from
    scorer ``column``; the ``targets`` images (shards, task folders or image folders; DataComp used
    ImageNet-1k train) are assigned to their nearest centroid; samples in those clusters are kept."""
    type: Literal["image_based"]
    column: str = "clip_score"
    targets: list[str] = Field(min_length=1)
    clusters: int = Field(1000, ge=1)
    niter: int = Field(20, ge=1)
    max_targets: int | None = Field(None, gt=0, description="embed at most this many target images")

    @property
    def name(self) -> str:
        return "image_based"


class D2Filter(_Strict):
    """D² pruning: k-NN graph over image+text embeddings of scorer ``column``, the CLIP score as
    difficulty, forward message passing (``gamma_f``) then reverse selection (``gamma_r``) until
    ``budget`` (a fraction of the decodable samples) is selected."""
    type: Literal["d2_pruning"]
    column: str = "clip_score"
    budget: float = Field(gt=0, le=1)
    k: int = Field(10, ge=1, le=200)
    gamma_f: float = Field(1.0, ge=0)
    gamma_r: float = Field(1.0, ge=0)

    @property
    def name(self) -> str:
        return "d2_pruning"


class ConceptFilter(_Strict):
    """Content described in words: score = max cosine between a sample's image embedding (scorer
    ``column``) and the text embeddings of ``prompts``; written to column ``concept_<name>``.
    ``keep: above`` keeps samples scoring >= threshold (wanted content), ``below`` keeps those under it
    (unwanted content, e.g. prompts describing watermarks)."""
    type: Literal["concept"]
    concept: str = Field(pattern=r"^[a-z0-9_]+$", description="short name; the column is concept_<concept>")
    column: str = "clip_score"
    prompts: list[str] = Field(min_length=1)
    threshold: float = Field(ge=-1, le=1)
    keep: Literal["above", "below"] = "above"

    @property
    def name(self) -> str:
        return f"concept:{self.concept}"


Filter = Annotated[Union[ClipScoreFilter, BasicFilter, ExactDedupFilter, TextFilter, DecontaminateFilter,
                         NearDedupFilter, SemanticDedupFilter, ImageBasedFilter, D2Filter, ConceptFilter],
                   Field(discriminator="type")]

EMBEDDING_FILTERS = ("semantic_dedup", "image_based", "d2_pruning", "concept")


class ExportConfig(_Strict):
    samples_per_shard: int = Field(10_000, gt=0)


class VectorConfig(_Strict):
    backend: Literal["auto", "faiss", "torch"] = Field(
        "auto", description="global steps: auto = torch on a GPU when there is one, else faiss-cpu")
    seed: int = 0
    reuse_centroids: bool = Field(True, description="keep k-means centroids in <work>/global and reuse them "
                                                    "while the pool grows by at most refit_growth")
    refit_growth: float = Field(0.5, ge=0, description="refit when the pool grew by more than this fraction")


class CurateConfig(_Strict):
    clip: list[ClipModel] = Field(default_factory=list, description="scorers; the first writes clip_score")
    vectors: VectorConfig = Field(default_factory=VectorConfig)
    filters: list[Filter] = Field(default_factory=list, description="applied in order; undecodable images always drop first")
    export: ExportConfig = Field(default_factory=ExportConfig)

    @model_validator(mode="after")
    def _columns_exist(self):
        provided = {c.column for c in self.clip}
        if len(provided) != len(self.clip):
            raise ValueError("two clip scorers write the same column; give each its own 'column'")
        for f in self.filters:
            if (f.type == "clip_score" or f.type in EMBEDDING_FILTERS) and f.column not in provided:
                raise ValueError(f"filter {f.name!r} needs column {f.column!r}, but no clip scorer writes it "
                                 f"(scorers write: {sorted(provided) or 'nothing'})")
            if f.type in ("image_based", "concept") and not next(c for c in self.clip if c.column == f.column).model:
                raise ValueError(f"filter {f.name!r} embeds new images/prompts: scorer {f.column!r} needs a 'model' "
                                 "(the weights that made the precomputed embeddings)")
        return self


def load_config(source: str | Path | dict) -> CurateConfig:
    """Load and validate a config from a YAML/JSON file or a dict; raise ValueError in plain words."""
    if isinstance(source, dict):
        data, where = source, "config"
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        where = str(path)
    try:
        return CurateConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()]
        raise ValueError(f"invalid curation config {where}:\n" + "\n".join(lines)) from None


SCHEMA_FILE = Path(__file__).parent / "curate_config.schema.json"


def json_schema() -> str:
    return json.dumps(CurateConfig.model_json_schema(), indent=2) + "\n"


if __name__ == "__main__":
    SCHEMA_FILE.write_text(json_schema())
    print(f"wrote {SCHEMA_FILE}")
