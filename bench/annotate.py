"""Annotate at the decode limit on real-size images -> bench/results/annotate.json.

    .venv/bin/python bench/annotate.py [--pool data/bench_annotate/pool] [--samples 20000]

The pool: 256 px JPEGs made from the machine's openclipart PNGs (/usr/share/openclipart/png) with
img2dataset's resizer reproduced in Pillow (not img2dataset itself): resize_mode border (longest
side to 256, area filter down / Lanczos up, centred on white), alpha laid on white, JPEG quality 95;
shards of 1,000 in img2dataset's layout (shardio.shards.ShardWriter). PNGs are reused (mirrored,
cropped) to reach ``--samples``. The pool is made once and reused while its settings match.

Measured in one run, all on the same shards: the Pillow full-decode limit (a process pool that only
reads the tars and fully decodes each image, every core), our annotate rate (``run_curation`` with
the curate-tiny scorer, ``workers=os.cpu_count()``, ``manifest["run"]["annotate_seconds"]``), the
end-to-end rate (the whole run with a CLIP score 50% filter), CPU core-ms per sample by part (one
process, one shard), and the largest |score difference| of the drafted pass against a full decode.
Other work may share the machine: ratios are within one run, and the load average is recorded.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "results" / "annotate.json"
CLIPART = Path("/usr/share/openclipart/png")
SIZE, QUALITY, PER_SHARD = 256, 95, 1000
VARIANTS = ("whole", "mirror", "crop")  # how a reused PNG differs from its earlier uses
SCORER = {"model": "curate-tiny", "batch_size": 256}


# --- the pool ---------------------------------------------------------------------------------------

def img2dataset_resize(im, size: int = SIZE):
    """img2dataset's border resize, in Pillow: alpha on white, longest side to ``size`` (area filter
    when shrinking, Lanczos when growing), padded to size x size on white, centred."""
    import numpy as np
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        a = np.asarray(im.convert("RGBA"), np.float32)
        alpha = a[..., 3:]
        im = Image.fromarray(np.rint(np.clip(alpha / 255 * a[..., :3] + 255 - alpha, 0, 255)).astype(np.uint8))
    elif im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    w, h = im.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    im = im.resize((nw, nh), Image.BOX if max(w, h) > size else Image.LANCZOS)
    out = Image.new(im.mode, (size, size), 255 if im.mode == "L" else (255, 255, 255))
    out.paste(im, ((size - nw) // 2, (size - nh) // 2))
    return out


def _variants(path: str, uses: int) -> list[tuple[bytes, int, int]]:
    """``uses`` JPEGs (bytes, original width, height) made from one PNG; [] if it cannot be read."""
    import warnings

    from PIL import Image

    from shardio.decode import MAX_PIXELS

    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused just below
    try:
        src = Image.open(path)
        if src.size[0] * src.size[1] > MAX_PIXELS:
            return []
        src.load()
    except Exception:  # noqa: BLE001 - a broken clipart file is left out of the pool
        return []
    out = []
    for v in VARIANTS[:uses]:
        im = src
        if v == "mirror":
            im = src.transpose(Image.FLIP_LEFT_RIGHT)
        elif v == "crop":
            w, h = src.size
            im = src.crop((w // 8, h // 8, w - w // 8, h - h // 8)) if min(w, h) >= 8 else src
        buf = io.BytesIO()
        img2dataset_resize(im).save(buf, "JPEG", quality=QUALITY)
        out.append((buf.getvalue(), *im.size))
    return out


def _caption(path: Path) -> str:
    words = path.stem.replace("_", " ").replace("-", " ").split()
    words = [w for w in words if not w.isdigit()]
    return " ".join(words + ["-", path.parent.name])


def make_pool(folder: Path, samples: int) -> list[str]:
    """The benchmark pool in ``folder`` (reused when it was made with the same settings)."""
    from shardio.shards import ShardWriter, expand, sha256

    settings = {"samples": samples, "size": SIZE, "quality": QUALITY, "per_shard": PER_SHARD,
                "source": str(CLIPART), "resizer": "img2dataset border, reproduced in Pillow"}
    marker = folder / "pool.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return expand(str(folder))
    if not CLIPART.is_dir():
        raise SystemExit(f"{CLIPART} is missing: the project's setup installs openclipart-png")
    pngs = sorted(CLIPART.rglob("*.png"))
    uses = -(-samples // len(pngs))
    if uses > len(VARIANTS):
        raise SystemExit(f"{samples} samples need more than {len(VARIANTS)} uses of {len(pngs)} PNGs")
    folder.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for old in folder.glob("*"):
        old.unlink()
    made = 0
    with ProcessPoolExecutor(os.cpu_count()) as ex, ShardWriter(folder, PER_SHARD) as w:
        for start in range(0, len(pngs), 256):
            if made == samples:
                break
            chunk = pngs[start:start + 256]
            for png, jpgs in zip(chunk, ex.map(_variants, [str(p) for p in chunk], [uses] * len(chunk))):
                for (data, ow, oh), variant in zip(jpgs, VARIANTS):
                    if made == samples:
                        break
                    key = f"{w.index:05d}{len(w.rows):04d}"
                    w.write(key, data, "jpg", _caption(png),
                            {"url": f"http://127.0.0.1:8000/{png.relative_to(CLIPART)}?v={variant}",
                             "width": SIZE, "height": SIZE, "original_width": ow, "original_height": oh,
                             "sha256": sha256(data)})
                    made += 1
    if made < samples:
        raise SystemExit(f"only {made} samples could be made from {CLIPART}")
    marker.write_text(json.dumps(settings, indent=2))
    return expand(str(folder))


# --- the limits ------------------------------------------------------------------------------------

def _pillow_decode(shard: str) -> int:
    """Read the tar and fully decode every image with Pillow (the decode limit's unit of work)."""
    import io

    from PIL import Image

    from shardio.decode import to_rgb
    from shardio.tar import IMAGE_EXTS, iter_samples

    n = 0
    for s in iter_samples(shard):
        data = next((s.members[e] for e in IMAGE_EXTS if e in s.members), None)
        im = Image.open(io.BytesIO(data))
        im.load()
        to_rgb(im)
        n += 1
    return n


def _simplejpeg_decode(shard: str) -> int:
    """The same with simplejpeg's full decode (libjpeg-turbo without Pillow's per-image work)."""
    import simplejpeg

    from shardio.tar import iter_samples

    return sum(simplejpeg.decode_jpeg(s.members["jpg"], "RGB") is not None for s in iter_samples(shard))


def jpeg_floor(shard: str) -> dict:
    """libjpeg-turbo's decode at each M/8 scale (simplejpeg, one thread, ms per sample, least of 3): even
    at 1/8 the whole entropy-coded stream is read, so no JPEG pass gets below that figure."""
    import simplejpeg

    from pipeline.ingest import read_shard

    jpgs = [s.image for s in read_shard(shard)]
    side = min(simplejpeg.decode_jpeg_header(jpgs[0])[:2])
    out = {"header_only": _least(lambda: [simplejpeg.decode_jpeg_header(b) for b in jpgs]) / len(jpgs) * 1e3}
    for f in (1, 2, 4, 8):
        want = -(-side // f)
        out[f"scale_1/{f}"] = _least(lambda: [simplejpeg.decode_jpeg(b, min_height=want, min_width=want)
                                             for b in jpgs]) / len(jpgs) * 1e3
    return {k: round(v, 4) for k, v in out.items()}


def _least(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


def simplejpeg_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("simplejpeg") is not None


def children_cpu() -> float:
    """CPU seconds of this process's finished children (pool workers are reaped when the pool closes)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def rate(fn, shards: list[str], workers: int) -> tuple[float, float]:
    """(samples per second, CPU ms per sample) of ``fn`` over the shards on ``workers`` processes."""
    c0, t0 = children_cpu(), time.perf_counter()
    with ProcessPoolExecutor(workers) as ex:
        n = sum(ex.map(fn, shards))
    return n / (time.perf_counter() - t0), (children_cpu() - c0) / n * 1e3


def _start(spec_json: str) -> None:
    """What an annotate worker does before its first sample: imports and the scorer (the language model
    only loads when a filter reads caption_lang)."""
    import pipeline.run  # noqa: F401 - the module the job is unpickled from
    from pipeline.clip_stage import get_scorer

    get_scorer(spec_json)


def worker_start(spec_json: str, workers: int = 1, spawned: bool = True) -> dict:
    """The annotate pool's start until every worker holds its scorer, as a run starts it (one fork server
    imports torch and open_clip, then forks the workers), and the same with each worker spawned."""
    import multiprocessing as mp

    from pipeline.executors import ProcessPool

    out = {}
    c0, t0 = children_cpu(), time.perf_counter()
    for _item, _res, err in ProcessPool(workers).map(_start, [spec_json] * workers):
        if err:
            raise RuntimeError(err)
    out.update(seconds=round(time.perf_counter() - t0, 2), cpu_seconds=round(children_cpu() - c0, 2))
    if not spawned:
        return {"workers": workers, **out}
    c0, t0 = children_cpu(), time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
        list(ex.map(_start, [spec_json] * workers))
    out.update(spawned_seconds=round(time.perf_counter() - t0, 2), spawned_cpu_seconds=round(children_cpu() - c0, 2))
    return {"workers": workers, **out}


# --- where the CPU time goes -----------------------------------------------------------------------

def _pass_parts(shard: str, spec_json: str, tmp: Path) -> dict[str, float]:
    """Thread CPU seconds of each part of one shard's pass, of the whole pass, and of a Pillow decode."""
    import numpy as np
    import torch

    import schemas
    from pipeline.annotate import annotate_shard, decode_side
    from pipeline.clip_stage import get_scorer
    from pipeline.ingest import INGEST_COLUMNS, ingest_row, read_shard
    from pipeline.neardup import thumbnail
    from schemas.config import ClipModel
    from shardio.decode import open_image
    from shardio.shards import atomic_write_table

    sc = get_scorer(spec_json)
    side = decode_side([sc])
    t: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.thread_time()
        out = fn()
        t[name] = t.get(name, 0.0) + time.thread_time() - t0
        return out

    samples = timed("tar read", lambda: list(read_shard(shard)))
    dec = timed("decode", lambda: [open_image(s.image, side, reduce=True) for s in samples])
    ims = [im for im, _, _ in dec]
    timed("thumbnail", lambda: np.stack([thumbnail(im) for im in ims]))
    caps = [s.caption for s in samples]
    bs = sc.batch_size
    with torch.no_grad():
        for i in range(0, len(ims), bs):
            px = timed("model preprocessing", lambda: sc._pixels_on_device([sc.prepare(im) for im in ims[i:i + bs]]))
            tok = timed("model preprocessing", lambda: sc._to_device(sc.tokenizer(caps[i:i + bs])))
            timed("towers", lambda: _towers(sc, px, tok))
    # (no language id: the pass runs it only when a filter reads caption_lang, and CLIP score does not)
    rows = timed("ingest columns", lambda: [ingest_row(s, *(size or (None, None)), err, size or (None, None))
                                            for s, (_, size, err) in zip(samples, dec)])
    timed("parquet writing", lambda: atomic_write_table(
        tmp / "x.parquet", schemas.table({c: [r[c] for r in rows] for c in INGEST_COLUMNS}, INGEST_COLUMNS)))
    timed("whole pass", lambda: annotate_shard(shard, tmp / f"run{time.time_ns()}", [ClipModel.model_validate_json(spec_json)]))
    timed("pillow read + full decode", lambda: _pillow_decode(shard))
    return t


def _towers(sc, px, tok):
    """Both towers on one prepared batch, as the scorer runs them (bf16 autocast on a GPU), results on the CPU."""
    with sc._autocast():
        img, txt = sc.model.encode_image(px, normalize=True), sc.model.encode_text(tok, normalize=True)
    return img.float().cpu(), txt.float().cpu()


def breakdown(shard: str, spec_json: str, repeats: int = 3) -> dict:
    """CPU core-ms per sample of each part of the per-shard pass: one process, one thread, one shard,
    thread CPU time, the least of ``repeats`` passes (other work on the machine only adds to it)."""
    import torch

    from pipeline.annotate import decode_side
    from pipeline.clip_stage import get_scorer
    from pipeline.ingest import read_shard

    torch.set_num_threads(1)
    n = sum(1 for _ in read_shard(shard))  # also warms the page cache
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        _pass_parts(shard, spec_json, Path(tmp))  # warm: first-use imports and allocations
        for _ in range(repeats):
            for k, v in _pass_parts(shard, spec_json, Path(tmp)).items():
                best[k] = min(best.get(k, v), v)
    ms = {k: round(v / n * 1e3, 4) for k, v in best.items()}
    whole, limit = ms.pop("whole pass"), ms.pop("pillow read + full decode")
    return {"ms_per_sample": ms, "sum_of_parts_ms": round(sum(ms.values()), 4), "whole_pass_ms": whole,
            "besides_towers_ms": round(whole - ms["towers"], 4), "pillow_read_and_full_decode_ms": limit,
            "decode_side": decode_side([get_scorer(spec_json)]), "samples": n, "repeats": repeats}


# --- equivalence with a full decode ----------------------------------------------------------------

def _full_decode_pass(args: tuple[str, str]) -> dict:
    """One shard scored and thumbnailed from full-size decodes (what the pass did before drafting)."""
    import numpy as np
    import torch

    from pipeline.clip_stage import get_scorer
    from pipeline.ingest import read_shard
    from pipeline.neardup import thumbnail
    from shardio.decode import open_image

    torch.set_num_threads(1)
    shard, spec_json = args
    sc = get_scorer(spec_json)
    dec = [open_image(s.image) for s in read_shard(shard)]
    ok = [i for i, (im, _, _) in enumerate(dec) if im is not None]
    score = np.full(len(dec), np.nan)
    caps = [s.caption for s in read_shard(shard)]
    for j in range(0, len(ok), sc.batch_size):
        idx = ok[j:j + sc.batch_size]
        score[idx] = sc.embed([dec[i][0] for i in idx], [caps[i] for i in idx])[2]
    thumbs = np.stack([thumbnail(im) if im is not None else np.zeros((32, 32), np.uint8) for im, _, _ in dec])
    sizes = [(im.width, im.height) if im is not None else (None, None) for im, _, _ in dec]
    return {"score": score, "thumbs": thumbs, "sizes": sizes, "errors": [e for _, _, e in dec]}


def compare(work: Path, shards: list[str], spec_json: str, workers: int) -> dict:
    """The run's (drafted) scores, thumbnails and ingest columns against a full-decode pass."""
    import numpy as np
    import pyarrow.parquet as pq

    from shardio.shards import shard_id

    diffs, thumb_diffs, scores, same_columns = [], [], [], True
    with ProcessPoolExecutor(workers) as ex:
        fulls = list(ex.map(_full_decode_pass, [(s, spec_json) for s in shards]))
    for shard, full in zip(shards, fulls):
        sid = shard_id(shard)
        ours = pq.read_table(work / "columns" / "clip_score" / f"{sid}.parquet").column("clip_score").to_numpy()
        diffs.append(np.abs(ours - full["score"]))
        scores.append((ours, full["score"]))
        thumb_diffs.append(np.abs(np.load(work / "thumbs" / f"{sid}.npy").astype(int) - full["thumbs"]))
        ing = pq.read_table(work / "columns" / "ingest" / f"{sid}.parquet").to_pydict()
        same_columns &= list(zip(ing["width"], ing["height"])) == full["sizes"]
        same_columns &= ing["ingest_error"] == full["errors"]
    d, td = np.concatenate(diffs), np.concatenate(thumb_diffs)
    ours, theirs = (np.concatenate(x) for x in zip(*scores))
    keep_ours, keep_full = ours >= np.nanmedian(ours), theirs >= np.nanmedian(theirs)  # CLIP score 50%
    flips = int((keep_ours != keep_full).sum())
    return {"score_max_abs_diff": float(np.nanmax(d)), "score_mean_abs_diff": float(np.nanmean(d)),
            "score_std": float(np.nanstd(theirs)), "top50_decisions_changed": flips,
            "thumb_max_abs_diff": int(td.max()), "thumb_mean_abs_diff": round(float(td.mean()), 4),
            "thumb_rms_diff_worst_image": round(float(np.sqrt((td.astype(float) ** 2).mean(axis=(1, 2))).max()), 4),
            "width_height_ingest_error_identical": bool(same_columns)}



# --- the run ---------------------------------------------------------------------------------------

def main() -> None:
    from app.demo import machine
    from pipeline.run import run_curation
    from schemas.config import ClipModel

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default=str(ROOT / "data" / "bench_annotate" / "pool"))
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    shards = make_pool(Path(a.pool), a.samples)
    workers = os.cpu_count() or 1
    spec_json = ClipModel(**SCORER).model_dump_json()
    load = {"before": os.getloadavg()}
    print(f"{len(shards)} shards, {workers} cores, load {load['before']}", flush=True)

    decode1, decode_cpu1 = rate(_pillow_decode, shards, workers)
    simplejpeg_limit = rate(_simplejpeg_decode, shards, workers)[0] if simplejpeg_installed() else None
    print(f"decode limit {decode1:.0f}/s (simplejpeg {simplejpeg_limit}/s)", flush=True)
    config = {"clip": [SCORER], "filters": [{"type": "clip_score", "fraction": 0.5}]}
    with tempfile.TemporaryDirectory() as tmp:
        c0, t0 = children_cpu(), time.perf_counter()
        m = run_curation(shards, Path(tmp) / "out", config, progress=False, workers=workers)
        seconds = time.perf_counter() - t0
        n = m["samples_in"]
        annotate_cpu = (children_cpu() - c0) / n * 1e3  # the workers' CPU, their start included
        load["after_run"] = os.getloadavg()
        annotate = n / m["run"]["annotate_seconds"]
        end_to_end = n / seconds
        print(f"annotate {annotate:.0f}/s, end to end {end_to_end:.0f}/s", flush=True)
        decode2, decode_cpu2 = rate(_pillow_decode, shards, workers)
        same = compare(Path(tmp) / "out", shards, spec_json, workers)
        print(same, flush=True)
    decode, decode_cpu = (decode1 + decode2) / 2, (decode_cpu1 + decode_cpu2) / 2  # bracketing the run
    parts = breakdown(shards[0], spec_json)
    print(parts, flush=True)
    start = worker_start(spec_json, workers)
    floor = jpeg_floor(shards[0]) if simplejpeg_installed() else None
    load["end"] = os.getloadavg()
    besides = parts["besides_towers_ms"]
    res = {
        "decode_limit_per_s": round(decode),
        "annotate_per_s": round(annotate),
        "annotate_vs_decode": round(annotate / decode, 3),
        "end_to_end_per_s": round(end_to_end),
        "end_to_end_vs_decode": round(end_to_end / decode, 3),
        "cpu_ms_per_sample_besides_towers": besides,
        "cpu_ms_per_sample_by_part": parts["ms_per_sample"],
        "cores_to_feed_10k_per_s": round(10_000 * besides / 1e3, 2),
        "score_max_abs_diff_vs_full_decode": round(same["score_max_abs_diff"], 5),
        "samples": n,
        "machine": machine(),
        "load_average": {k: [round(x, 2) for x in v] for k, v in load.items()},
        "targets_met": {
            "annotate_vs_decode >= 1.0": annotate / decode >= 1.0,
            "end_to_end_vs_decode >= 0.8": end_to_end / decode >= 0.8,
            "cpu_ms_per_sample_besides_towers <= 0.3": besides <= 0.3,
        },
        "details": {
            "decode_limit_before_after_run_per_s": [round(decode1), round(decode2)],
            "simplejpeg_full_decode_limit_per_s": simplejpeg_limit and round(simplejpeg_limit),
            "annotate_seconds": m["run"]["annotate_seconds"], "end_to_end_seconds": round(seconds, 2),
            "workers": workers, "worker_start": start,
            # workers start together, each paying the imports (torch, open_clip) and the model load once:
            # the rate and ratio once they run, the start's wall time taken off (derived, not timed apart)
            "annotate_per_s_after_worker_start": round(n / (m["run"]["annotate_seconds"] - start["seconds"])),
            "annotate_vs_decode_after_worker_start": round(n / (m["run"]["annotate_seconds"] - start["seconds"]) / decode, 3),
            # CPU time per sample, less moved by other work on the machine than wall-clock rates
            "cpu_ms_per_sample": {"pillow_read_and_decode": round(decode_cpu, 4),
                                  "annotate_workers_with_start": round(annotate_cpu, 4),
                                  "annotate_one_process_pass": parts["whole_pass_ms"]},
            "cpu_annotate_vs_decode": round(decode_cpu / annotate_cpu, 3),
            "cpu_besides_towers_vs_decode_same_shard": round(parts["pillow_read_and_full_decode_ms"] / besides, 3),
            "one_process_pass": parts,
            "jpeg_decode_ms_by_scale": floor,
            "equivalence_with_full_decode": same,
            "scorer": SCORER, "kept": m["kept"],
            "pool": {"path": os.path.relpath(a.pool, ROOT), "shards": len(shards), "image": f"{SIZE} px JPEG q{QUALITY}",
                     "made_by": "img2dataset's border resizer reproduced in Pillow, from openclipart PNGs"},
        },
    }
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
