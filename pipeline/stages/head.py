"""A head: a linear layer or a small MLP over a scorer's image embeddings, loaded from a local weights
file, writing one score column a filter can threshold (``{type: threshold, column: <name>, ...}``).
The shape of LAION's aesthetic and NSFW predictors.

Weights (``.npz`` or ``.safetensors``): ``weight`` (out, in) and optional ``bias`` (out,) for one
layer, or ``<prefix>.<i>.weight`` / ``.bias`` per layer, applied in order of ``i`` (torch's
``nn.Sequential`` state dict, e.g. ``layers.0.weight``, ``layers.2.weight``; LAION's aesthetic MLP
converts as it is, with ``activation: none``). The last layer has one output. Embeddings are
L2-normalised first; rows without an image embedding (undecodable, missing) score NaN.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from pipeline.stages.base import Source, Stage


class HeadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["head"]
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="the score column it writes")
    column: str = Field("clip_score", description="the scorer (its score column) whose image embeddings it reads")
    weights: str = Field(description="local .npz or .safetensors file (see pipeline/stages/head.py)")
    activation: Literal["relu", "gelu", "none"] = Field("relu", description="between layers")
    sigmoid: bool = Field(False, description="squash the output to a probability")

    def scorer_columns(self) -> list[str]:
        return [self.column]

    def check(self) -> None:
        """A clear error, before any work starts, when the weights cannot be used."""
        load_layers(self.weights)


_LAYER = re.compile(r"^(?:(.*)\.)?(\d+)\.weight$")


def load_layers(path: str | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(weight (out, in), bias (out,))] in order, as float32; a ValueError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"head weights {path} do not exist")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        arrays = load_file(str(path))
    elif path.suffix == ".npz":
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    else:
        raise ValueError(f"head weights {path}: give a .npz or .safetensors file")
    if "weight" in arrays:
        names = [""]
    else:
        found = sorted((int(m.group(2)), k[: -len("weight")]) for k in arrays if (m := _LAYER.match(k)))
        names = [prefix for _, prefix in found]
    if not names:
        raise ValueError(f"head weights {path} hold no 'weight' or '<prefix>.<i>.weight' arrays "
                         f"(found: {', '.join(sorted(arrays)[:8])})")
    layers = []
    for prefix in names:
        w = np.asarray(arrays[prefix + "weight"], np.float32)
        w = w.reshape(1, -1) if w.ndim == 1 else w
        b = np.asarray(arrays.get(prefix + "bias", np.zeros(len(w))), np.float32).reshape(-1)
        if w.ndim != 2 or len(b) != len(w) or (layers and layers[-1][0].shape[0] != w.shape[1]):
            raise ValueError(f"head weights {path}: layer {prefix}weight {w.shape} / bias {b.shape} do not chain")
        layers.append((w, b))
    if layers[-1][0].shape[0] != 1:
        raise ValueError(f"head weights {path}: the last layer has {layers[-1][0].shape[0]} outputs, not 1")
    return layers


ACTIVATIONS = {"relu": lambda x: np.maximum(x, 0), "none": lambda x: x,
               "gelu": lambda x: 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))}


def apply(layers: list, x: np.ndarray, activation: str = "relu", sigmoid: bool = False) -> np.ndarray:
    """The head's score for each row of ``x`` (embeddings, normalised here); NaN for all-zero rows."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norm > 0, norm, 1)
    for i, (w, b) in enumerate(layers):
        x = x @ w.T + b
        if i < len(layers) - 1:
            x = ACTIVATIONS[activation](x)
    out = x[:, 0]
    if sigmoid:
        out = 1 / (1 + np.exp(-out))
    return np.where(norm[:, 0] > 0, out, np.nan).astype(np.float32)


class Head(Stage):
    name = "head"
    version = 1
    columns = {"head": "float32"}  # per instance: its ``name``
    Config = HeadConfig

    def __init__(self, config: HeadConfig):
        self.config = config

    @property
    def folder(self) -> str:
        return self.config.name

    def out_columns(self) -> dict[str, str]:
        return {self.config.name: "float32"}

    def key_config(self, src: Source) -> dict:
        w = Path(self.config.weights)
        st = w.stat() if w.is_file() else None
        return {"version": self.version, **self.config.model_dump(exclude={"weights"}),
                "weights": [str(w.resolve()), st.st_size, st.st_mtime_ns] if st else None,
                "scorer": src.keys.get(self.config.column)}  # new embeddings, new scores

    def finish(self, src: Source) -> pa.Table:
        emb = image_embeddings(src, self.config.column)
        if len(emb) != len(src.uids):
            raise RuntimeError(f"{self.config.column} embeddings of shard {src.sid} hold {len(emb)} rows for "
                               f"{len(src.uids)} samples; rerun it")
        layers = load_layers(self.config.weights)
        if len(emb) and emb.shape[1] != layers[0][0].shape[1]:
            raise ValueError(f"head {self.config.name!r}: {self.config.weights} takes {layers[0][0].shape[1]}-d "
                             f"input, scorer {self.config.column!r} gives {emb.shape[1]}-d embeddings")
        score = apply(layers, emb, self.config.activation, self.config.sigmoid) if len(emb) else np.zeros(0)
        uid = src.uids if isinstance(src.uids, pa.ChunkedArray) else pa.array(src.uids, pa.string())
        return pa.table({"uid": uid, self.config.name: pa.array(score, pa.float32())})


def image_embeddings(src: Source, column: str) -> np.ndarray:
    """A shard's stored image embeddings of a scorer: its ``.npy``, or the npz a pointer names."""
    import json

    from pipeline.metadata import embedding_view

    npy = src.work.embeddings(column, src.sid, "img")
    if npy.is_file():
        return np.load(npy)
    pointer = src.work.npz_pointer(column, src.sid)
    if not pointer.is_file():
        raise FileNotFoundError(f"scorer {column!r} stored no image embeddings for shard {src.sid} "
                                f"(a precomputed column without its npz?)")
    where = json.loads(pointer.read_text())
    view = embedding_view([{**where, "member": where["img"]}])
    return view.take(np.arange(len(view)))
