"""bench/parity.py's pools: bench/scale.py's realistic DataComp-format rows with hostile ones planted
(see bench/parity.py's doc), and the image-based inputs (centroids, target embeddings) made from them."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from bench.scale_peer import PEER_PY
from bench.scale_pool import write_shard

SEED = 7
CLUSTERS = 64
N_TARGETS = 1000
FRACTION = 0.3


IMAGENET_CAPTIONS = ["a golden retriever playing in the park", "Tabby cat sleeping on a sofa",
                     "Geese flying over the lake at dawn", "MICE in the old kitchen", "hot_dog with mustard",
                     "two pandas eating bamboo in the zoo", "a red fire engine on the street",
                     "close up of a monarch butterfly", "a bowl of strawberries on the table",
                     "the lighthouse on the rocky coast"]
COLLISION_CAPTIONS = ["a passionate speech on stage", "very cognitive and clear", "simply tested and approved",
                      "a mossy old stone wall", "the planetary view from here", "so aromatic and fresh",
                      "a cerebral film about life", "a cogent and clear argument"]
HOSTILE_CAPTIONS = {
    "punctuation": ["dog, cat, bird.", "(dog) in the garden", "the dog's bowl on the floor", "dog!!! cat???"],
    "unicode_space": ["golden\u00a0retriever\u00a0in\u00a0the\u00a0snow", "dog\u2003cat\u2003bird on grass",
                      "犬\u3000と\u3000猫の写真", "a dog\u3000on the beach"],
    "newline_only": ["\n\n\n\n\n\n"],
    "newline": ["sunset\n", "a dog\non the beach\n", "dog\r\ncat on a mat", "tree\nhouse",
                "\n\n\ndog\n\n\n"],
    "nul": ["dog\0cat in a box", "a photo\0of a red car"],
    "non_ascii": ["Straße mit Hund im Park", "naïve café with a dog", "🐶 dog emoji 🐱 cat", "Ελληνικό σκυλί στην παραλία",
                  "русская собака на улице", "a dog in the café ☕", "chien mignon dans le jardin"],
    "empty": ["", " ", "      ", "\t\t\t\t\t\t", "\r\r\r\r\r\r"],
    "short": ["ok", "dog", "IMG_1234.jpg", "cat.", "a b", "dog cat"],
    "upper": ["A PHOTO OF A DOG ON THE BEACH", "RED SPORTS CAR FOR SALE"],
}
LONG_TAIL = "lorem ipsum dolor sit amet " * 160  # 4,320 characters: past pipeline.ingest.MAX_CAPTION_CHARS


# planted kinds on which ours deviates from DataComp on purpose (documented; see explain())
DEVIATION_KINDS = frozenset({"pos_collision", "long_entity_after_cut", "newline_only", "emb_nan", "emb_inf",
                             "emb_zero", "uid_repeat", "uid_repeat_other_caption", "size_huge"})


def hostile_plan(rng: np.random.Generator, rows: int, exclude: frozenset = frozenset()) -> list[tuple[int, str, str | None]]:
    """(row, kind, caption or None) for the rows whose caption or sizes or scores are replaced."""
    caps = ([("imagenet", c) for c in IMAGENET_CAPTIONS] + [("pos_collision", c) for c in COLLISION_CAPTIONS]
            + [(k, c) for k, cs in HOSTILE_CAPTIONS.items() for c in cs]
            + [("long_entity_after_cut", LONG_TAIL + "with a golden retriever"),
               ("long_entity_before_cut", "a golden retriever " + LONG_TAIL),
               ("long_newlines", "dog\n" * 1200)])
    plan_rows = rng.choice(np.arange(1, rows), size=len(caps) * 2 + 140, replace=False)
    out: list[tuple[int, str, str | None]] = []
    for j, (kind, cap) in enumerate(caps * 2):
        if kind not in exclude:
            out.append((int(plan_rows[j]), kind, cap))
    rest = plan_rows[len(caps) * 2:]
    kinds = (["nan_l14"] * 20 + ["nan_b32"] * 20 + ["inf_l14", "-inf_l14", "inf_b32", "-inf_b32"]
             + ["b32_eq_0.28"] * 8 + ["b32_below_0.28"] * 3 + ["b32_above_0.28"] * 3
             + ["size_zero"] * 4 + ["size_negative"] * 2 + ["size_huge"] * 3 + ["size_large"] * 3 + ["size_missing"] * 4
             + ["aspect_eq_3"] * 3 + ["aspect_above_3"] * 3
             + ["emb_nan"] * 4 + ["emb_inf"] * 3 + ["emb_zero"] * 4 + ["uid_upper"] * 5 + ["uid_repeat"] * 4
             + ["uid_repeat_other_caption"] * 2 + ["tie_l14"] * 20)
    for r, k in zip(rest, kinds):
        if k not in exclude:
            out.append((int(r), k, None))
    return out


def make_pool(folder: Path, rows: int, shards: int, exclude: frozenset = frozenset()) -> dict:
    """The shards of bench/scale.py's generator, with the hostile rows planted (see the module doc);
    returns uid -> kinds planted there."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    names = [write_shard(str(folder), i, rows, SEED) for i in range(shards)]
    kinds: dict[str, list[str]] = {}
    frames, embs = [], []
    for i, name in enumerate(names):
        df = pq.read_table(folder / f"{name}.parquet").to_pandas()
        with np.load(folder / f"{name}.npz") as z:
            emb = {k: z[k].copy() for k in z.files}
        df["original_width"] = df["original_width"].astype("Int64")
        df["original_height"] = df["original_height"].astype("Int64")
        rng = np.random.default_rng([SEED, i, 1])
        for r, kind, cap in hostile_plan(rng, rows, exclude):
            if cap is not None:
                df.at[r, "text"] = cap
            elif kind in ("nan_l14", "nan_b32"):
                df.at[r, f"clip_{kind[-3:]}_similarity_score"] = np.nan
            elif kind.endswith("inf_l14") or kind.endswith("inf_b32"):
                df.at[r, f"clip_{kind[-3:]}_similarity_score"] = -np.inf if kind.startswith("-") else np.inf
            elif kind == "b32_eq_0.28":
                df.at[r, "clip_b32_similarity_score"] = 0.28
            elif kind == "b32_below_0.28":
                df.at[r, "clip_b32_similarity_score"] = np.nextafter(0.28, 0)
            elif kind == "b32_above_0.28":
                df.at[r, "clip_b32_similarity_score"] = np.nextafter(0.28, 1)
            elif kind.startswith("size_") or kind.startswith("aspect_"):
                w, h = {"size_zero": (0, 640), "size_negative": (-300, 400), "size_huge": (2 ** 40, 2 ** 39),
                        "size_large": (100_000, 50_000),
                        "size_missing": (pd.NA, 480), "aspect_eq_3": (600, 200),
                        "aspect_above_3": (601, 200)}[kind]
                df.at[r, "original_width"], df.at[r, "original_height"] = w, h
            elif kind.startswith("emb_"):
                emb["l14_img"][r] = {"emb_nan": np.nan, "emb_inf": np.inf, "emb_zero": 0.0}[kind]
            elif kind == "uid_upper":
                df.at[r, "uid"] = df.at[r, "uid"].upper()
            elif kind.startswith("uid_repeat"):
                src = r - 1 - int(rng.integers(min(r, 50)))
                for c in df.columns:
                    df.at[r, c] = df.at[src, c]
                for k in emb:
                    emb[k][r] = emb[k][src]
                if kind == "uid_repeat_other_caption":
                    df.at[r, "text"] = "a golden retriever on the beach at sunset"
            kinds.setdefault(str(df.at[r, "uid"]).lower(), []).append(kind)
        frames.append(df)
        embs.append(emb)
    # ties at the L/14 30% cutoff: rows set to the very score that DataComp's cutoff lands on
    allv = np.concatenate([f["clip_l14_similarity_score"].to_numpy(float) for f in frames])
    n = int(len(allv) * FRACTION)
    tie = float(-np.sort(-allv)[n])
    for i, (name, df, emb) in enumerate(zip(names, frames, embs)):
        rows_tie = [u for u, ks in kinds.items() if "tie_l14" in ks]
        m = df["uid"].str.lower().isin(rows_tie)
        df.loc[m, "clip_l14_similarity_score"] = tie
        # no pandas metadata: a null size reads back as float NaN, as from DataComp's own parquets (with it,
        # pandas' nullable Int64 comes back and DataComp's basic filter cannot index with its <NA> mask)
        tbl = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
        pq.write_table(tbl, folder / f"{name}.parquet")
        np.savez(folder / f"{name}.npz", **emb)
    return {"shards": names, "rows": rows * shards, "kinds": kinds, "l14_tie_value": tie}


def caption_mask(texts: list[str]) -> np.ndarray:
    """DataComp's image-based caption filter (English by fasttext, > 1 fasttext token, > 5 characters)."""
    from pipeline.filters.basic import fasttext_token_count
    from pipeline.ingest import _lid_model

    model = _lid_model()
    out = np.zeros(len(texts), bool)
    for i, t in enumerate(texts):
        prob_label = model.f.predict(t.replace("\n", " ") + "\n", 1, 0.0, "strict")
        en = bool(prob_label) and prob_label[0][1] == "__label__en"
        out[i] = en and fasttext_token_count(t) > 1 and len(t) > 5
    return out


def image_inputs(pool: Path, info: dict, folder: Path) -> dict:
    """DataComp-style centroids (faiss k-means on the caption-filtered pool) and target embeddings,
    as .npy (ours) and, written by DataComp's venv, .pt (its loader's format)."""
    import pyarrow.parquet as pq

    x, near = [], []
    for name in info["shards"]:
        texts = pq.read_table(pool / f"{name}.parquet", columns=["text"]).column("text").to_pylist()
        with np.load(pool / f"{name}.npz") as z:
            img = z["l14_img"]
        keep = caption_mask(texts) & np.isfinite(img.astype(np.float32)).all(1)
        x.append(img[keep].astype(np.float32))
        near.append(img[np.isfinite(img.astype(np.float32)).all(1) & (np.abs(img).max(1) > 0)].astype(np.float32))
    x = np.ascontiguousarray(np.concatenate(x))
    chosen = write_image_inputs(x, np.concatenate(near), CLUSTERS, SEED, folder)
    return {"clusters": CLUSTERS, "trained_on_rows": int(len(x)), "targets": N_TARGETS,
            "target_seed_clusters": int(len(chosen))}


def write_image_inputs(x: np.ndarray, rows: np.ndarray, clusters: int, seed: int, folder: Path,
                       n_targets: int = N_TARGETS) -> np.ndarray:
    """Centroids: faiss k-means of ``x`` as DataComp's image_based_clustering.py runs it (niter 20, seed 0,
    L2); targets: ``n_targets`` unit vectors near ``rows`` of the clusters of half the centroids. Saved as
    .npy (ours) and, when DataComp's venv is there, as .pt in its loader's format. Returns the chosen clusters."""
    import faiss

    d = x.shape[1]
    cluster = faiss.Clustering(d, clusters)
    cluster.niter, cluster.seed, cluster.max_points_per_centroid = 20, 0, 10_000_000
    cluster.train(x, faiss.IndexFlatL2(d))
    cent = faiss.vector_float_to_array(cluster.centroids).reshape(clusters, d).astype(np.float32)
    lab = (rows @ cent.T).argmax(1)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(clusters, clusters // 2, replace=False)
    src = rows[np.isin(lab, chosen)]
    t = src[rng.integers(len(src), size=n_targets)]
    t = t + (0.05 / np.sqrt(d)) * rng.standard_normal(t.shape).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "centroids_l14.npy", cent)
    np.save(folder / "targets_l14.npy", t.astype(np.float32))
    code = ("import sys, numpy as np, torch; f = sys.argv[1]; c = np.load(f + '/centroids_l14.npy'); "
            "torch.save(c, f + '/small_centroids_l14.pt', pickle_protocol=4); t = torch.from_numpy(np.load(f + "
            "'/targets_l14.npy')); [torch.save({'image_features': p.clone()}, f + f'/in1k_clip_vit_l14_{i}.pt') "
            "for i, p in enumerate(torch.tensor_split(t, 5))]")
    if PEER_PY.exists():
        subprocess.run([str(PEER_PY), "-c", code, str(folder)], check=True)
    return chosen


def pool_meta(pool: Path, info: dict) -> dict:
    import pyarrow.parquet as pq

    meta = {}
    for name in info["shards"]:
        for r in pq.read_table(pool / f"{name}.parquet").to_pylist():
            t = r.get("text")
            r["text"] = t if t is None or len(t) <= 200 else f"{t[:120]}... ({len(t)} characters)"
            r["text_length"] = len(t) if isinstance(t, str) else None
            meta.setdefault(r["uid"].lower(), r)
    return meta
