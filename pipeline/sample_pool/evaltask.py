"""Write a classification task in CLIP_benchmark's webdataset layout (readable by clip_benchmark too):
``classnames.txt``, ``zeroshot_classification_templates.txt``, ``test/nshards.txt``, ``test/{i}.tar``
with ``{key}.png|jpg`` + ``{key}.cls``."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Iterable


def _add(t: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


def write_task(root: str | Path, classnames: list[str], templates: list[str],
               samples: Iterable[tuple[bytes, int]], per_shard: int = 1000) -> int:
    """Write ``(image bytes, label)`` samples; returns the sample count."""
    root = Path(root)
    (root / "test").mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    n, shard, t = 0, 0, None
    for image, label in samples:
        if n % per_shard == 0:
            if t is not None:
                t.close()
            t = tarfile.open(root / "test" / f"{n // per_shard}.tar", "w", format=tarfile.USTAR_FORMAT)
            shard += 1
        ext = "png" if image[:4] == b"\x89PNG" else "jpg"
        _add(t, f"s{n:07d}.{ext}", image)
        _add(t, f"s{n:07d}.cls", str(int(label)).encode())
        n += 1
    if t is not None:
        t.close()
    (root / "test" / "nshards.txt").write_text(f"{shard}\n")
    return n
