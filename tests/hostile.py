"""A hostile-input corpus, generated (no binary fixtures): each kind of real-world damage with what
must become of every sample; and ``run_cli``, ``curate run`` in a child process that can be killed at a
named point. Used by tests/test_hostile.py and bench/reliability.py."""
from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

KEPT = None  # expected outcome of a sample that is kept
ROOT = Path(__file__).resolve().parents[1]


def run_cli(pool, out, config, kill: str | None = None) -> subprocess.CompletedProcess:
    """``curate run`` in a child process; ``kill``: a point of pipeline/faults.py where it is SIGKILLed."""
    env = {**os.environ, "CURATE_KILL_AT": kill or ""}
    return subprocess.run([sys.executable, "-m", "app.cli", "run", "--pool", str(pool), "--out", str(out),
                           "--config", str(config)], env=env, capture_output=True, text=True, cwd=ROOT)


def _img(fmt: str, size=(24, 24), mode="RGB", seed=0, **kw) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, (size[1], size[0]), dtype=np.uint16))
    else:
        arr = rng.integers(0, 256, (size[1], size[0], len(mode) if mode != "P" else 1), dtype=np.uint8)
        im = Image.fromarray(arr[..., 0] if mode in ("L", "P") else arr, "L" if mode == "P" else mode)
        if mode == "P":
            im = im.convert("P")
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _gif_animated() -> bytes:
    frames = [Image.new("P", (16, 16), c) for c in (1, 50, 100)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _png_bomb(w=20990, h=29700) -> bytes:
    """A PNG whose header claims openclipart's largest size (the data is a stub)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _json(uid: str, **extra) -> bytes:
    return json.dumps({"uid": uid, "url": f"https://example.com/{uid}", "original_width": 24,
                       "original_height": 24, **extra}).encode()


def _uid(i: int) -> str:
    return f"{0xabc000 + i:032x}"


def _tar(members: list[tuple[str, bytes | None, str]]) -> bytes:
    """(name, data, kind) -> tar bytes; kind 'file' or 'symlink'."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "elsewhere.jpg"
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Corpus:
    root: Path
    expect: dict[tuple[str, str], list] = field(default_factory=dict)  # (shard, key) -> outcomes in order
    kinds: list[str] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)  # shard file -> error prefix
    not_downloaded: dict[str, int] = field(default_factory=dict)
    sidecar_errors: list[str] = field(default_factory=list)
    long_caption_key: tuple[str, str] | None = None
    skipped: dict[str, int] = field(default_factory=lambda: {"symlink": 1})  # members in no sample

    @property
    def samples(self) -> int:
        return sum(len(v) for v in self.expect.values())

    def add(self, shard: str, key: str, outcome, kind: str) -> None:
        self.expect.setdefault((shard, key), []).append(outcome)
        if kind not in self.kinds:
            self.kinds.append(kind)


def _sample(key: str, i: int, image: bytes | None, ext="jpg", caption: bytes = b"a photo of a thing",
            js: bytes | None = b"", txt_ext="txt") -> list[tuple[str, bytes, str]]:
    out = []
    if image is not None:
        out.append((f"{key}.{ext}", image, "file"))
    if caption is not None:
        out.append((f"{key}.{txt_ext}", caption, "file"))
    if js is not None:
        out.append((f"{key}.json", js if js else _json(_uid(i)), "file"))
    return out


def make_corpus(root: str | Path) -> Corpus:
    root = Path(root)
    pool = root / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    c = Corpus(root)
    jpg = _img("JPEG")
    m: list = []
    a = "00000"

    def put(key, i, outcome, kind, **kw):
        m.extend(_sample(key, i, **kw))
        c.add(a, key.lstrip("/").replace("../", ""), outcome, kind)

    put("s01", 1, KEPT, "plain jpeg", image=jpg)
    put("s02", 2, "decode", "zero-byte image", image=b"")
    put("s03", 3, "decode", "truncated image", image=jpg[: len(jpg) // 2])
    put("s04", 4, "format", "non-image bytes", image=b"<html><body>404 not found</body></html>")
    put("s05", 5, "decode", "decompression bomb", image=_png_bomb(), ext="png")
    put("s06", 6, KEPT, "CMYK jpeg", image=_img("JPEG", mode="CMYK"))
    put("s07", 7, KEPT, "16-bit png", image=_img("PNG", mode="I;16"), ext="png")
    put("s08", 8, KEPT, "alpha png", image=_img("PNG", mode="RGBA"), ext="png")
    put("s09", 9, KEPT, "animated gif", image=_gif_animated(), ext="gif")
    put("s10", 10, KEPT, "webp", image=_img("WEBP"), ext="webp")
    put("s11", 11, KEPT, "1x1 image", image=_img("PNG", size=(1, 1)), ext="png")
    put("s12", 12, KEPT, "4000x1 image", image=_img("PNG", size=(4000, 1)), ext="png")
    put("s13", 13, KEPT, "upper-case extensions", image=jpg, ext="JPG", txt_ext="TXT")
    put("s14", 14, KEPT, "non-UTF-8 caption", image=jpg, caption="café crème".encode("latin-1"))
    put("s15", 15, KEPT, "empty caption", image=jpg, caption=b"")
    put("s16", 16, KEPT, "1 MB caption", image=jpg, caption=b"word " * 200_000)
    c.long_caption_key = (a, "s16")
    put("s17", 17, KEPT, "HTML caption", image=jpg, caption=b"<script>alert('x')</script><b>bold</b>")
    put("s18", 18, "no_image", "missing image", image=None)
    put("s19", 19, KEPT, "missing text", image=jpg, caption=None)
    put("s20", 20, KEPT, "missing json", image=jpg, js=None)
    put("s21", 21, "metadata", "malformed json", image=jpg, js=b'{"uid": "abc", broken')
    put("s22", 22, "metadata", "json not an object", image=jpg, js=b"[1, 2, 3]")
    # the same sample twice (an img2dataset retry): first kept, the repeat dropped
    m.extend(_sample("s23", 23, jpg))
    m.extend(_sample("s23", 23, jpg))
    c.add(a, "s23", KEPT, "repeated member names")
    c.add(a, "s23", "duplicate_key", "repeated member names")
    # members of two samples interleaved
    j24, j25 = _sample("s24", 24, jpg), _sample("s25", 25, jpg)
    m.extend([j24[0], j25[0], j24[1], j25[1], j24[2], j25[2]])
    c.add(a, "s24", KEPT, "non-adjacent members")
    c.add(a, "s25", KEPT, "non-adjacent members")
    put("cats/0001", 26, KEPT, "folder keys sharing a basename", image=jpg)
    put("dogs/0001", 27, KEPT, "folder keys sharing a basename", image=jpg)
    put("train.v1/0001", 28, KEPT, "dotted folder name", image=jpg)
    put("/abs/s29", 29, KEPT, "absolute member name", image=jpg)
    put("../up/s30", 30, KEPT, "parent-directory member name", image=jpg)
    m.append(("link.jpg", None, "symlink"))
    c.kinds.append("symlink member")
    put("s31", 31, KEPT, "uid repeated in another shard", image=jpg)
    (pool / f"{a}.tar").write_bytes(_tar(m))

    # shard 1: the uid of s31 again (first in pool order kept), and a listing with failed downloads
    b = "00001"
    m = _sample("t01", 31, _img("JPEG", seed=5)) + _sample("t02", 40, jpg)
    (pool / f"{b}.tar").write_bytes(_tar(m))
    c.add(b, "t01", "duplicate_uid", "uid repeated in another shard")
    c.add(b, "t02", KEPT, "plain jpeg")
    rows = [{"key": "t01", "status": "success", "uid": _uid(31)}, {"key": "t02", "status": "success", "uid": _uid(40)},
            {"key": "t03", "status": "failed_to_download", "uid": _uid(41)},
            {"key": "t04", "status": "failed_to_download", "uid": _uid(42)},
            {"key": "t05", "status": "failed_to_resize", "uid": _uid(43)}]
    pq.write_table(pa.Table.from_pylist(rows), pool / f"{b}.parquet")
    c.not_downloaded = {"failed_to_download": 2, "failed_to_resize": 1}
    c.kinds.append("img2dataset parquet with failed rows")

    # shard 2: a sidecar parquet cut in half
    m = _sample("u01", 50, jpg)
    (pool / "00002.tar").write_bytes(_tar(m))
    c.add("00002", "u01", KEPT, "plain jpeg")
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"key": "u01", "status": "success"}]), buf)
    (pool / "00002.parquet").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    c.sidecar_errors.append("00002")
    c.kinds.append("truncated parquet")

    # shard 3: an empty (valid) tar; shard 4: not a tar; shard 5: zero bytes
    (pool / "00003.tar").write_bytes(_tar([]))
    c.kinds.append("empty tar")
    (pool / "00004.tar").write_bytes(b"this is a text file, not a tar archive\n" * 40)
    c.broken["00004.tar"] = "not_a_tar"
    c.kinds.append("not-a-tar file")
    (pool / "00005.tar").write_bytes(b"")
    c.broken["00005.tar"] = "empty_file"
    c.kinds.append("zero-byte tar")

    # shards 6-8: one tar cut at three offsets: every complete member's sample survives
    for n, frac in enumerate((0.31, 0.57, 0.83)):
        full_members = []
        for i in range(8):
            full_members += _sample(f"v{i:02d}", 60 + 10 * n + i, _img("JPEG", seed=60 + i))
        full = _tar(full_members)
        with tarfile.open(fileobj=io.BytesIO(full)) as t:
            offs = [(mem.name, mem.offset_data + mem.size) for mem in t.getmembers()]
            starts = [mem.offset_data for mem in t.getmembers()]
        sid, cut = f"{6 + n:05d}", int(len(full) * frac)
        (pool / f"{sid}.tar").write_bytes(full[:cut])
        keys = sorted({name.split(".", 1)[0] for name, end in offs if end <= cut})
        for k in keys:
            c.add(sid, k, KEPT, f"tar truncated at {frac:.0%}")
        c.broken[f"{sid}.tar"] = "truncated"
        c.skipped["truncated_member"] = c.skipped.get("truncated_member", 0) + sum(
            start <= cut < end for start, (_, end) in zip(starts, offs))  # header whole, data cut

    # shard 9: a gzip'd tar
    (pool / "00009.tar.gz").write_bytes(gzip.compress(_tar(_sample("w01", 200, jpg)), mtime=0))
    c.add("00009", "w01", KEPT, "gzip'd tar")
    return c
