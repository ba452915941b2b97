"""The grid's plan: every strategy and candidate is a valid config, the published methods aim NormSim at
the suite's train splits only, and a carried run log is read back for the same pool only."""
import json
from pathlib import Path

from app.strategies import candidates, strategies
from bench.grid import done_runs
from pipeline.config import load_config


def suite(tmp_path: Path) -> Path:
    for task, split in [("digits", "train"), ("digits", "test"), ("flags", "test")]:
        (tmp_path / "eval" / task / split).mkdir(parents=True)
        (tmp_path / "eval" / task / split / "nshards.txt").write_text("1\n")
    return tmp_path


def test_every_strategy_and_candidate_validates(tmp_path):
    pool = suite(tmp_path)
    plan = {**strategies(pool, str(tmp_path / "web"), str(tmp_path / "dfn")),
            **candidates(pool, str(tmp_path / "web"), str(tmp_path / "dfn"))}
    for name, cfg in plan.items():
        load_config(cfg)  # raises on a bad setting
    assert {"negclip_30", "normsim_inf_30", "negclip_normsim", "dfn_normsim", "mix_negclip_normsim"} <= set(plan)
    targets = {t for cfg in plan.values() for f in cfg["filters"] if f["type"] == "norm_sim" for t in f["targets"]}
    assert targets == {str(pool / "eval" / "digits")}  # the task with a train split; never a test-only one


def test_without_train_splits_no_norm_sim_candidate(tmp_path):
    (tmp_path / "eval" / "flags" / "test").mkdir(parents=True)
    names = set(candidates(tmp_path, "web", "dfn"))
    assert "negclip_30" in names and not names & {"normsim_inf_30", "negclip_normsim", "dfn_normsim"}


def test_carried_runs_are_read_for_the_same_pool_only(tmp_path):
    own, carry = tmp_path / "runs.jsonl", tmp_path / "carry.jsonl"
    row = {"strategy": "no_filter", "seed": 3, "samples_seen": 100, "average": 0.5}
    own.write_text(json.dumps({**row, "seed": 4}) + "\n")  # an older log without pool ids: its own folder's
    carry.write_text("\n".join(json.dumps({**row, "seed": s, "pool_id": p}) for s, p in [(3, "a"), (5, "b")]) + "\n")
    assert set(done_runs(own, carry, pool="a")) == {("no_filter", 4, 100), ("no_filter", 3, 100)}
    assert set(done_runs(tmp_path / "missing.jsonl", carry, pool="b")) == {("no_filter", 5, 100)}
