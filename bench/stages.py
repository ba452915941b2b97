"""Each curation stage's throughput next to the raw limit measured in the same run -> bench/results/stages.json.

    .venv/bin/python -m bench.stages [--pool data/sample_pool/shards] [--config configs/laion-subset.yaml]

Limits, on the same shards: raw tar read (bytes only, every core), Pillow decode (open + load +
RGB, every core: the machine's image-decode limit), raw faiss on the same embeddings (k-means).
Ours: ingest (read + decode + columns + language id + thumbnails), the CLIP stage (embed + score),
decide, export, and the whole run end to end (fresh caches), at 1x / 2x / 4x of the shards.
Peak RSS of this process and its children. ``breakdown``: milliseconds per sample of each piece of
the pass on one core (tar read, decode, ingest columns, thumbnail, model preprocess, tokenize, image
and text towers) and the best end-to-end / decode ratio any pass doing all of them could reach.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "bench" / "results" / "stages.json"


def _read(shard: str) -> int:
    from shardio.shards import iter_tar_samples

    return sum(1 for _ in iter_tar_samples(shard))


def _decode(shard: str) -> int:
    from shardio.decode import decode_image
    from shardio.shards import iter_tar_samples
    from shardio.tar import IMAGE_EXTS

    n = 0
    for s in iter_tar_samples(shard):
        decode_image(next((s[e] for e in IMAGE_EXTS if e in s), None))
        n += 1
    return n


def parallel_rate(fn, shards: list[str], workers: int) -> float:
    t0 = time.time()
    with ProcessPoolExecutor(workers) as ex:
        n = sum(ex.map(fn, shards))
    return n / (time.time() - t0)


def breakdown(shard: str, spec) -> dict:
    """Milliseconds per sample of each piece of the per-shard pass, one core, on one shard: where
    the time goes, and the best ratio to the decode limit (tar read + decode, ``limit_ms``) that a
    pass doing all of it can reach on any number of cores."""
    import torch

    from pipeline.clip_stage import ClipScorer
    from shardio.decode import decode_image
    from pipeline.ingest import ingest_row, read_shard
    from pipeline.neardup import thumbnail

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        t[name] = time.perf_counter() - t0
        return out

    list(read_shard(shard))  # warm: first-use imports, page cache
    samples = timed("tar read + parse", lambda: list(read_shard(shard)))
    dec = timed("decode", lambda: [decode_image(s.image) if not s.error else (None, s.error) for s in samples])
    timed("ingest columns (language id, sha256, ...)", lambda: [
        ingest_row(s, im.width if im else None, im.height if im else None, err) for s, (im, err) in zip(samples, dec)])
    timed("thumbnail", lambda: [thumbnail(im) for im, _ in dec if im is not None])
    if spec is not None:
        scorer = ClipScorer(spec)
        ims = [im for im, _ in dec if im is not None]
        caps = [s.caption for s, (im, _) in zip(samples, dec) if im is not None]
        px = timed("model preprocess", lambda: scorer.pixels(ims))
        tok = timed("tokenize", lambda: scorer.tokenizer(caps))
        with torch.no_grad():
            timed("image tower", lambda: scorer.model.encode_image(px, normalize=True))
            timed("text tower", lambda: scorer.model.encode_text(tok, normalize=True))
    torch.set_num_threads(threads)
    n = len(samples)
    t0 = time.perf_counter()
    _decode(shard)  # what the decode limit does per sample: tar read + decode
    limit = (time.perf_counter() - t0) / n * 1e3
    ms = {k: round(v / n * 1e3, 4) for k, v in t.items()}
    total = sum(ms.values())
    return {"ms_per_sample_one_core": ms, "total_ms": round(total, 4), "limit_ms": round(limit, 4),
            "best_possible_ratio_to_decode": round(limit / total, 3), "samples": n}


def rss_mb() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(me, kids) / 1024, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default="data/sample_pool/shards")
    ap.add_argument("--config", default="configs/laion-subset.yaml")
    a = ap.parse_args()
    from pipeline.annotate import annotate_shard
    from pipeline.decide import Arrays, decide, load_columns
    from app.demo import machine
    from pipeline.export import export
    from pipeline.run import run_curation
    from shardio.shards import expand, shard_id
    from pipeline.config import load_config

    shards = expand(a.pool)
    n_all = sum(_read(s) for s in shards[:1]) * len(shards)
    workers = os.cpu_count() or 1
    res: dict = {"stages": {}, "cores": workers}
    read = parallel_rate(_read, shards, workers)
    dec = parallel_rate(_decode, shards, workers)
    dec1 = parallel_rate(_decode, shards, 1)
    res["limits"] = {"tar_read_samples_per_s": round(read), "pillow_decode_samples_per_s": round(dec),
                     "pillow_decode_one_core_samples_per_s": round(dec1)}
    print(res["limits"], flush=True)
    cfg = load_config(a.config)
    res["breakdown"] = breakdown(shards[0], cfg.clip[0] if cfg.clip else None)
    print(res["breakdown"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        n = sum(annotate_shard(s, tmp / "ingest", [])["rows"] for s in shards)
        t_ingest = time.time() - t0
        res["stages"]["ingest"] = {"samples_per_s": round(n / t_ingest), "limit_samples_per_s": round(dec),
                                   "ratio": round(n / t_ingest / dec, 3), "limit": "Pillow decode, all cores"}
        t0 = time.time()
        for s in shards:
            annotate_shard(s, tmp / "ingest", cfg.clip)  # ingest cached: the CLIP stage alone (it decodes again)
        t_clip = time.time() - t0
        res["stages"]["clip"] = {"samples_per_s": round(n / t_clip), "limit_samples_per_s": round(dec),
                                 "ratio": round(n / t_clip / dec, 3), "limit": "Pillow decode, all cores",
                                 "scorer": cfg.clip[0].model if cfg.clip else None}
        sids = [shard_id(s) for s in shards]
        t0 = time.time()
        df = load_columns(tmp / "ingest", sids, cfg)
        df, _, _ = decide(df, cfg, Arrays(tmp / "ingest", sids))
        t_decide = time.time() - t0
        res["stages"]["decide"] = {"samples_per_s": round(n / t_decide), "filters": [f.type for f in cfg.filters]}
        t0 = time.time()
        export(df, shards, tmp / "export", cfg.export.samples_per_shard, {})
        t_export = time.time() - t0
        res["stages"]["export"] = {"samples_per_s": round(n / t_export), "limit_samples_per_s": round(read),
                                   "ratio": round(n / t_export / read, 3), "limit": "raw tar read, all cores"}
        print(res["stages"], flush=True)
        sizes = {}
        for label, k in (("1x", len(shards) // 4), ("2x", len(shards) // 2), ("4x", len(shards))):
            t0 = time.time()
            m = run_curation(shards[:k], tmp / f"e2e{label}", cfg, progress=False)
            sizes[label] = {"samples": m["samples_in"], "seconds": round(time.time() - t0, 2),
                            "samples_per_s": round(m["samples_in"] / (time.time() - t0))}
            print(label, sizes[label], flush=True)
        import numpy as np

        x = [v["samples"] for v in sizes.values()]
        y = [v["seconds"] for v in sizes.values()]
        res["end_to_end"] = {"by_size": sizes, "exponent": round(float(np.polyfit(np.log(x), np.log(y), 1)[0]), 3)}
        # the same run with every lever: one process per core and bf16 autocast for the scorer
        fast = cfg.model_copy(update={"clip": [c.model_copy(update={"precision": "bf16"}) for c in cfg.clip]})
        t0 = time.time()
        m = run_curation(shards, tmp / "e2e-fast", fast, progress=False, workers=workers)
        res["end_to_end_fast"] = {"workers": workers, "precision": "bf16",
                                  "samples_per_s": round(m["samples_in"] / (time.time() - t0)),
                                  "vs_decode_ratio": round(m["samples_in"] / (time.time() - t0) / dec, 3)}
        print("fast", res["end_to_end_fast"], flush=True)
        e2e = sizes["4x"]["samples_per_s"]
        res["end_to_end_samples_per_s"] = e2e
        res["end_to_end_vs_decode_ratio"] = round(e2e / dec, 3)
    res.update(peak_rss_mb=rss_mb(), pool=a.pool, config=a.config, samples=n_all, machine=machine())
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    from bench.readme_results import update_readme

    update_readme()
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
