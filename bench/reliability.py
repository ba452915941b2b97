"""No sample lost, measured -> bench/results/reliability.json.

    .venv/bin/python -m bench.reliability

1. The hostile corpus (fixtures/hostile.py: every kind of damage seen in real crawls, generated) through
   `curate run` and through the Prefect flow: samples found, lost (expected but absent or with the
   wrong outcome), crashes (non-zero exits), identical outputs on both paths.
2. SIGKILL at each named point (pipeline/faults.py) of a run that replaces a published output: what a
   reader sees right after the kill (the previous output or the new one, never a mix), and whether
   the rerun is byte-identical (sha256) to an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

OUT = ROOT / "bench" / "results" / "reliability.json"
CONFIG = {"clip": [{"model": "curate-tiny", "batch_size": 16}], "filters": [{"type": "exact_dedup"}]}


def hostile(tmp: Path) -> dict:
    import pandas as pd

    from pipeline.publish import checksums
    from fixtures.hostile import make_corpus, run_cli

    c = make_corpus(tmp / "hostile")
    cfg = tmp / "hostile.json"
    cfg.write_text(json.dumps(CONFIG | {"filters": []}))  # every outcome is then the sample's own
    r = run_cli(c.root / "pool", c.root / "out", cfg)
    crashes = int(r.returncode != 0)
    got: dict = {}
    if r.returncode == 0:
        meta = pd.read_parquet(c.root / "out" / "metadata.parquet")
        for shard, key, reason in zip(meta["shard"], meta["key"], meta["drop_reason"]):
            got.setdefault((shard, key), []).append(reason if isinstance(reason, str) else None)
    lost = sum(max(0, len(v) - len(got.get(k, []))) for k, v in c.expect.items())  # found, then missing
    wrong = sum(sum(a != b for a, b in zip(v, got.get(k, []))) for k, v in c.expect.items())
    m = json.loads((c.root / "out" / "manifest.json").read_text()) if r.returncode == 0 else {}
    flow_identical = None
    try:
        from prefect.testing.utilities import prefect_test_harness

        from flows.curate import curate

        with prefect_test_harness(server_startup_timeout=90):
            curate(pool=str(c.root / "pool"), out=str(c.root / "flow"), config=str(cfg))
        flow_identical = checksums(c.root / "flow") == checksums(c.root / "out")
    except Exception as e:  # noqa: BLE001 - reported, not fatal to the other figures
        crashes += 1
        print(f"flow run failed: {type(e).__name__}: {e}", file=sys.stderr)
    return {"hostile_kinds": len(c.kinds), "hostile_kind_names": c.kinds, "hostile_samples_found": m.get("samples_in"),
            "hostile_samples_expected": c.samples, "hostile_samples_lost": lost, "hostile_outcomes_wrong": wrong, "hostile_crashes": crashes,
            "flow_equals_cli": flow_identical, "broken_shards_named": len(m.get("broken_shards", [])),
            "listed_not_downloaded_accounted": m.get("listed_not_downloaded") == c.not_downloaded,
            "listed_not_downloaded": m.get("listed_not_downloaded")}


def kills(tmp: Path) -> dict:
    from pipeline.publish import checksums
    from pipeline.faults import POINTS
    from fixtures.hostile import run_cli
    from fixtures.shardmaker import make_pool

    make_pool(tmp / "pool", n=200, per_shard=20, plant={3: "corrupt", 8: "dup", 40: "truncated"})
    old, new = tmp / "old.json", tmp / "new.json"
    old.write_text(json.dumps({"filters": []}))
    new.write_text(json.dumps(CONFIG | {"filters": [{"type": "exact_dedup"}, {"type": "clip_score", "fraction": 0.5}]}))
    assert run_cli(tmp / "pool", tmp / "clean", new).returncode == 0
    want = checksums(tmp / "clean")
    rows = []
    for point in POINTS:
        out = tmp / point.replace(":", "_")
        run_cli(tmp / "pool", out, old)
        before = checksums(out)
        killed = run_cli(tmp / "pool", out, new, kill=point).returncode == -9
        seen = checksums(out)
        rerun = run_cli(tmp / "pool", out, new).returncode == 0
        rows.append({"point": point, "killed": killed, "reader_saw": "previous" if seen == before else
                     "new" if seen == want else "mix", "rerun_identical": rerun and checksums(out) == want})
        print(rows[-1], flush=True)
    return {"kill_points": len(rows), "kills": rows,
            "kill_rerun_identical": all(r["rerun_identical"] for r in rows),
            "mixed_output_visible": any(r["reader_saw"] == "mix" for r in rows)}


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        res = {**hostile(Path(d)), **kills(Path(d))}
    res["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "python": platform.python_version()}
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("kills", "hostile_kind_names")}, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
