"""``--write-dropped``: dropped samples land, copied verbatim, under dropped/<first reason>/."""
from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.run import run_curation
from shardio.tar import iter_samples
from fixtures.shardmaker import make_pool, uid

PLANT = {2: "corrupt", 5: "truncated", 7: "noimage", 9: "dup", 13: "empty", 16: "dup"}
CFG = {"filters": [{"type": "exact_dedup"}]}  # no model: ingest reasons and exact duplicates


def _members(folder: Path) -> dict[str, dict[str, bytes]]:
    """key -> members of every sample in a folder of shards."""
    out = {}
    for tar in sorted(folder.glob("*.tar")):
        for s in iter_samples(str(tar)):
            assert s.key not in out
            out[s.key] = dict(s.members)
    return out


def _add(tar: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(tar, "a") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def _pool(root: Path) -> dict[str, dict[str, bytes]]:
    make_pool(root, n=20, per_shard=10, plant=PLANT)
    original = {}
    for tar in sorted(root.glob("*.tar")):
        original.update({s.key: dict(s.members) for s in iter_samples(str(tar))})
    # a stray member (no key: no sample, drops as member_name) and a second sample under a key already used
    _add(root / "00001.tar", [(".jpg", b"stray"), ("000010003.jpg", b"again"), ("000010003.txt", b"a repeat")])
    return original


def test_dropped_samples_land_under_their_first_reason(tmp_path):
    original = _pool(tmp_path / "pool")
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", CFG, progress=False, write_dropped=True)
    d = m["dropped_samples"]
    root = Path(m["root"])
    by_reason = m["dropped_by_reason"]
    assert set(by_reason) == {"format", "decode", "no_image", "exact_dedup", "member_name", "duplicate_key"}
    assert d["not_written"] == {"member_name": 1}  # a stray member is no sample: nothing to copy
    assert d["written"] == {r: n for r, n in by_reason.items() if r != "member_name"}
    got = {r: _members(root / f) for r, f in d["folders"].items()}
    assert sorted(d["folders"]) == sorted(d["written"]) and all(f.startswith("dropped/") for f in d["folders"].values())
    key = lambda i: f"{i // 10:05d}{i % 10:04d}"  # noqa: E731
    assert sorted(got["format"]) == [key(2)]
    assert sorted(got["decode"]) == [key(5), key(13)]
    assert sorted(got["no_image"]) == [key(7)]
    assert sorted(got["exact_dedup"]) == [key(9), key(16)]
    # the repeat of key(13) (itself dropped: empty image): each occurrence in its own reason's folder
    assert got["duplicate_key"] == {key(13): {"jpg": b"again", "txt": b"a repeat"}}
    for r in ("format", "decode", "no_image", "exact_dedup"):
        for k, members in got[r].items():
            assert members == original[k], (r, k)  # verbatim, undecodable bytes included
    # the kept samples are in the filtered shards only
    kept = _members(root / "shards")
    assert not set(kept) & {k for r in got.values() for k in r}
    assert len(kept) == m["kept"] == 14
    assert (tmp_path / "out" / "dropped").is_dir()  # through the output's links, like shards/


def test_without_the_flag_nothing_is_written(tmp_path):
    _pool(tmp_path / "pool")
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", CFG, progress=False)
    assert m["dropped_samples"] is None and not (Path(m["root"]) / "dropped").exists()


def test_a_metadata_only_pool_has_no_bytes_to_write(tmp_path):
    folder = tmp_path / "metadata"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"uid": [uid(i) for i in range(30)], "url": [f"https://e.com/{i}" for i in range(30)],
                             "text": [f"thing {i}" for i in range(30)],
                             "clip_l14_similarity_score": rng.uniform(0.1, 0.4, 30)}), folder / "0000cafe.parquet")
    cfg = {"clip": [{"precomputed": "l14"}], "filters": [{"type": "clip_score", "fraction": 0.5}]}
    m = run_curation(str(folder), tmp_path / "out", cfg, progress=False, write_dropped=True)
    assert 0 < m["dropped"] < 30
    assert m["dropped_samples"] == {"folders": {}, "written": {}, "not_written": m["dropped_by_reason"]}
    assert not (Path(m["root"]) / "dropped").exists()


def test_the_command_line_flag(tmp_path):
    _pool(tmp_path / "pool")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("filters:\n  - type: exact_dedup\n")
    subprocess.run([sys.executable, "-m", "app.cli", "run", "--pool", str(tmp_path / "pool"), "--out",
                    str(tmp_path / "out"), "--config", str(cfg), "--write-dropped"], check=True, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "out" / "dropped").iterdir()) == \
        ["decode", "duplicate_key", "exact_dedup", "format", "no_image"]


def test_reason_folder_names_are_safe_and_distinct():
    from pipeline.export import _folder

    assert _folder("clip_score[top0.5]", set()) == "clip_score_top0.5_"
    assert _folder("a/b", {"a_b"}) == "a_b.2" and _folder("..", set()) == "reason"
