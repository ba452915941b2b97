"""README command one, shrunk: the demo runs end to end on a small web pool and ends in a verdict."""
import json

import pytest

from app.demo import committed_grid, run_demo, verdict_line


def test_committed_grid_is_read_when_present(tmp_path):
    assert committed_grid(tmp_path / "absent.json") == {}
    g = {"best_strategy": "ours_dfn_30", "seeds": [0, 1, 2], "samples_seen": 20000, "batch_size": 64,
         "strategies": {"no_filter": {"average_mean": 0.2, "average_std": 0.01}}}
    (tmp_path / "g.json").write_text(json.dumps(g))
    got = committed_grid(tmp_path / "g.json")
    assert got["best"] == "ours_dfn_30" and got["strategies"]["no_filter"]["average_std"] == 0.01
    assert got["batch_size"] == 64  # the demo trains at the grid's batch


def test_the_verdict_weighs_the_difference_against_the_seed_spread():
    def s(best, nf):
        return {"strategy": "x", "committed_grid_seeds": [0, 1, 2],
                "committed_grid": {"best": {"average_mean": best, "average_std": 0.01},
                                   "no_filter": {"average_mean": nf, "average_std": 0.01}}}
    assert verdict_line(s(0.20, 0.15)).startswith("curation helps")
    assert verdict_line(s(0.16, 0.15)).startswith("curation does not help by more than")
    assert verdict_line(s(0.14, 0.15)).startswith("curation hurts")
    assert verdict_line({"strategy": "x"}).startswith("no committed grid")


@pytest.mark.slow
def test_demo_end_to_end_prints_a_verdict(tmp_path, capsys):
    s = run_demo(tmp_path / "demo", samples=400, trusted=200, samples_seen=512, scorer_samples_seen=512,
                 strategy="ours_dfn_30", pool_dir=tmp_path / "pool")
    out = capsys.readouterr().out
    assert "verdict: " in out and "this run (seed 0)" in out and "share dropped per planted noise type" in out
    nf, best = s["runs"]["no_filter"], s["runs"]["ours_dfn_30"]
    assert s["pool_preset"] == "web" and s["pool_clean_share"] <= 0.30
    assert best["kept"] < nf["kept"] <= s["samples_in"]
    assert best["dropped_by_noise"]["corrupt_image"]["dropped_share"] == 1.0
    assert set(nf["groups"]) >= {"ImageNet", "ImageNet dist. shifts"}
