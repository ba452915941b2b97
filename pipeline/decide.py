"""Decide: turn score columns into ``keep`` plus drop reasons for every row. Nothing is lost.

Rules run in order: undecodable images always fail ``decode`` first; then the configured
filters. ``drop_reason`` is the first failing rule, ``drop_reasons`` every failing rule.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.text_filters import basic_fails, class_names, exact_duplicates, mentions
from schemas.config import (BasicFilter, ClipScoreFilter, CurateConfig, DecontaminateFilter, ExactDedupFilter,
                            TextFilter)


def load_columns(run_dir: str | Path, shard_ids: list[str], config: CurateConfig) -> pd.DataFrame:
    """Join every stage's columns for the given shards into one table (row order = read order)."""
    run = Path(run_dir)
    parts = []
    for sid in shard_ids:
        df = pq.read_table(run / "columns" / "ingest" / f"{sid}.parquet").to_pandas()
        for spec in config.clip:
            c = pq.read_table(run / "columns" / spec.column / f"{sid}.parquet").to_pandas()
            if not (c["uid"].to_numpy() == df["uid"].to_numpy()).all():
                raise RuntimeError(f"{spec.column} columns for shard {sid} are out of step with ingest; rerun it")
            df[spec.column] = c[spec.column].to_numpy()
            if "row" not in df:
                df["row"] = c["row"].to_numpy()
        parts.append(df)
    if not parts:
        raise ValueError("no shards to decide on")
    return pd.concat(parts, ignore_index=True)


def clip_threshold(scores: np.ndarray, f: ClipScoreFilter) -> float:
    """DataComp's rule: one global threshold over the pool's (finite) scores."""
    if f.threshold is not None:
        return float(f.threshold)
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return float("inf")
    n = min(int(finite.size * f.fraction), finite.size - 1)
    return float(-np.sort(-finite)[n])


def decide(df: pd.DataFrame, config: CurateConfig, shards: list[str] | None = None) -> tuple[pd.DataFrame, dict]:
    """Add keep / drop_reason / drop_reasons; return the table and the thresholds used.

    ``shards`` (the source paths) is needed by filters that look at pixels again (decontaminate)."""
    fails: list[tuple[str, np.ndarray]] = [("decode", df["decode_error"].notna().to_numpy())]
    info: dict = {}
    for f in config.filters:
        if isinstance(f, ClipScoreFilter):
            scores = df[f.column].to_numpy(np.float32)
            t = clip_threshold(scores, f)
            info[f.name] = {"column": f.column, "threshold": t}
            with np.errstate(invalid="ignore"):
                fails.append(("clip_score", ~(scores >= t)))  # NaN fails too
        elif isinstance(f, BasicFilter):
            fails += basic_fails(df, f)
        elif isinstance(f, ExactDedupFilter):
            fails.append(("exact_dedup", exact_duplicates(df)))
        elif isinstance(f, DecontaminateFilter):
            from pipeline.decontam import contaminated

            if shards is None:
                raise ValueError("the decontaminate filter needs the source shards")
            flags, nearest = contaminated(df, shards, f.eval_dirs, f.max_rms)
            df = df.assign(eval_copy_of=nearest)
            info[f.name] = {"copies": int(flags.sum())}
            fails.append(("decontaminate", flags))
        elif isinstance(f, TextFilter):
            names = class_names(f.classnames)
            info[f.name] = {"classes": len(names)}
            fails.append(("text_based", ~mentions(df["caption"], names)))
        else:  # pragma: no cover - the config union is closed
            raise ValueError(f"unknown filter {f!r}")
    matrix = np.stack([m for _, m in fails], axis=1)
    names = np.array([n for n, _ in fails], dtype=object)
    df = df.copy()
    df["keep"] = ~matrix.any(axis=1)
    first = matrix.argmax(axis=1)
    df["drop_reason"] = np.where(df["keep"], None, names[first])
    df["drop_reasons"] = [list(names[row]) for row in matrix]
    return df, info


def summarize(df: pd.DataFrame) -> dict:
    dropped = df[~df["keep"]]
    by_reason = dropped["drop_reason"].value_counts().sort_index()
    all_rules = pd.Series([r for rs in dropped["drop_reasons"] for r in rs]).value_counts().sort_index()
    out = {"samples_in": int(len(df)), "kept": int(df["keep"].sum()), "dropped": int(len(dropped)),
           "dropped_by_reason": {k: int(v) for k, v in by_reason.items()},
           "failing_by_rule": {k: int(v) for k, v in all_rules.items()}}
    assert out["kept"] + sum(out["dropped_by_reason"].values()) == out["samples_in"]
    return out
