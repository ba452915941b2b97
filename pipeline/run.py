"""The curation core: plan the shards, annotate them on an executor, apply the failure policy,
decide, export into a staging folder, publish atomically, write the log. The command line and the
Prefect flow (flows/curate.py) both call ``plan`` + ``annotate`` + ``finish``; nothing else loops
over shards or decides what a failure means.

Failure policy: a shard whose job still fails after retries fails the run before anything is
published (the previous output stays), naming the shard and the error; ``on_failure="partial"``
publishes without it and lists it under ``not_processed_shards``. A broken tar (truncated, not a
tar) is not a failure: the samples before the damage are curated and the shard is listed under
``broken_shards``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline import memory, objstore, publish, workstore
from pipeline.config import CurateConfig, load_config
from pipeline.executors import Executor, InProcess, ProcessPool, make
from pipeline.faults import point
from pipeline.lock import exclusive
from pipeline.metadata import is_metadata, read_ahead
from pipeline.workdir import spool_dir
from schemas.outputs import Manifest, ShardInfo, ShardResult
from shardio import plugins, storage
from shardio.shards import expand, shard_id
from shardio.tar import spooling

log = logging.getLogger(__name__)
Policy = Literal["fail", "partial"]


class ShardsFailed(RuntimeError):
    pass


@dataclass
class Plan:
    shards: list[str]
    out: Path
    work: Path
    config: CurateConfig
    config_hash: str
    unread: list[dict] = field(default_factory=list)  # files under a pool folder that are not read, and why
    out_url: str | None = None  # an output in object storage; ``out`` is then this machine's folder for the run
    work_url: str | None = None  # a work folder in object storage; ``work`` is then this machine's mirror of it
    loaded: object = None  # a metadata pool read in place (pipeline/direct.py): its tables, until decide


def plan(pool: str | list[str], out: str | Path, config: CurateConfig | str | dict,
         work: str | Path | None = None) -> Plan:
    """Check everything a run needs before any work starts: config, scorers, shards, output folder."""
    config = config if isinstance(config, CurateConfig) else load_config(config)
    for spec in config.clip:
        if spec.model or spec.checkpoint:  # nothing to check (nor torch to import) for a precomputed column
            from pipeline.clip_stage import check_scorer

            check_scorer(spec)
    for f in config.filters:
        f.check()
    for st in config.stages:
        if hasattr(st, "check"):  # optional: a clear error before any work (a head's weights)
            st.check()
    storage.configure(config.storage_options)  # for the URLs this process reads; workers get them per job
    out_url = work_url = None
    if storage.is_url(str(out)):  # written here first, then published by pointer (pipeline/objstore.py)
        objstore.check_writable(str(out))
        out_url = str(out).rstrip("/")
        out = _local("curate-out", out_url)
        work = work if work is not None else out_url  # the cache beside the versions, as in a local output
    if work is not None and storage.is_url(str(work)):  # per-shard results in the store (pipeline/workstore.py)
        objstore.check_writable(str(work), "--work")
        work_url = str(work).rstrip("/")
        work = _local("curate-work", work_url)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the curation output")
    if work is not None and Path(work).exists() and not Path(work).is_dir():
        raise ValueError(f"--work {work} is a file; give a folder")
    unread: list[dict] = []
    shards = _expand(pool, unread)
    if any(is_metadata(s) for s in shards):
        _check_metadata_only(shards, config)
    by_id: dict[str, str] = {}
    for s in shards:
        sid = shard_id(s)
        if sid in by_id and _same(by_id[sid]) != _same(s):
            raise ValueError(f"two input shards have the id {sid!r}: {by_id[sid]} and {s}; per-shard outputs and "
                             "derived uids are keyed by it (the path inside the pool folder or pattern), so give "
                             "their common folder, a pattern from it or a .txt list there, or curate them apart")
        by_id.setdefault(sid, s)
    shards = list(by_id.values())
    digest = hashlib.sha256(json.dumps(config.model_dump(), sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Plan(shards, out, Path(work) if work is not None else out, config, digest, unread, out_url, work_url)


def _local(kind: str, url: str) -> Path:
    """This machine's folder for an output or work folder in object storage."""
    return Path(tempfile.gettempdir()) / kind / hashlib.sha256(url.encode()).hexdigest()[:16]


def _same(path: str) -> str:
    return path if storage.is_url(path) else str(Path(path).resolve())


def _expand(pool, unread: list[dict]) -> list[str]:
    """Shards, or (a folder with no tars) a DataComp metadata folder of parquets."""
    try:
        return expand(pool, unread)
    except FileNotFoundError:
        unread.clear()
        folder = str(pool) if isinstance(pool, (str, Path)) else None
        found = _parquets(folder) if folder is not None else []
        if found:
            return found
        raise


def _parquets(folder: str) -> list[str]:
    """The ``.parquet`` files directly in a folder (a URL's through one listing), sorted."""
    if not storage.is_url(folder):
        path = Path(folder)
        return sorted(str(p) for p in path.glob("*.parquet")) if path.is_dir() else []
    fs, path = storage.filesystem(folder)
    try:
        listed = fs.ls(path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(f"{folder.rstrip('/')}/{storage.name(x['name'])}" for x in listed
                  if x["type"] == "file" and x["name"].endswith(".parquet"))


def _check_metadata_only(shards: list[str], config: CurateConfig) -> None:
    if not all(is_metadata(s) for s in shards):
        raise ValueError("the pool mixes tars and metadata parquets; give one or the other")
    for spec in config.clip:
        if not spec.precomputed:
            raise ValueError(f"scorer {spec.model!r} needs images, and this pool is metadata only: use "
                             "'precomputed: l14' (or b32), the scores shipped with the metadata")
    for f in config.filters:
        if f.needs_thumbs:
            raise ValueError(f"filter {f.instance!r} compares images, and this pool is metadata only")


def annotate_job(args: tuple) -> ShardResult:
    """One shard's per-shard pass (picklable, for process pools and clusters)."""
    shard, work, clip_json, languages, stages_json, options, cached, *rest = args
    embeddings = rest[0] if rest else None  # scorer columns whose embeddings the run reads (None: all)
    spool = rest[1] if len(rest) > 1 else None  # the run's spool, when the job runs on the run's machine
    check_plugins(rest[2] if len(rest) > 2 else [])  # before the stages' configs are read here
    storage.configure(options)  # the run's storage options, in whichever process runs the job
    with spooling(spool) if spool else nullcontext():  # else this process's own, if the run set one
        return _annotate_job(shard, work, clip_json, languages, stages_json, cached, embeddings)


def check_plugins(used: list[dict]) -> None:
    """The stage plug-ins a run uses (``CurateConfig.plugins``) are installed in this process, in the
    same package version as where the run started; a clear error naming the package otherwise (a
    Dask worker without it could not read the stage's config, and another version may score otherwise)."""
    if not used:
        return
    import socket

    from pipeline.stages import configurable

    have = configurable()
    for u in used:
        o = plugins.origin(have[u["type"]]) if u["type"] in have else None
        if o is None or (o["package"], o["version"]) != (u["package"], u["version"]):
            here = f"{o['package']} {o['version']}" if o else "no such stage"
            raise plugins.PluginError(f"this worker ({socket.gethostname()}) cannot run stage {u['type']!r}: the run "
                                      f"uses it from {u['package']} {u['version']} (entry point "
                                      f"{u['entry_point']!r}), here: {here}; install that version on every worker")


def _annotate_job(shard, work, clip_json, languages, stages_json, cached, embeddings) -> ShardResult:
    from pydantic import TypeAdapter

    from pipeline.annotate import annotate_shard
    from pipeline.config import StageSpec
    from schemas.config import ClipModel

    clip = [ClipModel.model_validate_json(c) for c in clip_json]
    stages = [TypeAdapter(StageSpec).validate_json(s) for s in stages_json]
    if storage.is_url(work):  # private scratch; results go to the work folder in the store
        def one(scratch):
            return annotate_shard(shard, scratch, clip, languages, stages, embeddings=embeddings)

        r = workstore.run_job(work, cached, one)
    else:
        r = annotate_shard(shard, work, clip, languages, stages, embeddings=embeddings)
    return ShardResult.model_validate({**r, "info": r["info"].as_dict()})


def jobs(p: Plan, spool: bool = False) -> list[tuple]:
    """(shard, work folder, scorers, languages, stages, storage options, the shard's cached files in a work
    folder in object storage, the scorer columns whose embeddings the run reads, the run's spool or None,
    the stage plug-ins it uses): the options print as their schemes only. ``spool``: the jobs run on this machine (this process or
    its pool), so remote tars they read are kept in the run's spool for export and the report."""
    options = storage.Options(p.config.storage_options)
    cached = workstore.index(p.work_url) if p.work_url else {}
    clip = [c.model_dump_json() for c in p.config.clip]
    stages = [st.model_dump_json() for st in p.config.stages]
    columns, languages = p.config.embedding_columns(), p.config.needs_languages
    kept = str(spool_dir(p.out)) if spool and _spools(p) else None  # once: it looks at every shard
    used = [u for u in p.config.plugins() if u["kind"] == "stage"]
    return [(s, p.work_url or str(p.work), clip, languages, stages, options,
             sorted(cached.get(shard_id(s), {})), columns, kept, used) for s in p.shards]


def annotate(p: Plan, executor: Executor, progress: bool = True) -> tuple[dict[str, ShardResult], dict[str, str]]:
    """Run every shard's job; return (results by shard, errors by shard). A metadata-only pool whose
    stages are all its own columns is read in place instead (pipeline/direct.py)."""
    from tqdm import tqdm

    from pipeline import direct

    if direct.eligible(p, isinstance(executor, (InProcess, ProcessPool))):
        return direct.read(p, progress)
    done, failed = {}, {}
    bar = tqdm(total=len(p.shards), desc="annotate", unit="shard", disable=not progress)
    # jobs run here one after the other: a bucket metadata pool's next parquets are fetched meanwhile
    here = isinstance(executor, (InProcess, ProcessPool))  # not a cluster: the run's spool is theirs too
    with read_ahead(p.shards) if isinstance(executor, InProcess) else nullcontext():
        for i, (job, result, error) in enumerate(executor.map(annotate_job, jobs(p, spool=here))):
            if error is None:
                done[job[0]] = result
            else:
                failed[job[0]] = error
                log.info("shard %s failed after retries: %s", job[0], error)  # reported once, by finish or its error
            bar.update(1)
            if i == len(p.shards) // 2:
                point("annotate:mid")
    bar.close()
    return done, failed


def finish(p: Plan, done: dict[str, ShardResult], failed: dict[str, str], on_failure: Policy = "fail",
           run: dict | None = None, keep_versions: int = 2, write_dropped: bool = False) -> dict:
    """Apply the failure policy, decide, export into staging, publish (keeping the newest ``keep_versions``
    versions and those a training holds); return the manifest (a dict of ``schemas.outputs.Manifest``,
    paths made absolute). ``run``: this run's facts (``run_facts``). ``write_dropped``: the dropped
    samples also go to ``dropped/<first reason>/`` as shards (``export.write_dropped``)."""
    from pipeline.decide import summarize
    from pipeline.export import Background, export, write_metadata

    if failed and on_failure == "fail":
        names = "; ".join(f"{s}: {e}" for s, e in sorted(failed.items()))
        raise ShardsFailed(f"{len(failed)} shard(s) failed after retries, nothing was published (the previous "
                           f"output stays; rerun to retry, or pass on_failure='partial'): {names}")
    t0 = time.time()
    shards = [s for s in p.shards if s in done]
    if p.work_url is not None:  # the per-shard results, from the store into this machine's mirror
        workstore.pull(p.work_url, [shard_id(s) for s in shards], p.work)
    infos = [done[s].info for s in shards]
    df, filters, seconds, lean, order = _decide(p, shards, sum(i.samples_found for i in infos))
    manifest = {**summarize(df), **_shard_facts(infos, failed), "pool_files_not_read": p.unread,
                "filters": filters, "thresholds": {k: v["threshold"] for k, v in filters.items() if "threshold" in v},
                "scorers": [c.model_dump() for c in p.config.clip],
                "config": p.config.model_dump(), "config_hash": p.config_hash, "plugins": p.config.plugins(),
                "input_shards": [str(s) for s in shards], "run": dict(run or {})}  # plain str, not ShardPath
    _warn(manifest)
    declared = {f.out_column(o): t for f in p.config.filters for o, t in f.outputs.items()}
    declared.update(p.config.stage_columns())
    stage = publish.staging(p.out)
    meta = Background(write_metadata, stage / "metadata.parquet", df, declared, 1 << 17, lean,
                      p.config.export.metadata == "decisions")  # while the rest is written
    try:
        tars = [s for s in shards if not is_metadata(s)]
        manifest = export(df, tars, stage, p.config.export.samples_per_shard, manifest, declared,
                          _rewritten_captions(df, p.config), metadata=False, order=order)
        del order
        manifest = _outputs(p, df, shards, tars, infos, stage, manifest, lean, write_dropped, seconds)
    finally:
        meta.join()
    manifest["run"]["decide_export_seconds"] = round(time.time() - t0, 2)
    typed = Manifest.model_validate(manifest)
    # written last: publish refuses a folder without it
    (stage / "manifest.json").write_text(storage.redact(typed.to_json()))
    point("publish:staged")
    if p.out_url is not None:
        version = objstore.publish(p.out_url, stage, p.out / "curate.log")
        shutil.rmtree(stage, ignore_errors=True)
        log.info("published %s: %d in, %d kept", version, typed.samples_in, typed.kept)
        return absolute(typed.as_dict(), version)
    version = publish.commit(p.out, stage, keep_versions)
    log.info("published %s: %d in, %d kept, dropped %s", version, typed.samples_in, typed.kept,
             typed.dropped_by_reason)
    return absolute(typed.as_dict(), version)


def _outputs(p: Plan, df, shards: list[str], tars: list[str], infos: list[ShardInfo], stage: Path,
             manifest: dict, lean, write_dropped: bool, seconds: dict) -> dict:
    """After export: not_downloaded.parquet, dropped/ and the report into the staging folder; the manifest
    with them added."""
    from pipeline.export import write_not_downloaded
    from pipeline.export import write_dropped as dropped_shards
    from pipeline.report import write_report

    listed = [s for s, i in zip(shards, infos) if i.not_downloaded and not is_metadata(s)]
    if listed:  # not samples: never in uids.npy or metadata.parquet
        n = write_not_downloaded(stage / "not_downloaded.parquet", listed)
        if n != sum(manifest["listed_not_downloaded"].values()):
            log.warning("not_downloaded.parquet has %d rows, the shard accounting %d: a shard parquet changed "
                        "since it was read", n, sum(manifest["listed_not_downloaded"].values()))
        manifest["not_downloaded"] = "not_downloaded.parquet"
    if write_dropped:
        manifest["dropped_samples"] = d = dropped_shards(df, tars, stage / "dropped",
                                                         p.config.export.samples_per_shard)
        if d["not_written"]:
            log.info("dropped samples with no bytes to copy (metadata-only rows, stray tar members), not in "
                     "dropped/: %s", d["not_written"])
    manifest = _redacted(manifest)
    manifest["report"] = "report.html"
    manifest["run"]["filter_seconds"] = seconds
    captions = (lambda rows: lean.values("caption", rows)) if lean is not None and "caption" in lean.deferred else None
    write_report(stage, df, shards, manifest, captions=captions)  # it numbers the rows from 0 itself
    return manifest


def _decide(p: Plan, shards: list[str], found: int):
    """Load the shards' columns and decide; (table, filter summaries, seconds per filter, the ``Lean``
    that gives a metadata-only run's table back its left-out columns or None, the uids' sorted order
    or None)."""
    from pipeline.decide import Arrays, Lean, decide, load_columns
    from pipeline.export import Background
    from pipeline.uids import uid_order

    sids = [shard_id(s) for s in shards]
    plotting = threading.Thread(target=_import_plotting, daemon=True)  # while parquet reading holds no GIL
    plotting.start()
    metadata_only = bool(shards) and all(map(is_metadata, shards))
    lean = Lean(p.work, sids, Lean.deferred_for(p.config)) if metadata_only else None
    loaded, p.loaded, listed, sorting = p.loaded, None, {}, None
    if loaded is not None:  # read in place (pipeline/direct.py): the tables are in memory, the uids' halves
        if lean is not None:  # made: they are sorted while the table is built
            lean.source = loaded.source
        sorting = Background(_sorted_halves, loaded, sids)
    df = load_columns(p.work, sids, p.config, lean, loaded.read if loaded is not None else None)
    if loaded is not None:
        listed = loaded.listed(sids, df)
    plotting.join()  # before decide, which may fork
    point("decide")
    # one sort for repeated uids and uids.npy
    order = sorting.result() if sorting is not None and len(df) else None
    if order is None and len(df):
        order = uid_order(df["uid"])
    release = lean.releasable() if lean is not None else []
    df, filters, seconds = decide(df, p.config, Arrays(p.work, sids, listed), run=p.work, order=order,
                                  release=release)
    if lean is not None:
        lean.released(release)
    if found != len(df):
        raise RuntimeError(f"accounting: the shards hold {found} samples but decide saw {len(df)}")
    return df, filters, seconds, lean, order


def _sorted_halves(loaded, sids: list[str]):
    """``uid_order`` from the halves the readers made (None when a shard had none)."""
    from pipeline.uids import uid_order

    halves = loaded.uid_halves(sids)
    return uid_order(None, halves) if halves is not None else None


def _shard_facts(infos: list[ShardInfo], failed: dict[str, str]) -> dict:
    """The manifest's per-shard accounting, summed over the shards curated."""
    return {
        "listed_not_downloaded": _add_counts(i.not_downloaded for i in infos),
        "listed_missing_from_tar": sum(i.listed_missing for i in infos),
        "broken_shards": [{"shard": i.path, "error": i.error, "samples_recovered": i.samples_found}
                          for i in infos if i.error],
        "not_processed_shards": [{"shard": str(s), "error": e} for s, e in sorted(failed.items())],
        "skipped_members": _add_counts(i.skipped_members for i in infos),
        "sidecar_errors": [{"shard": i.path, "error": i.sidecar_error} for i in infos if i.sidecar_error],
    }


def _warn(manifest: dict) -> None:
    """Each shard problem once, as a warning (the terminal shows it through the app's handler)."""
    for b in manifest["broken_shards"]:
        log.warning("broken shard %s: %s (%d samples recovered)", b["shard"], b["error"], b["samples_recovered"])
    for f in manifest["not_processed_shards"]:
        log.warning("not processed (published without it): %s: %s", f["shard"], f["error"])
    unread = manifest.get("pool_files_not_read") or []
    if unread:
        why = _add_counts({u["why"].split(":")[0]: 1} for u in unread)
        log.warning("%d file(s) under the pool are not read (%s), listed in the manifest's pool_files_not_read",
                    len(unread), ", ".join(f"{k}: {v}" for k, v in why.items()))


def _redacted(manifest: dict) -> dict:
    """The manifest without what URLs may carry as secrets (user:password@, presigned query values)."""
    text = json.dumps(manifest, default=str)
    clean = storage.redact(text)
    return manifest if clean == text else json.loads(clean)


def _import_plotting() -> None:
    """The report's matplotlib import (~0.8 s), done while the columns load; its errors show up later,
    where the report draws."""
    try:
        import matplotlib.backends.backend_svg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except Exception:  # noqa: BLE001
        pass


def _add_counts(dicts) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + int(v)
    return dict(sorted(out.items()))


def _rewritten_captions(df, config) -> dict:
    """(shard, key) -> caption, from filters that rewrite captions (the original stays in metadata)."""
    out: dict = {}
    for f in config.filters:
        if getattr(f, "rewrites_caption", False):
            col = f.out_column("caption")
            kept = df[df["keep"] & df[col].notna()]
            out.update(zip(zip(kept["shard"], kept["key"]), kept[col]))
    return out


def absolute(manifest: dict, root: Path | str) -> dict:
    """The manifest with its relative paths resolved against the published version folder (or URL)."""
    m = dict(manifest)
    m["root"] = str(root)
    m["output_shards"] = [storage.join(str(root), s) for s in m.get("output_shards", [])]
    for k in ("uids", "metadata", "report", "not_downloaded"):
        if m.get(k):
            m[k] = storage.join(str(root), m[k])
    return m


LIBRARY = ("pipeline", "shardio")  # the loggers whose events go to <out>/curate.log


@contextmanager
def output_guard(p: Plan):
    """The run's locks and log: the output folder's lock, an output prefix's lease lock in object storage,
    and the run log (for a bucket, this run's lines, appended to ``<out>/curate.log`` at publish)."""
    with exclusive(p.out), (objstore.exclusive(p.out_url) if p.out_url else nullcontext()):
        if p.out_url is not None:
            (p.out / "curate.log").unlink(missing_ok=True)
        with run_log(p.out), run_spool(p):
            yield


def _spools(p: Plan) -> bool:
    return any(storage.is_url(s) and not is_metadata(s) for s in p.shards)


@contextmanager
def run_spool(p: Plan):
    """A pool of tars in a store: the run's spool (``spool_dir``, a killed run's emptied first), where
    this process and the jobs on this machine keep each shard as they fetch it, so export and the
    report read it from there; removed when the run ends. Jobs on a cluster keep nothing here."""
    if not _spools(p):
        yield
        return
    folder = spool_dir(p.out)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        with spooling(folder):
            yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def run_log(out: Path):
    """Append this run's log lines (INFO and up) to ``<out>/curate.log``. Nothing here writes to the
    terminal: records propagate to the root logger, which the application configures (app/cli.py)."""
    out.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(out / "curate.log", errors="backslashreplace")  # shard paths need not be UTF-8
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(n) for n in LIBRARY]
    levels = [lg.level for lg in loggers]
    fh.addFilter(storage.Redact())  # a URL's secrets never reach the log
    for lg in loggers:
        lg.addHandler(fh)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(fh)
            lg.setLevel(level)
        fh.close()


def run_curation(pool: str | list[str], out: str | Path, config: CurateConfig | str | dict,
                 progress: bool = True, work: str | Path | None = None, workers: int = 1,
                 on_failure: Policy = "fail", retries: int = 1, dask_address: str | None = None,
                 keep_versions: int = 2, write_dropped: bool = False) -> dict:
    """Curate ``pool`` (paths, braced patterns or folders of shards) into ``out``; return the manifest.

    Per-shard columns and embeddings go to ``work`` (default: ``out``); several configs can share one
    ``work`` folder and so score the pool once. ``workers`` > 1 annotates shards in that many processes;
    ``dask_address`` on a Dask cluster. Outputs are the same either way. ``write_dropped``: also write the
    dropped samples as shards under ``dropped/<first reason>/`` of the output version."""
    p = plan(pool, out, config, work)
    with output_guard(p), memory.kept():
        log.info("curating %d shards into %s (config %s)", len(p.shards), p.out_url or p.out, p.config_hash)
        t0 = time.time()
        light = all(is_metadata(s) for s in p.shards)  # no model: workers need no torch
        done, failed = annotate(p, make(workers, dask_address, retries, torch=not light), progress)
        seconds = time.time() - t0
        facts = run_facts(done, seconds, read_in_place=p.loaded is not None)
        return finish(p, done, failed, on_failure, facts, keep_versions, write_dropped)


def run_facts(done: dict[str, ShardResult], seconds: float, read_in_place: bool = False) -> dict:
    """The manifest's ``run`` facts of the per-shard pass (schemas.outputs.RunFacts)."""
    rows = sum(r.rows for r in done.values())
    return {"annotate_seconds": round(seconds, 2),
            "annotate_samples_per_s": round(rows / seconds, 1) if seconds > 0 else None,
            "stage_runs": sum(len(r.ran) for r in done.values()),
            "shards_annotated": sum(bool(r.ran) for r in done.values()), "read_in_place": read_in_place}
