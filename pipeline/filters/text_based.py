"""DataComp's text-based filter: keep captions that name a target class (whole words, any case,
plural 's'/'es' allowed). Classes: a classnames file, a task folder holding one, or a list; default
open_clip's ImageNet-1k class names."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from pipeline.filters.base import Context, Filter, Result


def class_names(source: str | list[str] | None) -> list[str]:
    if isinstance(source, list):
        return source
    if source is None:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    p = Path(source)
    p = p / "classnames.txt" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"text_based filter: no class names at {source} (a file, or a folder with classnames.txt)")
    return [x.strip() for x in p.read_text().splitlines() if x.strip()]


def mentions(captions: pd.Series, names: list[str]) -> np.ndarray:
    alts = sorted({re.escape(n.lower()) for n in names if n.strip()}, key=len, reverse=True)
    if not alts:
        return np.zeros(len(captions), bool)
    rx = re.compile(r"(?<![\w-])(?:" + "|".join(alts) + r")(?:s|es)?(?![\w-])")
    return captions.fillna("").str.lower().map(lambda c: rx.search(c) is not None).to_numpy(bool)


class TextBased(Filter):
    type: Literal["text_based"]
    classnames: str | list[str] | None = Field(None, description="file, task folder, or list of names")

    def compute(self, ctx: Context) -> Result:
        names = class_names(self.classnames)
        return Result({"": ~mentions(ctx.df["caption"], names)}, info={"classes": len(names)})
