"""Byte-identical images (sha256): keep the first in pool order (shard, then row), drop the rest."""
from __future__ import annotations

from typing import Literal

from pipeline.filters.base import Context, Filter, Result


class ExactDedup(Filter):
    type: Literal["exact_dedup"]
    reads_captions = False

    def compute(self, ctx: Context) -> Result:
        sha = ctx.df["sha256"].where(ctx.ok & ctx.df["sha256"].notna().to_numpy())
        dup = sha.duplicated(keep="first").to_numpy() & sha.notna().to_numpy()
        return Result({"": dup})
