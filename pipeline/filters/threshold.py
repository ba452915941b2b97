"""Threshold on a score column a stage writes (a head's, pipeline/stages/head.py): keep rows whose
score is >= ``min`` and/or <= ``max``, or in the top ``fraction`` of the scored rows. A missing (NaN)
score fails."""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.filters.base import Context, Filter, Result
from pipeline.filters.clip_score import top_fraction_threshold


class Threshold(Filter):
    type: Literal["threshold"]
    reads_captions = False
    column: str = Field(description="a score column written by a configured stage (e.g. a head's name)")
    min: float | None = Field(None, description="keep score >= min")
    max: float | None = Field(None, description="keep score <= max (e.g. an NSFW probability)")
    fraction: float | None = Field(None, gt=0, le=1, description="keep the top fraction of scored rows")

    @model_validator(mode="after")
    def _rule(self):
        if self.fraction is not None and (self.min is not None or self.max is not None):
            raise ValueError("threshold filter: give 'fraction', or 'min' / 'max', not both")
        if self.fraction is None and self.min is None and self.max is None:
            raise ValueError("threshold filter needs 'min', 'max' or 'fraction'")
        return self

    def default_name(self) -> str:
        if self.fraction is not None:
            return f"threshold[{self.column},top{self.fraction:g}]"
        rule = ",".join(r for r in (f">={self.min:g}" if self.min is not None else "",
                                     f"<={self.max:g}" if self.max is not None else "") if r)
        return f"threshold[{self.column}{rule}]"

    def scorer_columns(self) -> list[str]:
        return []  # not a scorer's column: a stage's

    def stage_columns(self) -> list[str]:
        return [self.column]

    def compute(self, ctx: Context) -> Result:
        scores = ctx.df[self.column].to_numpy(np.float64, na_value=np.nan)
        lo = top_fraction_threshold(scores, self.fraction, count_missing=False) if self.fraction else self.min
        with np.errstate(invalid="ignore"):
            keep = ~np.isnan(scores)
            if lo is not None:
                keep &= scores >= lo
            if self.max is not None:
                keep &= scores <= self.max
        return Result({"": ~keep}, info={"column": self.column, "threshold": lo, "max": self.max,
                                         "fraction": self.fraction, "kept": int((keep & ctx.ok).sum())})
