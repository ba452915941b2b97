"""A zero-shot classification task in CLIP_benchmark's webdataset layout:

    <task>/classnames.txt                          one class name per line, in label order
    <task>/zeroshot_classification_templates.txt   one prompt per line, with {c}
    <task>/test/nshards.txt, <task>/test/0.tar ... {key}.png + {key}.cls (the label as ASCII)
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Iterable

TEMPLATES = ["a photo of a {c}.", "a product photo of a {c}.", "a photo of the {c}.", "a {c}.",
             "a black and white photo of a {c}.", "a low resolution photo of a {c}.",
             "a cropped photo of a {c}.", "a close-up photo of a {c}."]


def _add(t: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # deterministic bytes
    t.addfile(info, io.BytesIO(data))


def write_task(root: Path, classnames: list[str], samples: Iterable[tuple[bytes, int]],
               per_shard: int = 1000) -> int:
    """Write PNG ``(image bytes, label)`` samples; returns how many."""
    (root / "test").mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    n, t = 0, None
    for image, label in samples:
        if n % per_shard == 0:
            if t is not None:
                t.close()
            t = tarfile.open(root / "test" / f"{n // per_shard}.tar", "w", format=tarfile.USTAR_FORMAT)
        _add(t, f"s{n:07d}.png", image)
        _add(t, f"s{n:07d}.cls", str(int(label)).encode())
        n += 1
    if t is not None:
        t.close()
    (root / "test" / "nshards.txt").write_text(f"{-(-n // per_shard)}\n")
    return n
