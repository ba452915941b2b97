"""DataComp's image-based filter: k-means over the pool's image embeddings; the clusters nearest to
the ``targets`` images (DataComp used ImageNet-1k train) are kept.

DataComp's baseline does not fit k-means on the pool it filters: it loads published centroids (100,000
for the small pool, fit once with faiss on the caption-filtered pool's L/14 image embeddings) and the
ImageNet-1k train embeddings. Given the same two (``centroids:`` and ``targets:``), this filter keeps
uid for uid what DataComp's ``image_based`` keeps (bench/parity.py checks it) together with the caption
stage of the ``datacomp/image-based`` preset. Without ``centroids`` it fits its own spherical k-means
(pipeline/vectors.py) on every usable row, which no run of DataComp's reproduces exactly.

Deviation from DataComp with given centroids: a row whose embedding is NaN, inf or all zero is not
assigned (cluster -1, dropped); DataComp's argmax puts it in centroid 0 (a NaN similarity wins) and
keeps it when centroid 0 is a target's. That is a plain bug: such a row has no image content to match."""
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
    reads_captions = False
    column: str = "clip_score"
    targets: list[str] = Field(min_length=1)
    clusters: int = Field(1000, ge=1)
    niter: int = Field(20, ge=1)
    max_targets: int | None = Field(None, gt=0, description="embed at most this many target images")
    centroids: str | None = Field(None, description="given pool centroids (.npy, or DataComp's *_centroids_l14.pt): "
                                                    "no k-means; rows and targets go to the centroid of largest "
                                                    "dot product, as DataComp's baseline assigns them")
    survivors_only: bool = Field(False, description="cluster and judge only the rows every earlier filter keeps, "
                                                    "as DataComp's baseline does (far less work after a CLIP "
                                                    "score filter); the others get cluster -1 and no "
                                                    "image_based entry in drop_reasons")

    outputs = {"cluster": "int32"}
    reads_embeddings = True

    @property
    def needs_model(self) -> bool:
        from pipeline.targets import is_embeddings

        return not all(is_embeddings(t) for t in self.targets)

    def default_name(self) -> str:
        return f"image_based[{tag(self.column)}{'given' if self.centroids else f'k{self.clusters}'}]"

    def compute(self, ctx: Context) -> Result:
        from pipeline.targets import image_based, image_based_given, load_centroids, target_embeddings

        targets = target_embeddings(lambda: ctx.scorer(self.column), self.targets, self.max_targets)
        valid = ctx.survivors() if self.survivors_only else ctx.ok
        judged = {"rows_judged": int(valid.sum())} if self.survivors_only else {}
        if self.centroids:
            cent = load_centroids(self.centroids)
            keep, cluster, n_target = image_based_given(ctx.arrays.image(self.column), valid, targets, cent)
            return Result({"": ~keep & valid}, {"cluster": cluster},
                          {"clusters": int(len(cent)), "centroids": "given", "target_images": len(targets),
                           "target_clusters": n_target, **judged})
        status: dict = {}
        keep, cluster, n_target = image_based(ctx.arrays.image(self.column), valid, targets, self.clusters,
                                              self.niter, ctx.seed, ctx.backend, fit=ctx.fitter(self, status))
        return Result({"": ~keep & valid}, {"cluster": cluster},
                      {"clusters": self.clusters, "target_images": len(targets), "target_clusters": n_target,
                       **judged, **status})
