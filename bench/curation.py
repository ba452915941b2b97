"""Curation figures -> bench/results/curation.json: what each filter drops on the sample pool,
as precision / recall against the planted ground truth (<pool>/ground_truth.parquet). The pool is the
~71% clean preset (seed 0), whose planted copies the near-dedup thresholds were chosen on:

    .venv/bin/curate build-pool --preset clean --out data/clean_pool
    .venv/bin/python -m bench.curation [--scorer runs/bench-skeleton/scorer/final]

A pool drawn with another seed checks them on copies they were not tuned on:

    .venv/bin/curate build-pool --preset clean --out data/pool_seed1 --seed 1 --trusted 0
    .venv/bin/python -m bench.curation --pool data/pool_seed1 --work runs/bench-curation-seed1/work \
        --out bench/results/curation_seed1.json

Filter -> the planted noise it should catch: decode -> corrupt + truncated images; exact_dedup ->
exact duplicate pairs (one of each pair dropped); near_dedup -> re-encoded / resized / cropped copies;
semantic_dedup -> exact + near pairs; decontamination -> eval copies; clip_score_50 (top 50% by the
bootstrapped scorer) -> swapped captions (recall only is meaningful: it also drops clean samples by
design). Near dedup's rate: ``near_dedup_samples_per_s`` (pool samples / its filter seconds, torch
and the filter's modules imported before the run; see ``near_dedup_figures``, which also gives the
rate with that one-time import), with the 1-minute load average after the run. Also: DataComp top-30% uid
parity, and the global steps' cost at 1x / 2x / 4x the pool (fitted exponent) next to raw faiss on
the same embeddings.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from app.demo import machine  # noqa: E402
from pipeline.run import run_curation  # noqa: E402
from bench.scaling import scaling  # noqa: E402

OUT = ROOT / "bench" / "results" / "curation.json"
TARGET = {"decode": ["corrupt_image", "truncated_image"], "decontaminate": ["eval_copy"],
          "clip_score[top0.5]": ["swapped_caption"]}
RULES = {"decode": ("decode", "format")}  # an undecodable image is dropped as decode or format
PAIRS = {"exact_dedup": ["exact_duplicate"], "near_dedup": ["near_duplicate"],
         "semantic_dedup[eps0.0005]": ["exact_duplicate", "near_duplicate"]}
# what each dedup rule may rightly drop: one member of a planted exact or near duplicate pair
DUP_NOISE = ["exact_duplicate", "near_duplicate"]


def score_pairs(meta: pd.DataFrame, gt: pd.DataFrame, rule: str, noises: list[str]) -> dict:
    """Duplicates are pairs (copy, original) and either may come first in the pool: a pair is caught
    when exactly one of the two is dropped; a drop is right when it belongs to a planted duplicate pair
    (an exact copy is also a near duplicate)."""
    hit = set(meta.loc[meta["drop_reasons"].map(lambda r: rule in list(r)), "uid"])

    def pairs(kinds):
        return [(a, b) for a, b in gt.loc[gt["noise"].isin(kinds), ["uid", "noise_of"]].itertuples(index=False)]

    members = {u for p in pairs(DUP_NOISE) for u in p} | natural_duplicates(meta)
    target = pairs(noises)
    caught = sum((a in hit) != (b in hit) for a, b in target)
    return {"precision": round(len(hit & members) / max(len(hit), 1), 4), "recall": round(caught / max(len(target), 1), 4),
            "dropped": len(hit), "planted": len(target)}


def natural_duplicates(meta: pd.DataFrame) -> set:
    """Byte-identical images the sources already held (same sha256, not planted): dropping one of them
    is right too. sha256 equality is the definition of an exact duplicate, not a guess."""
    img = meta[meta["sha256"].notna()]
    return set(img.loc[img.duplicated("sha256", keep=False), "uid"])


def score(meta: pd.DataFrame, gt: pd.DataFrame, rule: str) -> dict:
    if rule in PAIRS:
        return score_pairs(meta, gt, rule, PAIRS[rule])
    df = meta.merge(gt[["uid", "noise"]], on="uid")
    names = set(RULES.get(rule, (rule,)))
    hit = df["drop_reasons"].map(lambda r: bool(names & set(r)))
    truth = df["noise"].isin(TARGET[rule])
    tp = int((hit & truth).sum())
    return {"precision": round(tp / max(int(hit.sum()), 1), 4), "recall": round(tp / max(int(truth.sum()), 1), 4),
            "dropped": int(hit.sum()), "planted": int(truth.sum())}


def near_dedup_figures(result: dict) -> dict:
    """Near dedup's rate and quality from this script's result dict (bench/results/curation*.json): pool
    samples / the near_dedup filter's seconds (thumbnails are made at ingest, so this is the whole
    step), with its precision and recall on the planted copies."""
    seconds = next(v for k, v in result["filter_seconds"].items() if k.startswith("near_dedup"))
    q = result["filters"]["near_dedup"]
    imports = result.get("imports_seconds_before_the_run")
    return {"samples_per_s": round(result["samples_in"] / seconds, 1), "samples": result["samples_in"],
            "seconds": seconds, "precision": q["precision"], "recall": q["recall"],
            # torch and the filter's modules load once per process; imported before the timed run, so the
            # rate is the filter's work (a fresh process pays this once, e.g. a pipeline without a model)
            "one_time_imports_seconds": imports,
            "samples_per_s_with_imports": round(result["samples_in"] / (seconds + imports), 1) if imports else None,
            "load_average_1min": result.get("load_average_1min")}


def uid_parity(meta: pd.DataFrame, uids_file: Path, fraction: float) -> bool:
    """DataComp's rule from an independent implementation (fixtures/oracles.py), compared byte for byte."""
    from fixtures.oracles import datacomp_top_fraction_uids

    ref = datacomp_top_fraction_uids(meta["uid"], meta["clip_score"].to_numpy(np.float64), fraction)
    return np.load(uids_file).tobytes() == ref.tobytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default="data/clean_pool", help="a clean-preset pool (curate build-pool --preset clean)")
    ap.add_argument("--scorer", default="runs/bench-skeleton/scorer/final")
    ap.add_argument("--work", default="runs/bench-curation-clean/work", help="annotate cache (reused between runs)")
    ap.add_argument("--backend", default="auto", choices=["auto", "faiss", "torch"])
    ap.add_argument("--skip-filters", action="store_true", help="only the scaling part (e.g. on a GPU machine)")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    pool = Path(a.pool)
    gt = pd.read_parquet(pool / "ground_truth.parquet")
    work = Path(a.work)
    res: dict = {}
    vectors = {"backend": a.backend}
    t0 = time.time()
    import pipeline.neardup  # noqa: F401 - torch and the filter's modules, loaded once per process
    res["imports_seconds_before_the_run"] = round(time.time() - t0, 3)
    with tempfile.TemporaryDirectory() as tmp:
        if not a.skip_filters:
            cfg = {"clip": [{"model": a.scorer}], "vectors": vectors,
                   "filters": [{"type": "exact_dedup"}, {"type": "near_dedup"},
                               {"type": "decontaminate", "eval_dirs": [str(pool / "eval")]},
                               {"type": "semantic_dedup", "clusters": 200, "eps": 0.0005},
                               {"type": "clip_score", "fraction": 0.5}]}
            t0 = time.time()
            m = run_curation(str(pool / "shards"), Path(tmp) / "out", cfg, work=work)
            load = round(os.getloadavg()[0], 2)  # the machine may be shared: timings are read beside it
            meta = pd.read_parquet(Path(tmp) / "out" / "metadata.parquet")
            res["filters"] = {name: score(meta, gt, rule) for name, rule in
                              (("decode", "decode"), ("exact_dedup", "exact_dedup"), ("near_dedup", "near_dedup"),
                               ("semantic_dedup", "semantic_dedup[eps0.0005]"), ("decontamination", "decontaminate"),
                               ("clip_score_50", "clip_score[top0.5]"))}
            # the threshold sweep from the recorded distances (the filter keeps them): no rerun needed
            d = meta.merge(gt[["uid", "noise"]], on="uid")
            truth = d["noise"] == "eval_copy"
            res["decontamination_sweep"] = {
                f"{t:g}": {"precision": round(float((truth & (d["decontaminate.copy_rms"] <= t)).sum() / max((d["decontaminate.copy_rms"] <= t).sum(), 1)), 4),
                           "recall": round(float((truth & (d["decontaminate.copy_rms"] <= t)).sum() / truth.sum()), 4)}
                for t in (0.01, 0.015, 0.02, 0.03, 0.05)}
            # per source: Fashion-MNIST's 28 px products include look-alikes that, aligned, are as close as
            # a heavily JPEG'd crop is to its original; openclipart keeps drawing series
            res["near_dedup_by_source"] = {
                src: score_pairs(meta[meta["uid"].isin(set(gt.loc[gt["source"] == src, "uid"]))],
                                 gt[gt["source"] == src], "near_dedup", ["near_duplicate"])
                for src in ("fashion_mnist", "openclipart", "emoji")}
            res["filter_seconds"] = m["run"]["filter_seconds"]
            gt_pairs = {u for p in gt.loc[gt["noise"].isin(DUP_NOISE), ["uid", "noise_of"]].itertuples(index=False)
                        for u in p}
            res["natural_exact_duplicates"] = len(natural_duplicates(meta) - gt_pairs)
            res.update(samples_in=m["samples_in"], kept=m["kept"], dropped_by_reason=m["dropped_by_reason"],
                       run_seconds=round(time.time() - t0, 1), load_average_1min=load)
            res["near_dedup"] = near_dedup_figures(res)
            res["near_dedup_samples_per_s"] = res["near_dedup"]["samples_per_s"]
            m30 = run_curation(str(pool / "shards"), Path(tmp) / "top30", {
                "clip": [{"model": a.scorer}], "filters": [{"type": "clip_score", "fraction": 0.3}]}, work=work)
            res["datacomp_uid_parity"] = uid_parity(pd.read_parquet(Path(tmp) / "top30" / "metadata.parquet"),
                                                    Path(m30["uids"]), 0.3)
        from pipeline.decide import Arrays, load_columns
        from shardio.shards import expand, shard_id
        from pipeline.config import load_config

        sids = [shard_id(s) for s in expand(str(pool / "shards"))]
        if not (work / "columns" / "clip_score").exists():
            run_curation(str(pool / "shards"), Path(tmp) / "o", {"clip": [{"model": a.scorer}]}, work=work)
        arr = Arrays(work, sids)
        df = load_columns(work, sids, load_config({"clip": [{"model": a.scorer}]}))
        res["scaling"] = scaling(arr.image("clip_score").load(), arr.text("clip_score").load(),
                                 df["clip_score"].to_numpy(np.float32), a.backend)
    pool_args = json.loads((pool / "pool.json").read_text())["args"] if (pool / "pool.json").is_file() else {}
    res.update(pool=str(pool), pool_seed=pool_args.get("seed"), scorer=a.scorer, backend=a.backend, machine=machine())
    out = Path(a.out)
    if out.exists() and a.skip_filters:  # keep the filter figures, add this machine's scaling
        old = json.loads(out.read_text())
        old.setdefault("scaling_by_machine", {})[res["machine"]] = res["scaling"]
        res = old
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
