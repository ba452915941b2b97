"""bench/scale_small.py's steps: our configs, DataComp's baselines.py arguments beside the ones it has,
the image-based inputs (given centroids and target embeddings, both sides the same files) and the run
of DataComp's code (bench/parity_peer.py's wrapper: offline, CUDA mapped to the CPU)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bench.scale_measure import measure, rel
from bench.scale_peer import PEER_PY, datacomp_dir, lid_model

FRACTION = 0.3
NCL_BATCH = 8192
NCL_BATCH_NOTE = ("negCLIPLoss runs at batch 8,192 here, not the paper's 32,768: its cost is ~batch x width x 2 "
                  "flops a row and repeat, so a CPU row at 32,768 costs 4x (a GPU step); the cost exponent does "
                  "not depend on the batch")
SEMDEDUP_CLUSTERS = 500  # at 1M; a larger pool gets one cluster per SEMDEDUP_ROWS rows (sized_config)
SEMDEDUP_ROWS = 2000  # rows a cluster: a fixed count's clusters outgrow the pairwise pass (64,922 rows at 4M)
IMAGE_CLUSTERS = 1000  # given centroids (DataComp small's own are 100,000: see the results' notes)
TRAIN_SHARDS = 10  # the centroids' k-means sample: the pool's first shards, caption-filtered
N_TARGETS = 1000

L14 = {"precomputed": "l14"}
B32 = {"precomputed": "b32", "column": "clip_score_b32"}
CAPTION = {"type": "basic", "words": "fasttext", "min_words": 2, "min_chars": 6, "min_side": None,
           "max_aspect": None}  # DataComp's image-based caption filter (pipeline/presets/datacomp/image-based.yaml)

# the steps that read no embedding: metadata.parquet without the pool's own columns (they join back by uid;
# DataComp's baselines.py writes the uid list alone)
DECISIONS = {"metadata": "decisions"}
DECISIONS_NOTE = ("the cheap steps (no embedding read) write metadata.parquet as export.metadata: decisions, without "
                  "the pool's own columns (url, caption, sha256, sizes, caption counts), which join back by uid; "
                  "no filter and CLIP score read the pool in place (pipeline/direct.py: no language id or caption "
                  "to compute); the global steps write the full table")

# step -> (our config, DataComp's baselines.py arguments or None, "cheap" | "global")
STEPS = {
    "no_filter": ({"clip": [], "filters": [], "export": DECISIONS}, ["--name", "no_filter"], "cheap"),
    "basic": ({"clip": [], "filters": [{"type": "basic"}], "export": DECISIONS}, ["--name", "basic_filter"], "cheap"),
    "clip_score_l14": ({"clip": [L14], "filters": [{"type": "clip_score", "fraction": FRACTION}], "export": DECISIONS},
                       ["--name", "clip_score", "--arch", "l14", "--fraction", str(FRACTION)], "cheap"),
    "clip_score_b32": ({"clip": [B32], "filters": [{"type": "clip_score", "column": "clip_score_b32",
                                                    "fraction": FRACTION}], "export": DECISIONS},
                       ["--name", "clip_score", "--arch", "b32", "--fraction", str(FRACTION)], "cheap"),
    "text_based": ({"clip": [], "filters": [{"type": "basic", "min_words": 0, "min_chars": 0, "min_side": None,
                                             "max_aspect": None}, {"type": "text_based", "rule": "wordnet"}],
                    "export": DECISIONS}, ["--name", "text_based"], "cheap"),
    "image_based": ({"clip": [L14], "filters": [CAPTION, {"type": "image_based", "clusters": IMAGE_CLUSTERS,
                                                          "survivors_only": True}]},
                    ["--name", "image_based", "--image_based_scale", "small", "--num_gpus", "1"], "global"),
    "image_based_clip": ({"clip": [L14], "filters": [CAPTION, {"type": "clip_score", "fraction": FRACTION},
                                                     {"type": "image_based", "clusters": IMAGE_CLUSTERS,
                                                      "survivors_only": True}]},
                         ["--name", "image_based_intersect_clip_score", "--image_based_scale", "small", "--arch",
                          "l14", "--fraction", str(FRACTION), "--num_gpus", "1"], "global"),
    "semantic_dedup": ({"clip": [L14], "filters": [{"type": "semantic_dedup", "clusters": SEMDEDUP_CLUSTERS,
                                                    "eps": 0.05}]}, None, "global"),
    "d2_pruning": ({"clip": [L14], "filters": [{"type": "d2_pruning", "budget": FRACTION}]}, None, "global"),
    # batch 8,192: a row costs ~batch x width x 2 flops (the paper's 32,768: 4x, a GPU's work; NCL_BATCH_NOTE)
    "neg_clip_loss": ({"clip": [L14], "filters": [{"type": "neg_clip_loss", "fraction": FRACTION,
                                                   "batch_size": NCL_BATCH}]}, None, "global"),
    "norm_sim": ({"clip": [L14], "filters": [{"type": "norm_sim", "p": "inf", "fraction": FRACTION}]}, None, "global"),
}


def sized_config(step: str, cfg: dict, n: int) -> dict:
    """``cfg`` for a pool of ``n`` rows: SemDeDup's cluster count grows with the pool, as a user sets it
    (k-means clusters of ~2,000 rows; the SemDeDup paper: 50,000 clusters for 440M rows)."""
    if step != "semantic_dedup" or n // SEMDEDUP_ROWS <= SEMDEDUP_CLUSTERS:
        return cfg
    return {**cfg, "filters": [{**f, "clusters": n // SEMDEDUP_ROWS} if f["type"] == "semantic_dedup" else f
                               for f in cfg["filters"]]}


def configs(targets: str, centroids: str, small: bool, clusters: int = IMAGE_CLUSTERS) -> dict:
    """Each step's config with the image inputs filled in (``small``: tiny pools, fewer clusters)."""
    import json

    out = {}
    for step, (cfg, _, _) in STEPS.items():
        cfg = json.loads(json.dumps(cfg))
        for f in cfg["filters"]:
            if f["type"] == "image_based":
                f.update({"targets": [targets], "centroids": centroids, "clusters": clusters})
            if f["type"] == "norm_sim":
                f["targets"] = [targets]
            if f["type"] == "semantic_dedup" and small:
                f["clusters"] = 10
        out[step] = cfg
    return out


def image_inputs(pool: Path, shards: list[str], folder: Path, clusters: int = IMAGE_CLUSTERS, seed: int = 7) -> dict:
    """Given centroids (faiss k-means as DataComp's image_based_clustering.py: niter 20, seed 0, L2, on
    the caption-filtered L/14 image embeddings of the pool's first ``TRAIN_SHARDS`` shards) and 1,000
    target embeddings near rows of half the centroids; .npy for ours, .pt (written by DataComp's venv)
    for its loader. Reused when there."""
    import pyarrow.parquet as pq

    from bench.parity_pool import caption_mask, write_image_inputs

    if (folder / "centroids_l14.npy").is_file() and (folder / "in1k_clip_vit_l14_4.pt").is_file():
        return {"clusters": clusters, "reused": True}
    x = []
    for name in shards[:TRAIN_SHARDS]:
        texts = pq.read_table(pool / f"{name}.parquet", columns=["text"]).column("text").to_pylist()
        with np.load(pool / f"{name}.npz") as z:
            x.append(z["l14_img"][caption_mask(texts)].astype(np.float32))
    x = np.ascontiguousarray(np.concatenate(x))
    write_image_inputs(x, x, clusters, seed, folder)
    return {"clusters": clusters, "trained_on_rows": int(len(x)), "targets": N_TARGETS, "reused": False}


def peer_env(work: Path, inputs: Path) -> dict:
    from bench.parity_peer import nltk_data
    from pipeline.filters.text_based import default_synsets

    return {**os.environ, "DATACOMP_DIR": str(datacomp_dir()), "DATACOMP_LID": str(lid_model()),
            "PYTHONPATH": str(datacomp_dir()), "PARITY_IN21K": str(default_synsets()),
            "NLTK_DATA": str(nltk_data(work / "nltk_data")), "PARITY_CPU": "1",
            "PARITY_CENTROIDS": str(inputs / "small_centroids_l14.pt"), "PARITY_TARGETS": str(inputs),
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "OMP_NUM_THREADS": "1"}


def run_peer(step: str, pool: Path, n: int, work: Path, env: dict, workers: int, timeout: float,
             mem_cap_mb: float) -> dict:
    """DataComp's baselines.py for ``step`` on ``pool`` (its uids saved beside ours)."""
    from bench.parity_peer import PEER_WRAPPER, WRAPPER

    if not WRAPPER.is_file() or WRAPPER.read_text() != PEER_WRAPPER:
        WRAPPER.write_text(PEER_WRAPPER)
    dst = work / "uids" / str(n) / f"datacomp_{step}.npy"
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    log = work / "logs" / str(n) / f"datacomp_{step}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    res = measure([str(PEER_PY), str(WRAPPER), "--metadata_dir", str(pool), "--save_path", str(dst),
                   "--num_workers", str(workers), *STEPS[step][1]], timeout, mem_cap_mb, env=env, log=log)
    if res["status"] == "ok":
        res["uid_count"] = int(len(np.load(dst)))
        res["uids_file"] = rel(dst)
    return res
