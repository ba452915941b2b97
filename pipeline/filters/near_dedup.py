"""Near duplicates: re-encoded, resized or cropped copies (pipeline/neardup.py). The first of a
group in pool order is kept."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.filters.base import Context, Filter, Result


class NearDedup(Filter):
    """Multi-crop thumbnail descriptors propose ``k`` candidates per image; each pair is aligned and its
    32x32 grey thumbnails compared (3x3-smoothed). A pair is a duplicate when its aligned RMS is at most
    ``max_rms`` grey levels, or at most ``ratio_max_rms`` and at most ``ratio`` times the RMS from either
    image to its nearest other look-alike (``ratio`` 0 turns that test off)."""
    type: Literal["near_dedup"]
    reads_captions = False
    max_rms: float = Field(4.5, gt=0, le=255)
    ratio: float = Field(0.75, ge=0, lt=1)
    ratio_max_rms: float = Field(7.0, gt=0, le=255)
    k: int = Field(5, ge=1, le=100)

    outputs = {"dup_of": "string", "rms": "float32"}
    needs_thumbs = True

    @model_validator(mode="after")
    def _band(self):
        if self.ratio > 0 and self.ratio_max_rms < self.max_rms:
            raise ValueError(f"near_dedup: ratio_max_rms ({self.ratio_max_rms}) is below max_rms ({self.max_rms}): "
                             "the ratio test only looks at pairs between the two; raise it or set ratio: 0")
        return self

    def compute(self, ctx: Context) -> Result:
        from pipeline.neardup import near_duplicates

        r = near_duplicates(ctx.arrays.thumbs(), ctx.ok, max_rms=self.max_rms, ratio=self.ratio,
                            ratio_max_rms=self.ratio_max_rms, k=self.k, backend=ctx.backend)
        dup = r.duplicate_of >= 0
        return Result({"": dup}, {"dup_of": ctx.uids_at(r.duplicate_of), "rms": r.rms},
                      {"duplicates": int(dup.sum())})
