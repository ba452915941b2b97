"""SemDeDup (Abbas et al., 2023) over a scorer's image embeddings."""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.filters.base import Context, Filter, Result
from pipeline.filters.clip_score import tag


class SemanticDedup(Filter):
    """``clusters`` k-means clusters; inside each, an item more similar than ``1 - eps`` to an item kept
    before it is dropped. Keep order: ``farthest`` from the centroid first (SemDeDup), highest
    ``score`` first, or pool ``first``."""
    type: Literal["semantic_dedup"]
    reads_captions = False
    column: str = "clip_score"
    clusters: int = Field(100, ge=1)
    eps: float = Field(0.05, gt=0, lt=1)
    keep: Literal["farthest", "score", "first"] = "farthest"

    outputs = {"cluster": "int32", "dup_of": "string", "max_sim": "float32"}
    reads_embeddings = True

    def default_name(self) -> str:
        return f"semantic_dedup[{tag(self.column)}eps{self.eps:g}]"

    def compute(self, ctx: Context) -> Result:
        from pipeline.semdedup import semdedup

        score = ctx.df[self.column].to_numpy(np.float32) if self.keep == "score" else None
        status: dict = {}
        r = semdedup(ctx.arrays.image(self.column), self.clusters, self.eps, self.keep, score, ctx.ok,
                     seed=ctx.seed, backend=ctx.backend, fit=ctx.fitter(self, status))
        dup = r["duplicate_of"] >= 0
        return Result({"": dup}, {"cluster": r["cluster"], "dup_of": ctx.uids_at(r["duplicate_of"]),
                                  "max_sim": r["max_sim"]},
                      {"clusters": self.clusters, "eps": self.eps, "duplicates": int(dup.sum()), **status})
