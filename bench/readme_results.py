"""Rewrite bench/README.md's "Results" section from bench/results/grid_beyond*.*, grid_web*.*, grid.*, stages.json.

    .venv/bin/python -m bench.readme_results      (bench/grid.py and bench/stages.py call it too)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def section() -> str:
    res = ROOT / "bench" / "results"
    parts = []
    for tag in ("_beyond", "_beyond_x3", "_web", "_web_x3"):
        if (res / f"grid{tag}.json").is_file():
            if tag == "_web" and (res / "grid_beyond.json").is_file():
                parts += ["### The earlier grid: the 10-task suite, seeds 0-2", ""]
            parts += web_grid(res, tag)
    if (res / "grid.json").is_file():
        g = json.loads((res / "grid.json").read_text())
        parts += ["### The older grid, on the ~71% clean pool (2,000-image shifts; before the web preset)", "",
                  (res / "grid.md").read_text().replace("# Experiment grid", "#### Experiment grid"),
                  "![average per strategy](results/grid.svg)", "",
                  f"`.venv/bin/python -m bench.grid` ({g['machine']}). Scorers: `clip_score_*`, `laion2b`, "
                  "image-based and D² use a CLIP trained on the raw pool (no filter, seed 0); `dfn_30` uses the "
                  "filtering network trained on the trusted split. `best` is the one of our " + str(len(g.get("selection", {}))) + " declared "
                  "combinations with the highest validation-suite average (mean of seeds "
                  + ", ".join(str(x) for x in g.get("select_seeds", [0])) + "): "
                  + ", ".join(f"{k} {v['validation_average']:.4f}" for k, v in g.get("selection", {}).items()
                              if v["validation_average"] is not None)
                  + ". Settings are in `grid.json` (`configs`)."]
    if (res / "stages.json").is_file():
        s = json.loads((res / "stages.json").read_text())
        lim = s["limits"]
        parts += ["", "### Stages against the machine's limits", "",
                  f"`.venv/bin/python -m bench.stages` ({s['machine']}); limits measured in the same run on "
                  f"the same shards: tar read {lim['tar_read_samples_per_s']:,} samples/s, Pillow decode "
                  f"{lim['pillow_decode_samples_per_s']:,} samples/s on all cores "
                  f"({lim['pillow_decode_one_core_samples_per_s']:,} on one).", "",
                  "| stage | samples/s | limit | ratio |", "|---|---|---|---|"]
        for name, v in s["stages"].items():
            parts.append(f"| {name} | {v['samples_per_s']:,} | {v.get('limit', '')} | {v.get('ratio', '')} |")
        e = s["end_to_end"]["by_size"]
        parts += ["", f"End to end (fresh caches): " + ", ".join(f"{k} {v['samples']:,} samples in {v['seconds']} s"
                                                                  for k, v in e.items())
                  + f" (exponent {s['end_to_end']['exponent']}); **{s['end_to_end_vs_decode_ratio']:.0%} of the "
                  f"Pillow decode limit**; peak RSS {s['peak_rss_mb']:,} MB."]
        if "end_to_end_fast" in s:
            f = s["end_to_end_fast"]
            parts.append(f"With one process per core and bf16 scoring: {f['samples_per_s']:,} samples/s, "
                         f"{f['vs_decode_ratio']:.0%} of the decode limit.")
        if "breakdown" in s:
            b = s["breakdown"]
            parts += ["", f"Where a sample's time goes, one core, milliseconds ({b['samples']:,} samples of one shard):", "",
                      "| " + " | ".join(b["ms_per_sample_one_core"]) + " | total |",
                      "|" + "---|" * (len(b["ms_per_sample_one_core"]) + 1),
                      "| " + " | ".join(f"{v:.3f}" for v in b["ms_per_sample_one_core"].values())
                      + f" | {b['total_ms']:.3f} |", "",
                      f"The decode limit's own work (tar read + decode) is {b.get('limit_ms', 0):.3f} ms a sample, so "
                      f"a pass doing all of the above reaches at most **{b['best_possible_ratio_to_decode']:.0%}** of "
                      "it on this CPU, however many cores: these small images decode fast next to the scorer's "
                      "two towers, which alone cost several decodes. On a GPU the towers leave the CPU (not "
                      "measured here: no GPU was lent)."]
    return "\n".join(parts) + "\n"


def web_grid(res: Path, tag: str) -> list[str]:
    g = json.loads((res / f"grid{tag}.json").read_text())
    sel = ", ".join(f"{k} {v['validation_average']:.4f}" for k, v in g.get("selection", {}).items()
                    if v.get("validation_average") is not None)
    return [(res / f"grid{tag}.md").read_text().replace("# Experiment grid", "### Experiment grid"),
            f"![average per strategy](results/grid{tag}.svg)", "",
            f"`.venv/bin/python -m bench.grid{_args(g, tag)}` "
            f"({g['machine']}; training + evaluation {g.get('train_and_eval_seconds_total', '?')} s over its runs, "
            f"{g['wall_seconds_this_call']} s for the last call; training batch "
            f"{g.get('batch_size', 256)}). Scorers: `clip_score_*`, "
            "`laion2b`, image-based and D² use a CLIP trained on the raw pool (no filter, first seed); `dfn_30` "
            "and our combinations use the filtering network trained on the trusted split. `best` = "
            f"`{g.get('best')}`, the highest validation-suite average of our declared combinations ({sel}). "
            f"Settings are in `grid{tag}.json` (`configs`); what each kept, per planted noise type, is in its "
            "`kept_share_by_noise`.", ""] + ceiling(res, tag)


def ceiling(res: Path, tag: str) -> list[str]:
    """The clean-only run beside a grid (bench/ceiling.py), when one was measured for it."""
    path = res / ("grid_ceiling" + tag.removeprefix("_beyond") + ".json")
    if not tag.startswith("_beyond") or not path.is_file():
        return []
    c = json.loads(path.read_text())
    if c["grid"] != f"grid{tag}.json":
        return []
    cmd = "" if tag == "_beyond" else f" --grid bench/results/grid{tag}.json --tag {tag.removeprefix('_beyond')}"
    seeds = ", ".join(str(x) for x in c["seeds"])
    return [f"**A perfect noise filter on this pool** (`.venv/bin/python -m bench.ceiling{cmd}`, `{path.name}`): "
            f"`curate-tiny` trained on exactly the pool's {c['dataset_size']:,} clean samples (its ground truth: "
            f"what a filter that never errs on the planted noise keeps) at the same budget, seeds {seeds}, scores "
            f"**{c['average_mean']:.4f}** ± {c['average_std']:.4f} (validation {c['validation_mean']:.4f}; ImageNet "
            f"analogue {c['groups']['ImageNet']:.4f}). Against the best DataComp baseline ({c['best_baseline']}, "
            f"{c['best_baseline_mean_these_seeds']:.4f} on the same seeds), seed by seed: "
            f"**{c['ceiling_minus_best_baseline']:+.4f}** ± {c['difference_se']:.4f} (standard error; per seed "
            + ", ".join(f"{d:+.4f}" for d in c["difference_by_seed"])
            + f"; {c['seeds_at_or_above_0_02']} of {len(c['seeds'])} seeds at +0.02 or more). The grid's top test "
            f"average (its seeds): {c['top_strategy']} {c['top_mean']:.4f}; `best` ({c['best']}) {c['best_mean']:.4f}.",
            ""]


def _args(g: dict, tag: str) -> str:
    """The grid command's arguments that made ``grid<tag>.json``."""
    out = ""
    if g.get("seeds") and g["seeds"] != [0, 1, 2]:
        out += " --seeds " + " ".join(str(x) for x in g["seeds"])
    base = tag.removesuffix(f"_x{g.get('budget')}") if g.get("budget", 1) != 1 else tag
    if base != "_web":
        out += f" --tag {base}"
    if g.get("budget", 1) != 1:
        out += f" --budget {g['budget']} --budget-strategies " + " ".join(g.get("strategies", {}))
    return out


def _replace(path: Path, start: str, end: str, body: str) -> None:
    text = path.read_text()
    if start not in text:
        raise SystemExit(f"{path} has no {start} marker")
    path.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{body}{end}", text,
                           flags=re.S))


def update_readme() -> None:
    """bench/README.md's results section (the top README quotes the verdict and links there)."""
    _replace(ROOT / "bench" / "README.md", START, END, section())


if __name__ == "__main__":
    update_readme()
