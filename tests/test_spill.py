"""Gathering clusters through a cluster-ordered copy on disk gives exactly what reading in place gives."""
from collections import namedtuple

import numpy as np
import pytest

from pipeline import embeddings, spill, vectors
from pipeline.embeddings import Shards
from pipeline.semdedup import semdedup


def shard_view(tmp_path, n_shards=5, rows=40, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    tmp_path.mkdir(exist_ok=True)
    paths = []
    for i in range(n_shards):
        p = tmp_path / f"{i}.npy"
        np.save(p, rng.standard_normal((rows, dim)).astype(np.float16))
        paths.append(p)
    v = Shards(paths)
    v.scratch = tmp_path / "spill"
    return v


@pytest.fixture
def always(monkeypatch):
    """Spill whatever the size (a pool 'bigger than memory')."""
    monkeypatch.setattr(spill, "MEMORY_SHARE", 0.0)
    monkeypatch.setattr(spill, "BATCH", 700)  # several batch files


def test_view_keeps_stored_dtype_and_sparse_reads_are_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(embeddings, "SPARSE_GAP", 0)  # every read asks for its pages only
    v = shard_view(tmp_path)
    assert v.dtype == np.float16 and v.subset(np.arange(3)).dtype == np.float16
    whole = np.concatenate([np.load(tmp_path / f"{i}.npy") for i in range(5)]).astype(np.float32)
    rows = np.array([199, 3, 77, 150, 5, 38])
    assert np.array_equal(v.take(rows), whole[rows])
    out = np.empty((6, 8), np.float16)
    assert np.array_equal(v.take(rows, out).astype(np.float32), whole[rows])


def test_spilled_groups_equal_reading_in_place(tmp_path, always):
    v = shard_view(tmp_path)
    rng = np.random.default_rng(1)
    perm = rng.permutation(len(v))
    groups = [np.sort(perm[:30]), perm[30:33], np.sort(perm[33:120]), np.array([perm[120]])]  # 79 rows left out
    assert spill.where(v, 121)[0] == tmp_path / "spill"
    got = list(vectors.gathered(v, groups))
    assert [list(g) for g, _ in got] == [list(g) for g in groups]
    for g, x in got:
        assert x.dtype == np.float32 and np.array_equal(x, v.take(g))
    assert list((tmp_path / "spill").iterdir()) == []  # the copy is removed


def test_a_small_disk_takes_the_groups_in_rounds(tmp_path, always, monkeypatch):
    v = shard_view(tmp_path)
    groups = [np.arange(i, 200, 5) for i in range(5)]  # 40 rows (640 bytes) each: a batch file each
    passes = []
    real = spill.write
    monkeypatch.setattr(spill, "write", lambda *a: passes.append(1) or real(*a))
    got = list(spill.spilled(v, groups, tmp_path, room=1300))  # two files at a time
    assert len(passes) == 3
    assert all(np.array_equal(x, v.take(g)) for g, x in got) and [len(g) for g, _ in got] == [40] * 5


def test_no_spill_without_room_or_scratch(tmp_path, always, monkeypatch, caplog):
    v = shard_view(tmp_path)
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(spill.shutil, "disk_usage", lambda _: Usage(1 << 40, 0, 1000))
    with caplog.at_level("WARNING", logger="pipeline.spill"):
        assert spill.where(v, 100) is None
    assert "in place" in caplog.text and str(tmp_path / "spill") in caplog.text
    v.scratch = None
    assert spill.where(v, 100) is None


def test_spill_only_above_memory_share(tmp_path):
    v = shard_view(tmp_path)
    assert spill.where(v, len(v)) is None  # 3 KB: far under half of any machine's memory


def test_semdedup_and_two_level_kmeans_same_with_spill(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((12, 16)).astype(np.float32)
    x = np.repeat(base, 25, axis=0) + 0.01 * rng.standard_normal((300, 16)).astype(np.float32)
    paths = []
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", x[i * 100:(i + 1) * 100].astype(np.float16))
        paths.append(tmp_path / f"{i}.npy")
    v = Shards(paths)
    v.scratch = tmp_path / "spill"
    monkeypatch.setattr(vectors, "TWO_LEVEL", 4)  # 9 clusters go in two levels: the sub-fits gather too
    plain = semdedup(v, 9, 0.05, seed=0, backend="torch")
    monkeypatch.setattr(spill, "MEMORY_SHARE", 0.0)
    monkeypatch.setattr(spill, "BATCH", 2000)
    calls = []
    real = spill.spilled
    monkeypatch.setattr(spill, "spilled", lambda *a: calls.append(1) or real(*a))
    spilt = semdedup(v, 9, 0.05, seed=0, backend="torch")
    assert len(calls) == 2  # the sub-level samples, then the clusters
    for key in plain:
        assert np.array_equal(plain[key], spilt[key], equal_nan=True)
    assert (plain["duplicate_of"] >= 0).sum() > 200  # 12 groups of near copies


def test_d2_spills_its_joined_halves_as_stored(tmp_path, monkeypatch):
    from pipeline.d2 import Joined, d2_select

    img, txt = shard_view(tmp_path / "i", seed=4), shard_view(tmp_path / "t", seed=5)
    j = Joined(img, txt)
    assert j.dtype == np.float16 and j.scratch == img.scratch
    rows = np.array([7, 150, 3])
    assert np.array_equal(j.finish(j.take_stored(rows)), j.take(rows))
    difficulty = np.random.default_rng(6).random(len(img)).astype(np.float32)
    plain = d2_select(img, txt, difficulty, 0.5, k=5, clusters=4, backend="torch")
    monkeypatch.setattr(spill, "MEMORY_SHARE", 0.0)
    monkeypatch.setattr(spill, "BATCH", 3000)
    calls = []
    real = spill.spilled
    monkeypatch.setattr(spill, "spilled", lambda *a: calls.append(a[0].dtype) or real(*a))
    spilt = d2_select(img, txt, difficulty, 0.5, k=5, clusters=4, backend="torch")
    assert calls == [np.float16]
    assert np.array_equal(plain["selected"], spilt["selected"])
    assert np.array_equal(plain["score"], spilt["score"], equal_nan=True)
