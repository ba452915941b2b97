"""CLIP scorer: one instance per configured scorer (``clip:``), writing its score column and its image /
text embeddings. A model scores batches of decoded images (``ClipScorer.prepare`` per image on the
CPU, ``submit`` per batch on its device, collected while the next batch is read; JPEGs are decoded on
the device when its ``decode`` setting says so: pipeline/annotate.py); a ``precomputed`` scorer reads
DataComp's scores and embeddings: a tar's sidecar ``<shard>.parquet`` / ``.npz`` (matched by uid), or, for a
metadata-only pool, the metadata parquet and an npz read in place (a pointer, never a copy; an npz in
object storage is copied out, and only when a filter or stage of the run reads its embeddings)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from pipeline import metadata as md
from pipeline.stages.base import Batch, Needs, Source, Stage
from schemas.config import ClipModel
from shardio import storage
from shardio.shards import atomic_save_npy, atomic_write_bytes


def get_scorer(spec: ClipModel):
    from pipeline.clip_stage import get_scorer as scorer  # torch: only for runs with a model

    return scorer(spec.model_dump_json())


class Clip(Stage):
    name = "clip"
    version = 2  # 2: scores stored as float64, pool-wide scores of precomputed columns
    columns = {"clip_score": "float64"}  # per instance: its own column (clip_score_<tag>)
    needs = Needs(caption=True, pixels=True)
    order = 30

    @classmethod
    def instances(cls, clip, languages, metadata):
        return [cls(spec) for spec in clip]

    def __init__(self, spec: ClipModel):
        self.spec = spec
        self.embeddings = True  # whether the run reads this scorer's embeddings (stages.plan sets it)
        if spec.precomputed:
            self.needs = Needs()
        self.pending = None  # the batch on the device, collected when the next one is queued
        self.idx: list[np.ndarray] = []
        self.pairs: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []

    @property
    def scorer(self):
        """The model (loaded on first use, once per process), or None for a precomputed column."""
        return get_scorer(self.spec) if not self.spec.precomputed else None

    @property
    def input_side(self) -> int | None:
        return self.scorer.input_side

    @property
    def batch_size(self) -> int | None:
        return None if self.spec.precomputed else self.scorer.batch_size

    @property
    def device_pixels(self) -> bool:  # device-decoded images are resized with the batch on its device
        return self.scorer is not None and self.scorer.fast is not None

    @property
    def decode_device(self) -> str | None:
        return self.scorer.device if self.scorer is not None and self.scorer.device_decode else None

    @property
    def device(self) -> str:
        return self.scorer.device if self.scorer is not None else "cpu"

    @property
    def folder(self) -> str:
        return self.spec.column

    def out_columns(self) -> dict[str, str]:
        return {self.spec.column: "float64"}

    def key_config(self, src: Source) -> dict:
        from pipeline.scorer_identity import scorer_identity, weights_identity

        cfg = {**scorer_identity(self.spec), "version": self.version}
        if src.metadata:  # the embeddings stay in the npz: its identity is in the key
            cfg["npz"] = md.npz_identity(md.npz_path(src.path))
            if not self._copies(src):
                cfg["embeddings"] = False  # a run that reads them computes this stage again
        elif self.spec.precomputed:
            cfg["weights"] = md.sidecar_identity(src.path)
        else:  # the decode side shapes the pixels
            cfg.update(weights=weights_identity(self.spec), decode_side=src.side, decode_scale="m/8")
        return cfg

    def step(self, batch: Batch) -> None:
        have = [i for i, im in enumerate(batch.images) if im is not None]
        if self.scorer is None or not have:
            return
        prepared = [self.scorer.prepare(batch.images[i]) for i in have]
        handle = self.scorer.submit(prepared, [batch.samples[i].caption for i in have])
        self._collect()  # the previous batch, while this one runs
        self.pending = ([batch.rows[i] for i in have], handle)

    def _collect(self) -> None:
        if self.pending is not None:
            rows, handle = self.pending
            img, txt, score = self.scorer.collect(handle)
            self.idx.append(np.array(rows))
            self.pairs.append(np.stack([img, txt]))
            self.scores.append(score)
            self.pending = None

    def finish(self, src: Source) -> pa.Table:
        n = len(src.uids)
        if src.metadata:
            score = self._metadata(src, n)
        elif self.spec.precomputed:
            every, score, img, txt = md.sidecar_scores(src.path, self.spec, src.uids)
            # every listed row's score, downloaded or not: DataComp's cutoff is over the pool's metadata
            atomic_save_npy(src.work.pool_scores(self.folder, src.sid), every)
            self._save(src, img, txt)
        else:
            score = self._model_outputs(src, n)
        uid = src.uids if isinstance(src.uids, pa.ChunkedArray) else pa.array(src.uids, pa.string())
        return pa.table({"uid": uid, "row": pa.array(np.arange(n), pa.int64()),
                         self.folder: pa.array(np.asarray(score).astype(np.float64), pa.float64())})

    def _model_outputs(self, src: Source, n: int) -> np.ndarray:
        self._collect()
        dim = self.scorer.dim
        img, txt = np.zeros((n, dim), np.float16), np.zeros((n, dim), np.float16)
        score = np.full(n, np.nan, np.float32)
        if self.idx:
            rows, stacked = np.concatenate(self.idx), np.concatenate(self.pairs, axis=1)
            img[rows], txt[rows], score[rows] = stacked[0], stacked[1], np.concatenate(self.scores)
        self._save(src, img, txt)
        return score

    def _save(self, src: Source, img, txt) -> None:
        if img is not None:
            atomic_save_npy(src.work.embeddings(self.folder, src.sid, "img"), img)
            atomic_save_npy(src.work.embeddings(self.folder, src.sid, "txt"), txt)

    def _copies(self, src: Source) -> bool:
        """Whether a metadata pool's embeddings are located or copied out: always from a local npz (a
        pointer costs nothing), from one in object storage only when the run reads them."""
        return self.embeddings or not storage.is_url(md.npz_path(src.path))

    def _metadata(self, src: Source, n: int) -> np.ndarray:
        """A metadata-only pool: the score column, and the npz's embeddings located (or copied out)."""
        npz = md.npz_path(src.path)
        where = md.npz_embeddings(npz, self.spec.precomputed, n) if md.npz_identity(npz) else None
        pointer = src.work.npz_pointer(self.folder, src.sid)
        for part in ("img", "txt"):  # a pointer or a copy, never both
            src.work.embeddings(self.folder, src.sid, part).unlink(missing_ok=True)
        pointer.unlink(missing_ok=True)
        if not self._copies(src):  # no filter or stage of the run reads them: the scores alone
            score = md.precomputed_score(src.path, self.spec)
        elif where is not None:
            score = md.precomputed_score(src.path, self.spec)
            pointer.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(pointer, json.dumps(where).encode())
        else:  # compressed or not float16: copied out, as a view cannot map it
            score, img, txt = md.precomputed(src.path, self.spec, n)
            self._save(src, img, txt)
        atomic_save_npy(src.work.pool_scores(self.folder, src.sid), score)
        return score
