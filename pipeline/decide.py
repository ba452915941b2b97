"""Decide: turn columns into ``keep`` plus drop reasons for every row. Nothing is lost.

Rules run in order: a sample that cannot be used drops first, with its real cause (``duplicate_key``,
``metadata``, ``no_image``, ``format``, ``decode``), then a repeated uid (``duplicate_uid``, first in
pool order kept), then each configured filter instance (pipeline/filters/). ``drop_reason`` is the
first failing rule, ``drop_reasons`` every failing rule. A filter only judges usable samples.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.embeddings import Shards
from pipeline.filters import Context, Filter

INGEST_REASONS = ("duplicate_key", "metadata", "no_image", "format", "decode")
_NP = {"string": object, "float32": np.float32, "int32": np.int32, "int64": np.int64, "bool": bool}


def load_columns(run_dir: str | Path, shard_ids: list[str], config) -> pd.DataFrame:
    """Join every stage's columns for the given shards into one table (row order = pool order)."""
    run = Path(run_dir)
    parts = []
    for sid in shard_ids:
        df = pq.read_table(run / "columns" / "ingest" / f"{sid}.parquet").to_pandas()
        df["row"] = np.arange(len(df), dtype=np.int64)
        for spec in config.clip:
            c = pq.read_table(run / "columns" / spec.column / f"{sid}.parquet").to_pandas()
            if not (c["uid"].to_numpy() == df["uid"].to_numpy()).all():
                raise RuntimeError(f"{spec.column} columns for shard {sid} are out of step with ingest; rerun it")
            df[spec.column] = c[spec.column].to_numpy()
        parts.append(df)
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in ("uid", "key", "shard", "ingest_error")})
    return pd.concat(parts, ignore_index=True)


class Arrays:
    """Row-aligned per-shard arrays of a run: thumbnails (loaded on first use) and embeddings (a view of
    the per-shard files, pipeline/embeddings.py: memory-mapped, read a chunk or a cluster at a time)."""

    def __init__(self, run_dir: str | Path | None, shard_ids: list[str]):
        self.run = Path(run_dir) if run_dir is not None else None
        self.sids = shard_ids
        self._cache: dict = {}

    def _paths(self, rel: str) -> list[Path]:
        if self.run is None:
            raise ValueError("this filter needs the run folder (thumbnails / embeddings); pass work=")
        paths = [self.run / rel.format(sid=sid) for sid in self.sids]
        for sid, path in zip(self.sids, paths):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: rerun the annotate step for shard {sid}")
        return paths

    def _load(self, rel: str, empty_shape: tuple) -> np.ndarray:
        if rel not in self._cache:
            parts = [np.load(p, mmap_mode="r") for p in self._paths(rel)]
            self._cache[rel] = np.concatenate(parts) if parts else np.zeros(empty_shape, np.float32)
        return self._cache[rel]

    def pool_scores(self, column: str) -> np.ndarray | None:
        """Every listed row's score (precomputed columns: downloaded or not), when each shard has them."""
        if self.run is None:
            return None
        paths = [self.run / "columns" / column / f"{sid}.pool.npy" for sid in self.sids]
        if not paths or not all(p.is_file() for p in paths):
            return None
        return np.concatenate([np.load(p) for p in paths])

    def thumbs(self) -> np.ndarray:
        return self._load("thumbs/{sid}.npy", (0, 32, 32)).astype(np.uint8, copy=False)

    def image(self, column: str) -> Shards:
        return Shards(self._paths(f"embeddings/{column}/{{sid}}.img.npy"))

    def text(self, column: str) -> Shards:
        return Shards(self._paths(f"embeddings/{column}/{{sid}}.txt.npy"))


def ingest_reasons(df: pd.DataFrame) -> np.ndarray:
    """The drop reason an ingest error names (the text before its first colon), or None."""
    err = df["ingest_error"]
    return np.where(err.isna(), None, err.fillna("").str.split(":", n=1).str[0]).astype(object)


def decide(df: pd.DataFrame, config, arrays: Arrays | None = None, run: str | Path | None = None
           ) -> tuple[pd.DataFrame, dict, dict]:
    """Add keep / drop_reason / drop_reasons and each filter instance's columns; return the table, what
    each instance used (thresholds, counts) and the seconds each took."""
    arrays = arrays or Arrays(None, [])
    n = len(df)
    cause = ingest_reasons(df) if n else np.zeros(0, object)
    usable = np.array([c is None for c in cause], bool)
    dup_uid = df["uid"].where(usable).duplicated(keep="first").to_numpy() & usable if n else np.zeros(0, bool)
    ok = usable & ~dup_uid
    names = sorted({c for c in cause if c is not None}, key=lambda r: (r not in INGEST_REASONS, r))
    fails: list[tuple[str, np.ndarray]] = [(r, cause == r) for r in names] + [("duplicate_uid", dup_uid)]
    info: dict = {}
    seconds: dict = {}
    new_cols: dict = {}
    ctx = Context(df, ok, arrays, config, Path(run) if run is not None else (arrays.run if arrays else None))
    for f in config.filters:
        t0 = time.time()
        res = f.compute(ctx) if n else _empty_result(f)
        unknown = set(res.fails) - set(f.checks)
        if unknown:
            raise RuntimeError(f"filter {f.instance!r} returned checks {sorted(unknown)} it does not declare")
        for check, mask in res.fails.items():
            fails.append((f.reason(check), np.asarray(mask, bool) & ok))
        for out, values in res.columns.items():
            if out not in f.outputs:
                raise RuntimeError(f"filter {f.instance!r} wrote column {out!r} it does not declare")
            new_cols[f.out_column(out)] = _typed(values, f.outputs[out], n)
        info[f.instance] = {"type": f.type, "reasons": f.reasons(), "columns": [f.out_column(o) for o in f.outputs],
                            **res.info}
        seconds[f.instance] = round(time.time() - t0, 3)
    df = df.assign(**new_cols)
    matrix = np.stack([m for _, m in fails], axis=1) if n else np.zeros((0, len(fails)), bool)
    labels = np.array([r for r, _ in fails], dtype=object)
    df["keep"] = ~matrix.any(axis=1)
    first = matrix.argmax(axis=1)
    df["drop_reason"] = np.where(df["keep"], None, labels[first] if n else labels[:0]).astype(object)
    df["drop_reasons"] = [list(labels[row]) for row in matrix]
    return df, info, seconds


def _empty_result(f: Filter):
    from pipeline.filters import Result

    return Result({c: np.zeros(0, bool) for c in f.checks}, {o: [] for o in f.outputs}, {"empty_pool": True})


def _typed(values, kind: str, n: int):
    arr = np.asarray(values, dtype=_NP[kind]) if kind != "string" else np.array(
        [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values], dtype=object)
    if len(arr) != n:
        raise RuntimeError(f"a filter column has {len(arr)} values for {n} rows")
    return arr


def summarize(df: pd.DataFrame) -> dict:
    dropped = df[~df["keep"]]
    by_reason = dropped["drop_reason"].value_counts().sort_index()
    all_rules = dropped["drop_reasons"].explode().dropna().value_counts().sort_index()
    return {"samples_in": int(len(df)), "kept": int(df["keep"].sum()), "dropped": int(len(dropped)),
            "dropped_by_reason": {k: int(v) for k, v in by_reason.items()},
            "failing_by_rule": {k: int(v) for k, v in all_rules.items()}}
