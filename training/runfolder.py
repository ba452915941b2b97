"""Where a training run writes: a local folder, or a URL (``s3://bucket/runs/x``, shardio/storage.py).

A run in a bucket trains in a private local staging folder and mirrors it to the bucket: at start it
takes what a resume needs from the bucket (``train_config.json``, ``metrics.jsonl``,
``checkpoints/state_latest.pt``), at each saved state it uploads the log and then the state (so the
bucket's log is never behind its state; a resume trims rows after the state's step), and at the end
the final checkpoint (weights first, its config last: a reader that sees the config sees the weights)
and ``result.json``. Each upload is one whole object, so a killed run leaves the last state whole.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from schemas.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from shardio import storage

log = logging.getLogger(__name__)

STATE_FILES = ("train_config.json", "metrics.jsonl", "checkpoints/state_latest.pt")  # what a resume reads; upload order
FINAL_FILES = (f"final/{WEIGHTS_FILE}", f"final/{CONFIG_FILE}", "result.json")


class RunFolder:
    """``local``: the folder the loop writes; ``url``: the bucket folder it is mirrored to (or None)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.url = str(out_dir) if storage.is_url(out_dir) else None
        if self.url and storage.scheme(self.url) in storage.READ_ONLY:
            raise ValueError(f"{storage.redact(self.url)}: http(s) is read only; give a bucket URL or a folder")
        self.local = Path(tempfile.mkdtemp(prefix="curate-train-")) if self.url else Path(out_dir)

    def where(self, name: str) -> str:
        """A file or folder of the run as the user named the run (URL or local path)."""
        return storage.join(self.url, name) if self.url else str(self.local / name)

    def label(self) -> str:
        return storage.redact(self.url) if self.url else str(self.local.resolve())

    def pull(self) -> None:
        """Copy what a resume reads from the bucket into the staging folder."""
        if not self.url:
            return
        for name in STATE_FILES:
            remote = storage.join(self.url, name)
            if storage.is_file(remote):
                (self.local / name).parent.mkdir(parents=True, exist_ok=True)
                fs, path = storage.filesystem(remote)
                fs.get_file(path, str(self.local / name))
                log.info("resuming from the bucket: %s", storage.redact(remote))

    def push(self, *names: str) -> None:
        """Upload these files of the staging folder to the bucket, in this order."""
        if not self.url:
            return
        for name in names:
            if (self.local / name).is_file():
                put(self.local / name, storage.join(self.url, name))

    def close(self) -> None:
        if self.url:
            shutil.rmtree(self.local, ignore_errors=True)

    def __enter__(self) -> "RunFolder":
        try:
            self.pull()
        except BaseException:
            self.close()  # e.g. no credentials: the staging folder does not outlive the error
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def put(local: Path, url: str) -> None:
    fs, path = storage.filesystem(url)
    fs.put_file(str(local), path)


def write_result(out_dir: str | Path, result: dict) -> None:
    """``result.json`` of a finished run, in its folder or bucket folder."""
    data = json.dumps(result, indent=2, default=str)
    if storage.is_url(out_dir):
        fs, path = storage.filesystem(storage.join(str(out_dir), "result.json"))
        fs.pipe_file(path, data.encode())
    else:
        (Path(out_dir) / "result.json").write_text(data)


class ResultsFile:
    """A results jsonl as the user named it: a local path, or a URL whose staging copy (read back first,
    so a rerun skips what is there) is uploaded whole after each appended row, so a killed evaluation
    leaves the bucket's file whole and up to date. ``push(".md", ".csv")`` uploads the tables beside it."""

    def __init__(self, path: str | Path) -> None:
        self.url = str(path) if storage.is_url(path) else None
        if self.url and storage.scheme(self.url) in storage.READ_ONLY:
            raise ValueError(f"{storage.redact(self.url)}: http(s) is read only; give a bucket URL or a local file")
        self.local = Path(tempfile.mkdtemp(prefix="curate-results-")) / storage.name(self.url) if self.url else Path(path)
        if self.url and storage.is_file(self.url):
            fs, remote = storage.filesystem(self.url)
            fs.get_file(remote, str(self.local))

    def label(self) -> str:
        return storage.redact(self.url) if self.url else str(self.local)

    def rows(self) -> list[dict]:
        if not self.local.is_file():
            return []
        return [json.loads(x) for x in self.local.read_text().splitlines() if x.strip()]

    def append(self, record: dict) -> None:
        from training.zeroshot import append_result

        append_result(self.local, record)
        self.push(self.local.suffix)

    def push(self, *suffixes: str) -> None:
        if not self.url:
            return
        stem = self.url[:len(self.url) - len(self.local.suffix)] if self.local.suffix else self.url
        for suffix in suffixes:
            if self.local.with_suffix(suffix).is_file():
                put(self.local.with_suffix(suffix), stem + suffix)

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, *exc) -> None:
        if self.url:
            shutil.rmtree(self.local.parent, ignore_errors=True)
