"""bench/annotate.py's pool: 256 px JPEGs made from the machine's openclipart PNGs with img2dataset's
border resizer reproduced in Pillow, in img2dataset's shard layout; made once, reused while its settings
match."""
from __future__ import annotations

import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

CLIPART = Path("/usr/share/openclipart/png")
SIZE, QUALITY, PER_SHARD = 256, 95, 1000
VARIANTS = ("whole", "mirror", "crop")  # how a reused PNG differs from its earlier uses


def img2dataset_resize(im, size: int = SIZE):
    """img2dataset's border resize, in Pillow: alpha on white, longest side to ``size`` (area filter
    when shrinking, Lanczos when growing), padded to size x size on white, centred."""
    import numpy as np
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        a = np.asarray(im.convert("RGBA"), np.float32)
        alpha = a[..., 3:]
        im = Image.fromarray(np.rint(np.clip(alpha / 255 * a[..., :3] + 255 - alpha, 0, 255)).astype(np.uint8))
    elif im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    w, h = im.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    im = im.resize((nw, nh), Image.BOX if max(w, h) > size else Image.LANCZOS)
    out = Image.new(im.mode, (size, size), 255 if im.mode == "L" else (255, 255, 255))
    out.paste(im, ((size - nw) // 2, (size - nh) // 2))
    return out


def _variants(path: str, uses: int) -> list[tuple[bytes, int, int]]:
    """``uses`` JPEGs (bytes, original width, height) made from one PNG; [] if it cannot be read."""
    import warnings

    from PIL import Image

    from shardio.decode import MAX_PIXELS

    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused just below
    try:
        src = Image.open(path)
        if src.size[0] * src.size[1] > MAX_PIXELS:
            return []
        src.load()
    except Exception:  # noqa: BLE001 - a broken clipart file is left out of the pool
        return []
    out = []
    for v in VARIANTS[:uses]:
        im = src
        if v == "mirror":
            im = src.transpose(Image.FLIP_LEFT_RIGHT)
        elif v == "crop":
            w, h = src.size
            im = src.crop((w // 8, h // 8, w - w // 8, h - h // 8)) if min(w, h) >= 8 else src
        buf = io.BytesIO()
        img2dataset_resize(im).save(buf, "JPEG", quality=QUALITY)
        out.append((buf.getvalue(), *im.size))
    return out


def _caption(path: Path) -> str:
    words = path.stem.replace("_", " ").replace("-", " ").split()
    words = [w for w in words if not w.isdigit()]
    return " ".join(words + ["-", path.parent.name])


def make_pool(folder: Path, samples: int) -> list[str]:
    """The benchmark pool in ``folder`` (reused when it was made with the same settings)."""
    from shardio.shards import ShardWriter, expand, sha256

    settings = {"samples": samples, "size": SIZE, "quality": QUALITY, "per_shard": PER_SHARD,
                "source": str(CLIPART), "resizer": "img2dataset border, reproduced in Pillow"}
    marker = folder / "pool.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return expand(str(folder))
    if not CLIPART.is_dir():
        raise SystemExit(f"{CLIPART} is missing: the project's setup installs openclipart-png")
    pngs = sorted(CLIPART.rglob("*.png"))
    uses = -(-samples // len(pngs))
    if uses > len(VARIANTS):
        raise SystemExit(f"{samples} samples need more than {len(VARIANTS)} uses of {len(pngs)} PNGs")
    folder.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for old in folder.glob("*"):
        old.unlink()
    made = 0
    with ProcessPoolExecutor(os.cpu_count()) as ex, ShardWriter(folder, PER_SHARD) as w:
        for start in range(0, len(pngs), 256):
            if made == samples:
                break
            chunk = pngs[start:start + 256]
            for png, jpgs in zip(chunk, ex.map(_variants, [str(p) for p in chunk], [uses] * len(chunk))):
                for (data, ow, oh), variant in zip(jpgs, VARIANTS):
                    if made == samples:
                        break
                    key = f"{w.index:05d}{len(w.rows):04d}"
                    w.write(key, data, "jpg", _caption(png),
                            {"url": f"http://127.0.0.1:8000/{png.relative_to(CLIPART)}?v={variant}",
                             "width": SIZE, "height": SIZE, "original_width": ow, "original_height": oh,
                             "sha256": sha256(data)})
                    made += 1
    if made < samples:
        raise SystemExit(f"only {made} samples could be made from {CLIPART}")
    marker.write_text(json.dumps(settings, indent=2))
    return expand(str(folder))
