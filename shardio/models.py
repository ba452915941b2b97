"""Model specs as open_clip names, shared by the scorer (pipeline/) and training: an open_clip name,
a project preset (schemas/model_configs), a JSON model config, or a checkpoint folder in open_clip's
``local-dir`` layout. Offline: nothing is downloaded from a model hub.

A checkpoint folder, weights file or JSON config may also be a URL (``s3://``, ``gs://``, ``az://``,
``https://``; shardio/storage.py, with its credentials). open_clip loads local files only, so a remote
checkpoint is copied once into a local cache (``$CURATE_CACHE/checkpoints``, default
~/.cache/curate/checkpoints) under a key made of its files' identities (size and ETag or modification
time): a changed object is copied again, an unchanged one never is."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from schemas.checkpoint import CONFIG_FILE, DEMO_SCORER, MODEL_CONFIG_DIR, WEIGHTS_FILE, demo_scorer_path
from shardio import storage
from shardio.compat import ensure_torchvision

log = logging.getLogger(__name__)


def open_clip_name(model: str, what: str = "model", fetch: bool = True) -> str:
    """The open_clip name for a spec; a clear error naming ``what`` (model, scorer) otherwise. A URL is
    copied to the local cache first (``fetch=False``: only checked to exist, nothing copied)."""
    ensure_torchvision()
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    if model.startswith("local-dir:"):
        model = model[len("local-dir:"):]
        if not storage.is_url(model):
            return "local-dir:" + model
    if storage.is_url(model):
        if not fetch:
            remote_files(model, what)
            return model
        model = local_copy(model, what)
    p = Path(model)
    if p.is_dir():
        if not (p / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{what} {p} is a folder without {CONFIG_FILE}: not a checkpoint folder")
        return f"local-dir:{p.resolve()}"
    if p.suffix == ".json":
        if not p.is_file():
            raise FileNotFoundError(f"{what} config {p} does not exist")
        open_clip.add_model_config(p)
        return p.stem
    if open_clip.get_model_config(model) is None:
        if model in (DEMO_SCORER, demo_scorer_path()):
            raise FileNotFoundError(f"{what} {model!r} is the filtering network `curate demo` trains, and "
                                    f"{demo_scorer_path()} does not exist yet: run `bash scripts/demo.sh` (or "
                                    "`curate demo`) first, or name another scorer in the config's clip.model")
        hint = " (a checkpoint folder that does not exist?)" if ("/" in model or model.startswith(".")) else ""
        presets = ", ".join(sorted(x.stem for x in MODEL_CONFIG_DIR.glob("*.json")))
        raise ValueError(f"unknown {what} {model!r}: give an open_clip name (e.g. ViT-B-32), a project preset "
                         f"({presets}), a JSON model config, or a checkpoint folder{hint}")
    return model


BIN_WEIGHTS = "open_clip_pytorch_model.bin"  # open_clip's other weights name in a local-dir folder
_COPIES: dict[str, tuple[list[dict], str]] = {}  # URL -> (its files' identities, local copy): once a process


def cache_root() -> Path:
    """Where remote checkpoints are copied (``$CURATE_CACHE``, default ~/.cache/curate)."""
    return Path(os.environ.get("CURATE_CACHE") or Path.home() / ".cache" / "curate") / "checkpoints"


def remote_files(url: str, what: str = "checkpoint") -> list[tuple[str, dict]]:
    """``(name, identity)`` of what a checkpoint URL stands for: a folder's config and weights files
    (open_clip's local-dir layout), or the one file (always, for a URL with a query: a signed one).
    A clear error when neither is there."""
    if url in _COPIES:
        return _COPIES[url][0]
    config = storage.join(url, CONFIG_FILE)
    if "?" not in url and storage.is_file(config):  # a signed URL names one object, never a folder
        weights = [n for n in (WEIGHTS_FILE, BIN_WEIGHTS) if storage.is_file(storage.join(url, n))]
        if not weights:
            raise FileNotFoundError(f"{what} {storage.redact(url)} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
        names = [CONFIG_FILE, weights[0]]
        return [(n, _version(storage.join(url, n))) for n in names]
    if not storage.is_file(url):
        raise FileNotFoundError(f"{what} {storage.redact(url)} does not exist (neither a file nor a folder "
                                f"with {CONFIG_FILE})")
    return [("", _version(url))]


def _version(url: str) -> dict:
    ident = storage.identity(url)
    return {"size": ident["size"], "version": ident["version"]}  # the URL itself may carry a signature


def local_copy(url: str, what: str = "checkpoint") -> str:
    """A local path holding what ``url`` holds (a checkpoint folder, a weights file, a JSON config),
    copied into ``cache_root()`` the first time this version of it is asked for; local paths as given."""
    if not storage.is_url(url):
        return url
    if url in _COPIES:
        return _COPIES[url][1]
    files = remote_files(url, what)
    base = storage.name(url.split("?", 1)[0]) or "checkpoint"
    key = hashlib.sha256(json.dumps([storage.redact(url), files], sort_keys=True).encode()).hexdigest()[:24]
    dest = cache_root() / key / base
    if not dest.exists():
        log.info("copying %s %s into the local cache %s", what, storage.redact(url), dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=dest.parent))
        try:
            for name, _ in files:
                fs, path = storage.filesystem(storage.join(url, name) if name else url)
                fs.get_file(path, str(tmp / (name or base)))
            try:
                (tmp / base if not files[0][0] else tmp).rename(dest)
            except OSError:  # another process copied it meanwhile: same identity, same bytes
                if not dest.exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _COPIES[url] = (files, str(dest))
    return str(dest)
