"""Sources of the suite's further tasks (app/sample_pool/tasks_extra.py): Debian data no pool draws from.

- text fonts (fonts-dejavu, -liberation, -croscore, -freefont-ttf, -urw-base35, -texgyre, -open-sans,
  -roboto-unhinted, -hack, -comic-neue, -cantarell); a font *design* (metric clones such as Liberation
  Sans / Arimo / Nimbus Sans / TeX Gyre Heros are one design) lies in one split only;
- WordNet 3.0 (wordnet-base): nouns by lexicographer file, adjectives in the clusters of evaluative heads;
- icon themes (adwaita-icon-theme for test; gnome-, mate-, tango-icon-theme for train and validation);
- Symbola (fonts-symbola) emoji glyphs with Unicode's groups (unicode-data ``emoji-test.txt``);
- flags: famfamfam-flag-png (train, validation), Noto Color Emoji flag sequences (test), iso-codes names.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONTS_DIR = Path("/usr/share/fonts")
WORDNET_DIR = Path(os.environ.get("CURATE_WORDNET", "/usr/share/wordnet"))
ICONS_DIR = Path("/usr/share/icons")
TEST_THEMES, TRAIN_THEMES = ["Adwaita"], ["gnome", "mate", "Tango"]
SYMBOLA = Path("/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
FLAGS_DIR = Path("/usr/share/flags/countries/16x11")
ISO_3166 = Path("/usr/share/iso-codes/json/iso_3166-1.json")
NOTO_EMOJI = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
PACKAGES = ("fonts-freefont-ttf fonts-croscore fonts-urw-base35 fonts-texgyre fonts-open-sans fonts-roboto-unhinted "
            "fonts-hack fonts-comic-neue fonts-cantarell fonts-symbola gnome-icon-theme mate-icon-theme "
            "tango-icon-theme famfamfam-flag-png unicode-data iso-codes")


def split_of(key: str, test: float = 0.5, val: float = 0.2) -> str:
    """A stable split for an item (by hash): test, val or train."""
    u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32
    return "test" if u < test else "val" if u < test + val else "train"


# --- fonts -------------------------------------------------------------------------------------

DESIGNS = {
    "helvetica": ["Arimo", "Liberation Sans", "Liberation Sans Narrow", "FreeSans", "Nimbus Sans", "Nimbus Sans Narrow",
                  "TeX Gyre Heros", "TeX Gyre Heros Cn"],
    "times": ["Tinos", "Liberation Serif", "FreeSerif", "Nimbus Roman", "TeX Gyre Termes"],
    "courier": ["Cousine", "Liberation Mono", "FreeMono", "Nimbus Mono PS", "TeX Gyre Cursor"],
    "bookman": ["URW Bookman", "TeX Gyre Bonum"], "schoolbook": ["C059", "TeX Gyre Schola"],
    "palatino": ["P052", "TeX Gyre Pagella"], "avantgarde": ["URW Gothic", "TeX Gyre Adventor"],
    "chancery": ["Z003", "TeX Gyre Chorus"], "dejavu sans": ["DejaVu Sans"], "dejavu serif": ["DejaVu Serif"],
    "dejavu mono": ["DejaVu Sans Mono", "Hack"], "open sans": ["Open Sans", "Open Sans Condensed"],
    "roboto": ["Roboto", "Roboto Condensed"], "cantarell": ["Cantarell"], "comic neue": ["Comic Neue"]}
FONT_SPLIT = {"test": ["helvetica", "palatino", "courier", "dejavu sans", "comic neue"],
              "train": ["times", "schoolbook", "avantgarde", "roboto", "dejavu mono"],
              "val": ["bookman", "open sans", "dejavu serif", "cantarell", "chancery"]}
FAMILY_DESIGN = {f: d for d, fams in DESIGNS.items() for f in fams}


@functools.lru_cache(maxsize=1)
def fonts() -> dict[str, list[str]]:
    """Text font files (.ttf/.otf) by split; families not in DESIGNS (symbols, emoji, maths) are left out."""
    out = {s: [] for s in FONT_SPLIT}
    where = {d: s for s, ds in FONT_SPLIT.items() for d in ds}
    if not FONTS_DIR.is_dir():
        return out
    for p in sorted(FONTS_DIR.rglob("*")):
        if p.suffix.lower() not in (".ttf", ".otf"):
            continue
        try:
            family = ImageFont.truetype(str(p), 12).getname()[0]
        except OSError:
            continue
        design = FAMILY_DESIGN.get(family)
        if design:
            out[where[design]].append(str(p))
    return out


@functools.lru_cache(maxsize=4096)
def font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def render_text(text: str, font_path: str, rng: np.random.Generator, side: int = 64, max_size: int = 40,
                rotate: float = 6.0) -> Image.Image:
    """``text`` in one font, as large as fits (up to ``max_size``), jittered, on a plain ground."""
    dark = rng.random() < 0.7  # dark ink on a light ground, else light on dark
    g = int(rng.integers(190, 256)) if dark else int(rng.integers(0, 70))
    ink = int(rng.integers(0, 80)) if dark else int(rng.integers(180, 256))
    tint = rng.integers(-15, 16, 3)
    ground = tuple(int(np.clip(g + t, 0, 255)) for t in tint)
    size = int(rng.integers(max(8, max_size // 2), max_size + 1))
    while True:
        f = font(font_path, size)
        x0, y0, x1, y1 = f.getbbox(text)
        if (x1 - x0 <= side - 6 and y1 - y0 <= side - 6) or size <= 8:
            break
        size -= 2
    im = Image.new("RGB", (side, side), ground)
    w, h = x1 - x0, y1 - y0
    x = (side - w) / 2 - x0 + rng.uniform(-1, 1) * max(0, (side - w) / 2 - 3)
    y = (side - h) / 2 - y0 + rng.uniform(-1, 1) * max(0, (side - h) / 2 - 3)
    ImageDraw.Draw(im).text((x, y), text, font=f, fill=(ink, ink, ink))
    if rotate:
        im = im.rotate(float(rng.uniform(-rotate, rotate)), Image.BICUBIC, fillcolor=ground)
    return im


# --- WordNet -----------------------------------------------------------------------------------

def _synsets(pos: str):
    """(offset, lexfile, type, words, pointers) per synset of data.<pos>."""
    with open(WORDNET_DIR / f"data.{pos}", encoding="latin-1") as f:
        for line in f:
            if line.startswith(" "):
                continue
            p = line.split(" | ")[0].split()
            n = int(p[3], 16)
            words = [re.sub(r"\(.*\)$", "", w).lower() for w in p[4:4 + 2 * n:2]]
            k = 4 + 2 * n
            ptrs = [(p[k + 1 + 4 * i], int(p[k + 2 + 4 * i])) for i in range(int(p[k]))]
            yield int(p[0]), int(p[1]), p[2], words, ptrs


def _plain(w: str, longest: int = 10) -> bool:
    return w.isalpha() and w.isascii() and 3 <= len(w) <= longest


@functools.lru_cache(maxsize=4)
def _tagged(pos: str) -> dict[str, int]:
    """lemma -> how often its senses are tagged in SemCor (index.<pos>), a familiarity measure."""
    out = {}
    with open(WORDNET_DIR / f"index.{pos}", encoding="latin-1") as f:
        for line in f:
            if not line.startswith(" "):
                p = line.split()
                out[p[0]] = int(p[3 + int(p[3]) + 2])
    return out


TOPICS = {5: "animal", 20: "plant", 13: "food", 8: "body part", 18: "person", 27: "substance"}


@functools.lru_cache(maxsize=1)
def topic_words() -> dict[str, str]:
    """Familiar one-word nouns whose every noun sense is in one of TOPICS' lexicographer files, and
    which WordNet lists under no other part of speech -> the topic."""
    lexfiles: dict[str, set[int]] = {}
    for _, lex, _, words, _ in _synsets("noun"):
        for w in words:
            lexfiles.setdefault(w, set()).add(lex)
    other = set().union(*(_tagged(p).keys() for p in ("verb", "adj", "adv")))
    tagged = _tagged("noun")
    return {w: TOPICS[next(iter(ls))] for w, ls in sorted(lexfiles.items())
            if len(ls) == 1 and next(iter(ls)) in TOPICS and _plain(w) and w not in other and tagged.get(w, 0) > 0}


POSITIVE = ["good", "happy", "beautiful", "pleasant", "kind", "wise", "brave", "honest", "healthy", "successful",
            "friendly", "comfortable", "interesting", "clean", "generous", "polite", "safe", "lucky"]
NEGATIVE = ["bad", "unhappy", "ugly", "unpleasant", "unkind", "foolish", "cowardly", "dishonest", "unhealthy",
            "unsuccessful", "unfriendly", "uncomfortable", "uninteresting", "dirty", "stingy", "rude", "dangerous",
            "unlucky"]


@functools.lru_cache(maxsize=1)
def sentiment_words() -> dict[str, str]:
    """Adjectives in the clusters (head synset + its similar-to satellites) of evaluative heads:
    word -> positive / negative (words on both sides are left out)."""
    syn = {off: (typ, words, ptrs) for off, _, typ, words, ptrs in _synsets("adj")}
    side: dict[str, set[str]] = {}
    for label, seeds in (("positive", POSITIVE), ("negative", NEGATIVE)):
        for off, (typ, words, ptrs) in syn.items():
            if typ != "a" or not set(words) & set(seeds):
                continue
            cluster = [words] + [syn[o][1] for s, o in ptrs if s == "&" and o in syn]
            for w in (w for ws in cluster for w in ws):
                if _plain(w, 11):
                    side.setdefault(w, set()).add(label)
    tagged = _tagged("adj")  # familiar words only (tagged in SemCor)
    return {w: next(iter(s)) for w, s in sorted(side.items()) if len(s) == 1 and tagged.get(w, 0) > 0}


# --- icon themes -------------------------------------------------------------------------------

CONTEXTS = {"actions": "action", "apps": "application", "categories": "category", "devices": "device",
            "emblems": "emblem", "emotes": "emote", "mimetypes": "file type", "places": "place", "status": "status"}


def icons(themes: list[str], px: int = 48) -> list[tuple[str, str, Path]]:
    """(name, context, file) of the themes' ``px`` icons (``32`` where a theme has no ``px``): symlinks
    and byte-identical files once, the first name in sorted order."""
    out, seen = [], set()
    for theme in themes:
        root = ICONS_DIR / theme
        size = next((f"{s}x{s}" for s in (px, 32) if (root / f"{s}x{s}").is_dir()), None)
        if size is None:
            continue
        for ctx in sorted(CONTEXTS):
            d = root / size / ctx
            for p in sorted(d.glob("*.png")) if d.is_dir() else []:
                try:
                    digest = hashlib.sha256(p.resolve().read_bytes()).hexdigest()
                except OSError:
                    continue
                if digest not in seen:
                    seen.add(digest)
                    out.append((p.stem, ctx, p))
    return out


def icon_image(path: Path, rng: np.random.Generator, side: int = 64) -> Image.Image | None:
    try:
        im = Image.open(path).convert("RGBA")
    except Exception:  # noqa: BLE001 - an unreadable icon is left out
        return None
    g = tuple(int(v) for v in rng.integers(225, 256, 3))
    ground = Image.new("RGBA", (side, side), g + (255,))
    s = int(rng.integers(36, 57))
    im = im.resize((s, s), Image.LANCZOS)
    at = tuple(int(v) for v in rng.integers(0, side - s + 1, 2))
    ground.alpha_composite(im, at)
    return ground.convert("RGB")


# --- Symbola emoji glyphs ----------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def emoji_groups() -> list[tuple[str, str, str, str]]:
    """(character, group, subgroup, name) of single-codepoint fully-qualified emoji Symbola draws
    (components and flags left out)."""
    out, group, sub = [], "", ""
    missing = _glyph_mask("\U0010FFFD")
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            sub = line.split(":", 1)[1].strip()
        elif "; fully-qualified" in line and group not in ("Component", "Flags"):
            cps = [int(c, 16) for c in line.split(";")[0].split() if c != "FE0F"]
            if len(cps) == 1:
                ch = chr(cps[0])
                mask = _glyph_mask(ch)
                if mask is not None and mask != missing:
                    name = re.sub(r"^.*?E\d+\.\d+\s+", "", line.split("#", 1)[1]).strip()
                    out.append((ch, group, sub, name))
    return out


def _glyph_mask(ch: str) -> bytes | None:
    f = font(str(SYMBOLA), 40)
    box = f.getbbox(ch)
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    im = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(im).text((2, 2), ch, font=f, fill=255)
    return im.tobytes() if im.getbbox() else None


def glyph_image(ch: str, rng: np.random.Generator, side: int = 64) -> Image.Image:
    return render_text(ch, str(SYMBOLA), rng, side, max_size=52, rotate=0)


def count_image(ch: str, n: int, rng: np.random.Generator, side: int = 64) -> Image.Image:
    """``n`` copies of one glyph at places that do not overlap."""
    g = int(rng.integers(200, 256))
    im = Image.new("RGB", (side, side), (g, g, g))
    d = ImageDraw.Draw(im)
    s = int(rng.integers(12, 16))
    f = font(str(SYMBOLA), s)
    cells = [(x, y) for x in range(0, side - s, s + 3) for y in range(0, side - s, s + 3)]
    for k in rng.choice(len(cells), n, replace=False):
        x, y = cells[int(k)]
        d.text((x + int(rng.integers(0, 3)), y + int(rng.integers(0, 3))), ch, font=f, fill=(0, 0, 0))
    return im


# --- flags -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def countries() -> dict[str, str]:
    """alpha-2 code (lower case) -> common English name, for the countries famfamfam draws."""
    rows = json.loads(ISO_3166.read_text())["3166-1"]
    return {r["alpha_2"].lower(): r.get("common_name", r["name"]) for r in rows
            if (FLAGS_DIR / f"{r['alpha_2'].lower()}.png").is_file()}


def small_flag(code: str, rng: np.random.Generator, side: int = 64) -> Image.Image:
    """famfamfam's 16x11 flag, scaled up 2-3x, on a light ground."""
    im = Image.open(FLAGS_DIR / f"{code}.png").convert("RGBA")
    k = float(rng.uniform(2.0, 3.6))
    im = im.resize((int(16 * k), int(11 * k)), Image.NEAREST if rng.random() < 0.5 else Image.BILINEAR)
    g = tuple(int(v) for v in rng.integers(220, 256, 3))
    ground = Image.new("RGBA", (side, side), g + (255,))
    at = tuple(int(rng.integers(0, side - s + 1)) for s in im.size)
    ground.alpha_composite(im, at)
    return ground.convert("RGB")


_NOTO = None


def emoji_flag(code: str) -> Image.Image | None:
    """Noto Color Emoji's flag (a regional-indicator pair), or None if it is not drawn as one flag
    (no glyph, or Pillow without raqm draws two letters)."""
    from shardio.decode import to_rgb

    global _NOTO
    if _NOTO is None:
        _NOTO = ImageFont.truetype(str(NOTO_EMOJI), 109)
    seq = "".join(chr(0x1F1E6 + ord(c) - ord("a")) for c in code)
    im = Image.new("RGBA", (272, 128), (255, 255, 255, 0))
    ImageDraw.Draw(im).text((0, 0), seq, font=_NOTO, embedded_color=True)
    box = im.getbbox()
    if box is None or box[2] - box[0] > 160:
        return None
    return to_rgb(im.crop((0, 0, 136, 128))).resize((64, 64), Image.LANCZOS)


def status() -> dict[str, bool]:
    """Which sources are installed (the suite's cache key; a task without its source is skipped)."""
    return {"fonts": all(fonts().values()), "wordnet": (WORDNET_DIR / "data.noun").is_file(),
            "icons": all((ICONS_DIR / t).is_dir() for t in TEST_THEMES) and any((ICONS_DIR / t).is_dir() for t in TRAIN_THEMES),
            "symbola": SYMBOLA.is_file() and EMOJI_TEST.is_file(),
            "flags": FLAGS_DIR.is_dir() and ISO_3166.is_file() and NOTO_EMOJI.is_file()}
