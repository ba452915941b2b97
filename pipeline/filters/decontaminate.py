"""Drop pool images that copy an evaluation image: standardised 16x16 grey thumbnails within
``max_rms`` standard deviations of the nearest eval image (faiss)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.filters.base import Context, Filter, Result


class Decontaminate(Filter):
    """``eval_dirs``: task folders in CLIP_benchmark's layout, or folders of them."""
    type: Literal["decontaminate"]
    reads_captions = False
    eval_dirs: list[str] = Field(min_length=1)
    max_rms: float = Field(0.03, gt=0, le=2)

    outputs = {"copy_of": "string", "copy_rms": "float32"}
    needs_thumbs = True

    def compute(self, ctx: Context) -> Result:
        from pipeline.decontam import contaminated
        from pipeline.workdir import WorkDir

        # eval thumbnails are kept in the work folder: reruns and other configs skip re-reading the tasks
        cache = WorkDir(ctx.run).global_dir("eval_thumbs") if ctx.run is not None else None
        flags, nearest, rms = contaminated(ctx.arrays.thumbs(), self.eval_dirs, self.max_rms, cache)
        flags = flags & ctx.ok
        return Result({"": flags}, {"copy_of": nearest, "copy_rms": rms}, {"copies": int(flags.sum())})
