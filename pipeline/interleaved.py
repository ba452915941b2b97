"""Interleaved image-text documents, images placed on sentences as mmc4 does (Zhu et al., 2023,
"Multimodal C4"; github.com/allenai/mmc4 scripts/compute_assignments.py): the CLIP similarity of
every image to every sentence of its document, a one-to-one assignment maximising the total
similarity (``scipy.optimize.linear_sum_assignment``), and images whose matched similarity is below
a threshold dropped.

Shard layout (a webdataset tar, one sample per document)::

    {doc}.json            the document in mmc4's layout: {"text_list": [sentence, ...],
                          "image_info": [{"image_name": "b9040a0dbb22.jpg", ...}, ...], "url": ...}
    {doc}.{image_name}    the bytes of each image named in image_info (a file name: no "/")

webdataset keys a member by its name up to the first dot, so a document and its images are one
sample. The output has the same layout: ``image_info`` holds the kept images, each with
``matched_text_index`` and ``matched_sim``; ``similarity_matrix`` is kept images x sentences; and
``curation`` accounts for every image: kept, or dropped as ``low_similarity``, ``unmatched`` (more
images than sentences: one-to-one leaves some without a sentence; mmc4 gives those their best
sentence instead, ``keep_unmatched``) or ``decode`` (missing or undecodable bytes).

Threshold: a similarity (``min_sim``), or ``auto``: per shard, the ``null_quantile`` of the
similarities between images and the sentences of *another* document, i.e. an image is kept when it
matches its sentence better than that share of unrelated pairs. No CLIP threshold carries over
between scorers, and ``auto`` needs no ground truth.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import linear_sum_assignment

REASONS = ("low_similarity", "unmatched", "decode")
DECODE_SIDE = 256  # JPEGs decode at a reduced scale down to this side (the scorer sees 224 px or less)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_sim: float | None = Field(None, ge=-1, le=1, description="matched similarity below this is dropped; "
                                                                 "None: auto (null_quantile)")
    null_quantile: float = Field(0.95, gt=0, lt=1, description="auto threshold: quantile of off-document pairs")
    keep_unmatched: bool = Field(False, description="mmc4: images left without a sentence take their best one")
    min_images: int = Field(1, ge=0, description="documents with fewer kept images are not written")


def assign(sim: np.ndarray, min_sim: float, keep_unmatched: bool = False) -> tuple[np.ndarray, list[str | None]]:
    """``sim``: images x sentences. Returns the sentence of each image (-1 when none) and the drop
    reason of each image (None when kept)."""
    n_img = sim.shape[0]
    match = np.full(n_img, -1, np.int64)
    if n_img and sim.shape[1]:
        rows, cols = linear_sum_assignment(sim, maximize=True)
        match[rows] = cols
    reasons: list[str | None] = []
    for i in range(n_img):
        if match[i] < 0:
            if keep_unmatched and sim.shape[1]:
                match[i] = int(np.argmax(sim[i]))
            else:
                reasons.append("unmatched")
                continue
        reasons.append("low_similarity" if sim[i, match[i]] < min_sim else None)
    return match, reasons


def null_threshold(docs: list[tuple[np.ndarray, np.ndarray]], quantile: float) -> float:
    """Quantile of the similarities of each document's images to the next document's sentences."""
    usable = [(im, tx) for im, tx in docs if len(im) and len(tx)]
    if len(usable) < 2:
        raise ValueError("min_sim auto needs at least two documents with images and sentences in a shard; "
                         "give a number (--min-sim)")
    sims = [usable[i][0] @ usable[(i + 1) % len(usable)][1].T for i in range(len(usable))]
    return float(np.quantile(np.concatenate([s.ravel() for s in sims]), quantile))


@dataclass
class Doc:
    key: str
    doc: dict
    images: list  # PIL image, or None when it could not be decoded
    data: list  # the stored bytes of each image (None when missing)
    problems: dict[int, str]  # image index -> decode detail


def read_docs(shard: str | Path) -> tuple[list[Doc], list[str]]:
    """The documents of a shard, images decoded; and notes about samples that are no document."""
    from shardio.decode import decode_image
    from shardio.tar import TarReport, iter_samples

    docs, notes, report = [], [], TarReport(str(shard))
    for s in iter_samples(shard, report):
        if s.duplicate or "json" not in s.members:
            notes.append(f"{s.key}: {'repeated key' if s.duplicate else 'no json member'}")
            continue
        try:
            doc = json.loads(s.members["json"])
            info, texts = doc["image_info"], doc["text_list"]
            if not isinstance(info, list) or not isinstance(texts, list):
                raise TypeError("image_info and text_list must be lists")
        except (ValueError, KeyError, TypeError) as e:
            notes.append(f"{s.key}: not an mmc4 document ({type(e).__name__}: {e})")
            continue
        images, data, problems = [], [], {}
        for i, im_info in enumerate(info):
            name = str(im_info.get("image_name", "")).lower() if isinstance(im_info, dict) else ""
            raw = s.members.get(name) if name else None
            im, why = decode_image(raw, DECODE_SIDE) if raw is not None else (None, f"no member {s.key}.{name}")
            images.append(im)
            data.append(raw)
            if im is None:
                problems[i] = why
        docs.append(Doc(s.key, doc, images, data, problems))
    if report.error:
        notes.append(f"shard: {report.error}")
    return docs, notes


def _scorer(scorer):
    if isinstance(scorer, str):
        from pipeline.clip_stage import get_scorer

        return get_scorer(scorer)
    return scorer


def _texts(scorer, texts: list[str], batch: int = 256) -> np.ndarray:
    parts = [scorer.embed_texts(texts[i:i + batch]) for i in range(0, len(texts), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)


def interleave_shard(shard: str | Path, out_dir: str | Path, scorer, settings: Settings) -> dict:
    """Assign one shard's images to sentences; write ``out_dir/<shard>.tar``; return its accounting.
    ``scorer``: a ClipModel spec as JSON (pipeline/clip_stage.py), or an object with
    ``embed_images(list[PIL]) / embed_texts(list[str])`` returning L2-normalised rows."""
    from shardio.shards import shard_id

    t0 = time.time()
    scorer = _scorer(scorer)
    docs, notes = read_docs(shard)
    images = [im for d in docs for im in d.images if im is not None]  # one batched pass per shard
    img_all = scorer.embed_images(images) if images else np.zeros((0, 1), np.float32)
    txt_all = _texts(scorer, [str(t) for d in docs for t in d.doc["text_list"]])
    img_at = np.cumsum([0] + [sum(im is not None for im in d.images) for d in docs])
    txt_at = np.cumsum([0] + [len(d.doc["text_list"]) for d in docs])
    embedded = [(img_all[img_at[n]:img_at[n + 1]], txt_all[txt_at[n]:txt_at[n + 1]]) for n in range(len(docs))]
    threshold = settings.min_sim if settings.min_sim is not None else null_threshold(embedded, settings.null_quantile)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = shard_id(shard)
    tmp = out_dir / f".{name}.tar.tmp"
    rows = []
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for d, (img, txt) in zip(docs, embedded):
            row, members = _assign_doc(d, img, txt, threshold, settings)
            row.update(shard=name, written=row["kept"] >= settings.min_images)
            if row["written"]:
                for suffix, data in members.items():
                    info = tarfile.TarInfo(f"{d.key}.{suffix}")
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
            rows.append(row)
    os.replace(tmp, out_dir / f"{name}.tar")
    return {"shard": name, "threshold": threshold, "documents": rows, "notes": notes,
            "seconds": round(time.time() - t0, 3)}


def _assign_doc(d: Doc, img: np.ndarray, txt: np.ndarray, threshold: float, s: Settings) -> tuple[dict, dict]:
    info = d.doc["image_info"]
    ok_idx = [i for i, im in enumerate(d.images) if im is not None]
    sim = img @ txt.T if len(ok_idx) and len(txt) else np.zeros((len(ok_idx), len(txt)), np.float32)
    match, why = assign(sim, threshold, s.keep_unmatched)
    kept, dropped, rows_kept = [], [], []
    for i, detail in sorted(d.problems.items()):
        dropped.append({"image_name": info[i].get("image_name"), "reason": "decode", "detail": detail})
    for r, i in enumerate(ok_idx):
        j = int(match[r])
        entry = {"image_name": info[i].get("image_name"), "matched_text_index": j if j >= 0 else None,
                 "matched_sim": float(sim[r, j]) if j >= 0 else None}
        if why[r] is None:
            kept.append({**info[i], "matched_text_index": j, "matched_sim": float(sim[r, j])})
            rows_kept.append(r)
        else:
            dropped.append({**entry, "reason": why[r]})
    counts = {k: sum(x["reason"] == k for x in dropped) for k in REASONS}
    out = {**d.doc, "image_info": kept, "similarity_matrix": sim[rows_kept].round(6).tolist(),
           "curation": {"images_in": len(info), "kept": len(kept), "dropped": counts, "dropped_images": dropped,
                        "threshold": threshold}}
    members = {"json": json.dumps(out, ensure_ascii=False).encode()}
    for r in rows_kept:
        i = ok_idx[r]
        members[str(info[i]["image_name"]).lower()] = d.data[i]
    ledger = [{"image_name": k["image_name"], "status": "kept", "matched_text_index": k["matched_text_index"],
               "matched_sim": k["matched_sim"]} for k in kept]
    ledger += [{"status": x["reason"], **{k: v for k, v in x.items() if k != "reason"}} for x in dropped]
    row = {"key": d.key, "sentences": len(d.doc["text_list"]), "images_in": len(info), "kept": len(kept),
           **{f"dropped_{k}": v for k, v in counts.items()}, "images": json.dumps(ledger, ensure_ascii=False)}
    return row, members


def summarize(results: list[dict], out: str | Path, settings: Settings, scorer_name: str) -> dict:
    """Write ``out/documents.parquet`` (one row per document: counts, whether it was written, and
    ``images``, a JSON list of every image with its status, kept or the drop reason, and its matched
    sentence) and ``out/summary.json``; return the summary."""
    import pandas as pd

    out = Path(out)
    docs = pd.DataFrame([r for res in results for r in res["documents"]],
                        columns=["shard", "key", "sentences", "images_in", "kept", *[f"dropped_{k}" for k in REASONS],
                                 "written", "images"])
    docs.to_parquet(out / "documents.parquet", index=False)
    summary = {"settings": settings.model_dump(), "scorer": scorer_name, "shards": len(results),
               "documents_in": int(len(docs)), "documents_written": int(docs["written"].sum()),
               "images_in": int(docs["images_in"].sum()), "images_kept": int(docs["kept"][docs["written"]].sum()),
               "images_dropped": {k: int(docs[f"dropped_{k}"].sum()) for k in REASONS},
               "images_in_documents_not_written": int(docs["kept"][~docs["written"]].sum()),
               "thresholds": {r["shard"]: r["threshold"] for r in results},
               "notes": {r["shard"]: r["notes"] for r in results if r["notes"]},
               "seconds": round(sum(r["seconds"] for r in results), 3)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_interleave(docs: str | list[str], out: str | Path, scorer, settings: Settings | None = None,
                   scorer_name: str = "") -> dict:
    """Every shard of ``docs`` (folder, braced pattern, glob, list) into ``out/shards``; the
    accounting in ``out/documents.parquet`` and ``out/summary.json``."""
    from shardio.shards import expand

    settings = settings or Settings()
    shards = expand(docs)
    out = Path(out)
    results = [interleave_shard(s, out / "shards", scorer, settings) for s in shards]
    name = scorer_name or (scorer if isinstance(scorer, str) else type(scorer).__name__)
    return summarize(results, out, settings, name)
