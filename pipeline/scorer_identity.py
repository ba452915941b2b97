"""What identifies a CLIP scorer's outputs in the cache keys, without importing torch: a run whose
scorers are all precomputed (DataComp metadata) never loads a model, so it never pays torch's import."""
from __future__ import annotations

from pathlib import Path

from schemas.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from schemas.config import RUNTIME_FIELDS, ClipModel
from shardio import storage
from shardio.models import remote_files


def scorer_identity(spec: ClipModel) -> dict:
    """What decides a scorer's outputs (runtime settings left out; 'auto' precision counts as the default)."""
    return spec.model_dump(exclude=RUNTIME_FIELDS | ({"precision"} if spec.precision == "auto" else set()))


def weights_identity(spec: ClipModel) -> dict:
    """Which weights: a checkpoint file/folder's size and mtime (a URL's: size and ETag), so retraining
    invalidates scores."""
    out = {}
    for p in (spec.checkpoint, spec.model):
        if p and storage.is_url(p):
            out[storage.redact(p)] = remote_files(p)
        elif p and Path(p).exists():
            path = Path(p)
            files = [path / WEIGHTS_FILE, path / CONFIG_FILE] if path.is_dir() else [path]
            out[str(path.resolve())] = [(f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]
    return out
