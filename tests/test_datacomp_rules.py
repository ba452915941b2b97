"""DataComp's baseline rules, pinned on tiny inputs (bench/parity.py checks them uid for uid against
DataComp's own baselines.py; these tests need neither its code nor its venv).

- image-based caption stage: words counted as ``len(fasttext.tokenize(text))``; no size check;
- text-based: the first WordNet synset of a whitespace-split word is an ImageNet-21k id (NLTK's lookup);
  a non-noun synset at the same offset does not count (DataComp's bug, reproduced with any_pos);
- LAION-2B: gcld3's English, no word / character / size check;
- CLIP score top fraction: NaN rows count in n, NaN sorts last; past the scored rows, every scored row;
- image-based with given centroids: argmax of the raw dot product; unusable embeddings get no cluster.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipeline.filters.base import Context

WORDNET = Path(os.environ.get("CURATE_WORDNET", "/usr/share/wordnet"))
needs_wordnet = pytest.mark.skipif(not (WORDNET / "index.noun").is_file(), reason="WordNet 3.0 (wordnet-base) absent")


def ctx(df: pd.DataFrame, arrays=None) -> Context:
    return Context(df=df, ok=np.ones(len(df), bool), arrays=arrays, config=None)


def frame(captions, w=None, h=None, lang=None) -> pd.DataFrame:
    n = len(captions)
    caps = pd.Series(captions, dtype=object)
    return pd.DataFrame({"caption": caps,
                         "caption_words": [len(c.split()) if isinstance(c, str) else 0 for c in captions],
                         "caption_chars": [len(c) if isinstance(c, str) else 0 for c in captions],
                         "caption_lang": lang if lang is not None else ["en"] * n,
                         "caption_lang_score": [0.9] * n,
                         "original_width": w if w is not None else [400] * n,
                         "original_height": h if h is not None else [300] * n})


# ------------------------------------------------------------------------------ caption word counts

@pytest.mark.parametrize("text,tokens", [
    ("", 0), (" ", 0), ("a", 1), ("a b", 2), ("a\nb", 3), ("a\n", 2), ("\n\n\n\n\n\n", 6), ("  a  b  ", 2),
    ("a\tb\rc\vd\fe", 5), ("a\0b", 2), ("日本語\u3000テキスト", 1), ("a\u00a0b", 1), ("\r\n", 1), ("a\x85b", 1),
])
def test_fasttext_token_count_is_fasttext_tokenize(text, tokens):
    # values from fasttext.tokenize (fasttext 0.9.3, DataComp's venv)
    from pipeline.filters.basic import fasttext_token_count

    assert fasttext_token_count(text) == tokens


def test_fasttext_token_counts_is_the_one_caption_count_on_every_caption(monkeypatch):
    import pipeline.filters.basic as basic

    rng = np.random.default_rng(0)
    alphabet = list("ab \n\r\t\v\f\0") + ["\u3000", "\u00a0", "é", "日", "\x85", "😀"]
    texts = ["".join(rng.choice(alphabet, rng.integers(0, 12))) for _ in range(3000)] + [None, "", "\n"]
    monkeypatch.setattr(basic, "TOKEN_ROWS", 7)  # several slices, some all empty
    want = [basic.fasttext_token_count(t or "") for t in texts]
    for s in (pd.Series(texts, dtype="str"), pd.Series(texts, dtype=object)):
        assert basic.fasttext_token_counts(s).tolist() == want


def test_image_based_caption_stage_counts_fasttext_tokens_and_ignores_sizes():
    from pipeline.filters.basic import Basic

    f = Basic(type="basic", words="fasttext", min_words=2, min_chars=6, min_side=None, max_aspect=None)
    df = frame(["sunset\n", "sunset", "dog\u3000cat\u3000bird", "two dogs", "a dog on grass", "a dog on grass"],
               w=[400, 400, 400, 400, 0, np.nan],
               h=[300, 300, 300, 300, 640, 480])
    r = f.compute(ctx(df)).fails
    # "sunset\n" is 2 fasttext tokens (the newline is one) but 1 word for str.split; U+3000 separates nothing
    assert list(r["caption_words"]) == [False, True, True, False, False, False]
    assert list(r["caption_chars"]) == [False, False, False, False, False, False]
    assert not r["min_side"].any() and not r["aspect_ratio"].any()  # zero / unknown sizes pass: no size check


def test_default_basic_still_fails_unknown_and_degenerate_sizes():
    from pipeline.filters.basic import Basic

    df = frame(["a dog on grass"] * 4, w=[0, np.nan, 600, 601], h=[640, 480, 200, 200])
    r = Basic(type="basic").compute(ctx(df)).fails
    assert list(r["min_side"]) == [True, True, False, False]
    assert list(r["aspect_ratio"]) == [True, True, False, True]  # 600/200 = 3 passes, 601/200 fails


# ------------------------------------------------------------------------------------ text-based

@needs_wordnet
def test_wordnet_first_synset_is_nltks():
    from pipeline.filters.text_based import wordnet_index

    wn = wordnet_index(str(WORDNET))
    # offsets as nltk.corpus.wordnet.synsets(w)[0].offset() gives them (NLTK 3.10, WordNet 3.0)
    assert wn.first_synset("dog") == ("n", 2084071)
    assert wn.first_synset("Dogs") == ("n", 2084071)
    assert wn.first_synset("geese") == ("n", 1855672)  # noun.exc
    assert wn.first_synset("gooses") == ("n", 1855672)
    assert wn.first_synset("running") == ("n", 558883)  # nouns first: run.n.05
    assert wn.first_synset("eat") == ("v", 1168486)
    assert wn.first_synset("hot_dog") == ("n", 10187710)
    assert wn.first_synset("dog,") is None and wn.first_synset("xyzzy") is None


@needs_wordnet
def test_text_based_wordnet_rule(tmp_path):
    from pipeline.filters.text_based import TextBased, wordnet_index

    wn = wordnet_index(str(WORDNET))
    pos, passionate = wn.first_synset("passionate")
    assert pos == "a"
    ids = tmp_path / "ids.txt"
    ids.write_text(f"n02084071\nn{passionate:08d}\n")  # dog, and a noun id at the adjective's offset
    caps = ["a photo of two Dogs", "dog, on a mat", "a passionate speech", "", None, "hot_dog stand",
            "dog\u00a0house"]
    df = frame(caps)
    keep = ~TextBased(type="text_based", rule="wordnet", synsets=str(ids),
                      wordnet=str(WORDNET)).compute(ctx(df)).fails[""]
    # "dog," keeps its comma (no synset); U+00A0 is whitespace for str.split
    assert list(keep) == [True, False, False, False, False, False, True]
    keep_any = ~TextBased(type="text_based", rule="wordnet", synsets=str(ids), wordnet=str(WORDNET),
                          any_pos=True).compute(ctx(df)).fails[""]
    assert list(keep_any) == [True, False, True, False, False, False, True]  # DataComp's offset-only match


def test_default_synsets_are_datacomps_imagenet21k_list():
    import hashlib

    from pipeline.filters.text_based import default_synsets

    p = default_synsets()
    if not p.is_file():
        pytest.skip("timm's ImageNet-21k list absent")
    assert hashlib.sha256(p.read_bytes()).hexdigest().startswith("66362bdedf36d933")


# ------------------------------------------------------------------------------------ CLIP score

def datacomp_threshold(x: np.ndarray, fraction: float) -> float:
    """baselines/apply_filter.py get_threshold, verbatim."""
    n = int(len(x) * fraction)
    return -np.sort(-x)[n]


@pytest.mark.parametrize("scores,fraction", [
    ([0.9, np.nan, 0.8, np.nan, 0.7, 0.6, 0.5, np.nan, 0.4, 0.3], 0.3),
    ([np.inf, 0.2, -np.inf, np.nan, 0.1, 0.3, 0.3, 0.3, 0.05, 0.0], 0.5),
    ([0.5] * 5 + [0.4] * 5, 0.3),
    (list(np.linspace(0, 1, 101)), 0.3),
])
def test_top_fraction_threshold_is_datacomps_with_missing_scores(scores, fraction):
    from pipeline.filters.clip_score import top_fraction_threshold

    x = np.array(scores, np.float64)
    assert top_fraction_threshold(x, fraction) == datacomp_threshold(x, fraction)


def test_top_fraction_threshold_where_datacomps_breaks():
    from pipeline.filters.clip_score import top_fraction_threshold

    x = np.array([0.9, 0.8] + [np.nan] * 8)
    assert np.isnan(datacomp_threshold(x, 0.3))  # DataComp: keeps nothing
    assert top_fraction_threshold(x, 0.3) == 0.8  # here: every scored row
    assert top_fraction_threshold(np.array([0.3, 0.2]), 1.0) == 0.2  # DataComp: IndexError
    assert top_fraction_threshold(np.array([np.nan, np.nan]), 0.3) == np.inf
    # scores computed here (no pool metadata): the finite ones only, as before
    assert top_fraction_threshold(np.array([0.9, np.nan, 0.8, np.nan, 0.7, 0.6]), 0.5, count_missing=False) == 0.7


def test_clip_score_cutoff_over_pool_metadata_counts_missing_scores():
    from pipeline.filters.clip_score import ClipScore

    pool = np.array([0.9, np.nan, 0.8, np.nan, 0.7, 0.6, 0.5, np.nan, 0.4, 0.3])
    df = pd.DataFrame({"clip_score": pool})
    arrays = SimpleNamespace(pool_scores=lambda column: pool)
    r = ClipScore(type="clip_score", fraction=0.3).compute(ctx(df, arrays))
    assert r.info["threshold"] == 0.6 and r.info["cutoff_rows"] == 10 and r.info["cutoff_scored_rows"] == 7
    assert list(~r.fails[""]) == [True, False, True, False, True, True, False, False, False, False]


# ------------------------------------------------------------------------------------ LAION-2B

def test_laion2b_language_is_gcld3():
    pytest.importorskip("gcld3")
    from pipeline.filters.basic import Basic

    f = Basic(type="basic", language_model="gcld3", min_words=0, min_chars=0, min_side=None, max_aspect=None)
    assert not f.needs_languages()
    df = frame(["two red cars parked on the street", "une photo d'un chien", "", None,
                "a golden retriever playing\nwith a red ball in the park"],
               w=[0, 400, 400, 400, np.nan], lang=[None] * 5)
    r = f.compute(ctx(df)).fails
    assert list(~r["language"]) == [True, False, False, False, True]  # '' is 'ja' to gcld3
    assert not any(r[k].any() for k in ("caption_words", "caption_chars", "min_side", "aspect_ratio"))


# ------------------------------------------------------------------------------------ image-based

def test_image_based_given_centroids_is_argmax_dot(tmp_path):
    import torch

    from pipeline.targets import image_based_given, load_centroids

    cent = np.array([[1, 0, 0], [0, 1, 0], [0.8, 0.8, 0]], np.float32)  # not unit: dot != nearest
    np.save(tmp_path / "c.npy", cent)
    torch.save(cent, tmp_path / "c.pt")  # DataComp's format: a pickled numpy array
    assert np.array_equal(load_centroids(tmp_path / "c.pt"), load_centroids(tmp_path / "c.npy"))
    pool = np.array([[1, 0.1, 0],   # dots 1, .1, .88 -> 0
                     [1, 0.5, 0],   # dots 1, .5, 1.2 -> 2 (the nearest in L2 is 0)
                     [0, 1, 0],     # -> 1
                     [np.nan, 0, 0],  # unusable: no cluster (DataComp: argmax of NaN -> 0)
                     [0, 0, 0]], np.float16)  # unusable
    targets = np.array([[0.9, 0.9, 0]], np.float32)  # -> 2
    keep, cluster, n = image_based_given(pool, np.ones(5, bool), targets, cent)
    assert list(cluster) == [0, 2, 1, -1, -1] and n == 1
    assert list(keep) == [False, True, False, False, False]


def test_datacomp_presets_spell_datacomps_rules():
    from pipeline.config import load_config

    def filt(preset, kind):
        return next(f for f in load_config(f"datacomp/{preset}").filters if f.type == kind)

    tb = filt("text-based", "basic")
    assert filt("text-based", "text_based").rule == "wordnet" and tb.english and tb.language_model == "fasttext"
    assert (tb.min_words, tb.min_chars, tb.min_side, tb.max_aspect) == (0, 0, None, None)
    lb = filt("laion2b", "basic")
    assert lb.language_model == "gcld3" and (lb.min_words, lb.min_chars, lb.min_side, lb.max_aspect) == (0, 0, None, None)
    for preset in ("image-based", "image-based-clip-score"):
        ib = filt(preset, "basic")
        assert (ib.words, ib.min_words, ib.min_chars, ib.min_side, ib.max_aspect) == ("fasttext", 2, 6, None, None)


def test_a_missing_gcld3_is_said_before_any_work(tmp_path, monkeypatch):
    import sys

    from pipeline.filters import basic
    from pipeline.run import plan

    basic._gcld3.cache_clear()
    monkeypatch.setitem(sys.modules, "gcld3", None)  # as if not installed
    with pytest.raises(RuntimeError, match="gcld3 needs the gcld3 package"):
        plan(str(tmp_path), tmp_path / "out", "datacomp/laion2b")
    basic._gcld3.cache_clear()
