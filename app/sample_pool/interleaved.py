"""Built-in interleaved sample: mmc4-layout documents (pipeline/interleaved.py) from openclipart.

A document is one openclipart topic folder: 2-4 of its drawings, each with its sentence (the SVG's
title, and its description when it has one), 0-2 more sentences of the topic's drawings whose
images are not there, and, planted, distractor drawings from other topics (no sentence of theirs is
in the document). Some documents get two distractors and no extra sentence (more images than
sentences), some a corrupt image. Only drawings held out of every pool and trusted split are used
(app/sample_pool/sources.py ``held_out``), so a scorer bootstrapped on the trusted split never saw them.

    out/shards/00000.tar          {doc}.json + {doc}.{image_name}
    out/ground_truth.parquet      per image: doc, image_name, kind (own | distractor | corrupt),
                                  true_text_index (-1 for distractors and corrupt images)
    out/info.json                 arguments and counts
"""
from __future__ import annotations

import hashlib
import html
import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

from app.sample_pool import sources as src

VERSION = 1


def sentence(rel_png: str) -> str:
    """The drawing's SVG title (its file name when untitled), and its description when it has one."""
    svg = src.OPENCLIPART_DIR / "svg" / (rel_png[:-4] + ".svg")
    try:
        work = svg.read_text(errors="replace")[:20000].split("<cc:Agent", 1)[0]
    except OSError:
        work = ""
    t = re.search(r"<dc:title>([^<]*)</dc:title>", work)
    d = re.search(r"<dc:description>([^<]*)</dc:description>", work)
    title = html.unescape(t.group(1)).strip() if t else ""
    title = title or Path(rel_png).stem.replace("_", " ").replace("-", " ")
    desc = html.unescape(d.group(1)).strip() if d else ""
    text = title if not desc or desc.lower() == title.lower() else f"{title}. {desc}"
    return " ".join(text.split())[:200]


def _candidates() -> dict[str, list[tuple[str, str]]]:
    """topic -> [(drawing, sentence)]: held-out drawings that decode and whose sentence is unique
    (generic titles such as "Various Cliparts" name no one drawing)."""
    items = [p for p in src.openclipart_items() if src.held_out("openclipart", p)]
    sents = {p: sentence(p) for p in items}
    count = pd.Series(list(sents.values())).str.lower().value_counts()
    out: dict[str, list[tuple[str, str]]] = {}
    for p in items:
        if count[sents[p].lower()] == 1 and len(sents[p]) >= 3 and src.openclipart_image(p)[0] is not None:
            out.setdefault(p.split("/")[0], []).append((p, sents[p]))
    return out


def build_interleaved(out: str | Path, n_docs: int = 100, seed: int = 0, docs_per_shard: int = 50) -> dict:
    out = Path(out)
    args = {"n_docs": n_docs, "seed": seed, "docs_per_shard": docs_per_shard, "version": VERSION}
    if (out / "info.json").is_file() and json.loads((out / "info.json").read_text()).get("args") == args:
        return json.loads((out / "info.json").read_text())
    if not src.real_data_status()["openclipart"]:
        raise FileNotFoundError(f"openclipart not found in {src.OPENCLIPART_DIR}: install the Debian packages "
                                "openclipart-png openclipart-svg")
    rng = np.random.default_rng(seed)
    pools = {t: [v[int(i)] for i in rng.permutation(len(v))] for t, v in sorted(_candidates().items())}
    docs, truth = [], []
    while len(docs) < n_docs:
        topics = [t for t, v in pools.items() if len(v) >= 3]
        others = [t for t, v in pools.items() if v]
        if not topics or len(others) < 2:
            break
        doc = _document(f"doc{len(docs):05d}", topics[int(rng.integers(len(topics)))], pools, rng, truth)
        docs.append(doc)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "shards").mkdir(parents=True)
    for s in range(0, len(docs), docs_per_shard):
        with tarfile.open(tmp / "shards" / f"{s // docs_per_shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, doc, images in docs[s:s + docs_per_shard]:
                _add(tar, f"{key}.json", json.dumps(doc, ensure_ascii=False).encode())
                for name, data in images:
                    _add(tar, f"{key}.{name}", data)
    gt = pd.DataFrame(truth)
    gt.to_parquet(tmp / "ground_truth.parquet", index=False)
    info = {"args": args, "documents": len(docs), "shards": len(list((tmp / "shards").glob("*.tar"))),
            "images": gt["kind"].value_counts().to_dict(),
            "sentences": int(sum(len(d[1]["text_list"]) for d in docs))}
    (tmp / "info.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return info


def _document(key: str, topic: str, pools: dict, rng: np.random.Generator, truth: list) -> tuple:
    pool = pools[topic]
    k = min(int(rng.integers(2, 5)), len(pool) - 1)
    own = [pool.pop() for _ in range(k)]
    crowded = rng.random() < 0.15  # more images than sentences
    extra = [] if crowded else [pool.pop() for _ in range(min(int(rng.integers(0, 3)), len(pool)))]
    n_dis = 2 if crowded else int(rng.random() < 0.5)
    others = [t for t, v in pools.items() if v and t != topic]
    distractors = [pools[others[int(rng.integers(len(others)))]].pop() for _ in range(n_dis) if others]
    sents = [s for _, s in own + extra]
    order = [int(i) for i in rng.permutation(len(sents))]
    text_list = [sents[i] for i in order]
    images, info = [], []
    plan = [(p, "own", order.index(j)) for j, (p, _) in enumerate(own)]
    plan += [(p, "distractor", -1) for p, _ in distractors]
    if rng.random() < 0.08:
        plan.append((None, "corrupt", -1))
    for n in [int(i) for i in rng.permutation(len(plan))]:
        p, kind, true_idx = plan[n]
        name = hashlib.sha256(f"{key}/{p}/{n}".encode()).hexdigest()[:12] + ".png"
        data = rng.integers(0, 256, 600, dtype=np.uint8).tobytes() if p is None else _png(p)
        images.append((name, data))
        info.append({"image_name": name, "raw_url": f"file://{src.OPENCLIPART_DIR / 'png' / p}" if p else None})
        truth.append({"doc": key, "topic": topic, "image_name": name, "kind": kind, "item": p,
                      "true_text_index": true_idx})
    doc = {"url": f"openclipart:{topic}/{key}", "text_list": text_list, "image_info": info}
    return key, doc, images


def _png(rel_png: str) -> bytes:
    im, _ = src.openclipart_image(rel_png)
    if im is None:  # unreadable drawings: a corrupt member, counted as decode by the assignment
        return b"not an image"
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))
