"""Walking-skeleton figures: the demo loop, timed, written to bench/results/skeleton.json.

    .venv/bin/python -m bench.skeleton            # same settings as `curate demo`
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.demo import run_demo

OUT = Path(__file__).parent / "results" / "skeleton.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="runs/bench-skeleton")
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--samples-seen", type=int, default=60_000)
    a = ap.parse_args()
    s = run_demo(a.root, samples=a.samples, samples_seen=a.samples_seen)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(s, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
