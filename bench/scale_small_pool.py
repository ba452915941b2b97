"""bench/scale_small.py's pool: DataComp small's size (12.8M rows) in its ``metadata/`` layout, writing
only what the steps read, vectorised (one pass, no per-row Python):

- ``<hash>.parquet``: uid, url, text, original_width/height, clip_b32/l14_similarity_score, sha256;
- ``<hash>.npz``: ``l14_img`` and ``l14_txt``, float16, uncompressed (memory-mapped in place).

B/32 embeddings are omitted (no step reads them: the B/32 baseline reads only its score column, which is
written, drawn around the L/14 score). The L/14 text embeddings are written as the runs read an npz's
image and text members together and negCLIPLoss needs them. Rows as bench/scale_pool.py draws them: a
skewed mix of 1,000 centres, 2% exact and 3% near copies of an earlier row of the shard."""
from __future__ import annotations

import numpy as np

from bench.scale_pool import CENTRES, _centres, _shard_name, _unit, caption_bank, copy_rows

POOL_VERSION = 2
DIM = 768
_HEX = np.array([f"{i:02x}" for i in range(256)], dtype="S2")


def hex_column(rng: np.random.Generator, n: int, nbytes: int) -> np.ndarray:
    """``n`` random hex strings of ``nbytes`` bytes, as a numpy ``U`` array."""
    b = np.frombuffer(rng.bytes(n * nbytes), np.uint8).reshape(n, nbytes)
    return _HEX[b].view(f"S{2 * nbytes}").ravel().astype(f"U{2 * nbytes}")


def _embeddings(rng, c, near, src_near, exact, src_exact, seed):
    """float16 unit image and text embeddings: image = centre + noise, text = a random share of the
    image plus a text centre plus noise (the image noise of other rows, reversed: half the draws)."""
    rows = len(c)
    cimg, ctxt = _centres(seed, DIM)
    noise = (0.6 / np.sqrt(DIM)) * rng.standard_normal((rows, DIM), dtype=np.float32)
    img = _unit(cimg[c] + noise)
    align = rng.uniform(0.0, 0.8, rows).astype(np.float32)[:, None]
    txt = _unit(align * img + ctxt[c] + np.roll(noise, 1, axis=0)[:, ::-1])
    for x in (img, txt):
        jitter = (0.15 / np.sqrt(DIM)) * rng.standard_normal((len(near), DIM), dtype=np.float32)
        x[near] = _unit(x[src_near] + jitter)
    img16, txt16 = img.astype(np.float16), txt.astype(np.float16)
    for x in (img16, txt16):
        x[exact] = x[src_exact]
    return img16, txt16


def shard_columns(i: int, rows: int, seed: int) -> tuple[dict, dict]:
    """(parquet columns, npz members) of shard ``i``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng([seed, 2, i])
    weights = 1.0 / np.sqrt(np.arange(1, CENTRES + 1))
    c = rng.choice(CENTRES, size=rows, p=weights / weights.sum())
    bank = caption_bank(seed)
    text_idx = rng.integers(len(bank), size=rows)
    w = np.clip(np.exp(rng.normal(np.log(420), 0.6, rows)), 16, 6000)
    aspect = np.exp(rng.normal(0, 0.45, rows))
    width, height = w.astype(np.int64), np.clip(w / aspect, 16, 8000).astype(np.int64)
    uid, sha = hex_column(rng, rows, 16), hex_column(rng, rows, 32)
    exact, src_exact, near, src_near = copy_rows(rng, rows)
    img, txt = _embeddings(rng, c, near, src_near, exact, src_exact, seed)
    s = np.einsum("ij,ij->i", img.astype(np.float32), txt.astype(np.float32)).astype(np.float64)
    s += rng.normal(0, 1e-7, rows)
    b32 = 0.8 * s + rng.normal(0, 0.03, rows)
    for col in (text_idx, width, height, s, b32, sha):
        col[exact] = col[src_exact]
    uid_a = pa.array(uid)
    hosts = pa.array([f"https://img{k}.example.com/" for k in range(97)])
    url = pc.binary_join_element_wise(pc.take(hosts, pa.array(np.arange(rows) % 97)),
                                      pc.utf8_slice_codeunits(uid_a, 0, 12), ".jpg", "")
    table = {"uid": uid_a, "url": url, "text": pc.take(pa.array(list(bank), pa.string()), pa.array(text_idx)),
             "original_width": width, "original_height": height,
             "clip_b32_similarity_score": b32, "clip_l14_similarity_score": s, "sha256": pa.array(sha)}
    return table, {"l14_img": img, "l14_txt": txt}


def write_small_shard(folder: str, i: int, rows: int, seed: int, npz: bool = True) -> str:
    """One shard's ``<hash>.parquet`` and ``<hash>.npz`` (unless not ``npz``), each written to a
    temporary name first."""
    import os
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    cols, emb = shard_columns(i, rows, seed)
    name = _shard_name(seed, i)
    base = Path(folder) / name
    pq.write_table(pa.table(cols), f"{base}.parquet.tmp")
    if npz:
        np.savez(f"{base}.tmp.npz", **emb)
        os.replace(f"{base}.tmp.npz", f"{base}.npz")
    os.replace(f"{base}.parquet.tmp", f"{base}.parquet")
    return name


def _write_or_keep(folder: str, i: int, rows: int, seed: int, npz: bool = True) -> tuple[str, float]:
    """A shard written, or kept when both its files are there already (a resumed pool); its seconds."""
    import time
    from pathlib import Path

    t0 = time.time()
    name = _shard_name(seed, i)
    if not all((Path(folder) / f"{name}{ext}").is_file() for ext in (".parquet", ".npz")[:2 if npz else 1]):
        write_small_shard(folder, i, rows, seed, npz)
    return name, time.time() - t0


def make_small_pool(folder, n: int, per_shard: int, seed: int, procs: int = 1, log=None, npz: bool = True) -> dict:
    """The pool in ``folder``: reused when ``pool.json`` names the same settings, resumed (finished
    shards kept) when a run was stopped part way; ``write_seconds`` counts this call's writing only.
    Without ``npz`` only the parquets are written (same rows and scores: the steps that read no
    embedding run on it in 1/20 of the disk)."""
    import json
    import time
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path

    from bench.scale_pool import shard_plan

    folder = Path(folder)
    settings = {"version": POOL_VERSION, "n": n, "per_shard": per_shard, "seed": seed, "centres": CENTRES,
                "members": ["l14_img", "l14_txt"] if npz else []}
    marker = folder / "pool.json"
    if marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
        return {**json.loads(marker.read_text()), "reused": True}
    folder.mkdir(parents=True, exist_ok=True)
    plan = shard_plan(n, per_shard)
    t0, names, done = time.time(), [], 0
    args = ([str(folder)] * len(plan), range(len(plan)), plan, [seed] * len(plan), [npz] * len(plan))
    ex = ProcessPoolExecutor(procs) if procs > 1 else None
    for name, _ in (ex.map(_write_or_keep, *args) if ex else map(_write_or_keep, *args)):
        names.append(name)
        done += plan[len(names) - 1]
        if log and len(names) % 50 == 0:
            log(f"{done:,} rows, {time.time() - t0:.0f} s")
    if ex:
        ex.shutdown()
    seconds = round(time.time() - t0, 1)
    nbytes = sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".parquet", ".npz"))
    info = {"settings": settings, "shards": names, "rows": plan, "write_seconds": seconds, "bytes": nbytes,
            "procs": procs}
    marker.write_text(json.dumps(info, indent=1))
    return {**info, "reused": False}
