"""D² pruning (Maharana et al., 2023): message passing over a k-NN graph, then reverse selection."""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.filters.base import Context, Filter, Result
from pipeline.filters.clip_score import tag


class D2Pruning(Filter):
    """k-NN graph over image+text embeddings of scorer ``column``, the CLIP score as difficulty,
    forward message passing (``gamma_f``) then reverse selection (``gamma_r``) until ``budget`` (a
    fraction of the decodable samples) is selected."""
    type: Literal["d2_pruning"]
    reads_captions = False
    column: str = "clip_score"
    budget: float = Field(gt=0, le=1)
    k: int = Field(10, ge=1, le=200)
    gamma_f: float = Field(1.0, ge=0)
    gamma_r: float = Field(1.0, ge=0)

    outputs = {"score": "float32"}
    reads_embeddings = True

    def default_name(self) -> str:
        return f"d2_pruning[{tag(self.column)}{self.budget:g}]"

    def compute(self, ctx: Context) -> Result:
        from pipeline.d2 import d2_select

        r = d2_select(ctx.arrays.image(self.column), ctx.arrays.text(self.column),
                      ctx.df[self.column].to_numpy(np.float32), self.budget, self.k, self.gamma_f, self.gamma_r,
                      valid=ctx.ok, seed=ctx.seed, backend=ctx.backend)
        return Result({"": ~r["selected"]}, {"score": r["score"]},
                      {"budget": self.budget, "selected": int(r["selected"].sum())})
