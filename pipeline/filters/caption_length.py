"""Caption length in words: drop captions shorter than ``min_words`` or longer than ``max_words``
(boilerplate lists of keywords and pasted page text are long; alt-text stubs are short)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.filters.base import Context, Filter, Result


class CaptionLength(Filter):
    type: Literal["caption_length"]
    min_words: int = Field(2, ge=0)
    max_words: int = Field(60, ge=1)

    checks = ("too_short", "too_long")
    outputs = {"words": "int32"}

    def default_name(self) -> str:
        return f"caption_length[{self.min_words},{self.max_words}]"

    def compute(self, ctx: Context) -> Result:
        words = ctx.df["caption"].fillna("").str.split().str.len().to_numpy()
        return Result({"too_short": words < self.min_words, "too_long": words > self.max_words}, {"words": words})
