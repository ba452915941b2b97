"""DataComp's image-based filter: k-means over the pool's image embeddings; the clusters nearest to
the ``targets`` images (DataComp used ImageNet-1k train) are kept."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.filters.base import Context, Filter, Result
from pipeline.filters.clip_score import tag


class ImageBased(Filter):
    """``targets``: shards, task folders or image folders (embedded by the column's scorer), or ``.npy``
    files of target image embeddings from the model that made the column's embeddings (no model
    needed then: a metadata-only pool's precomputed embeddings are enough)."""
    type: Literal["image_based"]
    column: str = "clip_score"
    targets: list[str] = Field(min_length=1)
    clusters: int = Field(1000, ge=1)
    niter: int = Field(20, ge=1)
    max_targets: int | None = Field(None, gt=0, description="embed at most this many target images")

    outputs = {"cluster": "int32"}

    @property
    def needs_model(self) -> bool:
        from pipeline.targets import is_embeddings

        return not all(is_embeddings(t) for t in self.targets)

    def default_name(self) -> str:
        return f"image_based[{tag(self.column)}k{self.clusters}]"

    def compute(self, ctx: Context) -> Result:
        from pipeline.targets import image_based, target_embeddings

        targets = target_embeddings(lambda: ctx.scorer(self.column), self.targets, self.max_targets)
        status: dict = {}
        keep, cluster, n_target = image_based(ctx.arrays.image(self.column), ctx.ok, targets, self.clusters,
                                              self.niter, ctx.seed, ctx.backend, fit=ctx.fitter(self, status))
        return Result({"": ~keep}, {"cluster": cluster},
                      {"clusters": self.clusters, "target_images": len(targets), "target_clusters": n_target,
                       **status})
