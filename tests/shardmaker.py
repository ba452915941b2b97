"""Tiny real shards for tests, with planted problems whose uids the test knows."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from shardio.shards import ShardWriter

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def image_bytes(colour: str, size=(40, 40), fmt="JPEG", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(COLOURS[colour])[None, None] + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, fmt)
    return buf.getvalue()


def uid(i: int) -> str:
    return f"{i:032x}"


def make_pool(out: Path, n: int = 60, per_shard: int = 25, plant: dict[int, str] | None = None) -> dict[int, str]:
    """Write ``n`` samples of coloured squares captioned by colour; ``plant`` maps index -> problem:
    ``corrupt`` (garbage bytes), ``truncated`` (half a JPEG), ``empty`` (0 bytes), ``noimage`` (no image
    member), ``missing`` (listed in the shard parquet, absent from the tar), ``swapped`` (another colour's
    caption), ``dup`` (a copy of the previous sample), ``german`` / ``short`` (captions),
    ``evalcopy`` (a JPEG copy of ``make_task``'s sample i). Returns ``plant``."""
    plant = plant or {}
    names = list(COLOURS)
    missing = []
    with ShardWriter(out, per_shard) as w:
        for i in range(n):
            colour = names[i % len(names)]
            data = image_bytes(colour, seed=i)
            problem = plant.get(i)
            if problem == "corrupt":
                data = b"\x00not an image at all" * 5
            elif problem == "truncated":
                data = data[: len(data) // 2]
            elif problem == "empty":
                data = b""
            key = f"{i // per_shard:05d}{i % per_shard:04d}"
            meta = {"uid": uid(i), "url": f"https://example.com/{i}.jpg", "width": 40, "height": 40,
                    "original_width": 40, "original_height": 40, "sha256": None}
            if problem == "evalcopy":  # JPEG copy of make_task's sample i
                data = image_bytes(colour, seed=1000 + i)
            if problem == "dup":  # byte-identical image and caption of the previous sample
                colour, data = names[(i - 1) % len(names)], image_bytes(names[(i - 1) % len(names)], seed=i - 1)
            caption = f"a {names[(i + 1) % len(names)] if problem == 'swapped' else colour} square"
            caption = {"german": "ein rotes Quadrat auf weißem Grund", "short": colour}.get(problem, caption)
            w.write(key, None if problem == "noimage" else data, "jpg", caption, meta)
            if problem == "missing":
                missing.append((f"{i // per_shard:05d}.tar", key))
    for tar_name, key in missing:  # rewrite the tar without that sample's members
        path = out / tar_name
        with tarfile.open(path) as t:
            members = [(m, t.extractfile(m).read()) for m in t.getmembers() if not m.name.startswith(key + ".")]
        with tarfile.open(path, "w") as t:
            for m, data in members:
                t.addfile(m, io.BytesIO(data))
    return plant


def make_task(root: Path, per_class: int = 10, templates=("a {c} square.", "a photo of a {c} thing.")) -> Path:
    """A zero-shot task in CLIP_benchmark's wds layout: coloured squares, classes = colour names."""
    names = list(COLOURS)
    (root / "test").mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(names) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    with tarfile.open(root / "test" / "0.tar", "w") as t:
        for i in range(per_class * len(names)):
            for ext, data in (("png", image_bytes(names[i % len(names)], fmt="PNG", seed=1000 + i)),
                              ("cls", str(i % len(names)).encode())):
                info = tarfile.TarInfo(f"s{i:07d}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    (root / "test" / "nshards.txt").write_text("1\n")
    return root
