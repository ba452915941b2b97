"""CC3M's hypernymization (Sharma et al., ACL 2018, section 3): named entities in a caption are
replaced by their WordNet class ("Tom Hanks at the premiere in Paris" -> "actor at the premiere in
city"). A transform, not a filter: it drops nothing and writes the rewritten caption, which export
puts in the ``.txt`` (the original stays in the metadata). How entities are found and why these
tools: pipeline/captions.py."""
from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from pipeline.filters.base import Context, Filter, Result


class Hypernymize(Filter):
    """Needs Pattern's tagger (PyPI ``textblob``) and WordNet 3.0 (Debian ``wordnet-base``); fails
    with the package to install when either is missing."""
    type: Literal["hypernymize"]
    wordnet: str | None = Field(None, description="WordNet 3.0 database folder (index.noun, data.noun); default "
                                                  "$CURATE_WORDNET, else /usr/share/wordnet")
    merge: bool = Field(True, description="entities of one class joined by 'and' become its plural (CC3M)")

    checks = ()
    outputs = {"caption": "string"}
    rewrites_caption: ClassVar[bool] = True

    def compute(self, ctx: Context) -> Result:
        from pipeline.captions import WORDNET_DIR, hypernymize, wordnet

        wn = wordnet(self.wordnet or WORDNET_DIR)
        cache: dict[str, tuple[str, int, int]] = {}
        out, entities, unresolved = [], 0, 0
        for i, c in enumerate(ctx.df["caption"].tolist()):
            if not isinstance(c, str):
                out.append(c)
                continue
            if c not in cache:
                cache[c] = hypernymize(c, wn, self.merge)
            new, n, u = cache[c]
            out.append(new)
            if ctx.ok[i]:
                entities, unresolved = entities + n, unresolved + u
        changed = np.array([isinstance(c, str) and o != c for o, c in zip(out, ctx.df["caption"])], bool)
        return Result({}, {"caption": out}, {"rewritten": int((changed & ctx.ok).sum()), "entities_replaced": entities,
                                             "proper_noun_tokens_unresolved": unresolved})
