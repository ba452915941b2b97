"""Content described in words: max cosine between a sample's image embedding and the prompts' text
embeddings."""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.filters.base import Context, Filter, Result


class Concept(Filter):
    """``keep: above`` keeps samples scoring >= threshold (wanted content), ``below`` keeps those under
    it (unwanted content, e.g. prompts describing watermarks)."""
    type: Literal["concept"]
    reads_captions = False
    concept: str = Field(pattern=r"^[a-z0-9_]+$", description="short name, part of the instance name")
    column: str = "clip_score"
    prompts: list[str] = Field(min_length=1)
    threshold: float = Field(ge=-1, le=1)
    keep: Literal["above", "below"] = "above"

    outputs = {"score": "float32"}
    reads_embeddings = True
    needs_model = True

    def default_name(self) -> str:
        return f"concept[{self.concept}]"

    def compute(self, ctx: Context) -> Result:
        from pipeline.targets import concept_score

        score = concept_score(ctx.arrays.image(self.column), ctx.ok, ctx.scorer(self.column).embed_texts(self.prompts))
        with np.errstate(invalid="ignore"):
            passes = score >= self.threshold if self.keep == "above" else score < self.threshold
        return Result({"": ~passes}, {"score": score}, {"threshold": self.threshold, "keep": self.keep})
