"""JPEG decode scale for the model input -> bench/results/decode_scale.json.

    .venv/bin/python -m bench.decode_scale [--pool data/bench_annotate/pool] [--images 2000]

On bench/annotate.py's pool (256 px img2dataset-style JPEGs; made if absent), one process, one
thread: CPU ms per image to decode and prepare the uint8 model input (resize shorter side + centre
crop, shardio/pixels.py) at each model side, with the decode scale the annotate pass uses (any M/8,
libjpeg-turbo through simplejpeg) and with Pillow's draft scales (1/2, 1/4, 1/8, the pass before),
and how far apart the two model inputs are (mean absolute difference in grey levels, 0-255).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "bench" / "results" / "decode_scale.json"
SIDES = (224, 64)  # ViT-B/32's input; the tiny model's / the thumbnails' need


def measure(images: list[bytes], side: int, repeats: int = 3) -> dict:
    from shardio.decode import open_image
    from shardio.pixels import FastValTransform

    f = FastValTransform(side, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    def cpu_ms(reduce: bool) -> float:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.thread_time()
            for b in images:
                f.image(open_image(b, side, reduce=reduce)[0])
            best = min(best, time.thread_time() - t0)
        return best / len(images) * 1e3

    diff = [np.abs(f.image(open_image(b, side, reduce=True)[0]).astype(np.int16)
                   - f.image(open_image(b, side)[0]).astype(np.int16)).mean() for b in images]
    sizes = {}
    for b in images[:200]:
        s = "x".join(map(str, open_image(b, side, reduce=True)[0].size))
        sizes[s] = sizes.get(s, 0) + 1
    eighths, draft = cpu_ms(True), cpu_ms(False)
    return {"side": side, "eighth_scale_ms": round(eighths, 4), "pillow_draft_ms": round(draft, 4),
            "speedup": round(draft / eighths, 3), "decoded_sizes_first_200": sizes,
            "input_mean_abs_diff": round(float(np.mean(diff)), 4),
            "input_mean_abs_diff_p95": round(float(np.percentile(diff, 95)), 4),
            "input_mean_abs_diff_max": round(float(np.max(diff)), 4)}


def main() -> None:
    from app.demo import machine
    from bench.annotate_pool import make_pool
    from pipeline.ingest import read_shard
    from shardio import decode

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default=str(ROOT / "data" / "bench_annotate" / "pool"))
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    if decode.simplejpeg is None:
        raise SystemExit("simplejpeg is not installed: the annotate pass then uses Pillow's draft scales only")
    images: list[bytes] = []
    for shard in make_pool(Path(a.pool), max(a.images, 20_000)):
        images += [s.image for s in read_shard(shard) if s.image is not None]
        if len(images) >= a.images:
            break
    images = images[:a.images]
    res = {"images": len(images), "pool": "bench/annotate.py's 256 px JPEG pool",
           "sides": [measure(images, side) for side in SIDES], "machine": machine()}
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
