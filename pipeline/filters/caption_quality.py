"""CC3M's Alt-text rules (Sharma et al., ACL 2018, section 3): each rule is its own check
(``caption_quality:<rule>``) and writes its score. Tagger, WordNet and word lists: pipeline/captions.py."""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.filters.base import Context, Filter, Result

PosClass = Literal["noun", "verb", "adjective", "determiner", "preposition"]


class CaptionQuality(Filter):
    """CC3M publishes its rules but no numbers; where it says which tags or which case, the default
    is CC3M's; where it only says "high" or "too many", the default is ours and says so.

    - ``pos_coverage``: a required part of speech is missing. CC3M: "candidates with no determiner,
      no noun, or no preposition are discarded" (the default).
    - ``noun_ratio``: nouns / words above ``max_noun_ratio``. CC3M: "a high noun ratio"; 0.8 is ours
      (keyword lists are nouns only; "a dog on a beach" is 0.4).
    - ``unique_words``: distinct / all words below ``min_unique_ratio``. CC3M: "a high unique word
      ratio"; 0.5 is ours.
    - ``repetition``: one content word (noun, verb, adjective, adverb) more than ``max_repeats``
      times. CC3M: "a high rate of token repetition"; 2 is ours.
    - ``capitalization``: CC3M discards captions whose first word is not capitalized
      (``first_capital``, default on) or with "too high capitalized-word ratio": words after the
      first that are capitalised, above ``max_capital_ratio`` (0.5, ours); ALL-CAPS always fails.
    - ``nsfw``: a word from the built-in list (pipeline/captions.py ``NSFW``) or ``blocklist``. CC3M
      used porn/profanity classifiers.
    - ``boilerplate``: placeholder alt-text ("untitled", "image"), file names (IMG_1234.jpg), URLs,
      stock phrases ("click to enlarge", "stock photo": CC3M's examples), no letters at all.
    - ``keyword_list``: more than ``max_segments`` comma / pipe / hashtag separated pieces (SEO
      keyword lists; CC3M: "SEO tags or hashtags"); 3 is ours.
    - ``vocabulary``: share of words outside the vocabulary above ``max_oov_ratio``. CC3M discards
      any token outside the 1B word types seen >= 5 times in English Wikipedia (0, the default);
      ours is the tagger's lexicon + WordNet (146k words), so names and brands count as unknown.
      ``null`` turns the rule off.
    """
    type: Literal["caption_quality"]
    require_pos: list[PosClass] = Field(["noun", "determiner", "preposition"], description="CC3M")
    max_noun_ratio: float = Field(0.8, ge=0, le=1)
    min_unique_ratio: float = Field(0.5, ge=0, le=1)
    max_repeats: int = Field(2, ge=1)
    first_capital: bool = Field(True, description="CC3M")
    max_capital_ratio: float = Field(0.5, ge=0, le=1)
    blocklist: list[str] = Field([], description="extra words for the nsfw check (lower case)")
    max_segments: int = Field(3, ge=1)
    max_oov_ratio: float | None = Field(0.0, ge=0, le=1, description="CC3M: 0 (any unknown word); null: off")

    checks = ("pos_coverage", "noun_ratio", "unique_words", "repetition", "capitalization", "nsfw", "boilerplate",
              "keyword_list", "vocabulary")
    outputs = {"pos_coverage": "float32", "noun_ratio": "float32", "unique_ratio": "float32", "max_repeat": "int32",
               "capital_ratio": "float32", "nsfw_hits": "int32", "boilerplate": "string", "segments": "int32",
               "oov_ratio": "float32"}

    def compute(self, ctx: Context) -> Result:
        from pipeline.captions import NSFW, scores, vocabulary

        vocab = vocabulary() if self.max_oov_ratio is not None else frozenset()
        block = frozenset(NSFW) | {w.lower() for w in self.blocklist}
        captions = ctx.df["caption"].fillna("").astype(str).tolist()
        cache: dict[str, dict] = {}
        for c in captions:
            if c not in cache:
                cache[c] = scores(c, vocab, block)
        rows = [cache[c] for c in captions]

        def col(k, dtype=np.float32):
            return np.array([r[k] for r in rows], dtype=dtype)

        need = set(self.require_pos)
        cover = np.array([len(need & r["classes"]) / len(need) if need else 1.0 for r in rows], np.float32)
        caps = col("capital_ratio")
        bad_case = (caps > self.max_capital_ratio) | col("all_caps", bool)
        if self.first_capital:
            bad_case |= ~col("first_capital", bool)
        oov = col("oov_ratio")
        no_oov = np.zeros(len(rows), bool)
        fails = {"pos_coverage": cover < 1.0,
                 "noun_ratio": col("noun_ratio") > self.max_noun_ratio,
                 "unique_words": col("unique_ratio") < self.min_unique_ratio,
                 "repetition": col("max_repeat", np.int32) > self.max_repeats,
                 "capitalization": bad_case,
                 "nsfw": col("nsfw_hits", np.int32) > 0,
                 "boilerplate": np.array([r["boilerplate"] is not None for r in rows], bool),
                 "keyword_list": col("segments", np.int32) > self.max_segments,
                 "vocabulary": oov > self.max_oov_ratio if self.max_oov_ratio is not None else no_oov}
        columns = {"pos_coverage": cover, "noun_ratio": col("noun_ratio"), "unique_ratio": col("unique_ratio"),
                   "max_repeat": col("max_repeat", np.int32), "capital_ratio": caps,
                   "nsfw_hits": col("nsfw_hits", np.int32), "boilerplate": [r["boilerplate"] for r in rows],
                   "segments": col("segments", np.int32), "oov_ratio": oov}
        info = {"distinct_captions": len(cache), **{f"failing_{k}": int((v & ctx.ok).sum()) for k, v in fails.items()}}
        return Result(fails, columns, info)
