"""bench/annotate.py's measurements: the decode limits, a worker's start, CPU time per sample by part of
the per-shard pass, and the drafted pass against a full decode."""
from __future__ import annotations

import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


# --- the limits ------------------------------------------------------------------------------------

def pillow_decode(shard: str) -> int:
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


def simplejpeg_decode(shard: str) -> int:
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
    timed("pillow read + full decode", lambda: pillow_decode(shard))
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
