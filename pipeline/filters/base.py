"""The filter protocol: a filter is one module holding one config model that is also the filter.

A filter module defines a subclass of ``Filter`` with
  - ``type: Literal["<type>"]`` (the config's ``type:``) and its parameters as pydantic fields;
  - ``default_name()``: the instance name from type and parameters (``clip_score[top0.3]``, ``clip_score[l14,top0.3]``),
    overridable per instance with ``name:`` in the config;
  - ``checks``: the reason suffixes it can record (one reason per check: ``<instance>`` for a single
    check, ``<instance>:<check>`` for several);
  - ``outputs``: columns it writes, ``{field: arrow type}``; each is written as ``<instance>.<field>``;
  - what it needs: ``scorer_columns()`` (whose embeddings / scores), ``reads_embeddings`` (their
    embeddings, not only the scores), ``needs_model`` (embeds new images or prompts), ``needs_thumbs``,
    ``needs_languages()`` (reads ``caption_lang``);
  - ``compute(ctx) -> Result``: fail masks per check, columns per output, info (thresholds, counts).
``decide`` loops over instances; reasons, columns and info are per instance, so nothing collides.
A later instance may read an earlier one's result: ``ctx.earlier(name)`` (mix, norm_sim's ``within``).
Compare datatrove's ``BaseFilter`` (a name, keep-or-reason, stats per reason).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="instance name (reason and column prefix); default from type "
                                               "and parameters")

    checks: ClassVar[tuple[str, ...]] = ("",)  # "" = the single check, recorded as the instance name
    outputs: ClassVar[dict[str, str]] = {}  # field -> arrow type name (schemas.columns types)
    needs_model: ClassVar[bool] = False
    reads_embeddings: ClassVar[bool] = False  # reads its scorers' embeddings (ctx.arrays.image / text)
    # reads ctx.df's caption, its counts or the image sizes (False: a metadata-only run leaves them on disk)
    reads_captions: ClassVar[bool] = True
    needs_thumbs: ClassVar[bool] = False

    def default_name(self) -> str:
        return self.type  # type: ignore[attr-defined]

    @property
    def instance(self) -> str:
        return self.name or self.default_name()

    def reasons(self) -> list[str]:
        return [self.reason(c) for c in self.checks]

    def reason(self, check: str = "") -> str:
        return f"{self.instance}:{check}" if check else self.instance

    def out_column(self, output: str) -> str:
        return f"{self.instance}.{output}"

    def check(self) -> None:
        """Raise a clear error, before any work starts, when this machine cannot run the filter."""

    def needs_languages(self) -> bool:
        """Whether it reads ``caption_lang`` (the language stage runs only when some filter does)."""
        return False

    def scorer_columns(self) -> list[str]:
        """Score columns (one per scorer) whose scores or embeddings this filter reads."""
        col = getattr(self, "column", None)
        return [col] if isinstance(col, str) else []

    def compute(self, ctx: "Context") -> "Result":  # pragma: no cover - every filter defines it
        raise NotImplementedError


@dataclass
class Result:
    fails: dict[str, np.ndarray]  # check -> bool mask, True = the row fails this check
    columns: dict[str, Any] = field(default_factory=dict)  # output field -> row-aligned values
    info: dict[str, Any] = field(default_factory=dict)  # thresholds, counts: goes to the manifest


@dataclass
class Context:
    """What a filter may read: the pool's columns, the decodable mask, per-shard arrays, the config."""
    df: pd.DataFrame
    ok: np.ndarray
    arrays: Any  # pipeline.decide.Arrays
    config: Any  # pipeline.config.CurateConfig
    run: Path | None = None
    done: dict[str, Result] = field(default_factory=dict)  # earlier instances' results, by instance name

    @property
    def seed(self) -> int:
        return self.config.vectors.seed

    @property
    def backend(self) -> str:
        return self.config.vectors.backend

    def scorer(self, column: str):
        from pipeline.clip_stage import get_scorer

        spec = next(c for c in self.config.clip if c.column == column)
        return get_scorer(spec.model_dump_json())

    def earlier(self, instance: str, who: str) -> Result:
        """An earlier filter instance's result (``who`` names the asking filter in the error)."""
        if instance not in self.done:
            raise ValueError(f"filter {who!r} reads filter {instance!r}, which is not an earlier filter of this "
                             f"config (earlier: {sorted(self.done) or 'none'})")
        return self.done[instance]

    def survivors(self) -> np.ndarray:
        """Usable rows that no earlier filter instance fails."""
        out = np.array(self.ok, bool)
        for r in self.done.values():
            for m in r.fails.values():
                out &= ~np.asarray(m, bool)
        return out

    def uids_at(self, rows: np.ndarray) -> pa.Array:
        """The uid of each row in ``rows``, null for -1 (taken in Arrow: no Python string a row)."""
        rows = np.asarray(rows, np.int64)
        if len(self.df) == 0:
            return pa.nulls(len(rows), pa.large_string())
        return pa.array(self.df["uid"], pa.large_string()).take(pa.array(np.maximum(rows, 0), mask=rows < 0))

    def fitter(self, f: Filter, status: dict):
        """k-means through saved centroids (pipeline/centroids.py) when the run folder is known."""
        from pipeline.centroids import fit_or_reuse
        from pipeline.scorer_identity import scorer_identity, weights_identity
        from pipeline.workdir import WorkDir

        v = self.config.vectors
        cache = WorkDir(self.run).global_dir() if (v.reuse_centroids and self.run is not None) else None
        spec = next(c for c in self.config.clip if c.column == f.column)  # type: ignore[attr-defined]
        key = {"filter": f.model_dump(exclude={"name"}), "scorer": scorer_identity(spec),
               "weights": weights_identity(spec)}

        def fit(x, k, niter):
            cent, assign, how = fit_or_reuse(x, k, niter, v.seed, v.backend, cache, key, v.refit_growth)
            status["centroids"] = how
            return cent, assign

        return fit
