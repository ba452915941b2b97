"""CLIP score (DataComp): keep the top ``fraction`` of the pool by one global threshold, or score >= ``threshold``."""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.filters.base import Context, Filter, Result


def tag(column: str) -> str:
    """``clip_score_l14`` -> ``l14,``; the default column adds nothing to a name."""
    return "" if column == "clip_score" else column.removeprefix("clip_score_") + ","


def top_fraction_threshold(scores: np.ndarray, fraction: float, count_missing: bool = True) -> float:
    """DataComp's rule (``baselines/apply_filter.py``, ``get_threshold``): ``n = int(len(scores) * fraction)``
    over every row, missing (NaN) scores included; ``t = -np.sort(-scores)[n]``, which puts NaN last, so
    ``t`` is the (n+1)-th highest non-NaN score (+/-inf are ordinary values); keep ``score >= t``
    (ties at the cutoff kept). The scores keep their dtype (a float64 column's cutoff is not rounded).

    Deviation, where DataComp's rule breaks: when ``n`` reaches past the non-NaN scores (many missing
    scores, or ``fraction`` 1.0), DataComp's cutoff is NaN (``score >= NaN`` keeps nothing) or an
    IndexError (``fraction`` 1.0: ``n == len``); here it is the lowest non-NaN score, so every scored row is
    kept. No score at all: +inf (nothing kept).

    ``count_missing=False`` (scores computed here, not listed with the pool: NaN means the image never
    decoded, so it was never a candidate): n counts the finite scores only, over the finite scores."""
    scores = np.asarray(scores)
    if count_missing:
        valid = scores[~np.isnan(scores)] if np.issubdtype(scores.dtype, np.floating) else scores
        total = scores.size
    else:
        valid = scores[np.isfinite(scores)]
        total = valid.size
    if valid.size == 0:
        return float("inf")
    n = min(int(total * fraction), valid.size - 1)
    k = valid.size - 1 - n  # the (n+1)-th highest is the (k+1)-th lowest: one partition, not a sort
    return float(np.partition(valid, k)[k])


class ClipScore(Filter):
    """Keep samples whose CLIP score is in the top ``fraction`` of the pool, or >= ``threshold``."""
    type: Literal["clip_score"]
    reads_captions = False
    column: str = "clip_score"
    fraction: float | None = Field(None, gt=0, le=1)
    threshold: float | None = Field(None, ge=-1, le=1)

    @model_validator(mode="after")
    def _one_of(self):
        if (self.fraction is None) == (self.threshold is None):
            raise ValueError("clip_score filter needs exactly one of 'fraction' or 'threshold'")
        return self

    def default_name(self) -> str:
        rule = f"top{self.fraction:g}" if self.fraction is not None else f">={self.threshold:g}"
        return f"clip_score[{tag(self.column)}{rule}]"

    def compute(self, ctx: Context) -> Result:
        scores = ctx.df[self.column].to_numpy()
        # DataComp: the cutoff is over the pool's metadata, every row with a score (listed rows that were
        # never downloaded included, when the scores came with the metadata)
        pool = ctx.arrays.pool_scores(self.column) if ctx.arrays is not None else None
        over = pool if pool is not None else scores
        t = float(self.threshold) if self.threshold is not None else top_fraction_threshold(
            over, self.fraction, count_missing=pool is not None)
        with np.errstate(invalid="ignore"):
            fails = ~(scores >= t)  # NaN fails too
        return Result({"": fails}, info={"column": self.column, "threshold": t, "fraction": self.fraction,
                                         "cutoff_over": "metadata" if pool is not None else "samples",
                                         "cutoff_rows": int(np.size(over)),
                                         "cutoff_scored_rows": int((~np.isnan(np.asarray(over, float))).sum())})
