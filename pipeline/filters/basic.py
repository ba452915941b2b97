"""DataComp's "basic" filter: English caption, > 2 words, > 5 characters, min side >= 200 px, aspect <= 3."""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.filters.base import Context, Filter, Result


class Basic(Filter):
    """Each check is its own reason ``basic:<check>``. Sizes are the original image's
    (``original_width/height`` from the sample json or metadata). The sample pool's originals are
    28-128 px: use ``min_side: 24`` there."""
    type: Literal["basic"]
    english: bool = Field(True, description="caption_lang must be 'en' (fasttext lid.176 top-1)")
    min_lang_score: float = Field(0.0, ge=0, le=1, description="and its probability at least this")
    min_words: int = Field(3, ge=0, description="DataComp: more than 2 words")
    min_chars: int = Field(6, ge=0, description="DataComp: more than 5 characters")
    min_side: int = Field(200, ge=0, description="smaller side of the original image, pixels")
    max_aspect: float = Field(3.0, ge=1, description="longer side / shorter side")

    checks = ("language", "caption_words", "caption_chars", "min_side", "aspect_ratio")

    def needs_languages(self) -> bool:
        return self.english

    def compute(self, ctx: Context) -> Result:
        df = ctx.df
        w = df["original_width"].astype("float64").to_numpy()
        h = df["original_height"].astype("float64").to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            aspect = np.maximum(w, h) / np.minimum(w, h)
            fails = {"caption_words": df["caption_words"].to_numpy() < self.min_words,
                     "caption_chars": df["caption_chars"].to_numpy() < self.min_chars,
                     "min_side": ~(np.minimum(w, h) >= self.min_side),  # unknown size fails
                     "aspect_ratio": ~(aspect <= self.max_aspect)}
        if self.english:
            lang_ok = ((df["caption_lang"] == "en").to_numpy()
                       & (df["caption_lang_score"].to_numpy() >= self.min_lang_score))
            fails = {"language": ~lang_ok, **fails}
        return Result(fails)
