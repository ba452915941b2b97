"""bench/scale.py's pool: DataComp-format metadata shards (``<hash>.parquet`` + ``<hash>.npz``) with
realistic captions, float64 CLIP scores, float16 embeddings around ``CENTRES`` centres, planted exact
and near duplicates; the pool of each size is a folder of links to the first shards."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

POOL_VERSION = 1
CENTRES = 1000
N_TARGETS = 1000


EN_NOUNS = ("dog cat car house tree bird flower mountain beach river city street bridge boat train bicycle "
            "chair table lamp cup plate pizza cake apple guitar piano book phone laptop shoe dress shirt "
            "hat horse cow sheep lake forest garden kitchen window door").split()
EN_ADJS = ("red blue green yellow black white small large old new wooden vintage modern bright dark happy "
           "beautiful tiny huge rustic shiny colorful empty busy quiet sunny snowy").split()
EN_PLACES = ("table street park beach kitchen field road wall floor garden river shop market hill "
             "station window desk roof bed bench").split()
EN_TIMES = ("night sunset dawn noon winter summer").split()
EN_TEMPLATES = ("a photo of a {a} {n}", "{a} {n} on the {p}", "a {n} with a {a} {m} in the {p}",
                "close-up of a {a} {n}", "the {a} {n} near the {p} at {t}", "{n} and {m} on a {a} {p}",
                "stock image of a {a} {n} for sale", "my {n} sitting on the {p}",
                "vector illustration of a {a} {n} isolated on white background")
OTHER = {  # (templates, nouns, adjectives): French, German, Spanish, Italian, Portuguese
    "fr": (("une photo d'un {n} {a}", "le {n} {a} dans la cuisine", "maison à vendre avec un {n} {a}"),
           "chien chat jardin vélo gâteau livre".split(), "rouge bleu petit grand ancien joli".split()),
    "de": (("ein {a} {n} im Garten", "das {a} {n} auf dem Tisch", "Wohnung mit {a} {n} zu vermieten"),
           "Hund Katze Fahrrad Kuchen Buch Stuhl".split(), "roter blauer kleiner großer alter schöner".split()),
    "es": (("una foto de un {n} {a}", "el {n} {a} en la calle", "casa en venta con {n} {a}"),
           "perro gato coche pastel libro silla".split(), "rojo azul pequeño grande viejo bonito".split()),
    "it": (("una foto di un {n} {a}", "il {n} {a} sul tavolo", "vendita di un {n} {a} usato"),
           "cane gatto bicicletta torta libro sedia".split(), "rosso blu piccolo grande vecchio bello".split()),
    "pt": (("uma foto de um {n} {a}", "o {n} {a} na rua", "casa à venda com {n} {a}"),
           "cachorro gato carro bolo livro cadeira".split(), "vermelho azul pequeno grande velho bonito".split()),
}


@functools.lru_cache(maxsize=2)
def caption_bank(seed: int, size: int = 20_000) -> np.ndarray:
    """Captions from a small vocabulary: ~80% English of 3-12 words, ~10% other languages, ~7% short
    (one or two words, file names), ~2% multi-line, ~1% empty."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(size):
        u = rng.random()
        pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
        if u < 0.80:
            out.append(pick(EN_TEMPLATES).format(a=pick(EN_ADJS), n=pick(EN_NOUNS), m=pick(EN_NOUNS),
                                                 p=pick(EN_PLACES), t=pick(EN_TIMES)))
        elif u < 0.90:
            tpl, nouns, adjs = OTHER[pick(sorted(OTHER))]
            out.append(pick(tpl).format(n=pick(nouns), a=pick(adjs)))
        elif u < 0.97:
            out.append(pick([pick(EN_NOUNS), f"{pick(EN_ADJS)} {pick(EN_NOUNS)}", f"IMG_{rng.integers(10000):04d}",
                             f"dsc{rng.integers(100000):05d}.jpg", "photo", "ok"]))
        elif u < 0.99:
            out.append(f"a {pick(EN_ADJS)} {pick(EN_NOUNS)}\non the {pick(EN_PLACES)}")
        else:
            out.append("")
    return np.array(out, dtype=object)


def _hex_rows(rng: np.random.Generator, n: int, nbytes: int) -> list[str]:
    h = rng.bytes(n * nbytes).hex()
    w = 2 * nbytes
    return [h[i:i + w] for i in range(0, len(h), w)]


def copy_rows(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(exact copies, their sources, near copies, their sources): 2% and 3% of a shard's rows (never the
    first), each copying an earlier row."""
    kind = rng.random(rows)
    exact = np.flatnonzero(kind < 0.02)
    near = np.flatnonzero((kind >= 0.02) & (kind < 0.05))
    exact, near = exact[exact > 0], near[near > 0]
    src_exact = (rng.random(len(exact)) * exact).astype(np.int64)
    src_near = (rng.random(len(near)) * near).astype(np.int64)
    return exact, src_exact, near, src_near


def _centres(seed: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Image centres and text centres (partly aligned with them) of one embedding space."""
    rng = np.random.default_rng([seed, dim])
    img = rng.standard_normal((CENTRES, dim), dtype=np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    other = rng.standard_normal((CENTRES, dim), dtype=np.float32)
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    return img, other


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _shard_name(seed: int, i: int) -> str:
    return f"{i:05x}" + hashlib.sha1(f"scale-{seed}-{i}".encode()).hexdigest()[:27]


def write_shard(folder: str, i: int, rows: int, seed: int) -> str:
    """One shard: ``<hash>.parquet`` (DataComp's columns) + ``<hash>.npz`` (b32/l14 img/txt, float16).
    Rows draw a centre (a skewed mix of 1,000), an image vector = centre + noise and a text vector that
    shares a random amount of the image vector; 2% are exact copies of an earlier row of the shard
    (caption, sizes, embeddings, scores, sha256), 3% near copies (embeddings moved by ~0.15)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng([seed, i])
    weights = 1.0 / np.sqrt(np.arange(1, CENTRES + 1))
    c = rng.choice(CENTRES, size=rows, p=weights / weights.sum())
    bank = caption_bank(seed)
    text = bank[rng.integers(len(bank), size=rows)]
    w = np.clip(np.exp(rng.normal(np.log(420), 0.6, rows)), 16, 6000)
    aspect = np.exp(rng.normal(0, 0.45, rows))
    width, height = w.astype(np.int64), np.clip(w / aspect, 16, 8000).astype(np.int64)
    uid, sha = _hex_rows(rng, rows, 16), _hex_rows(rng, rows, 32)
    exact, src_exact, near, src_near = copy_rows(rng, rows)
    align = rng.uniform(0.0, 0.8, rows).astype(np.float32)[:, None]
    emb, score = {}, {}
    for arch, dim in (("b32", 512), ("l14", 768)):
        cimg, ctxt = _centres(seed, dim)
        img = _unit(cimg[c] + (0.6 / np.sqrt(dim)) * rng.standard_normal((rows, dim), dtype=np.float32))
        txt = _unit(align * img + ctxt[c] + (0.6 / np.sqrt(dim)) * rng.standard_normal((rows, dim), dtype=np.float32))
        for x in (img, txt):
            jitter = rng.standard_normal((len(near), dim), dtype=np.float32)
            x[near] = _unit(x[src_near] + (0.15 / np.sqrt(dim)) * jitter)
        img16, txt16 = img.astype(np.float16), txt.astype(np.float16)
        for x in (img16, txt16):
            x[exact] = x[src_exact]
        s = (img16.astype(np.float32) * txt16.astype(np.float32)).sum(1).astype(np.float64)
        s += rng.normal(0, 1e-7, rows)  # float64 precision, as DataComp's columns have
        s[exact] = s[src_exact]
        emb[f"{arch}_img"], emb[f"{arch}_txt"], score[arch] = img16, txt16, s
    for col in (text, width, height):
        col[exact] = col[src_exact]
    sha = np.array(sha, dtype=object)
    sha[exact] = sha[src_exact]
    name = _shard_name(seed, i)
    base = Path(folder) / name
    table = pa.table({"uid": uid, "url": [f"https://img{j % 97}.example.com/{u[:12]}.jpg" for j, u in enumerate(uid)],
                      "text": pa.array(list(text), pa.string()),
                      "original_width": width, "original_height": height,
                      "clip_b32_similarity_score": score["b32"], "clip_l14_similarity_score": score["l14"],
                      "sha256": pa.array(list(sha), pa.string())})
    pq.write_table(table, f"{base}.parquet.tmp")
    np.savez(f"{base}.tmp.npz", **emb)
    os.replace(f"{base}.tmp.npz", f"{base}.npz")
    os.replace(f"{base}.parquet.tmp", f"{base}.parquet")
    return name


def shard_plan(n: int, per_shard: int) -> list[int]:
    full, rest = divmod(n, per_shard)
    return [per_shard] * full + ([rest] if rest else [])


def make_pool(folder: Path, n: int, per_shard: int, seed: int, procs: int = 2) -> dict:
    """The pool in ``folder``, reused when ``pool.json`` there names the same settings."""
    settings = {"version": POOL_VERSION, "n": n, "per_shard": per_shard, "seed": seed, "centres": CENTRES}
    marker = folder / "pool.json"
    if marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
        info = json.loads(marker.read_text())
        return {**info, "reused": True}
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    plan = shard_plan(n, per_shard)
    t0 = time.time()
    args = ([str(folder)] * len(plan), range(len(plan)), plan, [seed] * len(plan))
    if procs <= 1 or n < 50_000:  # small pools: no process pool (and no fork of a process holding torch)
        names = list(map(write_shard, *args))
    else:
        with ProcessPoolExecutor(procs) as ex:
            names = list(ex.map(write_shard, *args))
    seconds = round(time.time() - t0, 1)
    nbytes = sum(p.stat().st_size for p in folder.iterdir())
    info = {"settings": settings, "shards": names, "rows": plan, "write_seconds": seconds,
            "bytes": nbytes}
    marker.write_text(json.dumps(info, indent=1))
    return {**info, "reused": False}


def subset_pool(pool: Path, info: dict, n: int, folder: Path) -> Path:
    """A folder of links to the pool's first shards holding ``n`` rows."""
    take, rows = [], 0
    for name, r in zip(info["shards"], info["rows"]):
        if rows >= n:
            break
        take.append(name)
        rows += r
    if rows != n:
        raise ValueError(f"{n} is not a whole number of shards of the pool ({info['rows'][:3]}...)")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name in take:
        for ext in (".parquet", ".npz"):
            if (pool / f"{name}{ext}").exists():  # a parquet-only pool has no npz
                (folder / f"{name}{ext}").symlink_to((pool / f"{name}{ext}").resolve())  # --work may be relative
    return folder


def write_targets(path: Path, pool: Path, info: dict, seed: int) -> None:
    """The image-based filter's target set, as embeddings (the ImageNet-1k analogue): N_TARGETS rows,
    5 around each of the first shard's first N_TARGETS / 5 L/14 image embeddings (seeded jitter), so
    they fall in a part of the pool's clusters; unit length."""
    rng = np.random.default_rng(seed + 1)
    with np.load(pool / (Path(info["shards"][0]).stem + ".npz")) as z:
        x = np.repeat(z["l14_img"][:N_TARGETS // 5].astype(np.float32), 5, axis=0)
    x += (0.1 / np.sqrt(x.shape[1])) * rng.standard_normal(x.shape, dtype=np.float32)
    np.save(path, x / np.linalg.norm(x, axis=1, keepdims=True))
