"""negCLIPLoss (Wang et al., "CLIPLoss and Norm-Based Data Selection Methods for Multimodal Contrastive
Learning", NeurIPS 2024, arXiv 2405.19547): the CLIP score minus a normalisation term taken from the
teacher's own contrastive loss, so a pair whose image or caption matches everything is not mistaken
for a good pair.

For sample i in a random batch B of the pool, with s_ij = cos(image_i, text_j) from the teacher and
tau its temperature (OpenAI CLIP: logit scale 100, tau = 0.01):

    CLIPLoss_B(i) = -1/2 [ log softmax_j(s_i. / tau)_i + log softmax_j(s_.i / tau)_i ]
    negCLIPLoss_B(i) = -tau * CLIPLoss_B(i) = s_ii - R_B(i),
    R_B(i) = tau/2 * [ log sum_{j in B} exp(s_ij / tau) + log sum_{j in B} exp(s_ji / tau) ]

(image-to-text and text-to-image halves averaged). The score is averaged over K independent random
batchings of the pool: negCLIPLoss(i) = s_ii - 1/K sum_k R_{B_k(i)}(i). Kept: the top ``fraction`` of
scored rows (DataComp's cutoff rule, pipeline/filters/clip_score.py) or score >= ``threshold``.

As the authors' code (``cal_new_clip_score``): batches of ``batch_size`` (paper: 32768), the teacher's
own embeddings give s_ii too. As the authors batch within one metadata file, the batches are drawn
within windows of consecutive rows (WINDOW_BYTES of embeddings as stored, at least two batches; one
window for a pool that small), each window split into equal-sized batches (no short last batch,
whose R would be smaller); a window is read once, in order, for all K batchings. The embeddings are
normalised (cosines; DataComp's are unit already). The batches hold
the run's usable samples: on shards beside DataComp's metadata, rows listed but never downloaded are
in none (the CLIP score's cutoff counts them; here they have no sample to keep).

Out of core: each batch's rows are read from the memory-mapped per-shard embeddings
(pipeline/embeddings.py), image and text; the B x B similarities are never held whole: a block of
image rows against the batch's texts gives those rows' image-to-text log-sum-exps and updates a
running (max, sum) per text for the text-to-image half.

Paper's numbers (DataComp medium, OpenAI CLIP L/14 teacher): negCLIPLoss with NormSim beats the best
baseline that uses only OpenAI's L/14 by +5.3 points ImageNet-1k and +2.8 points on the average of 38
tasks; on top of DFN + HYPE, +0.9 points average.
Ours, measured once (a synthetic 100,000-row DataComp metadata pool, L/14 width 768, float16 npz, one
CPU thread of a shared 2-core machine; CPU seconds, as the wall time there was ~3.5x that): batch 32768,
K = 1: 35 CPU-s, 2,850 rows per CPU-second (the B x B products dominate: ~B x d x 2 flops a row
and repeat, so a GPU's matmul is the place for it).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.filters.base import Context, Filter, Result
from pipeline.filters.clip_score import tag, top_fraction_threshold

SIM_FLOATS = 4 << 20  # similarities held at once (16 MB)
WINDOW_BYTES = 512 << 20  # image + text embeddings (as stored) read at once; batches are drawn inside


def neg_clip_loss(img, txt, valid: np.ndarray, batch_size: int = 32768, repeats: int = 1, tau: float = 0.01,
                  seed: int = 0, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(negCLIPLoss, CLIP score s_ii) per row; NaN where not ``valid`` or an embedding is unusable.
    ``img``, ``txt``: row-aligned arrays or views (pipeline/embeddings.py)."""
    import torch

    from pipeline.embeddings import view
    from pipeline.vectors import usable

    img, txt = view(img), view(txt)
    if img.shape != txt.shape:
        raise ValueError(f"image embeddings {img.shape} and text embeddings {txt.shape} differ in shape")
    rows = np.flatnonzero(usable(img, valid) & usable(txt))
    score = np.full(len(img), np.nan, np.float32)
    clip = np.full(len(img), np.nan, np.float32)
    if len(rows) == 0:
        return score, clip
    norm = np.zeros(len(rows), np.float64)
    diag = np.zeros(len(rows), np.float64)
    rng = np.random.default_rng(seed)
    for at in windows(len(rows), batch_size, pair_bytes(img, txt)):
        a, b = img.take_stored(rows[at]), txt.take_stored(rows[at])
        nb = -(-len(at) // batch_size)
        for _ in range(repeats):
            for batch in np.array_split(rng.permutation(len(at)), nb):
                batch = np.sort(batch)
                r, s = _normaliser(_unit(img.finish(a[batch])), _unit(txt.finish(b[batch])), tau, device, torch)
                norm[at[batch]] += r
                diag[at[batch]] += s
        del a, b
    score[rows] = (diag - norm) / repeats
    clip[rows] = diag / repeats
    return score, clip


def pair_bytes(img, txt) -> int:
    """Bytes of a row's image and text embeddings as stored."""
    return img.shape[1] * img.dtype.itemsize + txt.shape[1] * txt.dtype.itemsize


def windows(n: int, batch_size: int, row_bytes: int) -> list[np.ndarray]:
    """Equal runs of consecutive positions of ``n``, each at most WINDOW_BYTES (but two batches)."""
    window = max(2 * batch_size, WINDOW_BYTES // max(1, row_bytes))
    return np.array_split(np.arange(n), -(-n // window)) if n else []


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _normaliser(img: np.ndarray, txt: np.ndarray, tau: float, device: str, torch) -> tuple[np.ndarray, np.ndarray]:
    """R_B(i) and s_ii for one batch, a block of image rows at a time (float32 products and exps, each
    shifted by its maximum; float64 running sums)."""
    n = len(img)
    a = torch.from_numpy(img).to(device)
    b = torch.from_numpy(txt).to(device)
    row_lse = torch.empty(n, dtype=torch.float64, device=device)
    col_max = torch.full((n,), -torch.inf, dtype=torch.float64, device=device)
    col_sum = torch.zeros(n, dtype=torch.float64, device=device)
    step = max(1, SIM_FLOATS // n)
    for i in range(0, n, step):
        logits = a[i:i + step] @ b.T  # image i against every text of the batch, as cosines
        logits /= tau
        row_lse[i:i + step] = torch.logsumexp(logits, 1).double()
        m = torch.maximum(col_max, logits.amax(0).double())
        logits -= m.float()  # in place: the text-to-image terms, each column shifted by its running max
        col_sum = col_sum * torch.exp(col_max - m) + logits.exp_().sum(0).double()
        col_max = m
    col_lse = col_max + torch.log(col_sum)  # text i against every image of the batch
    diag = (a * b).sum(1).double()
    r = tau / 2 * (row_lse + col_lse)
    return r.cpu().numpy(), diag.cpu().numpy()


class NegClipLoss(Filter):
    """negCLIPLoss of scorer ``column``'s image and text embeddings (module docstring); keep the top
    ``fraction`` of scored rows (1.0: score only, e.g. for ``mix``) or score >= ``threshold``."""
    type: Literal["neg_clip_loss"]
    reads_captions = False
    column: str = "clip_score"
    fraction: float | None = Field(None, gt=0, le=1)
    threshold: float | None = Field(None, ge=-2, le=1)
    batch_size: int = Field(32768, ge=2, description="rows in a random batch (the paper: 32768)")
    repeats: int = Field(1, ge=1, description="random batchings averaged (K)")
    temperature: float = Field(0.01, gt=0, description="the teacher's tau (OpenAI CLIP: 1/100)")

    outputs = {"score": "float32", "normaliser": "float32"}
    reads_embeddings = True

    @model_validator(mode="after")
    def _one_of(self):
        if (self.fraction is None) == (self.threshold is None):
            raise ValueError("neg_clip_loss filter needs exactly one of 'fraction' or 'threshold'")
        return self

    def default_name(self) -> str:
        rule = f"top{self.fraction:g}" if self.fraction is not None else f">={self.threshold:g}"
        return f"neg_clip_loss[{tag(self.column)}{rule}]"

    def compute(self, ctx: Context) -> Result:
        from pipeline.vectors import dense, torch_device

        device = torch_device() if dense(ctx.backend) == "torch" else "cpu"
        img, txt = ctx.arrays.image(self.column), ctx.arrays.text(self.column)
        score, clip = neg_clip_loss(img, txt, ctx.ok, self.batch_size, self.repeats, self.temperature, ctx.seed,
                                    device)
        t = float(self.threshold) if self.threshold is not None else top_fraction_threshold(
            score, self.fraction, count_missing=False)
        with np.errstate(invalid="ignore"):
            fails = ~(score >= t)
        scored = int(np.isfinite(score).sum())
        batches = sum(-(-len(w) // self.batch_size) for w in windows(scored, self.batch_size, pair_bytes(img, txt)))
        return Result({"": fails}, {"score": score, "normaliser": clip - score},
                      {"column": self.column, "threshold": t, "fraction": self.fraction, "scored_rows": scored,
                       "batch_size": self.batch_size, "batches": batches,
                       "repeats": self.repeats, "temperature": self.temperature})
