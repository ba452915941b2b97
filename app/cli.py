"""``curate``: one entry point for people who do not drive Prefect directly. ``build_parser`` is the
one place that assembles every sub-command (``curate --help`` lists them all); each command's
options and function live beside it (here: curation; app/cli_train.py: training and evaluation;
app/cli_interleave.py: interleaved documents; app/cli_serve.py: ``curate serve``)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from app import cli_interleave, cli_train

from schemas.checkpoint import DEMO_ROOT, DEMO_SCORER, DEMO_SCORER_DIR
from shardio import storage


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
                     dask_address=a.dask_address, keep_versions=a.keep_versions, write_dropped=a.write_dropped)
    keys = ("samples_in", "kept", "dropped", "dropped_by_reason", "thresholds", "listed_not_downloaded",
            "listed_missing_from_tar", "dropped_samples")
    print(json.dumps({k: m[k] for k in keys if m.get(k) not in (None, {}, 0)}, indent=2))
    # broken and not-processed shards were logged as warnings (terminal and curate.log) while the run went
    print(f"filtered shards: {a.out}/shards   uids: {a.out}/uids.npy   manifest: {a.out}/manifest.json   "
          f"report: {a.out}/report.html   log: {a.out}/curate.log")


def cmd_reshard(a) -> None:
    from pipeline.reshard import reshard

    m = reshard(a.uids, a.pool, a.out, a.samples_per_shard)
    print(json.dumps({k: m[k] for k in ("uids_in_list", "written", "not_found")}, indent=2))
    print(f"filtered shards: {a.out}/shards")


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


def cmd_plugins(a) -> None:
    from pipeline.filters import registry
    from pipeline.stages import configurable
    from shardio import plugins
    from training.objective import BUILTIN, installed

    def source(cls) -> str:
        o = plugins.origin(cls)
        return f"{o['package']} {o['version']} (entry point {o['entry_point']})" if o else "built-in"

    rows = [("filter", t, source(c)) for t, c in registry().items()]
    rows += [("stage", t, source(c)) for t, c in sorted(configurable().items())]
    rows += [("objective", n, "built-in") for n in BUILTIN]
    rows += [("objective", n, source(c)) for n, c in sorted(installed().items())]
    for kind, name, where in rows:
        print(f"{kind:<10} {name:<24} {where}")


def add_plugins(sub) -> None:
    p = sub.add_parser("plugins", help="list the filters, stages and objectives this installation can run",
                       description="The filter types and stage types a config may name and the training "
                                   "objectives, each built-in or from an installed package (entry points "
                                   "curate.filters / curate.stages / curate.objectives). Run it on each worker "
                                   "to see that they match.")
    p.set_defaults(func=cmd_plugins)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``curate`` parser: every sub-command, in the order ``--help`` lists them."""
    p = argparse.ArgumentParser(prog="curate", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for add in (add_build_pool, add_run, add_reshard, cli_train.add_train, cli_train.add_eval, add_demo, add_report,
                cli_interleave.add_interleave, cli_interleave.add_build_interleaved, cli_train.add_finetune,
                cli_train.add_probe, add_plugins, add_serve):
        add(sub)
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


DESCRIPTION = ("Curate web image-text shards for CLIP pretraining, train on them and evaluate. "
               "`curate COMMAND --help` gives a command's options.")


def add_build_pool(sub) -> None:
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


def add_run(sub) -> None:
    r = sub.add_parser("run", help="curate shards (or DataComp metadata): filtered shards + uids + manifest",
                       description="Score, filter and export a pool of webdataset shards.")
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
    r.add_argument("--write-dropped", action="store_true",
                   help="also write the dropped samples as shards under dropped/<first reason>/, for inspection")
    r.set_defaults(func=cmd_run)


def add_reshard(sub) -> None:
    rs = sub.add_parser("reshard", help="uid list + shards -> filtered shards (after a metadata-only run)",
                        description="Write the samples of a uid list (DataComp's u8,u8 .npy, e.g. from a "
                                    "metadata-only `curate run`) from the pool's shards into new shards.")
    rs.add_argument("--uids", required=True, help="uid array (.npy)")
    rs.add_argument("--pool", required=True, help="shards: a folder, a braced pattern or a glob")
    rs.add_argument("--out", required=True, help="output folder (shards/, uids.npy, manifest.json)")
    rs.add_argument("--samples-per-shard", type=int, default=10_000, help="samples per output shard (default: 10000)")
    rs.set_defaults(func=cmd_reshard)


def add_demo(sub) -> None:
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
                   "committed grid's best, bench/results/grid_beyond.json)")
    d.add_argument("--preset", choices=POOL_PRESETS, default="web", help="pool noise mix (default: web)")
    d.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    d.add_argument("--pool", default="data/sample_pool", help="sample pool folder, built if missing or "
                   "built with other settings (default: data/sample_pool)")
    d.add_argument("--data", choices=["auto", "real", "synthetic"], default="auto", help="pool data (default: auto)")
    d.set_defaults(func=cmd_demo)


def add_report(sub) -> None:
    rp = sub.add_parser("report", help="(re)write a curation run's HTML report",
                        description="Write <out>/report.html (curation runs write it too); --train adds a training "
                                    "run's loss curve and evaluation results.")
    rp.add_argument("--run", required=True, help="a curation output folder (the report is rewritten in it)")
    rp.add_argument("--train", default=None, help="a training output folder (metrics.jsonl, eval jsonl)")
    rp.set_defaults(func=cmd_report)


def add_serve(sub) -> None:
    """Listed for --help only: ``main`` hands ``curate serve ...`` to app/cli_serve.py, which owns its options."""
    sub.add_parser("serve", help="serve the Prefect deployments (curate serve --help for its options)",
                   add_help=False)


def log_to_terminal() -> None:
    """The one terminal handler: warnings and errors of every library, each once, as ``curate: LEVEL: ...``
    (no-op when logging is configured already, e.g. by an embedding program or Prefect)."""
    h = logging.StreamHandler(sys.stderr)
    h.setLevel(logging.WARNING)
    h.setFormatter(logging.Formatter("curate: %(levelname)s: %(message)s"))
    h.addFilter(storage.Redact())  # a URL's secrets never reach the terminal
    logging.basicConfig(handlers=[h])


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
    log_to_terminal()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    if argv[:1] == ["serve"]:  # its own parser (app/cli_serve.py): it imports Prefect, the others start light
        from app.cli_serve import main as serve_main

        return serve_main(argv[1:], prog="curate serve")
    parser = build_parser()
    twice = _repeated(argv)
    if twice:
        parser.error(f"option {twice} given more than once")
    a = parser.parse_args(argv)
    from pipeline.lock import OutputLocked
    from pipeline.publish import NotPublished

    try:
        a.func(a)
    except Exception as e:  # noqa: BLE001 - one or two lines for a person, the traceback with --debug
        if debug:
            raise
        run = sys.modules.get("pipeline.run")  # only commands that curate load it (and the filter registry,
        failed = (run.ShardsFailed,) if run else ()  # whose plug-ins need not load for training alone)
        kind = "error" if isinstance(e, USER_ERRORS + (OutputLocked, NotPublished) + failed) else \
            f"failed ({type(e).__name__})"
        print(f"curate {a.command}: {kind}: {e}", file=sys.stderr)
        if not isinstance(e, USER_ERRORS + (OutputLocked, NotPublished)):
            print("  (run again with --debug for the traceback)", file=sys.stderr)
        sys.exit(2 if isinstance(e, USER_ERRORS + (OutputLocked, NotPublished)) else 1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
