"""The DataComp-style experiment grid on the sample pool -> bench/results/grid_web.json, .md, .svg.

    .venv/bin/python -m bench.grid                       # web pool, samples seen = pool size, 3 seeds
    .venv/bin/python -m bench.grid --budget 3            # the 3x budget variant (no filter, CLIP score, best)
    .venv/bin/python -m bench.grid --preset clean --tag ""   # the older grid on the ~71% clean pool
    .venv/bin/python -m bench.grid --seeds 3 4 5 --tag _beyond   # with the published methods' candidates

Every strategy curates the same pool (one annotate pass per scorer, cached in <root>/work), then for
each seed a `curate-tiny` model trains on what it kept at the same samples-seen budget (DataComp's
rule: samples seen = pool size) and is evaluated on the built-in suite (DataComp-style groups:
ImageNet analogue, distribution shifts, VTAB-like, retrieval, average; bootstrap standard errors per
task). Resumable: finished (strategy, seed, budget) runs are read back from <root>/runs.jsonl and from
the committed bench/results/grid<tag>_runs.jsonl (rows of the same pool only, by a hash of its ground
truth), so a grid longer than one sitting goes on in a fresh checkout; a candidate's validation average
is stored with its run.

Scorers, as in the field: `clip_score_*` use a CLIP trained on the raw pool (the no-filter model of
the first seed, the analogue of OpenAI's web-trained CLIP); `dfn_*` use the filtering network trained
on the trusted split (<root>/dfn, the DFN recipe). Baseline settings were fixed before any result was
seen; `best` is the one of our declared combinations (`candidates`) with the highest mean average on
the validation suite (pool's val/ folder) over the first three seeds, never picked from the reported
table. What each strategy kept is measured against the pool's ground truth (kept share per noise type).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "bench" / "results"
GROUPS = ["ImageNet", "ImageNet dist. shifts", "VTAB", "Retrieval"]  # training/evalsuite.py group names

from app.sample_pool.noise import PRESETS  # noqa: E402
from app.strategies import DFN_SAMPLES_SEEN, candidates, strategies  # noqa: E402


def validate(root: Path, pool: Path, row: dict) -> float | None:
    """Average on the validation suite (None when the pool has none, e.g. the synthetic fallback)."""
    from training.evalsuite import run_suite

    if row.get("validation") is not None:  # stored with the run (it outlives the checkpoint)
        return row["validation"]
    if not (pool / "val").is_dir() or not Path(row["checkpoint"]).is_dir():
        return None
    return run_suite(row["checkpoint"], pool / "val", "validation",
                     results=Path(row["checkpoint"]).parent / "val.jsonl")["average"]


def done_runs(*paths: Path, pool: str | None = None) -> dict[tuple[str, int, int], dict]:
    """Finished runs from the run folder's log and the committed carry file (a later session resumes
    from it: the checkpoints are gone, the figures are not); only rows of this very pool."""
    out = {}
    for i, path in enumerate(paths):
        if not path.is_file():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for r in rows:  # the run folder's own log may predate pool ids; a carried row must name this pool
            if r.get("pool_id") == pool or (i == 0 and r.get("pool_id") is None):
                out.setdefault((r["strategy"], r["seed"], r["samples_seen"]), r)
    return out


def pool_id(pool: Path) -> str:
    """The pool's identity: a hash of its sorted uids and noise labels (its ground truth)."""
    import hashlib

    import pandas as pd

    t = pd.read_parquet(pool / "ground_truth.parquet", columns=["uid", "noise"]).sort_values("uid")
    text = "\n".join(f"{u}\t{n}" for u, n in zip(t["uid"], t["noise"].fillna("")))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


BATCH = 64  # the CPU preset: 312 steps at 20k samples seen (256 gave 78 steps, seed spreads as large as the effects)


def curate_one(root: Path, pool: Path, name: str, cfg: dict) -> Path:
    """The strategy's curated output (curated once; a run carried from another session curates it here)."""
    from pipeline.run import run_curation

    cur = root / "curated" / name
    if not (cur / "manifest.json").is_file():
        run_curation(str(pool / "shards"), cur, cfg, work=root / "work", progress=False)
    return cur


def run_one(root: Path, pool: Path, name: str, cfg: dict, seed: int, samples_seen: int, log: list[Path],
            batch: int = BATCH, validate_too: bool = False) -> dict:
    from training.evalsuite import run_suite
    from training.train import TrainConfig, train

    cur = curate_one(root, pool, name, cfg)
    m = json.loads((cur / "manifest.json").read_text())
    t0 = time.time()
    out = root / "train" / f"{name}-s{seed}-n{samples_seen}"
    tr = train(TrainConfig(train_data=str(cur / "shards"), model="curate-tiny", out_dir=str(out),
                           samples_seen=samples_seen, seed=seed, batch_size=batch))
    ev = run_suite(tr["checkpoint"], pool / "eval", results=out / "eval.jsonl")
    row = {"strategy": name, "seed": seed, "dataset_size": m["kept"], "samples_seen": samples_seen,
           "groups": {g: v["mean"] for g, v in ev["groups"].items()}, "average": ev["average"],
           "average_se": ev.get("average_se"), "tasks": {r["task"]: r["main"] for r in ev["rows"]},
           "task_se": {r["task"]: r.get("se") for r in ev["rows"]},
           "train_seconds": round(time.time() - t0, 1), "checkpoint": tr["checkpoint"], "pool_id": pool_id(pool)}
    if validate_too:
        row["validation"] = validate(root, pool, row)
    for path in log:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    print(f"{name} seed {seed} ({samples_seen} seen): size {row['dataset_size']}, average {row['average']:.4f}",
          flush=True)
    return row


def composition(pool: Path, curated: Path) -> dict:
    """Kept share per planted noise type (ground truth), and the clean share of the kept set."""
    from app.demo import noise_table

    t = noise_table(pool, curated).drop(index="(not in ground truth)", errors="ignore")
    kept = t["kept"].sum()
    return {"kept_share_by_noise": {k: round(float(r["kept"] / r["samples"]), 3) for k, r in t.sort_index().iterrows()},
            "clean_share_of_kept": round(float(t["kept"].get("clean", 0) / kept), 3) if kept else None}


def table(rows: dict[tuple[str, int], dict], order: list[str]) -> dict:
    out = {}
    for name in order:
        runs = [r for k, r in sorted(rows.items()) if k[0] == name]
        if not runs:
            continue
        avgs = [r["average"] for r in runs]
        ses = [r.get("average_se") for r in runs]
        out[name] = {"dataset_size": runs[0]["dataset_size"], "seeds": [r["seed"] for r in runs],
                     "average_mean": round(statistics.mean(avgs), 4),
                     "average_std": round(statistics.stdev(avgs), 4) if len(avgs) > 1 else None,
                     "averages": [round(a, 4) for a in avgs],
                     "bootstrap_se": round(statistics.mean(ses), 4) if ses and None not in ses else None,
                     "tasks": {k: round(statistics.mean(r["tasks"][k] for r in runs), 4) for k in runs[0].get("tasks", {})
                               if all(k in r.get("tasks", {}) for r in runs)}}
        for g in GROUPS:
            vals = [r["groups"].get(g) for r in runs if r["groups"].get(g) is not None]
            if vals:
                out[name][g] = {"mean": round(statistics.mean(vals), 4),
                                "std": round(statistics.stdev(vals), 4) if len(vals) > 1 else None}
    return out


def markdown(t: dict, meta: dict) -> str:
    def pm(v):
        return "" if v is None else (f"{v['mean']:.4f} ± {v['std']:.4f}" if v.get("std") is not None else f"{v['mean']:.4f}")

    lines = [f"# Experiment grid: {meta.get('preset', 'clean')} pool ({meta.get('pool_clean_share')} clean), "
             f"{meta['samples_seen']} samples seen, seeds {meta['seeds']}, `curate-tiny`", "",
             "| strategy | dataset size | clean share of kept | ImageNet analogue | shifts | VTAB-like | retrieval | "
             "average ± seed std | bootstrap SE |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in sorted(t.items(), key=lambda kv: -kv[1]["average_mean"]):
        avg = f"**{r['average_mean']:.4f}** ± {r['average_std']:.4f}" if r["average_std"] is not None else f"{r['average_mean']:.4f}"
        label = f"best (= {meta['best']})" if name == "best" and meta.get("best") else name
        se = "" if r.get("bootstrap_se") is None else f"{r['bootstrap_se']:.4f}"
        lines.append(f"| {label} | {r['dataset_size']} | {r.get('clean_share_of_kept', '')} | "
                     + " | ".join(pm(r.get(g)) for g in GROUPS) + f" | {avg} | {se} |")
    keys = ["clip_score_30_minus_no_filter", "clip_score_spread", "best_strategy", "best_baseline",
            "best_minus_best_baseline", "best_minus_best_baseline_spread", "seed_ordering", "suite_bootstrap_se"]
    lines += [""] + [f"- `{k}`: {meta[k]}" for k in keys if k in meta]
    by_task = meta.get("best_minus_best_baseline_by_task")
    if by_task:
        lines.append("- best minus best baseline, per task (mean over seeds): " + ", ".join(
            f"{k.split('/')[-1]} {v:+.4f}" for k, v in sorted(by_task.items(), key=lambda kv: -abs(kv[1]))))
    cands = meta.get("candidates") or {}
    if cands:  # every declared combination, the published methods among them, on the test suite too
        sel = meta.get("selection") or {}
        lines += ["", "Candidates for `best` (chosen by the validation column only; the test-suite average is "
                  "reported, never used to choose):", "",
                  "| candidate | dataset size | validation average | test average ± seed std |", "|---|---|---|---|"]
        for name, r in sorted(cands.items(), key=lambda kv: -(sel.get(kv[0], {}).get("validation_average") or 0)):
            val = sel.get(name, {}).get("validation_average")
            std = "" if r["average_std"] is None else f" ± {r['average_std']:.4f}"
            lines.append(f"| {name} | {r['dataset_size']} | {'' if val is None else f'{val:.4f}'} | "
                         f"{r['average_mean']:.4f}{std} |")
    return "\n".join(lines) + "\n"


def svg(t: dict) -> str:
    """A bar chart of the average with ±std error bars (matplotlib, as SVG)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(t.items(), key=lambda kv: kv[1]["average_mean"])
    names = [n for n, _ in items]
    mean = [r["average_mean"] for _, r in items]
    std = [r["average_std"] or 0 for _, r in items]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(items) + 1.2))
    bars = ax.barh(names, mean, xerr=std, color="#4c78a8", ecolor="black", capsize=3)
    ax.bar_label(bars, labels=[f"{m:.4f}" for m in mean], padding=18, fontsize=8)
    ax.set_xlabel("average over the built-in suite (mean ± std over seeds)")
    ax.set_xlim(0, max(m + d for m, d in zip(mean, std)) * 1.25)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    return buf.getvalue()


FIRST = ["no_filter", "clip_score_30", "best", "dfn_30", "basic"]
BASELINES = ["no_filter", "basic", "text_based", "image_based", "image_based_clip_score", "laion2b",
             "clip_score_30", "clip_score_45"]  # DataComp's own baselines (the others are ours or the field's)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="web", help="sample pool noise mix (default: web)")
    ap.add_argument("--pool", default="data/sample_pool", help="pool folder (built with --preset when it differs)")
    ap.add_argument("--samples", type=int, default=20_000, help="pool size when the pool is built (default 20000)")
    ap.add_argument("--dfn", default=None, help="filtering network (default: trained on the pool's trusted split)")
    ap.add_argument("--root", default=None, help="run folder (default: runs/grid-<preset>)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samples-seen", type=int, default=None, help="default: the pool size (DataComp's rule)")
    ap.add_argument("--budget", type=int, default=1, help="samples seen = this x the pool size; above 1 only "
                    "--budget-strategies run")
    ap.add_argument("--budget-strategies", nargs="+", default=["no_filter", "clip_score_30", "best"])
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--select-seeds", type=int, default=3,
                    help="how many of --seeds (the lowest) each candidate trains for the choice of `best`")
    ap.add_argument("--web", default=None, help="web-trained CLIP for the clip_score strategies (default: this "
                                                 "grid's no-filter model of the first seed)")
    ap.add_argument("--tag", default=None, help="write grid<tag>.json/.md/.svg (default: _<preset>)")
    ap.add_argument("--carry", default=None, help="finished runs, appended as they end and read back by a "
                    "later call, even in a fresh checkout (default: bench/results/grid<tag>_runs.jsonl)")
    ap.add_argument("--batch-size", type=int, default=BATCH, help=f"training batch (default {BATCH}; the runs "
                    "go to runs/grid-<preset>-b<batch> unless it is 256, the earlier grids' batch)")
    a = ap.parse_args()
    from app.sample_pool import build_pool
    from training.train import TrainConfig, train

    default_root = f"runs/grid-{a.preset}" + ("" if a.batch_size == 256 else f"-b{a.batch_size}")
    pool, root = Path(a.pool), Path(a.root or default_root)
    tag = f"_{a.preset}" if a.tag is None else a.tag
    info = build_pool(pool, a.samples, preset=a.preset)
    base_seen = a.samples_seen or info["counts"]["pool"]
    seen = base_seen * a.budget
    root.mkdir(parents=True, exist_ok=True)
    carry = Path(a.carry) if a.carry else OUT / f"grid{tag}_runs.jsonl"
    log = [root / "runs.jsonl", carry]
    rows = done_runs(*log, pool=pool_id(pool))
    t0 = time.time()
    dfn = a.dfn or str(root / "dfn" / "final")
    if not Path(dfn).is_dir():  # the filtering network: a CLIP trained on the clean trusted split
        dfn = train(TrainConfig(train_data=str(pool / "trusted"), model="curate-tiny", out_dir=str(root / "dfn"),
                                samples_seen=DFN_SAMPLES_SEEN, seed=0, batch_size=a.batch_size))["checkpoint"]
    first = min(a.seeds)
    # the web-trained CLIP (no filter, first seed, base budget) comes first: CLIP-score strategies use it
    if ("no_filter", first, base_seen) not in rows:
        rows[("no_filter", first, base_seen)] = run_one(root, pool, "no_filter", {"filters": []}, first, base_seen, log,
                                                        a.batch_size)
    web = a.web or rows[("no_filter", first, base_seen)]["checkpoint"]
    if not Path(web).is_dir():  # carried from an earlier session: the same seeded run again, not logged twice
        web = run_one(root, pool, "no_filter", {"filters": []}, first, base_seen, [], a.batch_size)["checkpoint"]
    plan = strategies(pool, web, dfn)
    cands = candidates(pool, web, dfn)
    select_seeds = sorted(a.seeds)[:a.select_seeds]
    selection = {}
    for name, cfg in cands.items() if not a.only or "best" in a.only else ():
        vals = []
        for seed in select_seeds:
            if (name, seed, base_seen) not in rows:
                rows[(name, seed, base_seen)] = run_one(root, pool, name, cfg, seed, base_seen, log, a.batch_size,
                                                        validate_too=True)
            vals.append(validate(root, pool, rows[(name, seed, base_seen)]))
        selection[name] = {"validation_average": None if None in vals else round(statistics.mean(vals), 4),
                           "validation_by_seed": vals, "dataset_size": rows[(name, first, base_seen)]["dataset_size"]}
    chosen = max(selection, key=lambda k: selection[k]["validation_average"] or 0.0) if selection else None
    if chosen:
        print(f"best = {chosen} (validation averages: "
              + ", ".join(f"{k} {v['validation_average']}" for k, v in selection.items()) + ")", flush=True)
        plan["best"] = cands[chosen]
    # the comparisons the verdict needs first, so an interrupted grid still answers them
    order = sorted(plan, key=lambda n: FIRST.index(n) if n in FIRST else (99 if n == "clip_score_45" else 50))
    wanted = [n for n in order if (not a.only or n in a.only) and (a.budget == 1 or n in a.budget_strategies)]
    for name in wanted:
        run_as = chosen if name == "best" else name
        for seed in a.seeds:
            if (run_as, seed, seen) not in rows:
                rows[(run_as, seed, seen)] = run_one(root, pool, run_as, plan[name], seed, seen, log, a.batch_size)
            if name == "best":  # the chosen combination's runs are the best strategy's runs
                rows[("best", seed, seen)] = {**rows[(run_as, seed, seen)], "strategy": "best"}
    from app.demo import machine

    at_budget = {k: v for k, v in rows.items() if k[1] in a.seeds and k[2] == seen}
    t = table(at_budget, [n for n in plan if n in wanted])
    for name in t:
        run_as = chosen if name == "best" else name
        t[name].update(composition(pool, curate_one(root, pool, run_as, plan[name])))
    meta = {"preset": a.preset, "pool_clean_share": info.get("clean_share"), "pool_size": info["counts"]["pool"],
            "samples_seen": seen, "budget": a.budget, "seeds": a.seeds, "model": "curate-tiny",
            "batch_size": a.batch_size, "web_clip": web,
            "dfn": dfn, "best": chosen, "selection": selection, "select_seeds": select_seeds,
            "candidates": table({k: v for k, v in at_budget.items() if k[0] in cands}, list(cands)),
            "configs": {**plan, **cands}, **verdict(t, chosen),
            "wall_seconds_this_call": round(time.time() - t0, 1),
            "train_and_eval_seconds_total": round(sum(r.get("train_seconds", 0) for r in at_budget.values()
                                                      if r["strategy"] != "best"), 1),
            "machine": machine()}
    if a.budget != 1:
        tag += f"_x{a.budget}"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"grid{tag}.json").write_text(json.dumps({"strategies": t, **meta}, indent=2) + "\n")
    (OUT / f"grid{tag}.md").write_text(markdown(t, meta))
    (OUT / f"grid{tag}.svg").write_text(svg(t))
    print(markdown(t, meta))
    if tag == "_web" and chosen:
        report_shot(root / "curated" / chosen, root / "train" / f"{chosen}-s{first}-n{seen}")
    from bench.readme_results import update_readme

    update_readme()


def verdict(t: dict, chosen: str | None) -> dict:
    """The figures the grid is judged by (None where a strategy did not run)."""
    def g(name, key):
        return (t.get(name) or {}).get(key)

    out = {"best_strategy": chosen, "clip_score_30_minus_no_filter": None, "clip_score_spread": None,
           "best_minus_best_baseline": None, "best_baseline": None, "suite_bootstrap_se": None}
    if g("clip_score_30", "average_mean") is not None and g("no_filter", "average_mean") is not None:
        out["clip_score_30_minus_no_filter"] = round(g("clip_score_30", "average_mean") - g("no_filter", "average_mean"), 4)
        out["clip_score_spread"] = round((g("clip_score_30", "average_std") or 0) + (g("no_filter", "average_std") or 0), 4)
    base = {n: t[n]["average_mean"] for n in BASELINES if n in t}
    if base and "best" in t:
        out["best_baseline"] = max(base, key=base.get)
        out["best_minus_best_baseline"] = round(t["best"]["average_mean"] - base[out["best_baseline"]], 4)
        a, b = t["best"].get("tasks", {}), t[out["best_baseline"]].get("tasks", {})
        # where the difference comes from: the average is a plain mean over the suite's tasks
        out["best_minus_best_baseline_by_task"] = {k: round(a[k] - b[k], 4) for k in a if k in b}
    if out["best_baseline"]:  # the spreads beside the difference
        out["best_minus_best_baseline_spread"] = round((g("best", "average_std") or 0)
                                                       + (g(out["best_baseline"], "average_std") or 0), 4)
    out["seed_ordering"] = seed_ordering(t)
    ses = [r["bootstrap_se"] for r in t.values() if r.get("bootstrap_se") is not None]
    out["suite_bootstrap_se"] = round(statistics.mean(ses), 4) if ses else None
    return out


def seed_ordering(t: dict) -> dict:
    """Seed by seed (same seed, same training order): is no filter below CLIP score 30%, and where does
    image-based ∩ CLIP score stand against CLIP score alone."""
    def by_seed(name):
        r = t.get(name) or {}
        return dict(zip(r.get("seeds", []), r.get("averages", [])))

    nf, cs, ib = by_seed("no_filter"), by_seed("clip_score_30"), by_seed("image_based_clip_score")
    return {"seeds": sorted(cs),
            "no_filter_below_clip_score_30": [nf[s] < cs[s] for s in sorted(cs) if s in nf],
            "image_based_clip_score_minus_clip_score_30": [round(ib[s] - cs[s], 4) for s in sorted(cs) if s in ib]}


def report_shot(curated: Path, train_dir: Path) -> None:
    """The best strategy's curation report with its training curve and evaluation, and a screenshot
    of its top (bench/results/report.png) when headless Chromium is installed."""
    import shutil
    import subprocess

    import pandas as pd

    from pipeline.report import write_report

    manifest = json.loads((curated / "manifest.json").read_text())
    page = write_report(curated, pd.read_parquet(curated / "metadata.parquet"), manifest["input_shards"], manifest,
                        str(train_dir))
    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if browser:
        subprocess.run([browser, "--no-sandbox", "--disable-gpu", f"--screenshot={OUT / 'report.png'}",
                        "--window-size=1200,1500", Path(page).resolve().as_uri()], capture_output=True, timeout=120)
    print(f"report: {page}")


if __name__ == "__main__":
    main()
