"""The whole loop on the built-in sample pool, ending in one verdict: does curation help?

pool (web preset: at most 30% clean) -> a filtering network trained on the trusted split (the DFN
recipe) -> curate twice: no filter, and the strategy the committed grid chose as best on its
validation suite -> train both at equal samples seen (DataComp's rule: samples seen = pool size) ->
the built-in suite for both: average with group means and bootstrap standard errors, beside the
committed grid's seed spread, and what each dropped per planted noise type.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from pipeline.run import run_curation
from schemas.checkpoint import DEMO_ROOT, DEMO_SCORER_DIR

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
# the committed grid the verdict quotes: the 23-task suite's (seeds 3-5), else the earlier 10-task one
GRID = next((p for p in (RESULTS / "grid_beyond.json", RESULTS / "grid_web.json") if p.is_file()),
            RESULTS / "grid_web.json")
DEFAULT_STRATEGY = "ours_dfn_30"  # when no committed grid names a best strategy


def machine() -> str:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} cores, {gpu}, Python {platform.python_version()}"


def _step(name: str, timings: dict):
    class _T:
        def __enter__(self):
            print(f"\n=== {name} ===", flush=True)
            self.t = time.time()

        def __exit__(self, *exc):
            timings[name] = round(time.time() - self.t, 1)
            if exc[0] is None:
                print(f"--- {name}: {timings[name]} s", flush=True)
    return _T()


def committed_grid(path: Path = GRID) -> dict:
    """The committed grid's best strategy and per-strategy spread ({} when there is none)."""
    if not path.is_file():
        return {}
    g = json.loads(path.read_text())
    return {"best": g.get("best_strategy"), "seeds": g.get("seeds"), "batch_size": g.get("batch_size"), "strategies": {k: {m: v.get(m) for m in ("average_mean", "average_std")}
                                                    for k, v in g.get("strategies", {}).items()}}


def run_demo(root: str | Path = DEMO_ROOT, samples: int = 20_000, trusted: int = 10_000,
             samples_seen: int | None = None, scorer_samples_seen: int | None = None, strategy: str | None = None,
             seed: int = 0, data: str = "auto", pool_dir: str | Path = "data/sample_pool", preset: str = "web") -> dict:
    from app.sample_pool import build_pool
    from app.strategies import DFN_SAMPLES_SEEN, candidates, strategies
    from training.evalsuite import run_suite
    from training.train import TrainConfig, train

    t0 = time.time()
    root = Path(root)
    if root.exists():  # a demo is one fresh run; the pool is reused when its settings match
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True)
    pool_dir = Path(pool_dir)
    timings: dict[str, float] = {}
    grid = committed_grid() if preset == "web" else {}  # the committed grid is the web pool's
    strategy = strategy or grid.get("best") or DEFAULT_STRATEGY
    batch = grid.get("batch_size") or 256  # the committed grid's training batch (256 before it was recorded)

    with _step("1. sample pool", timings):
        info = build_pool(pool_dir, samples, seed=seed, n_trusted=trusted, data=data, preset=preset)
    seen = samples_seen or info["counts"]["pool"]

    with _step("2. filtering network: a CLIP trained on the trusted split", timings):
        dfn = train(TrainConfig(train_data=str(pool_dir / "trusted"), model="curate-tiny", out_dir=str(root / DEMO_SCORER_DIR),
                                samples_seen=scorer_samples_seen or DFN_SAMPLES_SEEN, seed=seed,
                                batch_size=batch))["checkpoint"]

    runs: dict[str, dict] = {}
    web = None
    for name in ("no_filter", strategy):
        if name == "no_filter":
            cfg = {"filters": []}
        else:
            plan = {**strategies(pool_dir, web, dfn), **candidates(pool_dir, web, dfn)}
            if name not in plan:
                raise ValueError(f"unknown strategy {name!r}: one of {', '.join(plan)}")
            cfg = plan[name]
        with _step(f"3. curate: {name}", timings):
            m = run_curation(str(pool_dir / "shards"), root / name, cfg, work=root / "work", progress=False)
            print(f"{name}: {m['samples_in']} in, {m['kept']} kept, dropped by reason {m['dropped_by_reason']}")
        with _step(f"4. train on {name} ({seen} samples seen)", timings):
            r = train(TrainConfig(train_data=str(root / name / "shards"), model="curate-tiny",
                                  out_dir=str(root / f"train_{name}"), samples_seen=seen, seed=seed,
                                  batch_size=batch))
        if name == "no_filter":
            web = r["checkpoint"]  # the raw pool's CLIP: the "web CLIP" that CLIP-score filters use
        with _step(f"5. built-in suite: {name}", timings):
            ev = run_suite(r["checkpoint"], pool_dir / "eval", results=root / f"train_{name}" / "eval.jsonl")
        runs[name] = {"kept": m["kept"], "dropped_by_reason": m["dropped_by_reason"],
                      "average": ev["average"], "average_se": ev.get("average_se"),
                      "groups": {g: v["mean"] for g, v in ev["groups"].items()},
                      "dropped_by_noise": _dropped_by_noise(pool_dir, root / name),
                      "train_samples_per_s": r.get("samples_per_s")}

    summary = {
        "verdict": round(runs[strategy]["average"] - runs["no_filter"]["average"], 4),
        "strategy": strategy, "samples_in": info["counts"]["pool"], "pool_preset": preset,
        "pool_clean_share": info.get("clean_share"), "samples_seen": seen, "batch_size": batch, "runs": runs,
        "committed_grid": {k: grid.get("strategies", {}).get(k) for k in ("no_filter", "best")} if grid else None,
        "committed_grid_seeds": grid.get("seeds"), "pool_data": info.get("data"), "seed": seed,
        "timings_s": timings, "wall_seconds": round(time.time() - t0, 1), "machine": machine(),
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary)
    return summary


def _dropped_by_noise(pool_dir: Path, curated: Path) -> dict:
    """Share of each planted noise type that a run dropped (the pool's ground truth table)."""
    t = noise_table(pool_dir, curated)
    return {} if t is None else {k: {"n": int(r["samples"]), "dropped_share": round(float(r["dropped"] / r["samples"]), 3)}
                                 for k, r in t.iterrows()}


def noise_table(pool_dir: str | Path, curated: str | Path):
    """pipeline.report's per-noise-type table (samples, kept, dropped) of a run, or None without ground truth."""
    import pandas as pd

    from pipeline.report import confusion

    truth = Path(pool_dir) / "ground_truth.parquet"
    if not truth.is_file():
        return None
    meta = pd.read_parquet(Path(curated) / "metadata.parquet", columns=["uid", "keep", "drop_reason"])
    return confusion(meta, pd.read_parquet(truth, columns=["uid", "noise"]))


def verdict_line(s: dict) -> str:
    """The committed grid's answer over seeds (one run's difference is within the seeds' spread)."""
    grid = s.get("committed_grid") or {}
    nf, best = grid.get("no_filter"), grid.get("best")
    if not (nf and best and best.get("average_std") is not None and nf.get("average_std") is not None):
        return "no committed grid to judge by (run python -m bench.grid); this run's figures below"
    diff, spread = best["average_mean"] - nf["average_mean"], best["average_std"] + nf["average_std"]
    word = "helps" if diff > spread else "does not help by more than the seeds' spread" if diff > 0 else "hurts"
    return (f"curation {word}: {s['strategy']} {best['average_mean']:.4f} ± {best['average_std']:.4f} vs no filter "
            f"{nf['average_mean']:.4f} ± {nf['average_std']:.4f} over seeds {s['committed_grid_seeds']} "
            f"({diff:+.4f}; the two seed spreads add to {spread:.4f})")


def _print_summary(s: dict) -> None:
    nf, best, name = s["runs"]["no_filter"], s["runs"][s["strategy"]], s["strategy"]
    groups = list(nf["groups"])
    print("\n================ curate demo: does curation help? ================")
    print(f"pool: {s['samples_in']} samples ({s['pool_preset']} preset, {s['pool_clean_share']:.0%} clean, "
          f"{s['pool_data']} data); each model sees {s['samples_seen']} samples")
    print(f"verdict: {verdict_line(s)}")
    print(f"this run (seed {s['seed']}): built-in suite average {best['average']:.4f} with {name} vs "
          f"{nf['average']:.4f} with no filter ({s['verdict']:+.4f}; bootstrap SE {best['average_se']} / "
          f"{nf['average_se']})")
    print(f"{'':>24}{'no filter':>12}{name:>16}")
    print(f"{'kept':>24}{nf['kept']:>12}{best['kept']:>16}")
    for g in groups:
        a, b = nf["groups"][g], best["groups"].get(g)
        print(f"{g:>24}{a:>12.4f}{b:>16.4f}" if a is not None and b is not None else f"{g:>24}")
    print(f"{'average':>24}{nf['average']:>12.4f}{best['average']:>16.4f}")
    grid = s.get("committed_grid") or {}
    if grid.get("no_filter") and grid.get("best"):
        def ms(v):
            return f"{v['average_mean']:.4f} ± {v['average_std'] or 0:.4f}"
        print(f"{'committed grid':>24}{ms(grid['no_filter']):>16}{ms(grid['best']):>18}   "
              f"(mean ± std over seeds {s['committed_grid_seeds']})")
    print("share dropped per planted noise type:")
    for noise, v in best["dropped_by_noise"].items():
        a = nf["dropped_by_noise"].get(noise, {}).get("dropped_share", 0.0)
        print(f"{noise:>24}{a:>12.0%}{v['dropped_share']:>16.0%}   ({v['n']} samples)")
    print(f"wall time: {s['wall_seconds']} s   ({s['machine']})")
