"""Decide: turn score columns into ``keep`` plus drop reasons for every row. Nothing is lost.

Rules run in order: undecodable images always fail ``decode`` first; then the configured
filters. ``drop_reason`` is the first failing rule, ``drop_reasons`` every failing rule.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.text_filters import basic_fails, class_names, exact_duplicates, mentions
from schemas.config import (BasicFilter, ClipScoreFilter, ConceptFilter, CurateConfig, D2Filter,
                            DecontaminateFilter, ExactDedupFilter, ImageBasedFilter, NearDedupFilter,
                            SemanticDedupFilter, TextFilter)


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


class Arrays:
    """Row-aligned per-shard arrays of a run (thumbnails, embeddings), loaded on first use."""

    def __init__(self, run_dir: str | Path | None, shard_ids: list[str]):
        self.run = Path(run_dir) if run_dir is not None else None
        self.sids = shard_ids
        self._cache: dict = {}

    def _load(self, rel: str) -> np.ndarray:
        if self.run is None:
            raise ValueError("this filter needs the run folder (thumbnails / embeddings); pass work=")
        if rel not in self._cache:
            parts = []
            for sid in self.sids:
                path = self.run / rel.format(sid=sid)
                if not path.is_file():
                    raise FileNotFoundError(f"{path} is missing: rerun the annotate step for shard {sid}")
                parts.append(np.load(path))
            self._cache[rel] = np.concatenate(parts)
        return self._cache[rel]

    def thumbs(self) -> np.ndarray:
        return self._load("thumbs/{sid}.npy")

    def image(self, column: str) -> np.ndarray:
        return self._load(f"embeddings/{column}/{{sid}}.img.npy").astype(np.float32)

    def text(self, column: str) -> np.ndarray:
        return self._load(f"embeddings/{column}/{{sid}}.txt.npy").astype(np.float32)


def _scorer(config: CurateConfig, column: str):
    from pipeline.clip_stage import get_scorer

    spec = next(c for c in config.clip if c.column == column)
    return get_scorer(spec.model_dump_json())


def _fitter(config: CurateConfig, arrays: Arrays, f, status: dict):
    """k-means through saved centroids (pipeline/centroids.py) when the run folder is known."""
    from pipeline.annotate import scorer_identity, weights_identity
    from pipeline.centroids import fit_or_reuse

    v = config.vectors
    cache = arrays.run / "global" if (v.reuse_centroids and arrays.run is not None) else None
    spec = next(c for c in config.clip if c.column == f.column)
    key = {"filter": f.model_dump(), "scorer": scorer_identity(spec), "weights": weights_identity(spec)}

    def fit(x, k, niter):
        cent, assign, how = fit_or_reuse(x, k, niter, v.seed, v.backend, cache, key, v.refit_growth)
        status["centroids"] = how
        return cent, assign

    return fit


def _uid_of(df: pd.DataFrame, rows: np.ndarray) -> list:
    uids = df["uid"].to_numpy()
    return [uids[r] if r >= 0 else None for r in rows]


def decide(df: pd.DataFrame, config: CurateConfig, arrays: Arrays | None = None) -> tuple[pd.DataFrame, dict]:
    """Add keep / drop_reason / drop_reasons and each filter's score columns; return the table and
    what each filter used (thresholds, cluster counts). ``arrays`` gives thumbnails and embeddings to
    the filters that need them (decontaminate, near / semantic dedup, image-based, D², concept)."""
    arrays = arrays or Arrays(None, [])
    backend, seed = config.vectors.backend, config.vectors.seed
    ok = df["decode_error"].isna().to_numpy()
    fails: list[tuple[str, np.ndarray]] = [("decode", ~ok)]
    info: dict = {}
    new_cols: dict = {}
    for f in config.filters:
        t0 = time.time()
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

            flags, nearest, rms = contaminated(arrays.thumbs(), f.eval_dirs, f.max_rms)
            new_cols["eval_copy_of"] = nearest
            new_cols["eval_copy_rms"] = rms
            info[f.name] = {"copies": int(flags.sum())}
            fails.append(("decontaminate", flags))
        elif isinstance(f, TextFilter):
            names = class_names(f.classnames)
            info[f.name] = {"classes": len(names)}
            fails.append(("text_based", ~mentions(df["caption"], names)))
        elif isinstance(f, NearDedupFilter):
            from pipeline.neardup import near_duplicates

            r = near_duplicates(arrays.thumbs(), ok, max_rms=f.max_rms, ratio=f.ratio, ratio_max_rms=f.ratio_max_rms,
                                k=f.k, backend=backend)
            new_cols["near_dup_of"] = _uid_of(df, r["duplicate_of"])
            new_cols["near_dup_rms"] = r["rms"]
            info[f.name] = {"duplicates": int((r["duplicate_of"] >= 0).sum())}
            fails.append(("near_dedup", r["duplicate_of"] >= 0))
        elif isinstance(f, SemanticDedupFilter):
            from pipeline.semdedup import semdedup

            score = df[f.column].to_numpy(np.float32) if f.keep == "score" else None
            status: dict = {}
            r = semdedup(arrays.image(f.column), f.clusters, f.eps, f.keep, score, ok, seed=seed, backend=backend,
                         fit=_fitter(config, arrays, f, status))
            new_cols["semdedup_cluster"] = r["cluster"]
            new_cols["semdedup_dup_of"] = _uid_of(df, r["duplicate_of"])
            new_cols["semdedup_max_sim"] = r["max_sim"]
            info[f.name] = {"clusters": f.clusters, "eps": f.eps, "duplicates": int((r["duplicate_of"] >= 0).sum()),
                            **status}
            fails.append(("semantic_dedup", r["duplicate_of"] >= 0))
        elif isinstance(f, ImageBasedFilter):
            from pipeline.targets import embed_targets, image_based

            targets = embed_targets(_scorer(config, f.column), f.targets, f.max_targets)
            status = {}
            keep, cluster, n_target = image_based(arrays.image(f.column), ok, targets, f.clusters, f.niter, seed,
                                                  backend, fit=_fitter(config, arrays, f, status))
            new_cols["image_cluster"] = cluster
            info[f.name] = {"clusters": f.clusters, "target_images": len(targets), "target_clusters": n_target,
                            **status}
            fails.append(("image_based", ~keep))
        elif isinstance(f, D2Filter):
            from pipeline.d2 import d2_select

            r = d2_select(arrays.image(f.column), arrays.text(f.column), df[f.column].to_numpy(np.float32),
                          f.budget, f.k, f.gamma_f, f.gamma_r, valid=ok, seed=seed, backend=backend)
            new_cols["d2_score"] = r["score"]
            info[f.name] = {"budget": f.budget, "selected": int(r["selected"].sum())}
            fails.append(("d2_pruning", ~r["selected"]))
        elif isinstance(f, ConceptFilter):
            from pipeline.targets import concept_score

            score = concept_score(arrays.image(f.column), ok, _scorer(config, f.column).embed_texts(f.prompts))
            new_cols[f"concept_{f.concept}"] = score
            with np.errstate(invalid="ignore"):
                passes = score >= f.threshold if f.keep == "above" else score < f.threshold
            info[f.name] = {"threshold": f.threshold, "keep": f.keep}
            fails.append((f.name, ~passes))
        else:  # pragma: no cover - the config union is closed
            raise ValueError(f"unknown filter {f!r}")
        info.setdefault(f.name, {})["seconds"] = round(time.time() - t0, 3)
    matrix = np.stack([m for _, m in fails], axis=1)
    names = np.array([n for n, _ in fails], dtype=object)
    df = df.assign(**new_cols)
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
