"""A perfect noise filter on the sample pool: `curate-tiny` trained on exactly the pool's clean samples
(its ground truth, which no filter sees) at a grid's budget and seeds, beside that grid's best DataComp
baseline and best strategy -> bench/results/grid_ceiling.json.

    .venv/bin/python -m bench.ceiling                          # against bench/results/grid_beyond.json
    .venv/bin/python -m bench.ceiling --grid bench/results/grid_beyond_x3.json --tag _x3

The clean set is what a filter that never errs on the planted noise keeps, so
`ceiling_minus_best_baseline` measures what removing that noise is worth over the best baseline at
this budget. It is no strict bound: a strategy that also keeps some noisy samples gains from their
numbers, so the grid's top strategy is reported beside it.
The pool is rebuilt with the grid's settings and must hash to the grid's pool (bench/grid.py pool_id).

The difference is taken seed by seed (`ceiling_minus_best_baseline`: its mean; `difference_se`).
`--seeds 3 4 5 6 7 8 9 10` adds seeds beyond the grid's: the best baseline is then trained for them
too (its curated set rebuilt as the grid built it: the web CLIP is the no-filter model of the grid's
first seed, retrained, and must score exactly as the grid's carried run did).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from bench.grid import BATCH, OUT, done_runs, pool_id, run_one


def clean_uids(pool: Path, out: Path) -> int:
    """The pool's clean uids (no planted noise) as DataComp's ``u8,u8`` array; returns their number."""
    import pandas as pd

    from pipeline.export import uid_array

    t = pd.read_parquet(pool / "ground_truth.parquet", columns=["uid", "noise"])
    arr = uid_array(list(t.loc[t["noise"].isna(), "uid"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, arr)
    return len(arr)


def train_eval(shards: Path, pool: Path, out: Path, seed: int, seen: int, batch: int) -> dict:
    from training.evalsuite import run_suite
    from training.train import TrainConfig, train

    t0 = time.time()
    tr = train(TrainConfig(train_data=str(shards), model="curate-tiny", out_dir=str(out), samples_seen=seen,
                           seed=seed, batch_size=batch))
    ev = run_suite(tr["checkpoint"], pool / "eval", results=out / "eval.jsonl")
    val = run_suite(tr["checkpoint"], pool / "val", "validation", results=out / "val.jsonl")["average"]
    row = {"seed": seed, "average": ev["average"], "validation": val,
           "groups": {g: v["mean"] for g, v in ev["groups"].items()},
           "tasks": {r["task"]: r["main"] for r in ev["rows"]}, "seconds": round(time.time() - t0, 1)}
    print(f"oracle_clean seed {seed} ({seen} seen): average {row['average']:.4f}, validation {val:.4f}", flush=True)
    return row


def baseline_runs(grid: dict, runs: Path, pool: Path, root: Path, seeds: list[int], batch: int) -> dict[int, float]:
    """seed -> the grid's best baseline's test average: carried from the grid's runs, else trained here
    on the set the grid curated (rebuilt: same pool, same web CLIP, checked)."""
    from app.strategies import strategies

    base, seen, first = grid["best_baseline"], grid["samples_seen"], min(grid["seeds"])
    base_seen = grid["pool_size"]
    rows = done_runs(root / "runs.jsonl", runs, pool=pool_id(pool))
    out = {s: rows[(base, s, seen)]["average"] for s in seeds if (base, s, seen) in rows}
    if len(out) == len(seeds):
        return out
    carried = rows.get(("no_filter", first, base_seen))
    web = run_one(root, pool, "no_filter", {"filters": []}, first, base_seen, [], batch)
    if carried is None or abs(web["average"] - carried["average"]) > 1e-9:
        raise SystemExit(f"the retrained web CLIP scores {web['average']} where the grid's scored "
                         f"{carried and carried['average']}: not the grid's scorer")
    cfg = strategies(pool, web["checkpoint"], str(root / "dfn-unused"))[base]
    for s in seeds:
        if s not in out:
            row = run_one(root, pool, base, cfg, s, seen, [root / "runs.jsonl"], batch)
            if row["dataset_size"] != grid["strategies"][base]["dataset_size"]:
                raise SystemExit(f"{base} kept {row['dataset_size']} here, "
                                 f"{grid['strategies'][base]['dataset_size']} in the grid")
            out[s] = row["average"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default=str(OUT / "grid_beyond.json"), help="the grid to set beside")
    ap.add_argument("--pool", default="data/sample_pool")
    ap.add_argument("--root", default="runs/ceiling")
    ap.add_argument("--tag", default="", help="write grid_ceiling<tag>.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the grid's")
    a = ap.parse_args()
    from app.sample_pool.build import build_pool
    from pipeline.reshard import reshard

    grid = json.loads(Path(a.grid).read_text())
    pool, root = Path(a.pool), Path(a.root)
    build_pool(pool, grid["pool_size"], preset=grid["preset"])
    runs = Path(a.grid).with_name(Path(a.grid).stem.removesuffix("_x3") + "_runs.jsonl")
    want = json.loads(runs.read_text().splitlines()[0])["pool_id"] if runs.is_file() else None
    if want and pool_id(pool) != want:
        raise SystemExit(f"{pool} is not the pool of {a.grid} (pool id {pool_id(pool)}, the grid's {want})")
    n = clean_uids(pool, root / "clean_uids.npy")
    cur = root / "curated"
    if not (cur / "manifest.json").is_file():
        m = reshard(root / "clean_uids.npy", str(pool / "shards"), cur)
        if m["written"] != n:
            raise SystemExit(f"reshard wrote {m['written']} of the {n} clean samples")
    seen, batch = grid["samples_seen"], grid.get("batch_size", BATCH)
    seeds = a.seeds or grid["seeds"]
    rows = [train_eval(cur / "shards", pool, root / f"s{s}-n{seen}", s, seen, batch) for s in seeds]
    avgs = [r["average"] for r in rows]
    base, best = grid["best_baseline"], grid["best"]
    s = grid["strategies"]
    top = max(s, key=lambda k: s[k]["average_mean"])  # the top test average of any strategy (not a selection)
    mean = statistics.mean(avgs)
    b = baseline_runs(grid, runs, pool, root / "grid", seeds, batch)  # seed by seed, same seeds
    diffs = [r["average"] - b[r["seed"]] for r in rows]
    paired = {"best_baseline_by_seed": {str(k): round(v, 4) for k, v in sorted(b.items())},
              "best_baseline_mean_these_seeds": round(statistics.mean(b.values()), 4),
              "difference_by_seed": [round(d, 4) for d in diffs],
              "ceiling_minus_best_baseline": round(statistics.mean(diffs), 4),
              "difference_se": round(statistics.stdev(diffs) / len(diffs) ** 0.5, 4) if len(diffs) > 1 else None,
              "seeds_at_or_above_0_02": sum(d >= 0.02 for d in diffs)}
    out = {"grid": Path(a.grid).name, "pool_id": pool_id(pool), "dataset_size": n, "samples_seen": seen,
           "seeds": seeds, "averages": [round(v, 4) for v in avgs], "average_mean": round(mean, 4),
           "average_std": round(statistics.stdev(avgs), 4) if len(avgs) > 1 else None,
           "validation_mean": round(statistics.mean(r["validation"] for r in rows), 4),
           "groups": {g: round(statistics.mean(r["groups"][g] for r in rows), 4) for g in rows[0]["groups"]},
           "tasks": {t: round(statistics.mean(r["tasks"][t] for r in rows), 4) for t in rows[0]["tasks"]},
           "best_baseline": base, "best_baseline_mean": s[base]["average_mean"],
           "best_baseline_std": s[base]["average_std"],
           "best": best, "best_mean": s["best"]["average_mean"] if "best" in s else None,
           "top_strategy": top, "top_mean": s[top]["average_mean"],
           "best_minus_best_baseline": grid["best_minus_best_baseline"], **paired,
           "train_and_eval_seconds": round(sum(r["seconds"] for r in rows), 1), "runs": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"grid_ceiling{a.tag}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("runs", "tasks")}, indent=1))


if __name__ == "__main__":
    main()
