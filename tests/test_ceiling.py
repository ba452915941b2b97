"""bench.ceiling: the clean-only uid list, and the line bench/README.md gets from its result."""
import json

import pandas as pd

from bench.ceiling import clean_uids
from bench.readme_results import ceiling
from pipeline.reshard import uid_strings


def test_clean_uids_are_exactly_the_rows_without_planted_noise(tmp_path):
    uids = [f"{i:032x}" for i in (1, 2**70 + 5, 3, 2**127 + 9)]
    pd.DataFrame({"uid": uids, "noise": [None, "junk_caption", None, "eval_copy"]}).to_parquet(
        tmp_path / "ground_truth.parquet")
    n = clean_uids(tmp_path, tmp_path / "out" / "clean.npy")
    assert n == 2
    assert uid_strings(tmp_path / "out" / "clean.npy") == {uids[0], uids[2]}


def _result(grid: str) -> dict:
    return {"grid": grid, "dataset_size": 5540, "seeds": [3, 4, 5], "average_mean": 0.1445, "average_std": 0.0075,
            "validation_mean": 0.1516, "groups": {"ImageNet": 0.7494}, "best_baseline": "clip_score_45",
            "best_baseline_mean": 0.1372, "best_baseline_mean_these_seeds": 0.1372,
            "difference_by_seed": [0.0036, 0.0135, 0.0049], "ceiling_minus_best_baseline": 0.0073,
            "difference_se": 0.0031, "seeds_at_or_above_0_02": 0, "top_strategy": "dfn_30", "top_mean": 0.1467,
            "best": "ours_dfn_d2", "best_mean": 0.1433}


def test_the_ceiling_line_goes_only_under_its_own_grid(tmp_path):
    (tmp_path / "grid_ceiling.json").write_text(json.dumps(_result("grid_beyond.json")))
    line = ceiling(tmp_path, "_beyond")
    assert len(line) == 2 and "**0.1445** ± 0.0075" in line[0] and "**+0.0073** ± 0.0031" in line[0]
    assert "+0.0036, +0.0135, +0.0049; 0 of 3 seeds at +0.02 or more" in line[0]
    assert "5,540 clean samples" in line[0] and "`.venv/bin/python -m bench.ceiling`" in line[0]
    assert ceiling(tmp_path, "_beyond_x3") == []  # no grid_ceiling_x3.json
    assert ceiling(tmp_path, "_web") == []
    (tmp_path / "grid_ceiling_x3.json").write_text(json.dumps(_result("grid_beyond.json")))  # another grid's
    assert ceiling(tmp_path, "_beyond_x3") == []
    (tmp_path / "grid_ceiling_x3.json").write_text(json.dumps(_result("grid_beyond_x3.json")))
    assert "--grid bench/results/grid_beyond_x3.json --tag _x3" in ceiling(tmp_path, "_beyond_x3")[0]
