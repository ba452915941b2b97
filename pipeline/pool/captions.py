"""Caption text: shop-like product captions, translations, junk captions, emoji captions."""
from __future__ import annotations

import numpy as np

FMNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                  "ankle boot"]
SYNONYMS = {"t-shirt": ["t-shirt", "tee", "t-shirt", "top"], "trouser": ["trousers", "pants", "trouser"],
            "pullover": ["pullover", "sweater", "jumper"], "dress": ["dress", "summer dress"],
            "coat": ["coat", "jacket", "coat"], "sandal": ["sandals", "sandal"],
            "shirt": ["shirt", "button-down shirt", "blouse"], "sneaker": ["sneakers", "sneaker", "trainers"],
            "bag": ["bag", "handbag", "tote bag"], "ankle boot": ["ankle boots", "ankle boot", "boots"]}
PRODUCT_TEMPLATES = [
    "{c}", "photo of a {c}", "women's {c} - free shipping", "men's {c} on sale", "Classic {c} for everyday wear",
    "{c} | size M | new with tags", "buy {c} online", "cheap {c} sale 50% off", "black and white {c}",
    "vintage {c}, barely worn", "the perfect {c} for summer", "{c} (unisex)", "New arrivals: {c}",
    "product image: {c}", "a {c} on a plain background", "best-selling {c} 2019", "our favourite {c}",
    "{c} - item #4821", "comfortable {c} for work and weekend", "designer {c} outlet", "kids {c}, all sizes",
    "{c} in stock, ships today"]
TRANSLATIONS = {  # per class: German, French, Spanish, Italian, Portuguese (the order of LANGS)
    "t-shirt": ["T-Shirt für Herren", "tee-shirt femme", "camiseta de algodón", "maglietta", "camiseta"],
    "trouser": ["Hose schwarz", "pantalon homme", "pantalones", "pantaloni", "calças"],
    "pullover": ["Pullover Damen", "pull en laine", "jersey de punto", "maglione", "suéter"],
    "dress": ["Sommerkleid", "robe d'été", "vestido largo", "vestito", "vestido"],
    "coat": ["Wintermantel", "manteau d'hiver", "abrigo", "cappotto", "casaco"],
    "sandal": ["Sandalen", "sandales", "sandalias", "sandali", "sandálias"],
    "shirt": ["Hemd", "chemise", "camisa de vestir", "camicia", "camisa social"],
    "sneaker": ["Turnschuhe", "baskets", "zapatillas", "scarpe da ginnastica", "tênis"],
    "bag": ["Tasche", "sac à main", "bolso", "borsa", "bolsa"],
    "ankle boot": ["Stiefeletten", "bottines", "botines", "stivaletti", "botas de cano curto"]}
SHOP_PHRASES = ["kostenloser Versand", "livraison gratuite", "envío gratis", "spedizione gratuita", "frete grátis"]
LANGS = ["de", "fr", "es", "it", "pt"]
EMOJI_TEMPLATES = ["{c}", "{c} emoji", "{c} icon", "emoji: {c}", "{c} sticker"]
JUNK = ["IMG_{n:04d}.JPG", "DSC{n:05d}.jpg", "click here", "", "image", "untitled", "download now", "photo.jpg",
        "https://cdn.shop-{n}.com/img/p/{n}.jpg", "www.example-store.com/item?id={n}", "thumbnail", "{n}",
        "null", "Lorem ipsum dolor sit amet", "see more", "no description available", "image_{n}.png"]


def _pick(items: list[str], rng: np.random.Generator) -> str:
    return items[int(rng.integers(len(items)))]


def product_caption(label: str, rng: np.random.Generator) -> str:
    """A web-shop caption naming the class (or a synonym)."""
    return _pick(PRODUCT_TEMPLATES, rng).format(c=_pick(SYNONYMS[label], rng))


def emoji_caption(name: str, rng: np.random.Generator) -> str:
    return _pick(EMOJI_TEMPLATES, rng).format(c=name)


def translated_product(label: str, rng: np.random.Generator) -> tuple[str, str]:
    """``(caption, language)``: the class in another language, sometimes with a shop phrase."""
    k = int(rng.integers(len(LANGS)))
    text = TRANSLATIONS[label][k]
    return (f"{text} - {SHOP_PHRASES[k]}" if rng.random() < 0.4 else text), LANGS[k]


def junk_caption(rng: np.random.Generator) -> str:
    return _pick(JUNK, rng).format(n=int(rng.integers(1, 10_000)))


def vary(caption: str, rng: np.random.Generator) -> str:
    """The same caption or a light variant (a re-post of the same product elsewhere)."""
    kind = int(rng.integers(4))
    if kind == 1:
        return caption.lower()
    if kind == 2:
        return caption.upper()
    if kind == 3:
        return f"{caption} - {_pick(['sale', 'new', 'hot', 'repost', 'HD'], rng)}"
    return caption
