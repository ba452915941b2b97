"""Mixing several methods' scores into one, in the spirit of Mixing-FLYT (Shechter & Carmon, "Filter
Like You Test", NeurIPS 2025: 40.1% ImageNet and 37.7% over 38 tasks at DataComp medium, the record).

M-FLYT learns a weighting of per-sample scores from downstream gradients; here the weighting is
given: each score becomes its rank among the rows every score covers (average rank for ties, scaled
to (0, 1]; a name starting with ``-`` ranks lower-is-better), and the mix is the weighted mean of the
ranks (``weights``, default equal). A score is a pool column (``clip_score``, ``clip_score_l14``) or
an earlier filter instance's output (``<instance>.<field>``, e.g. ``neg_clip_loss[top1].score``: give
that filter ``fraction: 1`` so it only scores). A row some score does not cover fails.

``sampling: top`` keeps the top ``fraction`` of the scored rows (DataComp's cutoff rule).
``sampling: soft_cap`` is FLYT's Soft Cap Sampling in outline: ``fraction`` x scored rows draws, in
``rounds`` rounds, from softmax(mix / ``temperature``); a round draws distinct rows (Gumbel top-k,
seeded), then each drawn row's logit drops by ``penalty`` and a row drawn ``cap`` times leaves the
draw. The counts go to ``<instance>.repeats``; a row drawn at least once is kept. The output is still
a set (DataComp's uids.npy, shards written once per sample), so the repeats are recorded, not
replicated: a trainer that honours them has to read that column (ours does not yet).
Ours, measured once: the rank mix of two scores over 100,000 rows takes 0.02 CPU-s (scipy's rankdata).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.filters.base import Context, Filter, Result


def rank_mix(scores: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted mean of each score's rank in (0, 1] over the rows where every score is finite; NaN elsewhere."""
    from scipy.stats import rankdata

    both = np.logical_and.reduce([np.isfinite(s) for s in scores])
    out = np.full(len(both), np.nan, np.float64)
    if both.any():
        ranks = [rankdata(s[both], method="average") / both.sum() for s in scores]
        out[both] = sum(w * r for w, r in zip(weights, ranks)) / sum(weights)
    return out


def soft_cap(mix: np.ndarray, draws: int, temperature: float, penalty: float, cap: int, rounds: int,
             seed: int) -> np.ndarray:
    """Draw counts per row (NaN rows never drawn); see the module docstring."""
    count = np.zeros(len(mix), np.int64)
    ok = np.isfinite(mix)
    logit = np.where(ok, mix / temperature, -np.inf)
    rng = np.random.default_rng(seed)
    left = min(draws, int(ok.sum()) * cap)
    for r in range(rounds):
        k = min(-(-left // (rounds - r)), int(np.isfinite(logit).sum()))
        if k <= 0:
            break
        g = logit + rng.gumbel(size=len(logit))  # Gumbel top-k: k distinct draws from softmax(logit)
        picked = np.argpartition(-g, k - 1)[:k]
        count[picked] += 1
        logit[picked] -= penalty
        logit[count >= cap] = -np.inf
        left -= k
    return count


class Mix(Filter):
    """Rank average of several score columns (module docstring); keep the top ``fraction`` or sample."""
    type: Literal["mix"]
    reads_captions = False
    scores: list[str] = Field(min_length=2, description="pool columns or '<earlier instance>.<field>'; "
                                                        "a leading '-' ranks lower-is-better")
    weights: list[float] | None = Field(None, description="one weight >= 0 a score (default equal)")
    fraction: float = Field(gt=0, le=1)
    sampling: Literal["top", "soft_cap"] = "top"
    temperature: float = Field(0.1, gt=0, description="soft_cap: softmax temperature over the mixed rank")
    penalty: float = Field(1.0, ge=0, description="soft_cap: logit drop a draw")
    cap: int = Field(3, ge=1, description="soft_cap: most draws of one row")
    rounds: int = Field(20, ge=1, description="soft_cap: draw rounds")

    outputs = {"score": "float32", "repeats": "int32"}

    @model_validator(mode="after")
    def _valid(self):
        if self.weights is not None and (len(self.weights) != len(self.scores) or min(self.weights) < 0
                                         or sum(self.weights) <= 0):
            raise ValueError("mix weights: one weight >= 0 for each score, not all 0")
        return self

    def default_name(self) -> str:
        return f"mix[{'sample' if self.sampling == 'soft_cap' else 'top'}{self.fraction:g}]"

    def compute(self, ctx: Context) -> Result:
        values = []
        for name in self.scores:
            col = self._column(ctx, name.removeprefix("-"))
            col = np.asarray(col, np.float64) * (-1.0 if name.startswith("-") else 1.0)
            values.append(np.where(ctx.ok, col, np.nan))
        mix = rank_mix(values, self.weights or [1.0] * len(values))
        scored = int(np.isfinite(mix).sum())
        n = int(scored * self.fraction)
        info = {"scores": self.scores, "weights": self.weights, "scored_rows": scored, "sampling": self.sampling}
        if self.sampling == "top":
            valid = mix[np.isfinite(mix)]
            t = float(-np.sort(-valid)[min(n, len(valid) - 1)]) if len(valid) else np.inf
            with np.errstate(invalid="ignore"):
                keep = mix >= t
            repeats = keep.astype(np.int32)
            info["threshold"] = t
        else:
            repeats = soft_cap(mix, n, self.temperature, self.penalty, self.cap, self.rounds, ctx.seed)
            keep = repeats > 0
            info.update(draws=int(repeats.sum()), distinct=int(keep.sum()), max_repeats=int(repeats.max(initial=0)))
        return Result({"": ~keep}, {"score": mix, "repeats": repeats}, info)

    def _column(self, ctx: Context, name: str) -> np.ndarray:
        if name in ctx.df.columns:
            return ctx.df[name].to_numpy(np.float64, na_value=np.nan)
        instance, _, field = name.rpartition(".")
        res = ctx.earlier(instance, self.instance) if instance else None
        if res is None or field not in res.columns:
            raise ValueError(f"mix {self.instance!r}: score {name!r} is neither a pool column nor an output of an "
                             f"earlier filter ('<instance>.<field>'; earlier: {sorted(ctx.done) or 'none'})")
        return np.asarray(res.columns[field], np.float64)
