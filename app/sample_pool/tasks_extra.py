"""The suite's further tasks, shaped like DataComp's VTAB / Retrieval / Other groups (schemas/tasks.py EXTRA).

Each task has a test split (the reported suite, ``eval/<task>/test``), a train split beside it
(``eval/<task>/train``: linear probes, NormSim targets) and a validation copy from other items
(``val/<task>/test``). Splits never share an item: fonts by design, words, glyphs and icon names by
hash, icon themes and flag drawings by source; then any train or validation image equal to a test
image (or a validation image equal to a train one) is dropped. None of these sources feeds the pool.
A task whose Debian data are missing is skipped and named in the returned info.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from app.sample_pool import extra_sources as xs
from app.sample_pool.sources import encode
from shardio.evaltask import write_retrieval_task, write_task

SPLITS = ("test", "train", "val")
PER_CLASS = {"test": 200, "train": 100, "val": 60}  # rendered tasks: images per class and split
NEAR_ICON_RMS = 0.25  # a train / validation icon this close to a test icon (another theme's copy) is dropped


class Missing(Exception):
    """A task's source data are not installed."""


def _rng(name: str, split: str) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(f"{name}/{split}".encode()).hexdigest()[:8], 16))


def _n(n: int, scale: float) -> int:
    return max(1, math.ceil(n * scale))


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise Missing(f"{what} not installed")


def _fonts() -> dict[str, list[str]]:
    f = xs.fonts()
    _need(all(f[s] for s in SPLITS), "text fonts for every split (fonts-* packages)")
    return f


def _task(classes, templates, splits):
    return {"classes": classes, "templates": templates, "splits": splits}


# --- rendered text -----------------------------------------------------------------------------

def _glyphs(name, classes, texts, scale, max_size, templates):
    """Per class ``PER_CLASS`` images of one of ``texts(label, rng)`` in the split's fonts."""
    fonts = _fonts()
    splits = {}
    for s in SPLITS:
        rng = _rng(name, s)
        splits[s] = [(encode(xs.render_text(texts(c, rng), fonts[s][int(rng.integers(len(fonts[s])))], rng,
                                            max_size=max_size), "PNG"), c)
                     for c in range(len(classes)) for _ in range(_n(PER_CLASS[s], scale))]
    return _task(classes, templates, splits)


DIGITS = [str(i) for i in range(10)]


def rendered_digits(scale: float = 1.0):
    return _glyphs("rendered_digits", DIGITS, lambda c, rng: DIGITS[c], scale, 50,
                   ['a photo of the number: "{c}".', 'the digit {c}.', 'a handwritten or printed {c}.'])


LETTERS = [chr(ord("A") + i) for i in range(26)]


def rendered_letters(scale: float = 1.0):
    return _glyphs("rendered_letters", LETTERS,
                   lambda c, rng: LETTERS[c] if rng.random() < 0.5 else LETTERS[c].lower(), scale * 0.3, 50,
                   ['a photo of the letter: "{c}".', 'the letter {c}.', 'the letter "{c}" in some font.'])


def rendered_house_numbers(scale: float = 1.0):
    """SVHN's analogue: a 2-4 digit number on a coloured plate, cropped around its centre digit (the label)."""
    from PIL import Image, ImageDraw

    fonts = _fonts()
    splits = {}
    for s in SPLITS:
        rng, items = _rng("rendered_house_numbers", s), []
        for c in range(10):
            for _ in range(_n(PER_CLASS[s], scale)):
                left, right = int(rng.integers(0, 2)), int(rng.integers(1, 3))
                text = "".join(str(int(d)) for d in rng.integers(0, 10, left)) + str(c) + \
                    "".join(str(int(d)) for d in rng.integers(0, 10, right))
                f = xs.font(fonts[s][int(rng.integers(len(fonts[s])))], int(rng.integers(30, 46)))
                plate = tuple(int(v) for v in rng.integers(0, 256, 3))
                ink = tuple(255 - v if abs(255 - 2 * v) > 60 else (0 if v > 127 else 255) for v in plate)
                w = int(f.getlength(text)) + 64
                im = Image.new("RGB", (w, 96), plate)
                d = ImageDraw.Draw(im)
                d.text((32, 48), text, font=f, fill=ink, anchor="lm")
                x0 = 32 + f.getlength(text[:left])
                cx = x0 + f.getlength(text[left]) / 2 + rng.uniform(-3, 3)
                crop = im.crop((int(cx) - 32, 16 + int(rng.integers(-4, 5)), int(cx) + 32, 80 + int(rng.integers(-4, 5))))
                items.append((encode(crop.resize((64, 64)), "PNG"), c))
        splits[s] = items
    return _task(DIGITS, ['a photo of the number: "{c}".', 'a street sign of the number: "{c}".',
                          'a house number {c}.'], splits)


def _words(name, table: dict[str, str], classes, templates, scale, per_word: dict, cap: int | None = None):
    """Each word in ``per_word[split]`` of its split's fonts; words split by hash (at most ``cap`` per class)."""
    fonts = _fonts()
    splits = {}
    for s in SPLITS:
        rng, items, taken = _rng(name, s), [], {c: 0 for c in classes}
        for w, c in table.items():
            if xs.split_of(f"{name}:{w}") != s or (cap and taken[c] >= _n(cap, scale)):
                continue
            if scale < 1 and taken[c] >= _n(len(table) / len(classes) / 2, scale):
                continue
            taken[c] += 1
            for _ in range(per_word[s]):
                items.append((encode(xs.render_text(w, fonts[s][int(rng.integers(len(fonts[s])))], rng,
                                                    max_size=30, rotate=3), "PNG"), classes.index(c)))
        splits[s] = items
    return _task(classes, templates, splits)


def rendered_sentiment(scale: float = 1.0):
    """Rendered SST2's analogue: evaluative adjectives from WordNet, rendered."""
    _need((xs.WORDNET_DIR / "data.adj").is_file(), "WordNet (wordnet-base)")
    return _words("rendered_sentiment", xs.sentiment_words(), ["negative", "positive"],
                  ["a {c} review of a movie.", "a {c} word.", "something {c}."], scale,
                  {"test": 3, "train": 2, "val": 2})


def rendered_word_topics(scale: float = 1.0):
    """Nouns from WordNet (one topic per word), rendered: read the word, name its topic."""
    _need((xs.WORDNET_DIR / "data.noun").is_file(), "WordNet (wordnet-base)")
    classes = sorted(set(xs.TOPICS.values()))
    return _words("rendered_word_topics", xs.topic_words(), classes,
                  ["the word for a {c}.", "a word naming a {c}.", "a written {c} word."], scale,
                  {"test": 2, "train": 2, "val": 1}, cap=150)


# --- icons -------------------------------------------------------------------------------------

def _icon_splits(label):
    """{split: [(name, label, path)]}: test from TEST_THEMES, train / validation from TRAIN_THEMES by
    icon name; train / validation icons near-copying a test icon are dropped."""
    from pipeline.decontam import standardised
    from pipeline.neardup import thumbnail
    from PIL import Image

    test = [(n, label(n, c), p) for n, c, p in xs.icons(xs.TEST_THEMES)]
    rest = [(n, label(n, c), p) for n, c, p in xs.icons(xs.TRAIN_THEMES)]
    _need(bool(test) and bool(rest), f"icon themes {xs.TEST_THEMES + xs.TRAIN_THEMES}")

    def thumbs(items):
        out = []
        for _, _, p in items:
            try:
                im = Image.open(p).convert("RGBA")
            except Exception:  # noqa: BLE001 - icon_image skips it too
                im = Image.new("RGBA", (48, 48))
            ground = Image.new("RGBA", im.size, (255, 255, 255, 255))
            ground.alpha_composite(im)
            out.append(thumbnail(ground.convert("RGB")))
        return np.nan_to_num(standardised(np.stack(out)), nan=0.0)

    a, b = thumbs(test), thumbs(rest)
    d2 = (b ** 2).sum(1)[:, None] + (a ** 2).sum(1)[None] - 2 * b @ a.T
    near = np.sqrt(np.maximum(d2.min(1), 0) / a.shape[1]) <= NEAR_ICON_RMS
    rest = [r for r, k in zip(rest, near) if not k]
    out = {"test": [t for t in test if t[1] is not None]}
    for s in ("train", "val"):
        out[s] = [r for r in rest if r[1] is not None and xs.split_of(f"icon:{r[0]}", 0.0, 0.3) == s]
    return out


def _icon_task(name, label, templates, min_test=10, min_train=5):
    parts = _icon_splits(label)
    count = {s: {} for s in SPLITS}
    for s in SPLITS:
        for _, c, _ in parts[s]:
            count[s][c] = count[s].get(c, 0) + 1
    classes = sorted(c for c in count["test"] if count["test"][c] >= min_test and count["train"].get(c, 0) >= min_train)
    splits = {}
    for s in SPLITS:
        rng = _rng(name, s)
        splits[s] = [(encode(im, "PNG"), classes.index(c)) for _, c, p in parts[s] if c in classes
                     for im in [xs.icon_image(p, rng)] if im is not None]
    return _task(classes, templates, splits)


def icon_contexts(scale: float = 1.0):
    """What kind of icon (freedesktop contexts: action, device, file type, place, status ...)."""
    return _icon_task("icon_contexts", lambda n, c: xs.CONTEXTS[c], ["a {c} icon.", "an icon of a {c}.",
                                                                       "a {c} icon from a desktop theme."])


ICON_WORDS = {"folder": "folder", "network": "network", "battery": "battery", "face": "face", "smiley": "face",
              "audio": "audio", "volume": "audio", "mail": "mail", "weather": "weather", "printer": "printer",
              "camera": "camera", "drive": "disk drive", "user": "user", "document": "document", "media": "media",
              "input": "input device", "emblem": "emblem", "zoom": "zoom", "edit": "edit", "go": "arrow",
              "format": "text format", "view": "view", "dialog": "dialog", "help": "help", "system": "system",
              "preferences": "preferences", "x-office": "office document", "text": "text", "image": "image"}


def _icon_word(name: str, ctx: str) -> str | None:
    n = name.removeprefix("stock_").removeprefix("gnome-")
    if n.startswith("x-office"):
        return ICON_WORDS["x-office"]
    return ICON_WORDS.get(n.replace("_", "-").split("-")[0])


def icon_names(scale: float = 1.0):
    """Named icons by what their name says they show (folder, battery, mail, weather ...)."""
    return _icon_task("icon_names", _icon_word, ["a {c} icon.", "an icon of a {c}.", "{c}."], min_test=5, min_train=3)


def icon_retrieval(scale: float = 1.0):
    parts = _icon_splits(lambda n, c: c)
    splits = {}
    for s in SPLITS:
        rng = _rng("icon_retrieval", s)
        splits[s] = [(encode(im, "PNG"), [f"{n.replace('-', ' ').replace('_', ' ')} icon",
                                          f"a {xs.CONTEXTS[c]} icon: {n.replace('-', ' ').replace('_', ' ')}"])
                     for n, c, p in parts[s] for im in [xs.icon_image(p, rng)] if im is not None]
    return {"splits": splits}


# --- Symbola emoji glyphs ----------------------------------------------------------------------

def _emoji(scale):
    _need(xs.SYMBOLA.is_file() and xs.EMOJI_TEST.is_file(), "Symbola (fonts-symbola) and unicode-data")
    parts = {s: [] for s in SPLITS}
    for ch, group, sub, name in xs.emoji_groups():
        parts[xs.split_of(f"symbola:{ord(ch):X}")].append((ch, group, sub, name))
    if scale < 1:
        parts = {s: v[::max(1, int(1 / scale))] for s, v in parts.items()}
    return parts


def emoji_groups(scale: float = 1.0):
    """Unicode's emoji group of a black-and-white Symbola glyph (not the pool's colour emoji)."""
    parts = _emoji(scale)
    classes = sorted({g.lower().replace("&", "and") for _, g, _, _ in parts["test"]})
    splits = {s: [(encode(xs.glyph_image(ch, _rng(f"emoji_groups/{ord(ch)}", s)), "PNG"),
                   classes.index(g.lower().replace("&", "and"))) for ch, g, _, _ in parts[s]] for s in SPLITS}
    return _task(classes, ["an emoji from the category {c}.", "a {c} emoji.", "a black and white symbol of {c}."],
                 splits)


def emoji_subgroups(scale: float = 1.0):
    """Unicode's emoji subgroup (face-smiling, animal-mammal, transport-ground ...) of a Symbola glyph."""
    parts = _emoji(1.0)  # few glyphs per subgroup: all of them, fewer subgroups when scale < 1
    k = {s: {} for s in SPLITS}
    for s in SPLITS:
        for _, _, sub, _ in parts[s]:
            k[s][sub] = k[s].get(sub, 0) + 1
    keep = sorted(c for c in k["test"] if k["test"][c] >= 3 and k["train"].get(c, 0) >= 1)
    keep = keep[:_n(len(keep), scale)] if len(keep) > 2 else keep
    classes = [c.replace("-", " ") for c in keep]
    splits = {s: [(encode(xs.glyph_image(ch, _rng(f"emoji_subgroups/{ord(ch)}", s)), "PNG"), keep.index(sub))
                  for ch, _, sub, _ in parts[s] if sub in keep] for s in SPLITS}
    return _task(classes, ["an emoji of the kind {c}.", "a {c} emoji.", "a black and white symbol: {c}."], splits)


COUNTS = ["one", "two", "three", "four", "five", "six"]


def object_counts(scale: float = 1.0):
    """CLEVR count's analogue: how many copies of one glyph (the split's glyphs)."""
    parts = _emoji(1.0)
    splits = {}
    for s in SPLITS:
        rng, chars = _rng("object_counts", s), [ch for ch, *_ in parts[s]]
        splits[s] = [(encode(xs.count_image(chars[int(rng.integers(len(chars)))], c + 1, rng), "PNG"), c)
                     for c in range(len(COUNTS)) for _ in range(_n(PER_CLASS[s], scale))]
    return _task(COUNTS, ["a picture of {c} objects.", "{c} things.", "a photo of {c} symbols."], splits)


# --- flags -------------------------------------------------------------------------------------

def _flags(scale):
    _need(xs.FLAGS_DIR.is_dir() and xs.ISO_3166.is_file() and xs.NOTO_EMOJI.is_file(),
          "famfamfam-flag-png, iso-codes and fonts-noto-color-emoji")
    codes = sorted(xs.countries())
    test = {c: xs.emoji_flag(c) for c in codes}
    codes = [c for c in codes if test[c] is not None]
    _need(bool(codes), "emoji flags (Pillow with raqm)")
    return codes[::max(1, int(1 / scale))] if scale < 1 else codes, test


def _flag_views(code, test, s, rng):
    """Test: the emoji flag, and smaller on a tinted ground; train: three famfamfam drawings; validation: two."""
    from PIL import Image

    if s != "test":
        return [xs.small_flag(code, rng) for _ in range(3 if s == "train" else 2)]
    big = test[code]
    ground = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(225, 256, 3)))
    side = int(rng.integers(36, 50))
    ground.paste(big.resize((side, side), Image.LANCZOS), tuple(int(v) for v in rng.integers(0, 64 - side + 1, 2)))
    return [big, ground]


def flag_countries(scale: float = 1.0):
    """Country211's analogue: the country of a flag (train on one drawing, test on another)."""
    codes, test = _flags(scale)
    names = xs.countries()
    splits = {s: [(encode(v, "PNG"), i) for i, c in enumerate(codes) for v in _flag_views(c, test, s, _rng(f"flag/{c}", s))]
              for s in SPLITS}
    return _task([names[c] for c in codes], ["the flag of {c}.", "a flag of {c}.", "{c}."], splits)


def flag_retrieval(scale: float = 1.0):
    codes, test = _flags(scale)
    names = xs.countries()
    splits = {s: [(encode(_flag_views(c, test, s, _rng(f"flagr/{c}", s))[0], "PNG"),
                   [f"the flag of {names[c]}", f"{names[c]} national flag"]) for c in codes] for s in SPLITS}
    return {"splits": splits}


BUILDERS = {"rendered_digits": rendered_digits, "rendered_letters": rendered_letters,
            "rendered_house_numbers": rendered_house_numbers, "rendered_sentiment": rendered_sentiment,
            "rendered_word_topics": rendered_word_topics, "icon_contexts": icon_contexts, "icon_names": icon_names,
            "icon_retrieval": icon_retrieval, "emoji_groups": emoji_groups, "emoji_subgroups": emoji_subgroups,
            "object_counts": object_counts, "flag_countries": flag_countries, "flag_retrieval": flag_retrieval}


def _disjoint(splits: dict) -> dict[str, int]:
    """Drop train / validation images equal to a test image, and validation images equal to a train one."""
    seen = {hashlib.sha256(b).digest() for b, _ in splits["test"]}
    dropped = {}
    for s in ("train", "val"):
        keep = [x for x in splits[s] if hashlib.sha256(x[0]).digest() not in seen]
        dropped[s] = len(splits[s]) - len(keep)
        splits[s] = keep
        seen |= {hashlib.sha256(b).digest() for b, _ in keep}
    return dropped


def write_extra(eval_dir: str | Path, val_dir: str | Path, scale: float = 1.0, only: list[str] | None = None) -> dict:
    """Write the further tasks: ``eval_dir/<task>/{test,train}`` and ``val_dir/<task>/test``.
    Returns ``{"tasks": {name: sizes}, "skipped": {name: why}}``. ``scale`` < 1: fewer items (tests)."""
    from schemas.tasks import EXTRA

    group = {t.folder: t.group for t in EXTRA}
    info = {"tasks": {}, "skipped": {}}
    for name, build in BUILDERS.items():
        if only and name not in only:
            continue
        try:
            task = build(scale)
        except (Missing, FileNotFoundError) as e:
            info["skipped"][name] = str(e)
            continue
        splits = task["splits"]
        if not splits["test"] or not splits["train"]:
            info["skipped"][name] = "no test or no train items"
            continue
        dropped = _disjoint(splits)
        for s in [s for s in SPLITS if splits[s]]:  # (validation can be empty at small scale)
            root, split = (Path(val_dir) / name, "test") if s == "val" else (Path(eval_dir) / name, s)
            if "classes" in task:
                write_task(root, task["classes"], task["templates"], splits[s], split=split)
            else:
                write_retrieval_task(root, splits[s], split=split)
        info["tasks"][name] = {"group": group.get(name), "classes": len(task.get("classes", [])) or None,
                               **{s: len(splits[s]) for s in SPLITS}, "dropped_as_copies": dropped}
    return info


def train_folders(eval_dir: str | Path) -> list[str]:
    """The suite's task folders that hold a train split (NormSim targets, probes): never a test split."""
    return sorted(str(p) for p in Path(eval_dir).iterdir() if (p / "train" / "nshards.txt").is_file()) \
        if Path(eval_dir).is_dir() else []
