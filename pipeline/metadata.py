"""Metadata-only pools, as DataComp ships them: a folder of hash-named ``<h>.parquet`` (uid, url, text,
original_width/height, clip_b32/l14_similarity_score, sha256) beside ``<h>.npz`` (b32_img, b32_txt,
l14_img, l14_txt; float16). Filtering happens before any image is downloaded; the uid list then goes
to a resharder (``curate reshard``). Each parquet is treated as one "shard" of the pool: its rows
are the samples, in file order, with the same columns and accounting as a shard of images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from pipeline.ingest import INGEST_COLUMNS, MAX_CAPTION_CHARS, ShardInfo, caption_languages, valid_uid
from schemas.config import ClipModel

NEEDED = ("uid", "text")


def is_metadata(path: str | Path) -> bool:
    return str(path).endswith(".parquet")


def ingest_table(parquet: str | Path) -> tuple[pa.Table, ShardInfo]:
    """The ingest columns of one metadata parquet (no image: sizes from ``original_width/height``)."""
    path = Path(parquet)
    t = pq.read_table(path)
    missing = [c for c in NEEDED if c not in t.column_names]
    if missing:
        raise ValueError(f"{path} is not DataComp metadata: it has no {', '.join(missing)} column "
                         f"(columns: {', '.join(t.column_names[:12])})")
    sizes = [c for c in ("original_width", "original_height") if c not in t.column_names]
    n = t.num_rows
    texts = [x if isinstance(x, str) else "" for x in t.column("text").to_pylist()]
    uids = t.column("uid").to_pylist()
    bad = [u for u in uids if valid_uid(u) is None]
    if bad:
        raise ValueError(f"{path}: {len(bad)} uid(s) are not 32 hex characters, first: {bad[0]!r}")
    langs = caption_languages(texts)

    def col(name):
        return t.column(name).to_pylist() if name in t.column_names else [None] * n

    rows = {"uid": [u.lower() for u in uids], "key": [u.lower() for u in uids], "shard": [path.stem] * n,
            "url": col("url"), "caption": [x[:MAX_CAPTION_CHARS] for x in texts], "image_ext": [None] * n,
            "image_bytes": [0] * n, "sha256": col("sha256"),
            "original_width": col("original_width"), "original_height": col("original_height"),
            "width": [None] * n, "height": [None] * n,
            # a size the basic filter needs and the metadata lacks is said, not guessed
            "ingest_error": [None] * n,
            "caption_words": [len(x.split()) for x in texts], "caption_chars": [len(x) for x in texts],
            "caption_lang": [lang for lang, _ in langs], "caption_lang_score": [s for _, s in langs]}
    info = ShardInfo(path.stem, str(path), samples_found=n)
    if sizes:
        info.problems.append(f"no {' / '.join(sizes)} column: image sizes unknown (the basic filter drops them)")
    return schemas.table(rows, INGEST_COLUMNS), info


def precomputed(parquet: str | Path, spec: ClipModel, n: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(score with the column's own dtype, image and text embeddings or None) of a metadata parquet."""
    path = Path(parquet)
    col = f"clip_{spec.precomputed}_similarity_score"
    if col not in pq.read_schema(path).names:
        raise ValueError(f"{path} has no '{col}' column for the precomputed '{spec.precomputed}' scorer")
    score = pq.read_table(path, columns=[col]).column(col).to_numpy(zero_copy_only=False)
    npz = path.with_suffix(".npz")
    if not npz.is_file():
        return score, None, None
    with np.load(npz) as z:
        img, txt = z[f"{spec.precomputed}_img"], z[f"{spec.precomputed}_txt"]
    if len(img) != n:
        raise ValueError(f"{npz} holds {len(img)} embeddings for {n} rows of {path.name}")
    return score, img.astype(np.float16, copy=False), txt.astype(np.float16, copy=False)
