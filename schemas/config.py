"""The curation config's fixed parts: scorers, vector settings, export. The filters' configs live
with the filters (pipeline/filters/); pipeline/config.py joins them and loads files."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.checkpoint import DEMO_SCORER, demo_scorer_path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClipModel(_Strict):
    """An open_clip scorer: a name / JSON config / checkpoint folder, plus an optional weights file.
    With ``precomputed`` (DataComp pools), scores and embeddings are read from each shard's sidecar
    ``<shard>.parquet`` (``clip_<tag>_similarity_score``) and ``<shard>.npz`` (``<tag>_img``,
    ``<tag>_txt``) instead of running a model; ``model`` is then only needed by filters that embed
    something new (image-based targets, concept prompts)."""
    model: str | None = Field(None, description="open_clip name, project preset, JSON config, or checkpoint folder "
                              "(each may be a URL: copied once into a local cache); "
                              f"'{DEMO_SCORER}' is the filtering network `curate demo` trains ({demo_scorer_path()})")
    precomputed: Literal["b32", "l14"] | None = Field(
        None, description="read DataComp's precomputed scores/embeddings for this model instead")
    checkpoint: str | None = Field(None, description="weights file for a named model (a path or URL; offline)")
    column: str = Field("clip_score", pattern=r"^clip_score(_[a-z0-9]+)?$",
                        description="score column written: clip_score or clip_score_<tag>")
    batch_size: int | None = Field(None, gt=0, description="images a batch; default 1024 on a GPU, 256 on a CPU")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the scorer runs; auto: cuda when "
                                                                        "there is a GPU, else cpu")
    decode: Literal["auto", "cpu", "device"] = Field(
        "auto", description="where JPEGs are decoded and resized: auto = on the scorer's GPU when torchvision's "
                            "decode_jpeg works there (nvJPEG), else on CPU workers; device = with decode_jpeg on "
                            "the scorer's device (also on a CPU); PNG/WebP/GIF/CMYK/refused JPEGs always on the CPU")
    compile: bool = Field(False, description="torch.compile the image tower (GPU; the first batches compile)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU, fp32 on a CPU; bf16 on a CPU with AVX-512 BF16 "
                            "runs the forward pass 2-2.7x faster (scores move by < 0.01)")

    @model_validator(mode="after")
    def _source(self):
        if self.model == DEMO_SCORER:
            self.model = demo_scorer_path()
        if self.model is None and self.precomputed is None:
            raise ValueError("a clip scorer needs 'model' (open_clip) or 'precomputed' (b32 / l14 sidecar files)")
        return self


# settings that change how fast scores come, not what they are: left out of cache keys
# (device decode: scores within 0.01 of the CPU path's, tests/test_gpu_path.py)
RUNTIME_FIELDS = {"batch_size", "device", "decode", "compile"}


class ExportConfig(_Strict):
    samples_per_shard: int = Field(10_000, gt=0)
    metadata: Literal["full", "decisions"] = Field(
        "full", description="metadata.parquet: 'full' holds every column of every sample; 'decisions' leaves "
                            "out the pool's own (url, caption, sha256, sizes, caption counts), which join back "
                            "by uid: a pool's metadata is not copied again (faster and smaller at scale)")


class VectorConfig(_Strict):
    backend: Literal["auto", "faiss", "torch"] = Field(
        "auto", description="global steps: auto = torch on a GPU when there is one, else faiss-cpu")
    seed: int = 0
    reuse_centroids: bool = Field(True, description="keep k-means centroids in <work>/global and reuse them "
                                                    "while the pool grows by at most refit_growth")
    refit_growth: float = Field(0.5, ge=0, description="refit when the pool grew by more than this fraction")


class CurateBase(_Strict):
    """Scorers, vector settings and export; pipeline/config.py adds the filters (pipeline/filters/)."""
    clip: list[ClipModel] = Field(default_factory=list, description="scorers; each writes its own score column")
    vectors: VectorConfig = Field(default_factory=VectorConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    languages: bool = Field(False, description="identify every caption's language (caption_lang) even when no "
                                               "filter reads it; otherwise only when one does (the basic filter)")
