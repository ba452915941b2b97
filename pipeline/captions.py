"""Caption text rules after CC3M (Sharma et al., ACL 2018, "Conceptual Captions") and CC3M's
hypernymization of named entities; shared by the ``caption_quality`` and ``hypernymize`` filters.

Tools, all offline and installed from package registries (nothing downloads at run time):

- part-of-speech tagger and named-entity list: Pattern's English tagger (De Smedt & Daelemans,
  JMLR 2012) as shipped inside the PyPI package ``textblob``: a 94k-word lexicon with Penn Treebank
  tags plus suffix rules (~10k captions/s on one core), and a list of ~170 names labelled PERS /
  LOC / ORG.
- WordNet 3.0 (Princeton) from the Debian package ``wordnet-base`` (``/usr/share/wordnet``), read
  here from its documented database files (wndb(5WN)): noun synsets, their hypernyms, and the 7,700
  instance synsets (people, cities, countries, rivers, buildings) that serve as the entity gazetteer
  (``Tom_Hanks`` is an instance of ``actor``, ``Paris`` of ``national_capital``).

Why these: spaCy's English models are released on GitHub, not on PyPI (the PyPI copies are
third-party re-uploads); NLTK's tagger and NE chunker need ``nltk_data`` downloads that no registry
package ships, and NLTK's WordNet reader (3.9+) refuses folders outside ``nltk_data`` and wants a
``lexnames`` file Debian does not ship. So a named entity here is a run of proper-noun tags found
as a WordNet instance (longest match first), else a name on Pattern's list (-> person / location /
organization). Names in neither stay as they are and are counted as unresolved.
"""
from __future__ import annotations

import functools
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

WORDNET_DIR = os.environ.get("CURATE_WORDNET", "/usr/share/wordnet")
TEXTBLOB = "the PyPI package textblob (pip install textblob==0.20.1)"
WORDNET_PKG = "the Debian package wordnet-base (apt-get install wordnet-base)"


class MissingTool(RuntimeError):
    """A tagger or database this module needs is not installed."""


@functools.lru_cache(maxsize=1)
def _tagger():
    try:
        from textblob.en import lexicon, parser
    except ImportError as e:
        raise MissingTool(f"caption rules need Pattern's part-of-speech tagger from {TEXTBLOB}") from e
    return parser, lexicon


# --- tokens and tags ----------------------------------------------------------------------------

TOKEN = re.compile(r"https?://\S+|www\.\S+|(?:[A-Z]\.)+(?=\s|$)|\w+(?:[-.'’_/@&]\w+)*|\S")
CLITIC = re.compile(r"(?i)^(.+?)(['’]s|n['’]t)$")
ENTITY_LABELS = {"PERS": "person", "LOC": "location", "ORG": "organization"}
LEXFILES = {"PERS": 18, "LOC": 15, "ORG": 14}  # WordNet lexicographer files: noun.person, noun.location, noun.group


@dataclass
class Tagged:
    tokens: list[str]
    spans: list[tuple[int, int]]  # character offsets in the caption
    tags: list[str]  # Penn Treebank
    ents: list[str]  # Pattern's entity label (PERS, LOC, ORG) or ""


def tokenize(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Words, URLs and single punctuation marks; ``'s`` and ``n't`` split off as Penn Treebank does."""
    toks, spans = [], []
    for m in TOKEN.finditer(text):
        s, e = m.span()
        c = CLITIC.match(m.group())
        if c and c.group(1)[-1:].isalnum():
            cut = s + len(c.group(1))
            toks += [text[s:cut], text[cut:e]]
            spans += [(s, cut), (cut, e)]
        else:
            toks.append(m.group())
            spans.append((s, e))
    return toks, spans


def tag(text: str, wn: "WordNet | None" = None) -> Tagged:
    """Penn Treebank tags; a word the tagger's lexicon lacks takes its WordNet part of speech when
    WordNet knows it as one only (the tagger's suffix rules read "sandal" as an adjective)."""
    parser, lexicon = _tagger()
    wn = wn or wordnet()
    toks, spans = tokenize(text)
    tagged = lexicon.entities.apply([list(t) for t in parser.find_tags(toks)]) if toks else []
    tags, ents = [], []
    for w, t in tagged:
        base, _, label = t.partition("-")
        ok = label in ENTITY_LABELS and w[:1].isupper()  # the list matches any case
        tag_ = (base if ok else "NN") if label in ENTITY_LABELS else t
        if not tag_.startswith("NNP") and w not in lexicon and w.lower() not in lexicon:
            tag_ = wn.only_pos(w) or tag_
        tags.append(tag_)
        ents.append(label if ok else "")
    return Tagged(toks, spans, tags, ents)


POS_CLASSES = {"noun": ("NN",), "verb": ("VB", "MD"), "adjective": ("JJ",),
               "determiner": ("DT", "PDT", "WDT", "PRP$", "WP$"), "preposition": ("IN", "TO")}
CONTENT = ("NN", "VB", "JJ", "RB", "FW")
WORD = re.compile(r"\w")


def pos_classes(tags: list[str]) -> set[str]:
    return {c for c, prefixes in POS_CLASSES.items() for t in tags if t.startswith(prefixes)}


# --- WordNet ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Synset:
    lexfile: int  # 15 noun.location, 17 noun.object, 18 noun.person (lexnames(5WN))
    words: tuple[str, ...]
    pointers: tuple[tuple[str, int], ...]  # (symbol, offset): "@" hypernym, "@i" instance hypernym

    def targets(self, symbol: str) -> list[int]:
        return [o for s, o in self.pointers if s == symbol]


# Basic-level categories that place names are climbed to (a WordNet first lemma -> the word used).
# WordNet files national capitals under "seat of government", so they are mapped to city here.
PLACE_LEVEL = {w: w for w in ("city", "town", "village", "country", "state", "province", "continent", "island",
                              "river", "lake", "sea", "ocean", "mountain", "volcano", "desert", "valley", "bay",
                              "peninsula", "mountain_range", "canal", "waterfall")}
PLACE_LEVEL |= {"national_capital": "city", "state_capital": "city", "provincial_capital": "city",
                "mountain_peak": "mountain"}


class WordNet:
    """Noun side of a WordNet 3.0 database folder: lemma -> synset offsets (most frequent sense first),
    offset -> synset (an offset is the byte position of the synset's line in ``data.noun``)."""

    def __init__(self, root: str | Path = WORDNET_DIR):
        self.root = Path(root)
        if not (self.root / "index.noun").is_file() or not (self.root / "data.noun").is_file():
            raise MissingTool(f"no WordNet database at {self.root} (index.noun, data.noun): install {WORDNET_PKG}")
        self.index: dict[str, list[int]] = {}
        with open(self.root / "index.noun", encoding="latin-1") as f:
            for line in f:
                if not line.startswith(" "):
                    p = line.split()
                    self.index[p[0]] = [int(o) for o in p[-int(p[2]):]]
        self._data = open(self.root / "data.noun", "rb")
        self._cache: dict[int, Synset] = {}

    def synset(self, offset: int) -> Synset:
        s = self._cache.get(offset)
        if s is None:
            self._data.seek(offset)
            p = self._data.readline().decode("latin-1").split(" | ")[0].split()
            n = int(p[3], 16)
            k = 4 + 2 * n
            ptrs = tuple((p[k + 1 + 4 * i], int(p[k + 2 + 4 * i])) for i in range(int(p[k])) if p[k + 3 + 4 * i] == "n")
            s = self._cache[offset] = Synset(int(p[1]), tuple(p[4:k:2]), ptrs)
        return s

    def instance(self, words: list[str], first_sense_only: bool = False, lexfile: int | None = None) -> Synset | None:
        """The first instance synset (a named entity) of ``words`` as one lemma (of ``lexfile`` if
        given), or None."""
        offsets = self.index.get("_".join(words).lower(), [])
        for o in offsets[:1] if first_sense_only else offsets:
            s = self.synset(o)
            if s.targets("@i") and lexfile in (None, s.lexfile):
                return s
        return None

    def hypernym(self, entity: Synset) -> str:
        """The word an entity is replaced by: its class (``actor``), climbed to a basic level for
        places (``national_capital`` -> ``city``) and past classes that are names themselves
        (``European_country`` -> ``country``)."""
        h = self.synset(entity.targets("@i")[0])
        if entity.lexfile in (15, 17):
            s, depth = h, 0
            while s is not None and depth < 6:
                level = next((PLACE_LEVEL[w.lower()] for w in s.words if w.lower() in PLACE_LEVEL), None)
                if level:
                    return level.replace("_", " ")
                up = s.targets("@")
                s, depth = (self.synset(up[0]) if up else None), depth + 1
        for _ in range(4):
            if not any(c.isupper() for c in h.words[0]) or not h.targets("@"):
                break
            h = self.synset(h.targets("@")[0])
        return h.words[0].replace("_", " ").lower()

    @functools.cached_property
    def pos_lemmas(self) -> dict[str, set[str]]:
        out = {}
        for pos in ("noun", "verb", "adj", "adv"):
            with open(self.root / f"index.{pos}", encoding="latin-1") as f:
                out[pos] = {line.split(" ", 1)[0] for line in f if not line.startswith(" ")}
        return out

    def only_pos(self, word: str) -> str | None:
        """NN / NNS / VB / JJ / RB when WordNet has the word (or its -s stem) under one part of speech."""
        w = word.lower()
        for form, plural in ((w, False), (w[:-1] if w.endswith("s") else "", True)):
            hits = [p for p, lemmas in self.pos_lemmas.items() if form in lemmas]
            if len(hits) == 1 and (not plural or hits[0] == "noun"):
                return {"noun": "NNS" if plural else "NN", "verb": "VB", "adj": "JJ", "adv": "RB"}[hits[0]]
        return None

    def lemmas(self) -> set[str]:
        out = set()
        for pos in ("noun", "verb", "adj", "adv"):
            with open(self.root / f"index.{pos}", encoding="latin-1") as f:
                out.update(w for line in f if not line.startswith(" ") for w in line.split(" ", 1)[0].split("_"))
            exc = self.root / f"{pos}.exc"
            if exc.is_file():
                out.update(line.split(" ", 1)[0] for line in exc.read_text(encoding="latin-1").splitlines())
        return out


@functools.lru_cache(maxsize=4)
def wordnet(root: str = WORDNET_DIR) -> WordNet:
    return WordNet(root)


# --- CC3M rules: per-caption scores -------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def vocabulary(root: str = WORDNET_DIR) -> frozenset[str]:
    """CC3M checks tokens against the word types of English Wikipedia; offline we use the tagger's
    lexicon plus every WordNet lemma and irregular form (lower case)."""
    _, lexicon = _tagger()
    return frozenset({w.lower() for w in lexicon.keys()} | wordnet(root).lemmas())


SUFFIXES = (("ies", "y"), ("es", ""), ("es", "e"), ("s", ""), ("ed", ""), ("ed", "e"), ("ing", ""), ("ing", "e"),
            ("er", ""), ("est", ""), ("ly", ""), ("'s", ""), ("’s", ""))


def known(word: str, vocab: frozenset[str]) -> bool:
    w = word.lower()
    if w in vocab or all(p in vocab for p in re.split(r"[-'’]", w) if p):
        return True
    return any(w.endswith(s) and w[: len(w) - len(s)] + r in vocab for s, r in SUFFIXES if len(w) > len(s) + 1)


# Sexually explicit terms: a short subset of the English "List of Dirty, Naughty, Obscene, and
# Otherwise Bad Words" (github.com/LDNOOBW), the list C4 used (Raffel et al., JMLR 2020). CC3M used
# Google's porn/profanity classifiers instead, which are not available offline.
NSFW = ("porn", "porno", "pornography", "xxx", "nsfw", "nude", "nudes", "nudity", "naked", "topless", "hentai",
        "blowjob", "handjob", "cumshot", "dildo", "vibrator", "fetish", "bdsm", "orgasm", "erotic", "milf",
        "escort", "camgirl", "stripper", "sex", "sexual", "fuck", "fucking", "shit", "cunt", "pussy", "cock",
        "dick", "tits", "boobs", "anal", "slut", "whore")

# Boilerplate: CC3M's own examples ("click to enlarge picture", "stock photo", "embedded image
# permalink", "profile photo") plus common calls to action and placeholder alt-text.
PHRASES = ("click here", "click to enlarge", "stock photo", "stock image", "stock vector", "royalty free",
           "embedded image permalink", "profile photo", "profile picture", "image may contain", "download now",
           "free download", "see more", "read more", "learn more", "buy now", "shop now", "lorem ipsum",
           "no description available", "image not found", "no image available")
PLACEHOLDERS = {"image", "images", "photo", "photos", "picture", "pic", "img", "thumbnail", "thumb", "untitled",
                "null", "none", "undefined", "n/a", "na", "nan", "placeholder", "default", "blank", "logo",
                "icon", "banner", "no title", "alt", "alt text", "description", "image description"}
FILE_NAME = re.compile(r"(?i)\b[\w-]+\.(?:jpe?g|png|gif|webp|bmp|tiff?|svg|heic)\b"
                       r"|\b(?:img|dsc|dscn|dscf|dcim|pict?|pxl|mvimg|screenshot|gopr)[_ -]?\d{2,}")
URL = re.compile(r"(?i)https?://|www\.|\b[\w-]+\.(?:com|net|org|co\.uk|io)\b")
SEPARATORS = re.compile(r"\s*[,|;/•·#]\s*|\s+-\s+")


def boilerplate(text: str) -> str | None:
    """The kind of boilerplate a caption is or holds, or None."""
    t = text.strip()
    low = re.sub(r"[\s.:!_-]+$", "", t.lower())
    if not low:
        return "empty"
    if low in PLACEHOLDERS:
        return "placeholder"
    if not re.search(r"[^\W\d_]", low):
        return "no_letters"
    if URL.search(t):
        return "url"
    if FILE_NAME.search(t):
        return "file_name"
    if any(p in low for p in PHRASES):
        return "phrase"
    return None


def scores(text: str, vocab: frozenset[str], blocklist: frozenset[str]) -> dict:
    """Every rule's score for one caption."""
    t = tag(text)
    words = [(w, g) for w, g in zip(t.tokens, t.tags) if WORD.search(w)]
    n = len(words)
    low = [w.lower() for w, _ in words]
    content = Counter(w.lower() for w, g in words if g.startswith(CONTENT) or not g[:1].isalpha())
    alpha = [w for w, _ in words if w.isalpha()]
    letters = [w for w in low if re.search(r"[^\W\d_]", w)]
    first = words[0][0] if words else ""
    return {"classes": pos_classes([g for _, g in words]),
            "noun_ratio": sum(g.startswith("NN") for _, g in words) / n if n else 0.0,
            "unique_ratio": len(set(low)) / n if n else 1.0,
            "max_repeat": max(content.values(), default=0),
            "capital_ratio": (sum(w[0].isupper() for w in alpha[1:]) / (len(alpha) - 1)) if len(alpha) > 1 else 0.0,
            "all_caps": len(alpha) >= 2 and all(w.isupper() for w in alpha),
            "first_capital": bool(first) and (first[0].isupper() or first[0].isdigit()),
            "nsfw_hits": sum(w in blocklist or w.rstrip("s") in blocklist for w in low),
            "boilerplate": boilerplate(text),
            "segments": len([s for s in SEPARATORS.split(text) if WORD.search(s)]),
            "oov_ratio": (sum(not known(w, vocab) for w in letters) / len(letters)) if letters else 0.0}


# --- hypernymization -----------------------------------------------------------------------------

CONNECTORS = {"of", "the", "de", "upon"}
COORDINATION = re.compile(r"^\s*(?:,\s*)?(?:and|&|,)\s*$", re.I)


def _proper(t: Tagged, i: int) -> bool:
    """Part of a name: a proper noun, or a capitalised adjective or noun ("British Columbia")."""
    return t.tags[i].startswith("NNP") or (t.tokens[i][:1].isupper() and t.tags[i].startswith(("JJ", "NN")))


def _common(word: str, wn: WordNet, lexicon) -> bool:
    """A word with a common use ("Black", "Service", "Turkey"): capitalised alone, it is no evidence of a name."""
    low = word.lower()
    return not lexicon.get(low, "NNP").startswith("NNP") or any(low in wn.pos_lemmas[p] for p in ("verb", "adj", "adv"))


def entities(t: Tagged, wn: WordNet) -> tuple[list[tuple[int, int, str]], int]:
    """(first token, end token, hypernym) for each named entity found, and the count of proper-noun
    tokens left unresolved."""
    _, lexicon = _tagger()
    found, unresolved, n, i = [], 0, len(t.tokens), 0
    while i < n:
        if not _proper(t, i):
            i += 1
            continue
        j = i + 1
        while j < n and (_proper(t, j) or (t.tokens[j].lower() in CONNECTORS and j + 1 < n and _proper(t, j + 1))):
            j += 1
        k = i
        while k < j:
            hit = None
            for e in range(j, k, -1):
                words = t.tokens[k:e]
                # one word alone: a name on Pattern's list, found in WordNet with the same kind; or, when
                # it stands alone, a proper noun with no common use that names the entity in its most
                # frequent sense (so "Black", "Paris" of "Paris Hilton" and "Wheeler" of "Michael
                # Wheeler" are no entities)
                s = None
                if e - k > 1:
                    s = wn.instance(words)
                elif t.ents[k]:
                    s = wn.instance(words, lexfile=LEXFILES[t.ents[k]])
                elif j - i == 1 and t.tags[k].startswith("NNP") and not _common(words[0], wn, lexicon):
                    s = wn.instance(words, first_sense_only=True)
                if s is not None and words[-1].lower() not in CONNECTORS and words[0].lower() not in CONNECTORS:
                    hit = (k, e, wn.hypernym(s))
                    break
            if hit is None and t.ents[k]:
                e = k + 1
                while e < j and t.ents[e] == t.ents[k]:
                    e += 1
                hit = (k, e, ENTITY_LABELS[t.ents[k]])
            if hit is None:
                unresolved += t.tags[k].startswith("NNP")
                k += 1
            else:
                found.append(hit)
                k = hit[1]
        i = j
    return found, unresolved


def hypernymize(text: str, wn: WordNet, merge: bool = True) -> tuple[str, int, int]:
    """The caption with named entities replaced by their hypernyms ("Tom Hanks at the premiere in
    Paris" -> "actor at the premiere in city"); entities of one class joined by "and" become its
    plural, as CC3M does ("actors"). Returns (caption, entities replaced, tokens unresolved)."""
    t = tag(text, wn)
    found, unresolved = entities(t, wn)
    spans = [[t.spans[s][0], t.spans[e - 1][1], h, False] for s, e, h in found]
    if merge:
        merged: list[list] = []
        for sp in spans:
            prev = merged[-1] if merged else None
            if prev and prev[2] == sp[2] and COORDINATION.match(text[prev[1]:sp[0]]):
                prev[1], prev[3] = sp[1], True
            else:
                merged.append(sp)
        spans = merged
    out, pos = [], 0
    for s, e, h, plural in spans:
        word = _plural(h) if plural else h
        after = re.match(r"\s+(\w+)", text[e:])
        if after and after.group(1).lower() == word:  # "the Sahara desert": the class is already named
            word, e = "", e + len(after.group(0)) - len(after.group(1))
        out += [text[pos:s], word]
        pos = e
    return "".join(out) + text[pos:], len(found), unresolved


def _plural(word: str) -> str:
    from textblob.en.inflect import pluralize

    return pluralize(word)
