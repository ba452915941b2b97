"""Write evaluation tasks in CLIP_benchmark's webdataset layout (readable by clip_benchmark too):
``classnames.txt``, ``zeroshot_classification_templates.txt``, ``test/nshards.txt``, ``test/{i}.tar``
with ``{key}.png|jpg`` + ``{key}.cls`` (classification) or ``{key}.txt`` (retrieval)."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Iterable


PNG = b"\x89PNG"


def _add(t: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


def write_task(root: str | Path, classnames: list[str], templates: list[str],
               samples: Iterable[tuple[bytes, int]], per_shard: int = 1000) -> int:
    """Write a classification task from ``(image bytes, label)`` samples; returns the sample count."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    return _write_split(root / "test", ((image, {"cls": str(int(label)).encode()}) for image, label in samples),
                        per_shard)


def write_retrieval_task(root: str | Path, samples: Iterable[tuple[bytes, list[str]]], per_shard: int = 1000) -> int:
    """Write a retrieval task from ``(image bytes, captions)`` samples (``txt``: one caption per line)."""
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / "dataset_type.txt").write_text("retrieval\n")  # how CLIP_benchmark tells the kinds apart
    return _write_split(Path(root) / "test", ((image, {"txt": "\n".join(c.replace("\n", " ") for c in caps).encode()})
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
