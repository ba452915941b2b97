"""Build the sample pool: noisy web-like shards, a disjoint trusted split, an eval task, ground truth.

    out/shards/       the pool (img2dataset layout: tar + parquet + _stats.json per shard)
    out/trusted/      clean, disjoint samples (to bootstrap a scorer, the DFN recipe)
    out/eval/<task>/  the built-in suite (schemas/tasks.py BUILTIN; the synthetic task without real data) in
                      CLIP_benchmark's wds layout; the EXTRA tasks also hold a train split
    out/eval/suite.json  which tasks were written (sizes per split) and which were skipped, and why
    out/val/<task>/   the validation suite (items in no pool, trusted split or test task)
    out/ground_truth.parquet   per pool uid: source, label, caption, clean caption, planted noise
    out/pool.json     arguments, counts; a rebuild with the same arguments is skipped
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from app.sample_pool import sources as src
from shardio.evaltask import write_retrieval_task, write_task
from app.sample_pool.noise import ADDED, POPULAR, counts_for, plant
from app.sample_pool.suite import FMNIST_TEMPLATES as TEMPLATES
from app.sample_pool.suite import write_builtin_suite
from shardio.shards import ShardWriter, atomic_write_bytes

SHARE = {"openclipart": 0.12, "emoji": 0.08}  # the rest is Fashion-MNIST
TRUSTED_SHARE = {"openclipart": 0.15, "emoji": 0.025}  # of the trusted split; the rest is Fashion-MNIST
VAL = {"fashion_mnist": 2000, "openclipart": 300, "emoji": 150}  # validation items per source
VERSION = 8  # bump when the builder's output changes, so existing pools are rebuilt


def resolve_data(data: str) -> str:
    status = src.real_data_status()
    if data not in ("auto", "real", "synthetic"):
        raise ValueError(f"data must be auto, real or synthetic, not {data!r}")
    if data == "synthetic":
        return data
    if status["fashion_mnist"]:
        missing = [k for k, v in status.items() if not v]
        if missing:
            print(f"note: {', '.join(missing)} not installed; the pool is built without them", file=sys.stderr)
        return "real"
    if data == "real":
        raise FileNotFoundError(f"Fashion-MNIST not found in {src.FMNIST_DIR}: install the Debian packages "
                                f"{src.PACKAGES} (scripts/setup.sh does it as root)")
    print(f"real data not installed (Debian packages {src.PACKAGES}; run scripts/setup.sh as root): "
          "building a SYNTHETIC pool of drawn shapes", file=sys.stderr)
    return "synthetic"


def build_pool(out: str | Path, n: int, seed: int = 0, samples_per_shard: int = 1000, n_trusted: int = 10_000,
               data: str = "auto", preset: str = "clean") -> dict:
    """``preset``: the noise mix (app/sample_pool/noise.py PRESETS): ``web`` (at most 30% clean, the
    demo's and the grid's) or ``clean`` (~71% clean)."""
    out = Path(out)
    if n < 10 or n_trusted < 0 or not 0 < samples_per_shard <= 10_000:
        raise ValueError("need n >= 10, n_trusted >= 0 and 0 < samples_per_shard <= 10000")
    counts = counts_for(n, preset)  # checks the preset's name
    args = {"n": n, "seed": seed, "samples_per_shard": samples_per_shard, "n_trusted": n_trusted,
            "data": resolve_data(data), "preset": preset, "version": VERSION}
    if (out / "pool.json").is_file():
        info = json.loads((out / "pool.json").read_text())
        if info.get("args") == args:
            print(f"pool up to date: {out} ({n} samples, seed {seed})")
            return info
    t0 = time.time()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    n_base = n - sum(counts[k] for k in ADDED)
    make = _real if args["data"] == "real" else _synthetic
    base, trusted, eval_copies, task, skipped = make(n_base, n_trusted, counts["eval_copy"], rng, tmp / "eval")
    records = plant(base, counts, rng, eval_copies, POPULAR[preset])
    for r in records + trusted:
        r["uid"] = _uid(seed, r)
    for r in records:  # duplicates point at their original's uid
        if isinstance(r.get("noise_of"), int):
            r["noise_of"] = records[r["noise_of"]]["uid"]
    records = [records[int(i)] for i in rng.permutation(len(records))]
    truth = _write(records, tmp / "shards", samples_per_shard, seed)
    _write(trusted, tmp / "trusted", samples_per_shard, seed)
    truth.to_parquet(tmp / "ground_truth.parquet", index=False)
    clean_share = round(float(truth["noise"].isna().mean()), 4)
    suite_json = tmp / "eval" / "suite.json"
    suite_info = json.loads(suite_json.read_text()) if suite_json.is_file() else _synthetic_suite()
    info = {"args": args, "data": args["data"], "preset": preset, "clean_share": clean_share, "eval_task": task, "suite": suite_info,
            "counts": {"pool": len(records), "trusted": len(trusted),
                       "shards": len(list((tmp / "shards").glob("*.tar"))),
                       "by_source": truth["source"].value_counts().sort_index().to_dict(),
                       "skipped_sources": skipped},
            "noise_counts": truth["noise"].fillna("clean").value_counts().sort_index().to_dict(),
            "paths": {"shards": str(out / "shards"), "trusted": str(out / "trusted"),
                      "ground_truth": str(out / "ground_truth.parquet"), "eval": str(out / "eval" / task), "val": str(out / "val")},
            "seconds": round(time.time() - t0, 1)}
    atomic_write_bytes(tmp / "pool.json", json.dumps(info, indent=2).encode())
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"sample pool ({preset}): {len(records)} samples ({args['data']} data, {clean_share:.0%} clean) + "
          f"{len(trusted)} trusted in {out} ({info['seconds']} s)")
    return info


def _uid(seed: int, r: dict) -> str:
    return hashlib.sha256(f"{seed}/{r['source']}/{r['item']}/{r.get('copy', '')}".encode()).hexdigest()[:32]


def _write(records: list[dict], folder: Path, per_shard: int, seed: int) -> pd.DataFrame:
    rows = []
    with ShardWriter(folder, per_shard) as w:
        for i, r in enumerate(records):
            key = f"{i // per_shard:05d}{i % per_shard:04d}"
            uid = r["uid"]
            size = _size(r["image"])
            meta = {"uid": uid, "url": r["url"], "source": r["source"], "original_width": r["orig_w"],
                    "original_height": r["orig_h"], "width": size[0], "height": size[1],
                    "sha256": hashlib.sha256(r["image"]).hexdigest()}
            w.write(key, r["image"], r["ext"], r["caption"], meta)
            rows.append({"uid": uid, "key": key, "shard": f"{i // per_shard:05d}", "source": r["source"],
                         "label": r["label"], "caption": r["caption"], "clean_caption": r["clean_caption"],
                         "noise": r.get("noise"), "noise_detail": r.get("detail"), "noise_of": r.get("noise_of")})
    return pd.DataFrame(rows)


def _size(data: bytes) -> tuple[int | None, int | None]:
    import io

    from PIL import Image

    try:
        return Image.open(io.BytesIO(data)).size
    except Exception:  # noqa: BLE001 - corrupt bytes have no size
        return None, None


def _rec(source, item, label, caption, image, ext, orig, url) -> dict:
    return {"source": source, "item": item, "label": label, "clean_caption": caption, "caption": caption,
            "image": image, "ext": ext, "orig_w": orig[0], "orig_h": orig[1], "url": url}


def _real(n_base, n_trusted, n_eval_copy, rng, eval_dir):
    """Pool, trusted and validation items are disjoint draws from every source (the trusted split
    has each source's share, so a filtering network trained on it knows every domain)."""
    status = src.real_data_status()
    oc = [p for p in src.openclipart_items() if not src.held_out("openclipart", p)] if status["openclipart"] else []
    em = [c for c in src.emoji_items() if not src.held_out("emoji", c)] if status["emoji"] else []
    oc = [oc[int(i)] for i in rng.permutation(len(oc))]
    em = [em[int(i)] for i in rng.permutation(len(em))]
    # trusted and validation items first, the pool takes what is left of the small sources
    t_n = {k: min(int(round(TRUSTED_SHARE[k] * n_trusted)), len(v) // 4) for k, v in (("openclipart", oc), ("emoji", em))}
    v_n = {k: min(VAL[k], (len(v) - t_n[k]) // 4) for k, v in (("openclipart", oc), ("emoji", em))}
    oc_t, oc_v, oc = oc[:t_n["openclipart"]], oc[t_n["openclipart"]:t_n["openclipart"] + v_n["openclipart"]], \
        oc[t_n["openclipart"] + v_n["openclipart"]:]
    em_t, em_v, em = em[:t_n["emoji"]], em[t_n["emoji"]:t_n["emoji"] + v_n["emoji"]], em[t_n["emoji"] + v_n["emoji"]:]
    want = {k: min(int(round(SHARE[k] * n_base)), len(v)) for k, v in (("openclipart", oc), ("emoji", em))}
    n_fm = n_base - sum(want.values())
    n_fm_t = n_trusted - len(oc_t) - len(em_t)
    images, labels = src.fmnist("train")
    n_fm_v = min(VAL["fashion_mnist"], max(0, len(images) - n_fm - n_fm_t))
    if n_fm + n_fm_t > len(images):
        raise ValueError(f"{n_fm} Fashion-MNIST pool samples + {n_fm_t} trusted > {len(images)} available: "
                         "ask for fewer samples or a smaller trusted split")
    perm = rng.permutation(len(images))

    def fm(i: int) -> dict:
        label = src.FMNIST_CLASSES[labels[i]]
        return _rec("fashion_mnist", f"train/{i}", label, src.product_caption(label, rng),
                    src.encode(src.fmnist_image(images[i])), "jpg", (28, 28), f"fashion-mnist:train/{i}")

    def clipart(paths, n):
        out, skipped = [], 0
        for p in paths:
            if len(out) == n:
                break
            im, size = src.openclipart_image(p)
            if im is None:
                skipped += 1
                continue
            out.append(_rec("openclipart", p, p.split("/")[0], src.openclipart_caption(p), src.encode(im, "PNG"),
                            "png", size, f"file://{src.OPENCLIPART_DIR / 'png' / p}"))
        return out, skipped

    def emoji(chars):
        return [_rec("emoji", ch, src.emoji_name(ch), src.emoji_name(ch), src.encode(src.emoji_image(ch), "PNG"),
                     "png", (136, 128), f"emoji:U+{ord(ch):04X}") for ch in chars]

    base = [fm(int(i)) for i in perm[:n_fm]]
    trusted = [fm(int(i)) for i in perm[n_fm:n_fm + n_fm_t]]
    val_fm = [int(i) for i in perm[n_fm + n_fm_t:n_fm + n_fm_t + n_fm_v]]
    pool_oc, skipped = clipart(oc, want["openclipart"])
    base += pool_oc + emoji(em[:want["emoji"]])
    trusted_oc, s2 = clipart(oc_t, len(oc_t))
    trusted += trusted_oc + emoji(em_t)
    val_oc, s3 = clipart(oc_v, len(oc_v))
    write_validation(eval_dir.parent / "val", [(images[i], labels[i]) for i in val_fm], val_oc, emoji(em_v))
    test_x, test_y = src.fmnist("test")
    copy_suite(eval_dir)
    copies = []
    for i in rng.choice(len(test_x), n_eval_copy, replace=False) if n_eval_copy else []:
        label = src.FMNIST_CLASSES[test_y[i]]
        copies.append({**_rec("fashion_mnist_test", f"test/{i}", label, src.product_caption(label, rng),
                               src.encode(src.fmnist_image(test_x[i])), "jpg", (28, 28), f"fashion-mnist:test/{i}"),
                       "noise_of": f"fashion_mnist_test:{i}"})
    return base, trusted, copies, "fashion_mnist", skipped + s2 + s3


def write_validation(root: Path, fmnist: list, clipart: list[dict], emoji: list[dict]) -> None:
    """The validation suite (schemas/tasks.py VALIDATION): items in no pool, trusted split or test task,
    for choosing between strategies without looking at the reported suite."""
    if fmnist:
        write_task(root / "fashion_mnist", src.FMNIST_CLASSES, TEMPLATES,
                   ((src.encode(src.fmnist_image(x), "PNG"), int(y)) for x, y in fmnist))
    for name, recs in (("openclipart_retrieval", clipart), ("emoji_retrieval", emoji)):
        if recs:
            write_retrieval_task(root / name, ((r["image"], [r["clean_caption"]]) for r in recs))
    write_validation_shifts(root)


def write_validation_shifts(root: str | Path) -> list[str]:
    """The five shifted copies of the validation Fashion-MNIST task, made as the test suite's are, so
    the validation average weighs task kinds as the reported one does. Idempotent (missing ones only)."""
    from shardio.evaltask import iter_split
    from app.sample_pool.suite import shift
    from schemas.tasks import SHIFTS

    root, written = Path(root), []
    base = root / "fashion_mnist"
    if not (base / "test" / "nshards.txt").is_file():
        return written
    classes = (base / "classnames.txt").read_text().splitlines()
    for kind in SHIFTS:
        if not (root / f"fashion_mnist_{kind}" / "test" / "nshards.txt").is_file():
            write_task(root / f"fashion_mnist_{kind}", classes, TEMPLATES,
                       [(src.encode(shift(im, kind), "PNG"), int(s["cls"])) for _, im, s in iter_split(base, need="cls")])
            written.append(f"fashion_mnist_{kind}")
    return written


SUITE_VERSION = 4  # bump when the built-in suite's tasks change


def copy_suite(eval_dir: Path) -> None:
    """The built-in suite does not depend on the pool's size or seed: write it once into the cache
    (``$CURATE_CACHE``, default ~/.cache/curate) and copy it into each pool."""
    import os

    from app.sample_pool import extra_sources
    from app.sample_pool.tasks_extra import write_extra

    key = hashlib.sha256(json.dumps([SUITE_VERSION, src.real_data_status(), extra_sources.status()]).encode()).hexdigest()[:12]
    cache = src.cache_dir() / f"suite-{key}"
    if not cache.is_dir():  # written aside, then renamed: a cache folder is always complete
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.time()
        base = ["fashion_mnist"] + write_builtin_suite(tmp, write_fmnist_task(tmp / "fashion_mnist"))
        extra = write_extra(tmp, tmp / VAL_PART)
        (tmp / "suite.json").write_text(json.dumps({"base": base, **extra, "seconds": round(time.time() - t0, 1)},
                                                   indent=1))
        try:
            tmp.rename(cache)
        except OSError:  # another process wrote it first
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(cache, eval_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(VAL_PART))
    if (cache / VAL_PART).is_dir():  # the EXTRA tasks' validation copies
        shutil.copytree(cache / VAL_PART, eval_dir.parent / "val", dirs_exist_ok=True)


VAL_PART = "_validation"  # in the suite's cache: what goes to the pool's val/ folder


def _synthetic_suite() -> dict:
    from schemas.tasks import EXTRA

    return {"base": ["synthetic_shapes"], "tasks": {},
            "skipped": {t.folder: "synthetic pool: no Debian data used" for t in EXTRA}}


def write_fmnist_task(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST test (10,000) as a zero-shot task; returns the test arrays."""
    test_x, test_y = src.fmnist("test")
    write_task(root, src.FMNIST_CLASSES, TEMPLATES,
               ((src.encode(src.fmnist_image(x), "PNG"), int(y)) for x, y in zip(test_x, test_y)))
    return test_x, test_y


def _synthetic(n_base, n_trusted, n_eval_copy, rng, eval_dir):
    def shape(i: int, split: str) -> dict:
        label = int(rng.integers(len(src.SHAPES)))
        return _rec("synthetic", f"{split}/{i}", src.SHAPES[label], src.shape_caption(label, rng),
                    src.encode(src.shape_image(label, rng)), "jpg", (64, 64), f"synthetic:{split}/{i}")

    base = [shape(i, "pool") for i in range(n_base)]
    trusted = [shape(i, "trusted") for i in range(n_trusted)]
    test = [shape(i, "test") for i in range(2000)]
    write_task(eval_dir / "synthetic_shapes", src.SHAPES, TEMPLATES,
               ((r["image"], src.SHAPES.index(r["label"])) for r in test))
    copies = [{**test[i], "source": "synthetic_test", "noise_of": f"synthetic_test:{i}"} for i in range(n_eval_copy)]
    return base, trusted, copies, "synthetic_shapes", 0


def write_clean_fmnist(out: str | Path, n: int = 60_000, seed: int = 0, samples_per_shard: int = 5000) -> list[str]:
    """Fashion-MNIST train photos with clean shop captions, no noise (trainer benchmarks)."""
    out = Path(out)
    if (out / "done.json").is_file() and json.loads((out / "done.json").read_text()) == [n, seed]:
        return sorted(str(p) for p in out.glob("*.tar"))
    rng = np.random.default_rng(seed)
    images, labels = src.fmnist("train")
    recs = []
    for i in rng.permutation(len(images))[:n]:
        label = src.FMNIST_CLASSES[labels[i]]
        recs.append({**_rec("fashion_mnist", f"train/{i}", label, src.product_caption(label, rng),
                            src.encode(src.fmnist_image(images[i])), "jpg", (28, 28), f"fashion-mnist:train/{i}")})
        recs[-1]["uid"] = _uid(seed, recs[-1])
    shutil.rmtree(out, ignore_errors=True)
    _write(recs, out, samples_per_shard, seed)
    (out / "done.json").write_text(json.dumps([n, seed]))
    return sorted(str(p) for p in out.glob("*.tar"))
