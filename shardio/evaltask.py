"""Write and read evaluation tasks in CLIP_benchmark's webdataset layout (readable by clip_benchmark too):
``classnames.txt``, ``zeroshot_classification_templates.txt``, ``test/nshards.txt``, ``test/{i}.tar``
with ``{key}.png|jpg`` + ``{key}.cls`` (classification) or ``{key}.txt`` (retrieval).

A task read may be a URL (``s3://bucket/eval/cifar10``, shardio/storage.py): its tars are streamed,
its small files read whole; nothing is copied to local disk."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Iterable

from shardio import storage

PNG = b"\x89PNG"


def task_path(root: str | Path, *parts: str) -> str | Path:
    """A file or folder inside a task (or a suite's data root): a URL stays a URL, a local path a Path."""
    if storage.is_url(root):
        return "/".join([str(root).rstrip("/"), *parts])
    return Path(root).joinpath(*parts)


def task_name(root: str | Path) -> str:
    return storage.name(str(root)) if storage.is_url(root) else Path(root).name


def has_split(root: str | Path, split: str = "test") -> bool:
    return storage.is_file(task_path(root, split, "nshards.txt"))


def read_lines(path: str | Path) -> list[str]:
    """A task's text file (class names, templates), stripped, blank lines left out."""
    return [x.strip() for x in storage.read_text(path).splitlines() if x.strip()]


def split_shards(root: str | Path, split: str = "test") -> list[str | Path]:
    """The split's tars as ``nshards.txt`` lists them; a clear error when the split is not there."""
    count = task_path(root, split, "nshards.txt")
    if not storage.is_file(count):
        raise FileNotFoundError(f"{storage.redact(str(root))} is not a task in CLIP_benchmark's wds layout: "
                                f"missing {storage.redact(str(count))}")
    shards = [task_path(root, split, f"{i}.tar") for i in range(int(storage.read_text(count)))]
    missing = [storage.redact(str(p)) for p in shards if not storage.is_file(p)]
    if missing:
        raise FileNotFoundError(f"task {storage.redact(str(root))}: nshards.txt says {len(shards)} but missing "
                                f"{', '.join(missing)}")
    return shards


def iter_split(root: str | Path, split: str = "test", need: str | None = None, skip_bad: bool = False):
    """Yield ``(name, RGB image, sample)`` per sample, in order; ``need`` names a member
    (``cls``, ``txt``) that must be there. An unusable sample is an error (scores over part of an
    eval set mislead) unless ``skip_bad``."""
    from shardio.decode import decode_image
    from shardio.shards import iter_tar_samples
    from shardio.tar import IMAGE_EXTS

    for shard in split_shards(root, split):
        for s in iter_tar_samples(shard):
            img, reason = decode_image(next((s[e] for e in IMAGE_EXTS if e in s), None))
            if img is None or (need and need not in s):
                if skip_bad:
                    continue
                raise ValueError(f"{storage.redact(str(shard))}: sample {s['__key__']} unusable ({reason or f'no .{need}'})")
            yield f"{task_name(root)}/{s['__key__'].rsplit('/', 1)[-1]}", img, s


def _add(t: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


def write_task(root: str | Path, classnames: list[str], templates: list[str],
               samples: Iterable[tuple[bytes, int]], per_shard: int = 1000, split: str = "test") -> int:
    """Write a classification task from ``(image bytes, label)`` samples; returns the sample count.
    ``split``: ``test``, or ``train`` (linear probes, NormSim targets) beside it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    return _write_split(root / split, ((image, {"cls": str(int(label)).encode()}) for image, label in samples),
                        per_shard)


def write_retrieval_task(root: str | Path, samples: Iterable[tuple[bytes, list[str]]], per_shard: int = 1000,
                         split: str = "test") -> int:
    """Write a retrieval task from ``(image bytes, captions)`` samples (``txt``: one caption per line)."""
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / "dataset_type.txt").write_text("retrieval\n")  # how CLIP_benchmark tells the kinds apart
    return _write_split(Path(root) / split, ((image, {"txt": "\n".join(c.replace("\n", " ") for c in caps).encode()})
                                              for image, caps in samples), per_shard)


def _write_split(split: Path, samples: Iterable[tuple[bytes, dict[str, bytes]]], per_shard: int) -> int:
    split.mkdir(parents=True, exist_ok=True)
    n, shard, t = 0, 0, None
    for image, extra in samples:
        if n % per_shard == 0:
            if t is not None:
                t.close()
            t = tarfile.open(split / f"{n // per_shard}.tar", "w", format=tarfile.USTAR_FORMAT)
            shard += 1
        _add(t, f"s{n:07d}.{'png' if image[:4] == PNG else 'jpg'}", image)
        for ext, data in extra.items():
            _add(t, f"s{n:07d}.{ext}", data)
        n += 1
    if t is not None:
        t.close()
    (split / "nshards.txt").write_text(f"{shard}\n")
    return n


CHECKSUM_CACHE = ".curate_checksum.json"


def task_checksum(root: str | Path, split: str = "test") -> str | None:
    """sha256 over what a task's score depends on: class names, templates and the split's tars, in a
    fixed order (None when the task is not there). Cached keyed on names, sizes and modification times
    (a URL's: sizes and ETags), so a large set is read once: beside local data, and in the local cache
    (shardio/models.py::cache_root) for data in a bucket. Same bytes, same checksum, wherever they lie."""
    import hashlib
    import json

    try:
        files = [task_path(root, n) for n in ("classnames.txt", "zeroshot_classification_templates.txt")
                 if storage.is_file(task_path(root, n))]
        files += split_shards(root, split)
    except FileNotFoundError:
        return None
    stamp = [_stamp(root, f) for f in files]
    cache = _checksum_cache(root, split)
    try:
        got = json.loads(cache.read_text())
        if got.get("files") == stamp:
            return got["sha256"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    h = hashlib.sha256()
    for f, (name, *_) in zip(files, stamp):
        h.update(name.encode() + b"\0")
        with storage.open_read(f, block_size=8 << 20) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    digest = h.hexdigest()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"files": stamp, "sha256": digest}))
    except OSError:  # a read-only data root: computed again next time
        pass
    return digest


def _stamp(root: str | Path, f: str | Path) -> list:
    if storage.is_url(root):
        ident = storage.identity(str(f))
        return [str(f)[len(str(root).rstrip("/")) + 1:], ident["size"], ident["version"]]
    st = Path(f).stat()
    return [str(Path(f).relative_to(root)), st.st_size, st.st_mtime_ns]


def _checksum_cache(root: str | Path, split: str) -> Path:
    if not storage.is_url(root):
        return Path(root) / CHECKSUM_CACHE
    import hashlib

    from shardio.models import cache_root

    key = hashlib.sha256(f"{storage.redact(str(root).rstrip('/'))}\0{split}".encode()).hexdigest()[:24]
    return cache_root().parent / "task_checksums" / f"{key}.json"
