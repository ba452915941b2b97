"""Metadata-only pools read in place. When every stage a run plans is a column of DataComp's metadata
parquet (ingest's columns, precomputed CLIP scores whose embeddings nothing in the run reads), an
annotate pass would only copy those columns into the work folder for decide to read back. Instead each
parquet is read once, only the columns the run needs, on reader threads (parquet decoding releases
the GIL), and decide takes the tables from memory: nothing is written per shard, so the work folder
does not grow by a copy of the pool. The columns left out (``decide.Lean``'s deferred ones: url, sha256,
the caption, its counts and the image sizes when no filter reads them) are read again from the pool when a
full metadata.parquet is written (``export.metadata: decisions`` leaves them out).

A parquet that cannot be read fails as its annotate job would (the run's failure policy applies), and
the tables, the accounting and every output are the ones the annotate pass gives (tests/test_direct.py).
A pool in object storage, a work folder there, a cluster or Prefect tasks, language id, configured
stages and embeddings go through annotate, whose per-shard results are cached."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import schemas
from pipeline import metadata as md
from pipeline.ingest import INGEST_COLUMNS, MAX_CAPTION_CHARS
from pipeline.stages import plan_for
from pipeline.stages.clip import Clip
from pipeline.uids import hex_halves, joined_halves
from schemas.outputs import ShardResult
from shardio import storage
from shardio.shards import shard_id

READERS = 2  # threads reading parquets


def eligible(p, local: bool) -> bool:
    """Whether plan ``p`` reads its pool in place (``local``: its executor is this machine's)."""
    if not local or p.work_url is not None or not p.shards:
        return False
    if not all(md.is_metadata(s) and not storage.is_url(s) for s in p.shards):
        return False
    for st in plan_for(p.config, metadata=True):
        if st.wanted() and st.folder != "ingest" and not (
                isinstance(st, Clip) and st.spec.precomputed and not st.embeddings):
            return False
    return True


def read_shard(job: tuple) -> tuple:
    """One parquet's (ingest table, scorer tables, scores as stored, ShardInfo, the uids' halves), from one
    read; ``job``: (path, ingest's wanted columns, scorer column -> its precomputed scorer, e.g. ``l14``)."""
    path, wanted, scorers = job
    cols = {c: md.score_column(pre) for c, pre in scorers.items()}
    with pq.ParquetFile(path) as f:  # a local file: its footer read once
        have = md.pool_schema(path, f.schema_arrow.names)
        for pre in scorers.values():
            md.check_score_column(path, have, pre)
        t = f.read(columns=list(dict.fromkeys(md.pool_columns(wanted, have) + list(cols.values()))))
    raw = t.column("uid")
    halves = hex_halves(raw) if pa.types.is_string(raw.type) else False  # checks the uids too
    ingest, info = md.ingest_of(t, have, path, wanted, halves)
    if "shard" in ingest.column_names:  # as decide.Lean holds it, encoded here
        i = ingest.schema.get_field_index("shard")
        ingest = ingest.set_column(i, "shard", pc.dictionary_encode(ingest.column("shard")))
    uid = ingest.column("uid")
    # the uids as ingest holds them: lower case (an upper-case letter's halves are the same)
    halves = (*halves[:2], False) if halves else hex_halves(uid)
    scores = {c: t.column(name).to_numpy() for c, name in cols.items()}
    tables = [pa.table({"uid": uid, c: pa.array(np.asarray(v, np.float64), pa.float64())}) for c, v in scores.items()]
    return ingest, tables, scores, info, halves


class Loaded:
    """The pool's tables, read by ``read``: per shard id the ingest table and the scorers' tables (what
    ``decide.load_columns`` reads from the work folder), every row's precomputed scores, the paths."""

    def __init__(self, wanted: list[str], scorers: list[Clip]):
        self.wanted, self.scorers = wanted, scorers
        self.columns = {st.folder: st.spec.precomputed for st in scorers}  # score column -> its scorer
        self.tables: dict[str, tuple[pa.Table, list[pa.Table]]] = {}
        self.scores: dict[str, dict[str, np.ndarray]] = {}
        self.paths: dict[str, str] = {}
        self.halves: dict[str, tuple | None] = {}  # the uids' halves (pipeline/uids.py), made on the readers

    def read(self, sid: str) -> tuple[pa.Table, list[pa.Table]]:
        """``load_columns``' ``read``: a shard's tables, handed over once."""
        return self.tables.pop(sid)

    def listed(self, sids: list[str], df) -> dict[str, np.ndarray]:
        """Score column -> every row's score over ``sids`` as stored (the pool's metadata: the clip_score
        cutoff's); a float64 column's are ``df``'s own values (no copy)."""
        out = {}
        for st in self.scorers:
            parts = [self.scores[s][st.folder] for s in sids]
            same = all(x.dtype == np.float64 for x in parts)
            out[st.folder] = df[st.folder].to_numpy() if same else np.concatenate(parts)
        self.scores.clear()
        return out

    def uid_halves(self, sids: list[str]) -> tuple | None:
        """The uids' halves over ``sids`` (``uids.uid_order``'s), handed over once."""
        return joined_halves([self.halves.pop(s) for s in sids])

    def source(self, sid: str, columns: list[str]) -> pa.Table:
        """``decide.Lean``'s source: those ingest columns of a shard, read from its parquet again (the
        caption alone, as the report asks for it: its text column cut as ingest cuts it)."""
        if list(columns) == ["caption"]:
            text = pq.read_table(self.paths[sid], columns=["text"]).column("text")
            if pa.types.is_string(text.type) or pa.types.is_large_string(text.type):
                cut = pc.utf8_slice_codeunits(pc.fill_null(text, ""), 0, MAX_CAPTION_CHARS)
                return pa.table({"caption": cut.cast(schemas.arrow_type("caption"))})
        return md.ingest_table(self.paths[sid], columns)[0]


def read(p, progress: bool = True) -> tuple[dict[str, ShardResult], dict[str, str]]:
    """Read the pool of ``p`` into ``p.loaded`` (a ``Loaded``) on READERS threads; (results by shard,
    errors by shard), as ``run.annotate`` returns them. (A 2-process pool took 7.8 s against the threads'
    3.5-4.4 s at 12.8M rows, another job running: the tables it sends back are pickled whole.)"""
    from tqdm import tqdm

    from pipeline.decide import Lean

    deferred = Lean.deferred_for(p.config)
    stages = plan_for(p.config, metadata=True)
    loaded = Loaded([c for c in INGEST_COLUMNS if c not in deferred],
                    [st for st in stages if isinstance(st, Clip) and st.wanted()])
    jobs = [(path, loaded.wanted, loaded.columns) for path in p.shards]
    done, failed = {}, {}
    with tqdm(total=len(jobs), desc="read", unit="shard", disable=not progress) as bar:
        for job, got, error in _threads(jobs):
            bar.update(1)
            path = job[0]
            if error is not None:
                failed[path] = error
                continue
            sid = shard_id(path)
            ingest, tables, scores, info, loaded.halves[sid] = got
            loaded.tables[sid], loaded.scores[sid], loaded.paths[sid] = (ingest, tables), scores, path
            done[path] = ShardResult.model_validate({"shard": sid, "ran": [], "rows": ingest.num_rows,
                                                     "info": info.as_dict()})
    p.loaded = loaded
    return done, failed


def _threads(jobs: list[tuple]):
    """``read_shard`` on READERS threads: (job, result, error or None), in order."""
    def one(job):
        try:
            return job, read_shard(job), None
        except Exception as e:  # noqa: BLE001 - the shard's failure, as an annotate job's
            return job, None, f"{type(e).__name__}: {e}"

    with ThreadPoolExecutor(READERS) as pool:
        yield from pool.map(one, jobs)
