"""CC3M's caption rules on hand-made captions (each dropped for its reason, each counterpart kept) and
hypernymization of named entities to their WordNet classes."""
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline import captions
from pipeline.filters import registry
from pipeline.filters.base import Context
from pipeline.filters.caption_quality import CaptionQuality
from pipeline.filters.hypernymize import Hypernymize

GOOD = "A man rides a horse on the beach."

# rule -> (captions it drops, captions it keeps)
CASES = {
    "pos_coverage": (["Red shoes", "walking slowly home", "the big red"], [GOOD, "A dog on the sofa"]),
    "noun_ratio": (["The kitchen table chair lamp rug mug plate bowl in house"], [GOOD]),
    "unique_words": (["The dog and the dog and the dog and the cat"], [GOOD, "A dog chases another dog in the park"]),
    "repetition": (["Cheap shoes, cheap shoes, cheap shoes for sale"], ["A dog chases another dog in the park"]),
    "capitalization": (["a dog on the beach", "A DOG ON THE BEACH", "A Dog On The Beach At Sunset"],
                       [GOOD, "A dog on the beach in Spain", "3 dogs on the beach"]),
    "nsfw": (["A nude woman on the beach", "Porn star at the party"], ["A woman on the beach"]),
    "boilerplate": (["IMG_1234.jpg", "DSC00042", "Click here to see the picture", "untitled", "Image",
                     "https://cdn.example.com/a/b.jpg", "Stock photo of a dog on the beach", "12345", ""],
                    [GOOD, "A photo of a dog on the beach"]),
    "keyword_list": (["shoes, cheap shoes, buy shoes, shoes online, sneakers", "#summer #beach #sun #fun"],
                     [GOOD, "A dog, a cat and a bird on the porch"]),
    "vocabulary": (["A zorblax on the flimflorp", "Eine Katze auf dem Sofa"], [GOOD, "Sandals on a shelf"]),
}


def run(f, texts):
    df = pd.DataFrame({"uid": [str(i) for i in range(len(texts))], "caption": texts})
    return f.compute(Context(df, np.ones(len(df), bool), None, None))


@pytest.mark.parametrize("rule", list(CASES))
def test_each_rule_drops_its_cases_and_keeps_the_others(rule):
    dropped, kept = CASES[rule]
    res = run(CaptionQuality(type="caption_quality"), dropped + kept)
    got = res.fails[rule]
    assert got[: len(dropped)].all(), [t for t, g in zip(dropped, got) if not g]
    assert not got[len(dropped):].any(), [t for t, g in zip(kept, got[len(dropped):]) if g]


def test_a_clean_sentence_passes_every_rule_and_scores_are_written():
    f = CaptionQuality(type="caption_quality")
    res = run(f, [GOOD, "IMG_1234.jpg"])
    assert not any(m[0] for m in res.fails.values())
    assert set(res.fails) == set(f.checks) and set(res.columns) == set(f.outputs)
    assert res.columns["boilerplate"] == [None, "file_name"]
    assert res.columns["pos_coverage"][0] == 1.0 and res.columns["oov_ratio"][0] == 0.0
    assert f.reason("pos_coverage") == "caption_quality:pos_coverage" and len(f.reasons()) == 9


def test_thresholds_come_from_the_config():
    text = ["red shoes for sale", "a dog on the beach", "A zorblax on the flimflorp"]
    strict, loose = CaptionQuality(type="caption_quality"), CaptionQuality(
        type="caption_quality", require_pos=["noun"], first_capital=False, max_oov_ratio=None, blocklist=["beach"])
    s, lo = run(strict, text), run(loose, text)
    assert s.fails["pos_coverage"][0] and not lo.fails["pos_coverage"][0]  # no determiner: CC3M only
    assert s.fails["capitalization"][1] and not lo.fails["capitalization"][1]
    assert s.fails["vocabulary"][2] and not lo.fails["vocabulary"].any()
    assert lo.fails["nsfw"][1] and not s.fails["nsfw"][1]


@pytest.mark.parametrize("text, expected", [
    ("Tom Hanks at the premiere in Paris", "actor at the premiere in city"),
    ("Albert Einstein in Berlin", "physicist in city"),
    ("A trip to France", "A trip to country"),
    ("Sunset over the Mississippi", "Sunset over the river"),
    ("Shakespeare's house", "dramatist's house"),
    ("Mount Everest at dawn", "mountain at dawn"),
    ("Hiking in the Sahara desert", "Hiking in the desert"),
    ("London, Paris and Berlin at night", "cities at night"),
    ("The Black Sea coast", "The sea coast"),
    ("A trip to China", "A trip to country"),
    ("a dog in paris", "a dog in paris"),  # not a proper noun: left alone
    ("Black Cat On A Wall", "Black Cat On A Wall"),  # title case: common words are no names
    ("Drawing by Michael Wheeler", "Drawing by Michael Wheeler"),  # a surname alone is not the famous one
    ("A dog on the beach", "A dog on the beach"),
])
def test_named_entities_become_their_wordnet_hypernyms(text, expected):
    assert captions.hypernymize(text, captions.wordnet())[0] == expected


def test_hypernymize_is_a_transform_that_drops_nothing():
    f = registry()["hypernymize"](type="hypernymize")
    assert f.rewrites_caption and f.checks == () and f.outputs == {"caption": "string"}
    res = run(f, ["Tom Hanks at the premiere in Paris", "Angela Merkel in a meeting", "a red car"])
    assert res.fails == {}
    assert res.columns["caption"] == ["actor at the premiere in city", "Angela Merkel in a meeting", "a red car"]
    assert res.info["rewritten"] == 1 and res.info["entities_replaced"] == 2
    assert res.info["proper_noun_tokens_unresolved"] == 2  # Angela Merkel is not in WordNet 3.0


def test_missing_components_name_the_package_to_install(monkeypatch):
    with pytest.raises(captions.MissingTool, match="wordnet-base"):
        run(Hypernymize(type="hypernymize", wordnet="/nonexistent/wordnet"), ["Tom Hanks"])
    captions._tagger.cache_clear()
    monkeypatch.setitem(sys.modules, "textblob.en", None)
    try:
        with pytest.raises(captions.MissingTool, match="pip install textblob"):
            run(CaptionQuality(type="caption_quality", max_oov_ratio=None), ["A dog"])
    finally:
        captions._tagger.cache_clear()
