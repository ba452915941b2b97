"""Curation figures -> bench/results/curation.json: what each filter drops on the sample pool,
as precision / recall against the planted ground truth (data/sample_pool/ground_truth.parquet).

    .venv/bin/python bench/curation.py [--scorer runs/bench-skeleton/scorer/final]

Filter -> the planted noise it should catch: decode -> corrupt + truncated images; exact_dedup ->
exact duplicate pairs (one of each pair dropped); decontamination -> eval copies; clip_score_50 (top 50% by the bootstrapped
scorer) -> swapped captions (recall only is meaningful: it also drops clean samples by design).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from pipeline.demo import machine  # noqa: E402
from pipeline.run import run_curation  # noqa: E402

OUT = ROOT / "bench" / "results" / "curation.json"
TARGET = {"decode": ["corrupt_image", "truncated_image"], "exact_dedup": ["exact_duplicate"],
          "decontaminate": ["eval_copy"], "clip_score": ["swapped_caption"]}


def score_pairs(meta: pd.DataFrame, gt: pd.DataFrame, rule: str, noise: str) -> dict:
    """Duplicates are pairs (copy, original) and either may come first in the pool: a pair is caught
    when exactly one of the two is dropped; a drop is right when it belongs to a planted pair."""
    hit = set(meta.loc[meta["drop_reasons"].map(lambda r: rule in list(r)), "uid"])
    pairs = gt.loc[gt["noise"] == noise, ["uid", "noise_of"]].itertuples(index=False)
    pairs = [(a, b) for a, b in pairs]
    members = {u for p in pairs for u in p}
    caught = sum((a in hit) != (b in hit) for a, b in pairs)
    return {"precision": round(len(hit & members) / max(len(hit), 1), 4), "recall": round(caught / max(len(pairs), 1), 4),
            "dropped": len(hit), "planted": len(pairs)}


def score(meta: pd.DataFrame, gt: pd.DataFrame, rule: str) -> dict:
    if rule == "exact_dedup":
        return score_pairs(meta, gt, rule, "exact_duplicate")
    df = meta.merge(gt[["uid", "noise"]], on="uid")
    hit = df["drop_reasons"].map(lambda r: rule in list(r))
    truth = df["noise"].isin(TARGET[rule])
    tp = int((hit & truth).sum())
    return {"precision": round(tp / max(int(hit.sum()), 1), 4), "recall": round(tp / max(int(truth.sum()), 1), 4),
            "dropped": int(hit.sum()), "planted": int(truth.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default="data/sample_pool")
    ap.add_argument("--scorer", default="runs/bench-skeleton/scorer/final")
    a = ap.parse_args()
    pool = Path(a.pool)
    gt = pd.read_parquet(pool / "ground_truth.parquet")
    cfg = {"clip": [{"model": a.scorer}],
           "filters": [{"type": "exact_dedup"}, {"type": "decontaminate", "eval_dirs": [str(pool / "eval")]},
                       {"type": "clip_score", "fraction": 0.5}]}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        m = run_curation(str(pool / "shards"), Path(tmp) / "out", cfg, work=Path(tmp) / "work")
        seconds = round(time.time() - t0, 1)
        meta = pd.read_parquet(Path(tmp) / "out" / "metadata.parquet")
    filters = {name: score(meta, gt, rule) for name, rule in
               (("decode", "decode"), ("exact_dedup", "exact_dedup"), ("decontamination", "decontaminate"),
                ("clip_score_50", "clip_score"))}
    res = {"filters": filters, "not_implemented": ["near_dedup", "semantic_dedup", "image_based", "d2_pruning",
                                                   "scaling"],
           "samples_in": m["samples_in"], "kept": m["kept"], "dropped_by_reason": m["dropped_by_reason"],
           "run_seconds": seconds, "scorer": a.scorer, "machine": machine()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
