"""DataComp's "basic" filter: English caption, > 2 words, > 5 characters, min side >= 200 px, aspect <= 3.

The same checks, with other settings, are the caption stages of DataComp's other baselines (each
checked uid for uid against DataComp's ``baselines.py`` by ``bench/parity.py``):
- image-based: fasttext English, ``len(fasttext.tokenize(text)) > 1`` (``words: fasttext``), > 5
  characters, no size check (``min_side: null``, ``max_aspect: null``);
- text-based: fasttext English only;
- LAION-2B: gcld3 English only (``language_model: gcld3``).
"""
from __future__ import annotations

import functools
import re
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipeline.filters.base import Context, Filter, Result

# fasttext's tokenizer (Dictionary::readWord): these bytes end a word, and each "\n" is a token of its own
# ("</s>"), so "a\nb" is 3 tokens and "a\n" 2. Unicode spaces (U+00A0, U+3000, ...) do not separate words.
_FASTTEXT_WORD = re.compile(r"[^ \n\r\t\v\f\0]+")


def fasttext_token_count(text: str) -> int:
    """``len(fasttext.tokenize(text))``, as DataComp's image-based caption filter counts words, without
    fasttext: the runs of non-separator characters, plus one end-of-line token per newline."""
    return len(_FASTTEXT_WORD.findall(text)) + text.count("\n") if text else 0


_SEPARATOR = np.zeros(256, bool)
_SEPARATOR[list(b" \n\r\t\v\f\0")] = True
TOKEN_ROWS = 1 << 18  # captions counted at a time


def fasttext_token_counts(captions: pd.Series) -> np.ndarray:
    """``fasttext_token_count`` of every caption (missing: 0), on the UTF-8 bytes, ``TOKEN_ROWS`` at a
    time: the separators are ASCII, and no byte of a multi-byte character is one, so runs of bytes
    are runs of characters. A word starts at a non-separator byte that begins a caption or follows a
    separator."""
    arr = captions.array._pa_array if isinstance(captions.array, pd.arrays.ArrowExtensionArray) \
        else pa.chunked_array([pa.array(captions.tolist(), pa.large_string(), from_pandas=True)])
    arr = pc.fill_null(arr, "").cast(pa.large_string())
    out = np.zeros(len(arr), np.int64)
    for at in range(0, len(arr), TOKEN_ROWS):
        part = arr.slice(at, TOKEN_ROWS).combine_chunks()
        offsets = np.frombuffer(part.buffers()[1], np.int64)[part.offset:part.offset + len(part) + 1]
        data = np.frombuffer(part.buffers()[2], np.uint8)[offsets[0]:offsets[-1]] if len(part) else \
            np.zeros(0, np.uint8)
        rel = offsets - offsets[0]
        sep = _SEPARATOR[data]
        start = ~sep
        start[1:] &= sep[:-1]
        heads = rel[:-1][rel[:-1] < rel[1:]]  # each non-empty caption's first byte starts a word unless a separator
        start[heads] = ~sep[heads]
        tokens = np.zeros(len(data) + 1, np.int64)
        np.cumsum(start.astype(np.int32) + (data == 10), out=tokens[1:])
        out[at:at + len(part)] = tokens[rel[1:]] - tokens[rel[:-1]]
    return out


def gcld3_english(captions: pd.Series) -> np.ndarray:
    """DataComp's LAION-2B language check: gcld3's ``NNetLanguageIdentifier(min_num_bytes=0,
    max_num_bytes=1000)`` on the caption with newlines as spaces; English = top language ``en`` (no
    reliability threshold). A missing caption is ''. Each distinct caption is identified once."""
    model = _gcld3()
    codes, uniq = pd.factorize(captions.fillna("").astype(str))
    en = np.array([model.FindLanguage(text=t.replace("\n", " ")).language == "en" for t in uniq], bool)
    return en[codes] if len(codes) else np.zeros(0, bool)


@functools.lru_cache(maxsize=1)
def _gcld3():
    try:
        import gcld3
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("language_model: gcld3 needs the gcld3 package (pip install 'curate[datacomp]'; it builds "
                           "from source: apt-get install protobuf-compiler libprotobuf-dev first)") from e
    return gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)


class Basic(Filter):
    """Each check is its own reason ``basic:<check>``. Sizes are the original image's
    (``original_width/height`` from the sample json or metadata). The sample pool's originals are
    28-128 px: use ``min_side: 24`` there. ``min_side`` / ``max_aspect`` null: no size check (an
    unknown size then passes, as in DataComp's baselines that do not look at sizes).

    Word counts: ``split`` is Python's ``len(text.split())`` (DataComp's basic filter), ``fasttext``
    is ``len(fasttext.tokenize(text))`` (DataComp's image-based caption filter: only ASCII whitespace
    separates words and every newline counts as a token). ``fasttext`` counts the caption as stored
    (cut at pipeline.ingest.MAX_CAPTION_CHARS), so a caption longer than that whose later words matter
    can count differently; character counts are of the whole caption either way.

    ``language_model: gcld3`` (DataComp's LAION-2B reproduction) identifies the caption as stored
    (see above; gcld3 itself reads at most the first 10,000 bytes).

    Deviation from DataComp, kept on purpose: a caption of only whitespace has no language here
    (pipeline.ingest.caption_languages), while fasttext labels the empty line ``en`` (p = 0.12), so with
    ``words: fasttext`` DataComp's image-based caption filter keeps a caption of six newlines (six
    tokens, six characters, "English"). That is a plain bug: there is no caption. Every other DataComp
    baseline drops such a caption anyway (no words, or gcld3 does not say ``en``)."""
    type: Literal["basic"]
    english: bool = Field(True, description="the caption must be English (top-1 language of language_model)")
    language_model: Literal["fasttext", "gcld3"] = Field(
        "fasttext", description="fasttext: lid.176 (caption_lang; DataComp's basic, text- and image-based); "
                                "gcld3: DataComp's LAION-2B reproduction")
    min_lang_score: float = Field(0.0, ge=0, le=1, description="and its probability at least this (fasttext)")
    words: Literal["split", "fasttext"] = Field("split", description="how words are counted (see the class doc)")
    min_words: int = Field(3, ge=0, description="DataComp: more than 2 words")
    min_chars: int = Field(6, ge=0, description="DataComp: more than 5 characters")
    min_side: int | None = Field(200, ge=0, description="smaller side of the original image, pixels; null: no check")
    max_aspect: float | None = Field(3.0, ge=1, description="longer side / shorter side; null: no check")

    checks = ("language", "caption_words", "caption_chars", "min_side", "aspect_ratio")

    def check(self) -> None:
        if self.language_model == "gcld3":
            _gcld3()

    def needs_languages(self) -> bool:
        return self.english and self.language_model == "fasttext"

    def compute(self, ctx: Context) -> Result:
        df = ctx.df
        n = len(df)
        w = df["original_width"].astype("float64").to_numpy()
        h = df["original_height"].astype("float64").to_numpy()
        if self.words == "fasttext":
            words = fasttext_token_counts(df["caption"])
        else:
            words = df["caption_words"].to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            aspect = np.maximum(w, h) / np.minimum(w, h)
            fails = {"caption_words": words < self.min_words,
                     "caption_chars": df["caption_chars"].to_numpy() < self.min_chars,
                     # unknown size fails
                     "min_side": ~(np.minimum(w, h) >= self.min_side) if self.min_side is not None
                     else np.zeros(n, bool),
                     "aspect_ratio": ~(aspect <= self.max_aspect) if self.max_aspect is not None
                     else np.zeros(n, bool)}
        if self.english:
            if self.language_model == "gcld3":
                lang_ok = gcld3_english(df["caption"])
            else:
                lang_ok = ((df["caption_lang"] == "en").to_numpy()
                           & (df["caption_lang_score"].to_numpy() >= self.min_lang_score))
            fails = {"language": ~lang_ok, **fails}
        return Result(fails)
