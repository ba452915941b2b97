"""``curate interleave`` and ``curate build-interleaved``: sub-commands that app/cli.py adds to the
``curate`` parser (``sub`` = the parser's ``add_subparsers()``)."""
from __future__ import annotations

import json


def cmd_interleave(a) -> None:
    from pipeline.interleaved import Settings, run_interleave
    from schemas.config import ClipModel

    spec = ClipModel(model=a.scorer, checkpoint=a.checkpoint, device=a.device).model_dump_json()
    min_sim = None if a.min_sim == "auto" else float(a.min_sim)
    s = run_interleave(a.docs, a.out, spec, Settings(min_sim=min_sim, null_quantile=a.null_quantile,
                                                     keep_unmatched=a.keep_unmatched, min_images=a.min_images),
                       scorer_name=a.scorer)
    print(json.dumps({k: s[k] for k in ("documents_in", "documents_written", "images_in", "images_kept",
                                        "images_dropped", "thresholds", "seconds")}, indent=2))
    print(f"documents: {a.out}/shards   per document: {a.out}/documents.parquet   summary: {a.out}/summary.json")


def cmd_build_interleaved(a) -> None:
    from app.sample_pool.interleaved import build_interleaved

    info = build_interleaved(a.out, a.docs, seed=a.seed, docs_per_shard=a.docs_per_shard)
    print(json.dumps(info, indent=2))


def _min_sim(v: str) -> str:
    if v != "auto":
        float(v)  # argparse turns the ValueError into a usage error
    return v


def add_interleave(sub) -> None:
    i = sub.add_parser("interleave", help="place images on sentences in interleaved documents (mmc4)",
                       description="CLIP similarity of each image to each sentence of its document, a one-to-one "
                                   "linear assignment, images below the threshold dropped; mmc4 layout in and out "
                                   "({doc}.json + {doc}.{image_name} per document; pipeline/interleaved.py).")
    i.add_argument("--docs", required=True, help="document shards: a folder, a braced pattern or a glob")
    i.add_argument("--out", required=True, help="output folder (shards/, documents.parquet, summary.json)")
    i.add_argument("--scorer", required=True, help="open_clip name, JSON config or checkpoint folder")
    i.add_argument("--checkpoint", default=None, help="local weights file when --scorer is a model name")
    i.add_argument("--min-sim", type=_min_sim, default="auto",
                   help="drop images whose matched similarity is below this; auto (default): per shard, the "
                        "--null-quantile of image-sentence similarities across different documents")
    i.add_argument("--null-quantile", type=float, default=0.95, help="for --min-sim auto (default: 0.95)")
    i.add_argument("--keep-unmatched", action="store_true",
                   help="images left without a sentence (more images than sentences) take their best sentence, "
                        "as mmc4 does, instead of being dropped")
    i.add_argument("--min-images", type=int, default=1, help="documents keeping fewer images are not written "
                                                              "(default: 1)")
    i.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="scorer device (default: auto)")
    i.set_defaults(func=cmd_interleave)


def add_build_interleaved(sub) -> None:
    b = sub.add_parser("build-interleaved", help="write the built-in interleaved sample (openclipart)",
                       description="Documents from openclipart topic folders, sentences from SVG titles and "
                                   "descriptions, planted distractor and corrupt images, ground truth per image.")
    b.add_argument("--out", default="data/interleaved_sample", help="output folder (default: data/interleaved_sample)")
    b.add_argument("--docs", type=int, default=100, help="documents at most (default: 100; the held-out drawings "
                                                          "give about 70)")
    b.add_argument("--docs-per-shard", type=int, default=50, help="documents per shard (default: 50)")
    b.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    b.set_defaults(func=cmd_build_interleaved)
