"""Text-based filters: keep captions that name a target class.

``rule: wordnet`` is DataComp's text-based baseline (``baselines/apply_filter.py``,
``does_contain_text_entity``), checked uid for uid against it by ``bench/parity.py``: the caption is
split on whitespace (``text.split()``), each word is looked up in WordNet 3.0 as NLTK's
``wordnet.synsets(word)`` does (lower-cased, NLTK 3.10's ``morphy`` with the exception lists, parts of
speech in the order noun, verb, adjective, adverb), and the caption is kept when the offset of the
word's *first* synset is one of the ImageNet-21k synsets (``synsets``: a file of ``n########`` ids,
default the 21,843-id list that timm ships, byte-identical to DataComp's ``imagenet21k_wordnet_ids.txt``).
Pair it with ``basic`` (English only) as the ``datacomp/text-based`` preset does. It reads the caption
as stored, cut at pipeline.ingest.MAX_CAPTION_CHARS (4,096) characters: a longer caption whose only
ImageNet word comes after the cut is dropped here and kept by DataComp, which reads the whole text.

``rule: classnames`` (the default): whole-word mentions of class names (any case, plural 's'/'es'
allowed). Classes: a classnames file, a task folder holding one, or a list; default open_clip's
ImageNet-1k class names."""
from __future__ import annotations

import functools
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


# NLTK 3.10's WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS
SUBSTITUTIONS = {
    "n": [("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}
POS_ORDER = ("n", "v", "a", "r")  # NLTK's POS_LIST: synsets() lists nouns first
FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}


class WordNetIndex:
    """The lemma -> part of speech -> synset offsets map and the exception lists of a WordNet 3.0
    database folder (``index.*``, ``*.exc``; wndb(5WN)), read as NLTK's reader reads them."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.index: dict[str, dict[str, list[int]]] = {}
        self.exceptions: dict[str, dict[str, list[str]]] = {}
        for pos, suffix in FILES.items():
            path = self.root / f"index.{suffix}"
            if not path.is_file():
                from pipeline.captions import WORDNET_PKG

                raise FileNotFoundError(f"text_based rule wordnet: no {path} (WordNet 3.0: {WORDNET_PKG}, "
                                        f"or set wordnet: to a folder holding index.noun, noun.exc, ...)")
            with open(path, encoding="utf8") as f:
                for line in f:
                    if line.startswith(" "):
                        continue
                    t = line.split()
                    n, p = int(t[2]), int(t[3])
                    self.index.setdefault(t[0], {})[t[1]] = [int(x) for x in t[4 + p + 2: 4 + p + 2 + n]]
            exc = self.root / f"{suffix}.exc"
            self.exceptions[pos] = {}
            if exc.is_file():
                with open(exc, encoding="utf8") as f:
                    for line in f:
                        terms = line.split()
                        if terms:
                            self.exceptions[pos][terms[0]] = terms[1:]

    def morphy(self, form: str, pos: str) -> list[str]:
        """NLTK 3.10's ``_morphy``: the exception list's forms, else one round of the substitutions;
        the word itself first; those WordNet has under ``pos``."""
        if form in self.exceptions[pos]:
            forms = self.exceptions[pos][form]
        else:
            forms = [form[:-len(old)] + new for old, new in SUBSTITUTIONS[pos] if form.endswith(old)]
        out: list[str] = []
        for f in [form, *forms]:
            if pos in self.index.get(f, {}) and f not in out:
                out.append(f)
        return out

    @functools.lru_cache(maxsize=1 << 18)
    def first_synset(self, word: str) -> tuple[str, int] | None:
        """(part of speech, offset) of ``wordnet.synsets(word)[0]``, or None when it has none."""
        w = word.lower()
        for pos in POS_ORDER:
            for form in self.morphy(w, pos):
                offsets = self.index[form].get(pos)
                if offsets:
                    return pos, offsets[0]
        return None


@functools.lru_cache(maxsize=2)
def wordnet_index(root: str) -> WordNetIndex:
    return WordNetIndex(root)


def default_synsets() -> Path:
    """timm's ImageNet-21k (fall 2011) synset list: the same bytes as DataComp's
    ``imagenet21k_wordnet_ids.txt`` (sha256 66362bde...)."""
    import importlib.util

    spec = importlib.util.find_spec("timm")  # located, not imported (importing timm loads torchvision)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("text_based: no synset list given and timm (which ships ImageNet-21k's) is not "
                                "installed: set synsets: to a file of WordNet ids")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "_info" / "imagenet21k_goog_synsets.txt"


def synset_offsets(source: str | None) -> frozenset[int]:
    path = Path(source) if source else default_synsets()
    if not path.is_file():
        raise FileNotFoundError(f"text_based: no synset list at {path} (one WordNet id like n02084071 a line)")
    return frozenset(int(x.strip()[1:]) for x in path.read_text().splitlines() if x.strip())


def names_an_entity(captions: pd.Series, wn: WordNetIndex, offsets: frozenset[int], any_pos: bool) -> np.ndarray:
    """DataComp's ``does_contain_text_entity`` for each caption (a missing caption is '')."""
    def hit(word: str) -> bool:
        first = wn.first_synset(word)
        return first is not None and first[1] in offsets and (any_pos or first[0] == "n")

    memo: dict[str, bool] = {}
    out = np.zeros(len(captions), bool)
    for i, c in enumerate(captions.fillna("").astype(str)):
        found = memo.get(c)
        if found is None:
            found = memo[c] = any(hit(w) for w in c.split())
        out[i] = found
    return out


class TextBased(Filter):
    """See the module doc. ``rule: wordnet`` deviates from DataComp in one place unless ``any_pos: true``:
    DataComp compares only the synset's offset with the ImageNet ids (``int("n02084071"[1:])``), but an
    offset is a byte position in one part of speech's data file, so a verb, adjective or adverb whose
    first synset happens to sit at the same offset as an ImageNet noun synset also matched there (a
    plain bug; e.g. a word whose first sense is a verb). Here the first synset must be a noun, as every
    ImageNet id is; ``any_pos: true`` reproduces DataComp's comparison exactly."""
    type: Literal["text_based"]
    rule: Literal["classnames", "wordnet"] = Field("classnames", description="classnames: name mentions; "
                                                   "wordnet: DataComp's ImageNet-21k synset rule")
    classnames: str | list[str] | None = Field(None, description="file, task folder, or list of names (classnames)")
    synsets: str | None = Field(None, description="wordnet rule: file of WordNet ids (n########); default the "
                                                  "ImageNet-21k list DataComp uses")
    wordnet: str | None = Field(None, description="wordnet rule: WordNet 3.0 database folder; default "
                                                  "$CURATE_WORDNET or /usr/share/wordnet")
    any_pos: bool = Field(False, description="wordnet rule: match an id by offset alone, whatever the part "
                                             "of speech (DataComp's comparison; see the class doc)")

    def compute(self, ctx: Context) -> Result:
        if self.rule == "wordnet":
            from pipeline.captions import WORDNET_DIR

            wn = wordnet_index(str(self.wordnet or WORDNET_DIR))
            offsets = synset_offsets(self.synsets)
            keep = names_an_entity(ctx.df["caption"], wn, offsets, self.any_pos)
            return Result({"": ~keep}, info={"rule": "wordnet", "synsets": len(offsets), "any_pos": self.any_pos})
        names = class_names(self.classnames)
        return Result({"": ~mentions(ctx.df["caption"], names)}, info={"classes": len(names)})
