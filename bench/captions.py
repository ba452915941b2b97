"""Caption curation (CC3M rules, hypernymization) and interleaved assignment (mmc4) on built-in data.

    .venv/bin/python -m bench.captions        # -> bench/results/captions.json

1. ``caption_quality`` on the sample pool's captions (read from its shards): per rule and together,
   precision / recall against the planted junk captions (ground_truth.parquet), the share of every
   noise type dropped, the share kept, captions/s; CC3M's defaults and a lenient setting. The
   boilerplate list and the pool's junk list are both ordinary web junk, so that rule's recall is
   optimistic here: "all_but_boilerplate" is the union of the other rules.
2. ``hypernymize`` over the same captions: captions/s, entities replaced, examples.
3. ``curate interleave`` on the built-in interleaved sample with a scorer bootstrapped on the pool's
   trusted split (the demo's recipe): assignment accuracy against the ground truth, planted
   distractors and corrupt images dropped, documents/s.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from schemas.checkpoint import demo_scorer_path

import numpy as np
import pandas as pd

OUT = Path(__file__).parent / "results" / "captions.json"
CONFIGS = {"cc3m_defaults": {},
           "lenient": {"require_pos": ["noun"], "first_capital": False, "max_noun_ratio": 1.0, "max_oov_ratio": 0.5}}


def pool_captions(pool: Path) -> pd.DataFrame:
    """uid and caption of every sample, as the shards hold them, with the planted noise label."""
    from shardio.tar import iter_samples

    rows = []
    for tar in sorted((pool / "shards").glob("*.tar")):
        for s in iter_samples(tar):
            rows.append({"uid": json.loads(s.members["json"])["uid"],
                         "caption": s.members.get("txt", b"").decode("utf-8", "replace")})
    truth = pd.read_parquet(pool / "ground_truth.parquet")[["uid", "noise"]]
    return pd.DataFrame(rows).merge(truth, on="uid", how="left", validate="one_to_one")


def rule_figures(df: pd.DataFrame) -> dict:
    from pipeline.captions import vocabulary, wordnet
    from pipeline.filters.base import Context
    from pipeline.filters.caption_quality import CaptionQuality

    t0 = time.time()
    vocabulary(), wordnet()
    load = time.time() - t0
    junk = (df["noise"] == "junk_caption").to_numpy()
    noise = df["noise"].fillna("clean")
    ctx = Context(df[["uid", "caption"]], np.ones(len(df), bool), None, None)
    out = {"samples": len(df), "junk_captions": int(junk.sum()), "distinct_captions": int(df["caption"].nunique()),
           "tools_load_s": round(load, 2), "configs": {}}
    for name, cfg in CONFIGS.items():
        f = CaptionQuality(type="caption_quality", **cfg)
        t0 = time.time()
        res = f.compute(ctx)
        secs = time.time() - t0

        def pr(mask):
            tp = int((mask & junk).sum())
            return {"failing": int(mask.sum()), "precision": round(tp / max(int(mask.sum()), 1), 4),
                    "recall": round(tp / max(int(junk.sum()), 1), 4),
                    "share_dropped_by_noise": {k: round(float(mask[(noise == k).to_numpy()].mean()), 4)
                                               for k in sorted(noise.unique())}}

        rules = {k: pr(m) for k, m in res.fails.items()}
        union = np.logical_or.reduce(list(res.fails.values()))
        rest = np.logical_or.reduce([m for k, m in res.fails.items() if k != "boilerplate"])
        out["configs"][name] = {"settings": f.model_dump(exclude={"name", "type"}), "rules": rules,
                                "any_rule": pr(union), "all_but_boilerplate": pr(rest),
                                "share_kept": round(1 - float(union.mean()), 4),
                                "share_of_clean_kept": round(1 - float(union[(noise == "clean").to_numpy()].mean()), 4),
                                "seconds": round(secs, 2), "captions_per_s": round(len(df) / secs),
                                "distinct_captions_per_s": round(df["caption"].nunique() / secs)}
    return out


def hypernym_figures(df: pd.DataFrame) -> dict:
    from pipeline.filters.base import Context
    from pipeline.filters.hypernymize import Hypernymize

    ctx = Context(df[["uid", "caption"]], np.ones(len(df), bool), None, None)
    t0 = time.time()
    res = Hypernymize(type="hypernymize").compute(ctx)
    secs = time.time() - t0
    new = pd.Series(res.columns["caption"], index=df.index)
    changed = new != df["caption"]
    pairs = pd.DataFrame({"caption": df["caption"][changed], "hypernymized": new[changed]}).drop_duplicates()
    return {**res.info, "seconds": round(secs, 2), "captions_per_s": round(len(df) / secs),
            "distinct_captions_per_s": round(df["caption"].nunique() / secs),
            "examples": pairs.head(12).to_dict("records")}


RECIPE = "curate-tiny trained on the pool's trusted split, 40k samples seen, seed 0 (the demo's scorer)"


def scorer_checkpoint(pool: Path, root: Path, given: str | None) -> str:
    if given:
        return given
    demo = Path(demo_scorer_path())
    if demo.is_dir():
        return str(demo)
    final = root / "scorer" / "final"
    if not final.is_dir():
        from training.train import TrainConfig, train

        train(TrainConfig(train_data=str(pool / "trusted"), model="curate-tiny", out_dir=str(root / "scorer"),
                          samples_seen=40_000, seed=0))
    return str(final)


SETTINGS = {"auto_q0.95": {}, "auto_q0.8": {"null_quantile": 0.8}, "auto_q0.5": {"null_quantile": 0.5},
            "no_threshold": {"min_sim": -1.0}}


def interleave_figures(sample: Path, root: Path, scorer: str) -> dict:
    """The default (auto, 0.95) and a sweep of thresholds, each scored against the ground truth."""
    from app.sample_pool.interleaved import build_interleaved
    from pipeline.interleaved import Settings, run_interleave
    from schemas.config import ClipModel

    from pipeline.clip_stage import get_scorer

    info = build_interleaved(sample)
    spec = ClipModel(model=scorer).model_dump_json()
    t0 = time.time()
    get_scorer(spec)  # loaded once, outside the timed runs
    load = round(time.time() - t0, 2)
    runs = {}
    for name, cfg in SETTINGS.items():
        t0 = time.time()
        out = root / "interleave" / name
        s = run_interleave(str(sample / "shards"), out, spec, Settings(**cfg), scorer_name=scorer)
        runs[name] = {**accuracy(sample, out), "thresholds": s["thresholds"],
                      "images_dropped": s["images_dropped"], "seconds": round(time.time() - t0, 2),
                      "documents_per_s": round(s["documents_in"] / (time.time() - t0), 2)}
    return {"sample": info, "scorer": scorer, "scorer_recipe": RECIPE, "scorer_load_s": load, "default": "auto_q0.95",
            "runs": runs}


def accuracy(sample: Path, out: Path) -> dict:
    docs = pd.read_parquet(out / "documents.parquet")
    sentences = dict(zip(docs["key"], docs["sentences"]))
    got = {(d, im["image_name"]): (im["status"], im.get("matched_text_index"))
           for d, ledger in zip(docs["key"], docs["images"]) for im in json.loads(ledger)}
    gt = pd.read_parquet(sample / "ground_truth.parquet")
    status = [got.get((d, n), ("missing", None)) for d, n in zip(gt["doc"], gt["image_name"])]
    gt["reason"], gt["matched"] = [s for s, _ in status], [m for _, m in status]
    gt["kept"] = gt["reason"] == "kept"
    own, dis, bad = (gt[gt["kind"] == k] for k in ("own", "distractor", "corrupt"))
    right = own["matched"] == own["true_text_index"]
    n_kept = int(gt["kept"].sum())
    return {"own_images": len(own),
            "own_kept_on_their_sentence": round(float((own["kept"] & right).mean()), 4),
            "own_assigned_to_their_sentence_before_threshold": round(float(right.mean()), 4),
            "chance_before_threshold": round(float(np.mean([1 / sentences[d] for d in own["doc"]])), 4),
            "own_dropped": round(float((~own["kept"]).mean()), 4),
            "kept_images_on_the_right_sentence": round(int((own["kept"] & right).sum()) / max(n_kept, 1), 4),
            "distractors": len(dis), "distractors_dropped": round(float((~dis["kept"]).mean()), 4),
            "distractors_dropped_by_reason": dis.loc[~dis["kept"], "reason"].value_counts().to_dict(),
            "corrupt": len(bad), "corrupt_dropped_as_decode": int((bad["reason"] == "decode").sum()),
            "documents": len(docs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default="data/sample_pool")
    ap.add_argument("--sample", default="data/interleaved_sample")
    ap.add_argument("--root", default="runs/bench-captions", help="scorer and interleave outputs")
    ap.add_argument("--scorer", default=None, help="checkpoint folder (default: the demo's, else bootstrap one)")
    a = ap.parse_args()
    from app.demo import machine
    from app.sample_pool import build_pool

    pool, root = Path(a.pool), Path(a.root)
    if not (pool / "pool.json").is_file():
        build_pool(pool, 20_000)
    df = pool_captions(pool)
    result = {"machine": machine(), "caption_quality": rule_figures(df), "hypernymize": hypernym_figures(df)}
    result["interleave"] = interleave_figures(Path(a.sample), root, scorer_checkpoint(pool, root, a.scorer))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result["caption_quality"]["configs"][k]["any_rule"] for k in CONFIGS}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
