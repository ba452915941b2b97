"""``curate``: one entry point for people who do not drive Prefect directly.

    curate build-pool   write the built-in sample pool (real data, synthetic fallback)
    curate run          curate shards (or DataComp metadata): scores, filters, filtered shards + uids + manifest
    curate reshard      a uid list + the pool's shards -> filtered shards (after a metadata-only run)
    curate train        CLIP contrastive training on shards, fixed samples seen
    curate eval         zero-shot evaluation of a checkpoint on a CLIP_benchmark-layout task
    curate demo         the whole loop on the sample pool, with and without filtering
    curate interleave   place images on sentences in mmc4-style interleaved documents
    curate serve        serve the Prefect deployments (curate/laion-subset, nightly chain)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from schemas.checkpoint import DEMO_ROOT, DEMO_SCORER, DEMO_SCORER_DIR


POOL_PRESETS = ["web", "clean"]  # app/sample_pool/noise.py PRESETS (not imported: the CLI starts light)


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def cmd_build_pool(a) -> None:
    from app.sample_pool import build_pool

    info = build_pool(a.out, a.samples, seed=a.seed, samples_per_shard=a.samples_per_shard,
                      n_trusted=a.trusted, data=a.data, preset=a.preset)
    keys = ("data", "preset", "clean_share", "counts", "noise_counts", "eval_task")
    print(json.dumps({k: info[k] for k in info if k in keys}, indent=2))


def cmd_run(a) -> None:
    from pipeline.run import run_curation

    m = run_curation(a.pool, a.out, a.config, work=a.work, workers=a.workers, on_failure=a.on_failure,
                     dask_address=a.dask_address, keep_versions=a.keep_versions)
    keys = ("samples_in", "kept", "dropped", "dropped_by_reason", "thresholds", "listed_not_downloaded",
            "listed_missing_from_tar")
    print(json.dumps({k: m[k] for k in keys if m.get(k) not in (None, {}, 0)}, indent=2))
    for b in m["broken_shards"]:
        print(f"broken shard {b['shard']}: {b['error']} ({b['samples_recovered']} samples recovered)", file=sys.stderr)
    for f in m["not_processed_shards"]:
        print(f"not processed: {f['shard']}: {f['error']}", file=sys.stderr)
    print(f"filtered shards: {a.out}/shards   uids: {a.out}/uids.npy   manifest: {a.out}/manifest.json   "
          f"report: {a.out}/report.html   log: {a.out}/curate.log")


def cmd_reshard(a) -> None:
    from pipeline.reshard import reshard

    m = reshard(a.uids, a.pool, a.out, a.samples_per_shard)
    print(json.dumps({k: m[k] for k in ("uids_in_list", "written", "not_found")}, indent=2))
    print(f"filtered shards: {a.out}/shards")


def cmd_train(a) -> None:
    from training.train import TrainConfig, train

    given = {"preset": a.preset, "model": a.model, "samples_seen": a.samples_seen, "batch_size": a.batch_size,
             "lr": a.lr, "init_checkpoint": a.init, "workers": a.workers, "accum_steps": a.accum_steps,
             "loss": a.loss, "precision": a.precision, "grad_checkpointing": a.grad_checkpointing or None}
    cfg = TrainConfig(train_data=a.data, out_dir=a.out, seed=a.seed, device=a.device,
                      **{k: v for k, v in given.items() if v is not None})
    r = train(cfg)
    print(json.dumps({k: v for k, v in r.items() if not isinstance(v, (dict, list))}, indent=2, default=str))
    if r.get("bad_samples"):
        print("samples skipped, by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(r["bad_samples"].items())))


def cmd_eval(a) -> None:
    if a.suite:
        from training.evalsuite import run_suite

        s = run_suite(a.checkpoint, a.data_root, a.suite, results=a.results, only=a.tasks, weights=a.weights,
                      few_shot=a.few_shot)
        print(Path(s["results"]).with_suffix(".md").read_text())
        return
    if not a.task:
        raise ValueError("give --task FOLDER (one task) or --suite builtin|datacomp with --data-root")
    from training.zeroshot import append_result, evaluate_zeroshot

    r = evaluate_zeroshot(a.checkpoint, a.task, weights=a.weights)
    if a.few_shot:
        from training.probe import linear_probe

        r["few_shot"] = linear_probe(a.checkpoint, a.task, k=a.few_shot, weights=a.weights)
    if a.results:
        append_result(a.results, r)
    print(json.dumps(r, indent=2, default=str))


def cmd_demo(a) -> None:
    from app.demo import run_demo

    run_demo(a.root, samples=a.samples, trusted=a.trusted, samples_seen=a.samples_seen,
             scorer_samples_seen=a.scorer_samples_seen, strategy=a.strategy, seed=a.seed, data=a.data,
             pool_dir=a.pool, preset=a.preset)


def cmd_report(a) -> None:
    import pandas as pd

    from pipeline.publish import published
    from pipeline.report import write_report

    root = published(a.run)
    manifest = json.loads((root / "manifest.json").read_text())
    path = write_report(root, pd.read_parquet(root / "metadata.parquet"), manifest["input_shards"], manifest, a.train)
    print(f"wrote {path}")


LOSSES = ["clip", "siglip"]  # training.train.TrainConfig.loss; a test keeps the two equal


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="curate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("build-pool", help="write the built-in sample pool", description="Write the sample pool "
                       "(img2dataset-layout shards, a trusted clean split, eval tasks, ground truth).")
    b.add_argument("--out", default="data/sample_pool", help="output folder (default: data/sample_pool)")
    b.add_argument("--preset", choices=POOL_PRESETS, default="web",
                   help="noise mix: web (at most 30%% clean, like web alt-text pools) or clean (~71%% clean) "
                        "(default: web)")
    b.add_argument("--samples", type=int, default=20_000,
                   help="pool samples (default: 20000; ~70000 uses all the real data)")
    b.add_argument("--trusted", type=int, default=10_000, help="trusted clean samples (default: 10000)")
    b.add_argument("--samples-per-shard", type=int, default=1000, help="samples per shard (default: 1000)")
    b.add_argument("--seed", type=int, default=0, help="noise and sampling seed (default: 0)")
    b.add_argument("--data", choices=["auto", "real", "synthetic"], default="auto",
                   help="real Debian data, synthetic images, or real when installed (default: auto)")
    b.set_defaults(func=cmd_build_pool)

    r = sub.add_parser("run", help="curate shards", description="Score, filter and export a pool of webdataset shards.")
    r.add_argument("--pool", required=True, help="shards: a folder, a braced pattern (pool/{00000..00009}.tar) or a glob")
    r.add_argument("--out", required=True, help="output folder (shards/, uids.npy, metadata.parquet, manifest.json)")
    r.add_argument("--config", required=True, help="curation config: a YAML/JSON file or a preset name "
                   "(laion-subset, no-filter, datacomp/basic, datacomp/clip-score-l14-30, ...)")
    r.add_argument("--work", default=None, help="folder for per-shard columns/embeddings (default: --out)")
    r.add_argument("--workers", type=int, default=1, help="annotate shards in this many processes (default: 1)")
    r.add_argument("--dask-address", default=None, help="annotate on this Dask scheduler (tcp://host:8786)")
    r.add_argument("--on-failure", choices=["fail", "partial"], default="fail",
                   help="a shard that fails after retries: fail the run, publishing nothing (default), or "
                        "publish without it (its samples are listed as not processed)")
    r.add_argument("--keep-versions", type=int, default=2, metavar="N",
                   help="published versions kept: the newest N, plus any a training holds (default: 2)")
    r.set_defaults(func=cmd_run)

    rs = sub.add_parser("reshard", help="uid list + shards -> filtered shards",
                        description="Write the samples of a uid list (DataComp's u8,u8 .npy, e.g. from a "
                                    "metadata-only `curate run`) from the pool's shards into new shards.")
    rs.add_argument("--uids", required=True, help="uid array (.npy)")
    rs.add_argument("--pool", required=True, help="shards: a folder, a braced pattern or a glob")
    rs.add_argument("--out", required=True, help="output folder (shards/, uids.npy, manifest.json)")
    rs.add_argument("--samples-per-shard", type=int, default=10_000, help="samples per output shard (default: 10000)")
    rs.set_defaults(func=cmd_reshard)

    t = sub.add_parser("train", help="train a CLIP model", description="CLIP contrastive training at a fixed samples-seen budget.")
    t.add_argument("--data", required=True, help="training shards (folder, braced pattern or glob)")
    t.add_argument("--out", required=True, help="run folder (checkpoints/, final/, metrics.jsonl)")
    t.add_argument("--preset", default=None, help="DataComp scale (debug, small, medium, large, xlarge) or CPU "
                   "preset (cpu-tiny, cpu-demo); options below override it")
    t.add_argument("--model", default=None, help="open_clip name, preset, JSON config or checkpoint folder "
                   "(default: curate-tiny)")
    t.add_argument("--samples-seen", type=int, default=None, help="training budget in samples (or from --preset)")
    t.add_argument("--batch-size", type=int, default=None, help="global batch size (default: 256)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the model's tuned one)")
    t.add_argument("--accum-steps", type=int, default=None, help="gradient accumulation micro-batches (exact)")
    t.add_argument("--loss", choices=LOSSES, default=None, help="ClipLoss or SigLipLoss (default: clip)")
    t.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None, help="auto: bf16 on GPU")
    t.add_argument("--grad-checkpointing", action="store_true", help="trade compute for activation memory")
    t.add_argument("--init", default=None, help="start from this checkpoint folder")
    t.add_argument("--workers", type=int, default=None, help="data loader processes per rank (default: 0 CPU, 4 GPU)")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    t.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="zero-shot evaluation", description="Zero-shot classification of a checkpoint "
                       "(and a few-shot linear probe of its image encoder).")
    e.add_argument("--checkpoint", required=True, help="checkpoint folder (or open_clip model spec)")
    e.add_argument("--task", default=None, help="one task folder in CLIP_benchmark's wds layout")
    e.add_argument("--suite", choices=["builtin", "datacomp"], default=None,
                   help="a whole suite (schemas/tasks.py); resumable, writes jsonl + md + csv")
    e.add_argument("--data-root", default="data/sample_pool/eval", help="folder holding the suite's task folders "
                   "(default: data/sample_pool/eval)")
    e.add_argument("--tasks", nargs="*", default=None, help="only these task keys or folders")
    e.add_argument("--weights", default=None, help="weights file when --checkpoint is a model name "
                   "(e.g. an open_clip_train epoch_N.pt)")
    e.add_argument("--few-shot", type=int, default=0, metavar="K", help="also fit a K-shot linear probe")
    e.add_argument("--results", default=None, help="append results to this jsonl (suite default: "
                   "<checkpoint>/eval_<suite>.jsonl)")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="the whole loop on the sample pool, ending in a verdict",
                       description="Build the sample pool (web preset), train a filtering network on its trusted "
                                   "split, curate with no filter and with the committed grid's best strategy, train "
                                   "both at equal samples seen, evaluate both on the built-in suite.")
    d.add_argument("--root", default=DEMO_ROOT, help=f"run folder (default: {DEMO_ROOT}; the presets' "
                   f"'{DEMO_SCORER}' scorer is its {DEMO_SCORER_DIR}/final)")
    d.add_argument("--samples", type=int, default=20_000, help="pool samples (default: 20000)")
    d.add_argument("--trusted", type=int, default=10_000, help="trusted samples for the scorer (default: 10000)")
    d.add_argument("--samples-seen", type=int, default=None, help="training budget per model (default: the pool "
                   "size, DataComp's rule)")
    d.add_argument("--scorer-samples-seen", type=int, default=None,
                   help="filtering network's training budget (default: 40000, as the grid's)")
    d.add_argument("--strategy", default=None, help="curation strategy compared with no filter (default: the "
                   "committed grid's best, bench/results/grid_web.json)")
    d.add_argument("--preset", choices=POOL_PRESETS, default="web", help="pool noise mix (default: web)")
    d.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    d.add_argument("--pool", default="data/sample_pool", help="sample pool folder, built if missing or "
                   "built with other settings (default: data/sample_pool)")
    d.add_argument("--data", choices=["auto", "real", "synthetic"], default="auto", help="pool data (default: auto)")
    d.set_defaults(func=cmd_demo)

    rp = sub.add_parser("report", help="(re)write a curation run's HTML report",
                        description="Write <out>/report.html (curation runs write it too); --train adds a training "
                                    "run's loss curve and evaluation results.")
    rp.add_argument("--run", required=True, help="a curation output folder (the report is rewritten in it)")
    rp.add_argument("--train", default=None, help="a training output folder (metrics.jsonl, eval jsonl)")
    rp.set_defaults(func=cmd_report)

    from app.cli_interleave import add_commands as add_interleave
    from app.cli_ssl import add_commands as add_ssl

    add_interleave(sub)
    add_ssl(sub)  # after train and eval: it adds --objective to train and image-only probing to eval
    sub.add_parser("serve", help="serve the Prefect deployments (curate serve --help for its options)",
                   add_help=False)
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _repeated(argv: list[str]) -> str | None:
    seen = set()
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            opt = tok.split("=", 1)[0]
            if opt in seen:
                return opt
            seen.add(opt)
    return None


def main(argv: list[str] | None = None) -> None:
    _offline()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    if argv[:1] == ["serve"]:  # the serving options are flows/serve.py's
        from flows.serve import main as serve_main

        return serve_main(argv[1:], prog="curate serve")
    parser = build_parser()
    twice = _repeated(argv)
    if twice:
        parser.error(f"option {twice} given more than once")
    a = parser.parse_args(argv)
    from pipeline.lock import OutputLocked
    from pipeline.publish import NotPublished
    from pipeline.run import ShardsFailed

    try:
        a.func(a)
    except Exception as e:  # noqa: BLE001 - one or two lines for a person, the traceback with --debug
        if debug:
            raise
        kind = "error" if isinstance(e, USER_ERRORS + (OutputLocked, NotPublished, ShardsFailed)) else \
            f"failed ({type(e).__name__})"
        print(f"curate {a.command}: {kind}: {e}", file=sys.stderr)
        if not isinstance(e, USER_ERRORS + (OutputLocked, NotPublished)):
            print("  (run again with --debug for the traceback)", file=sys.stderr)
        sys.exit(2 if isinstance(e, USER_ERRORS + (OutputLocked, NotPublished)) else 1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
