"""Build the sample pool:

    out/shards/                the noisy pool (img2dataset layout: tar + parquet + _stats.json per shard)
    out/trusted/               a clean split, disjoint from the pool, to bootstrap a scorer
    out/eval/<task>/           Fashion-MNIST test (or synthetic shapes) in CLIP_benchmark's wds layout
    out/ground_truth.parquet   per pool uid: source, label, caption, clean caption, planted noise
    out/pool.json              arguments and counts; a rebuild with the same arguments is skipped

The same arguments give byte-identical tars and parquets (``_stats.json`` holds a duration).
"""
from __future__ import annotations

import io
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
from PIL import Image

from pipeline.pool import collect
from pipeline.pool import sources as src
from pipeline.pool.noise import ADDED, FRACTIONS, counts_for, plant
from pipeline.pool.record import Record
from pipeline.shards import ShardWriter, atomic_write_bytes, sha256

DATA = ("auto", "real", "synthetic")


def resolve_data(data: str) -> str:
    """``real`` or ``synthetic``; ``auto`` falls back to synthetic when Fashion-MNIST is not installed."""
    if data not in DATA:
        raise ValueError(f"data must be one of {DATA}, not {data!r}")
    if data == "synthetic":
        return data
    have = src.available()
    if have["fashion_mnist"]:
        missing = [k for k, ok in have.items() if not ok]
        if missing:
            print(f"note: {', '.join(missing)} not installed (Debian packages "
                  f"{' '.join(src.PACKAGES[k] for k in missing)}); the pool is built without them", file=sys.stderr)
        return "real"
    if data == "real":
        raise FileNotFoundError(f"Fashion-MNIST not found in {src.FMNIST_DIR}: install the Debian package "
                                f"{src.PACKAGES['fashion_mnist']} (scripts/setup.sh does it as root)")
    print("real data not installed (need Debian packages dataset-fashion-mnist, openclipart-png, openclipart-svg, "
          "fonts-noto-color-emoji; run scripts/setup.sh as root); building a SYNTHETIC pool", file=sys.stderr)
    return "synthetic"


def build_pool(out: str | Path, n: int, seed: int = 0, samples_per_shard: int = 1000, n_trusted: int = 10_000,
               data: str = "auto") -> dict:
    """Build (or find up to date) the sample pool in ``out``; returns what ``out/pool.json`` holds."""
    out = Path(out)
    if n < 10 or n_trusted < 0 or not 0 < samples_per_shard <= 10_000:
        raise ValueError(f"need n >= 10, n_trusted >= 0 and 0 < samples_per_shard <= 10000 "
                         f"(got {n}, {n_trusted}, {samples_per_shard})")
    args = {"n": n, "seed": seed, "samples_per_shard": samples_per_shard, "n_trusted": n_trusted,
            "data": resolve_data(data)}
    if (out / "pool.json").is_file() and (out / "shards").is_dir():
        info = json.loads((out / "pool.json").read_text())
        if info.get("args") == args:
            print(f"pool up to date: {out} ({n} samples, seed {seed}, {args['data']} data)")
            return info
    t0 = time.time()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        info = _build(tmp, out, args)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap(tmp, out)
    print(f"sample pool: {info['counts']['pool']} samples + {info['counts']['trusted']} trusted ({args['data']} "
          f"data, {info['counts']['clean']} clean) in {out}, {time.time() - t0:.1f} s")
    return info


def _build(tmp: Path, out: Path, args: dict) -> dict:
    """Write everything into ``tmp``; paths in the returned info point into ``out``."""
    n, seed, per_shard = args["n"], args["seed"], args["samples_per_shard"]
    counts = counts_for(n)
    make = collect.real if args["data"] == "real" else collect.synthetic
    got = make(seed, n - sum(counts[k] for k in ADDED), args["n_trusted"], counts["eval_copy"], tmp / "eval")
    records = plant(got.base, counts, collect.stream(seed, "noise"), seed, got.eval_copies)
    records = [records[int(i)] for i in collect.stream(seed, "order").permutation(len(records))]
    truth = pd.DataFrame(_write(records, tmp / "shards", per_shard))
    trusted = pd.DataFrame(_write(got.trusted, tmp / "trusted", per_shard))
    truth.to_parquet(tmp / "ground_truth.parquet", index=False)
    noise = truth["noise"].value_counts().to_dict()
    info = {"args": args, "data": args["data"], "eval_task": got.eval_task,
            "counts": {"pool": len(truth), "trusted": len(trusted), "shards": -(-len(truth) // per_shard),
                       "clean": int(truth["noise"].isna().sum()), "by_source": _by_source(truth),
                       "trusted_by_source": _by_source(trusted), "holdout": got.holdout, "skipped": got.skipped},
            "noise_counts": {k: int(noise.get(k, 0)) for k in FRACTIONS},
            "paths": {"shards": str(out / "shards"), "trusted": str(out / "trusted"),
                      "ground_truth": str(out / "ground_truth.parquet"), "eval": str(out / "eval" / got.eval_task)}}
    atomic_write_bytes(tmp / "pool.json", json.dumps(info, indent=2).encode())
    return info


def _by_source(df: pd.DataFrame) -> dict[str, int]:
    return {k: int(v) for k, v in sorted(df["source"].value_counts().items())} if len(df) else {}


def _swap(tmp: Path, out: Path) -> None:
    """Put the finished folder in place; the old one is removed only after the rename."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _size(data: bytes) -> tuple[int | None, int | None]:
    """The size the image header claims (None for bytes that are no image)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - corrupt bytes have no size
        return None, None


def _write(records: list[Record], folder: Path, per_shard: int) -> list[dict]:
    """Write samples in order with img2dataset keys; returns their ground-truth rows."""
    rows = []
    with ShardWriter(folder, per_shard) as w:
        for i, r in enumerate(records):
            shard, key = f"{i // per_shard:05d}", f"{i // per_shard:05d}{i % per_shard:04d}"
            width, height = _size(r.image)
            meta = {"uid": r.uid, "url": r.url, "source": r.source, "original_width": r.original_size[0],
                    "original_height": r.original_size[1], "width": width, "height": height,
                    "sha256": sha256(r.image)}
            w.write(key, r.image, r.ext, r.caption, meta)
            rows.append({"uid": r.uid, "key": key, "shard": shard, "source": r.source, "label": r.label,
                         "caption": r.caption, "clean_caption": r.clean_caption, "noise": r.noise,
                         "noise_detail": r.noise_detail, "noise_of": r.noise_of})
    return rows
