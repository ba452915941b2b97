"""NormSim (Wang et al., NeurIPS 2024, arXiv 2405.19547): how much a sample's image looks like a
target set, from the teacher's image embeddings only. With unit embeddings e_i (pool) and t_1..t_M
(targets, e.g. the downstream tasks' training images):

    NormSim_p(i) = || (t_1 . e_i, ..., t_M . e_i) ||_p = ( sum_m |t_m . e_i|^p )^(1/p)

as the paper defines it and its code computes it (``torch.norm(F @ G.T, p)``): no 1/M, so a score
depends on the target set's size; the top-``fraction`` rule does not. p = 2: sqrt(e_i' S e_i) with
S = sum_m t_m t_m' (d x d, built a chunk of targets at a time), the sample's energy along the
targets' principal directions; p = inf: the largest |cosine| to any target (in CLIP's image space
cosines are positive: the nearest target).

Targets as DataComp's image-based filter takes them (pipeline/targets.py): image folders, shards,
eval task folders (their train split), or ``.npy`` embeddings from the pool scorer's model.

``targets: [pool]`` is the paper's NormSim_2-D, for when no target data is at hand: the pool is its
own proxy target. Its authors' algorithm (``load_uids_with_vas_d_filter``): S starts from every
usable pool row; then ``iterations`` times, the candidates are scored with S, the lowest
ceil((candidates - goal) / iterations) dropped, and S rebuilt from the rows still kept, until
``fraction`` of the pool is left. Their code builds S from a random 10% of the kept rows; here from
all of them (exact, and nothing random).

``within: <earlier instance>``: only the rows that instance kept are candidates, and ``fraction``
still counts over the whole usable pool: the paper's "negCLIPLoss 30%, then NormSim" (its
``filter_by_score(vass, fraction_vas, total_num)`` over the negCLIPLoss subset).

Paper's numbers (DataComp medium, OpenAI CLIP L/14): negCLIPLoss with NormSim beats the best
baseline that uses only OpenAI's L/14 by +5.3 points ImageNet-1k and +2.8 points on the average of
38 tasks; on top of DFN + HYPE, +0.9 points average.
Ours, measured once (a synthetic 100,000-row DataComp metadata pool, L/14 width 768, float16 npz, one
CPU thread of a shared 2-core machine; CPU seconds, as the wall time there was ~3.5x that): 10,000
target embeddings: p = inf 9,100 rows per CPU-second, p = 2 79,000; NormSim_2-D (10 steps) 7,200.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.filters.base import Context, Filter, Result
from pipeline.filters.clip_score import tag

POOL = "pool"
SIM_FLOATS = 4 << 20  # similarities held at once (16 MB)


def second_moment(x, rows: np.ndarray | None = None, device: str = "cpu") -> np.ndarray:
    """S = sum of t t' over the unit rows of ``x`` (an array or view; ``rows`` of it), float64."""
    import torch

    from pipeline.embeddings import view

    v = view(x) if rows is None else view(x).subset(rows)
    s = torch.zeros((v.shape[1], v.shape[1]), dtype=torch.float64, device=device)
    for _, block in v.chunks():
        t = torch.from_numpy(_unit(block)).to(device)
        s += (t.T @ t).double()  # a chunk's products in float32, the running sum in float64
    return s.cpu().numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def norm_sim(pool, rows: np.ndarray, targets: np.ndarray | None = None, p: float = 2.0,
             moment: np.ndarray | None = None, device: str = "cpu") -> np.ndarray:
    """NormSim_p of the pool ``rows`` (float32, in ``rows`` order): against unit ``targets`` (M, d), or
    for p = 2 against a given second moment S (d, d). ``pool``: an array or a view, read a chunk at a time."""
    import torch

    from pipeline.embeddings import view

    v = view(pool).subset(rows)
    out = np.empty(len(rows), np.float32)
    if p == 2:
        s = torch.from_numpy(moment if moment is not None else second_moment(targets, device=device)).float().to(device)
        for start, block in v.chunks():
            e = torch.from_numpy(_unit(block)).to(device)
            out[start:start + len(e)] = ((e @ s) * e).sum(1).clamp_min(0).sqrt().cpu().numpy()
        return out
    t = torch.from_numpy(_unit(targets)).to(device)
    step = max(1, SIM_FLOATS // max(1, len(t)))
    for start, block in v.chunks():
        e = torch.from_numpy(_unit(block)).to(device)
        for i in range(0, len(e), step):
            sim = (e[i:i + step] @ t.T).abs()
            out[start + i:start + i + len(sim)] = (sim.amax(1) if np.isinf(p) else
                                                   sim.double().pow(p).sum(1).pow(1 / p)).cpu().numpy()
    return out


def cutoff(scores: np.ndarray, n: int) -> float:
    """DataComp's top-fraction cutoff (pipeline/filters/clip_score.py) for a given n: the (n+1)-th highest
    finite score, the lowest when there are fewer; +inf when none."""
    valid = scores[np.isfinite(scores)]
    return float(-np.sort(-valid)[min(n, len(valid) - 1)]) if len(valid) else float("inf")


def proxy_select(pool, rows: np.ndarray, start: np.ndarray, goal: int, iterations: int,
                 device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """NormSim_2-D: (kept rows, each candidate's last score in ``rows`` order). ``start``: the rows S
    starts from; each step drops the lowest scores (ties: the later row) and rebuilds S from the rest."""
    last = np.full(len(rows), np.nan, np.float32)
    kept = np.arange(len(rows))
    goal = min(goal, len(rows))
    step = -(-(len(rows) - goal) // max(1, iterations))
    s = second_moment(pool, start, device)
    for it in range(iterations):
        score = norm_sim(pool, rows[kept], p=2, moment=s, device=device)
        last[kept] = score
        if len(kept) <= goal:
            break
        size = goal if it == iterations - 1 else max(goal, len(kept) - step)
        kept = np.sort(kept[np.argsort(-score, kind="stable")[:size]])
        if it < iterations - 1:
            s = second_moment(pool, rows[kept], device)
    return rows[kept], last


class NormSim(Filter):
    """NormSim_p of scorer ``column``'s image embeddings against ``targets`` (module docstring); keep
    the top ``fraction`` of usable rows (1.0: score only) or NormSim >= ``threshold``."""
    type: Literal["norm_sim"]
    reads_captions = False
    column: str = "clip_score"
    targets: list[str] = Field(min_length=1, description="image / task folders, shards, .npy embeddings, "
                                                         "or [pool] for NormSim_2-D")
    p: Literal[2, "inf"] = 2
    fraction: float | None = Field(None, gt=0, le=1)
    threshold: float | None = Field(None, ge=0)
    within: str | None = Field(None, description="an earlier filter instance: only rows it kept are candidates")
    iterations: int = Field(10, ge=1, description="NormSim_2-D steps (the authors' code: 100)")
    max_targets: int | None = Field(None, gt=0, description="embed at most this many target images")

    outputs = {"score": "float32"}
    reads_embeddings = True

    @model_validator(mode="after")
    def _valid(self):
        if (self.fraction is None) == (self.threshold is None):
            raise ValueError("norm_sim filter needs exactly one of 'fraction' or 'threshold'")
        if POOL in self.targets:
            if self.targets != [POOL] or self.p != 2 or self.fraction is None:
                raise ValueError("norm_sim with targets [pool] (NormSim_2-D) takes no other target, p: 2 and a "
                                 "fraction")
        return self

    @property
    def proxy(self) -> bool:
        return self.targets == [POOL]

    @property
    def needs_model(self) -> bool:
        from pipeline.targets import is_embeddings

        return not self.proxy and not all(is_embeddings(t) for t in self.targets)

    def default_name(self) -> str:
        rule = f"top{self.fraction:g}" if self.fraction is not None else f">={self.threshold:g}"
        return f"norm_sim[{tag(self.column)}{'2D' if self.proxy else f'p{self.p}'},{rule}]"

    def compute(self, ctx: Context) -> Result:
        from pipeline.vectors import dense, torch_device, usable

        device = torch_device() if dense(ctx.backend) == "torch" else "cpu"
        img = ctx.arrays.image(self.column)
        pool_rows = np.flatnonzero(usable(img, ctx.ok))
        cand = pool_rows
        if self.within is not None:
            before = ctx.earlier(self.within, self.instance)
            out = np.zeros(len(img), bool)
            for mask in before.fails.values():
                out |= np.asarray(mask, bool)
            cand = pool_rows[~out[pool_rows]]
        score = np.full(len(img), np.nan, np.float32)
        info: dict = {"column": self.column, "p": self.p, "candidates": int(len(cand)),
                      "usable_rows": int(len(pool_rows)), "within": self.within}
        if self.proxy:
            goal = int(len(pool_rows) * self.fraction)
            kept, last = proxy_select(img, cand, pool_rows, goal, self.iterations, device)
            score[cand] = last
            keep = np.zeros(len(img), bool)
            keep[kept] = True
            return Result({"": ~keep}, {"score": score}, {**info, "target": "pool (NormSim_2-D)",
                                                         "iterations": self.iterations, "kept": int(len(kept))})
        targets = self._targets(ctx, img.shape[1])
        score[cand] = norm_sim(img, cand, targets, 2.0 if self.p == 2 else np.inf, device=device)
        # a fraction counts over the usable pool (the candidates may be fewer: within), DataComp's rule
        t = (float(self.threshold) if self.threshold is not None
             else cutoff(score[cand], int(len(pool_rows) * self.fraction)))
        with np.errstate(invalid="ignore"):
            fails = ~(score >= t)
        return Result({"": fails}, {"score": score}, {**info, "threshold": t, "fraction": self.fraction,
                                                      "target_images": int(len(targets))})

    def _targets(self, ctx: Context, dim: int) -> np.ndarray:
        from pipeline.targets import target_embeddings
        from pipeline.vectors import usable

        t = target_embeddings(lambda: ctx.scorer(self.column), self.targets, self.max_targets)
        if t.shape[1] != dim:
            raise ValueError(f"norm_sim targets have {t.shape[1]} dimensions, the pool's image embeddings {dim}: "
                             "they must come from the same model")
        t = t[usable(t)]
        if len(t) == 0:
            raise ValueError(f"norm_sim targets {self.targets}: no usable embedding")
        return t
