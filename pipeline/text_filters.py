"""Row-wise DataComp baselines on ingest columns: basic, exact dedup, text-based (class names)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd


def basic_fails(df: pd.DataFrame, f) -> list[tuple[str, np.ndarray]]:
    w = df["original_width"].astype("float64").to_numpy()
    h = df["original_height"].astype("float64").to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        aspect = np.maximum(w, h) / np.minimum(w, h)
        out = [("basic:caption_words", df["caption_words"].to_numpy() < f.min_words),
               ("basic:caption_chars", df["caption_chars"].to_numpy() < f.min_chars),
               ("basic:min_side", ~(np.minimum(w, h) >= f.min_side)),  # unknown size fails
               ("basic:aspect_ratio", ~(aspect <= f.max_aspect))]
    if f.english:
        lang_ok = (df["caption_lang"] == "en").to_numpy() & (df["caption_lang_score"].to_numpy() >= f.min_lang_score)
        out.insert(0, ("basic:language", ~lang_ok))
    return out


def exact_duplicates(df: pd.DataFrame) -> np.ndarray:
    """True for every decodable row whose image bytes appeared earlier in pool order."""
    ok = df["decode_error"].isna() & df["sha256"].notna()
    dup = df["sha256"].where(ok).duplicated(keep="first") & ok
    return dup.to_numpy()


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
    """Whole-word, case-insensitive match of any class name (plural 's'/'es' allowed)."""
    alts = sorted({re.escape(n.lower()) for n in names if n.strip()}, key=len, reverse=True)
    rx = re.compile(r"(?<![\w-])(?:" + "|".join(alts) + r")(?:s|es)?(?![\w-])")
    return captions.fillna("").str.lower().map(lambda c: rx.search(c) is not None).to_numpy(bool)
