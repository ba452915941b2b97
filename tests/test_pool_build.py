"""pipeline.pool: exact planted noise, disjoint splits, a held-out eval task, determinism, fallback."""
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.decode import decode_image
from pipeline.ingest import read_shard
from pipeline.pool import build_pool, is_holdout
from pipeline.pool import build as pool_build
from pipeline.pool import sources as src
from pipeline.pool.noise import FRACTIONS, counts_for

N, TRUSTED, PER_SHARD = 400, 100, 100
ARGS = {"seed": 0, "samples_per_shard": PER_SHARD, "n_trusted": TRUSTED}


def _samples(folder: Path) -> list:
    return [s for p in sorted(folder.glob("*.tar")) for s in read_shard(p)]


def _digest(folder: Path) -> str:
    """Hash of every file but ``_stats.json`` (a duration) and ``pool.json`` (paths)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.endswith("_stats.json") and p.name != "pool.json":
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    out = tmp_path_factory.mktemp("pool") / "pool"
    info = build_pool(out, N, **ARGS)
    return out, info, pd.read_parquet(out / "ground_truth.parquet"), _samples(out / "shards")


def test_counts_uids_meta_and_ground_truth(pool):
    out, info, gt, samples = pool
    assert len(samples) == N == len(gt) == info["counts"]["pool"]
    assert info["counts"]["shards"] == 4 == len(list((out / "shards").glob("*.tar")))
    uids = [s.uid for s in samples]
    assert len(set(uids)) == N and set(uids) == set(gt["uid"])
    assert all(re.fullmatch(r"[0-9a-f]{32}", u) for u in uids)
    g = gt.set_index("uid")
    for s in samples:
        assert s.error is None and s.meta["uid"] == s.uid
        assert s.key == g.at[s.uid, "key"] and s.shard == g.at[s.uid, "shard"] and s.key.startswith(s.shard)
        assert s.caption == g.at[s.uid, "caption"] and s.meta["source"] == g.at[s.uid, "source"]
        assert s.meta["sha256"] == hashlib.sha256(s.image).hexdigest()
        assert {"url", "original_width", "original_height", "width", "height"} <= set(s.meta)
    expected = counts_for(N)
    assert all(v >= 1 for v in expected.values())
    assert gt["noise"].value_counts().to_dict() == expected == info["noise_counts"]
    assert info["counts"]["clean"] == N - sum(expected.values()) == int(gt["noise"].isna().sum())
    assert sum(info["counts"]["by_source"].values()) == N
    if info["data"] == "real":
        assert set(info["counts"]["by_source"]) <= {"fashion_mnist", "openclipart", "emoji"}
        assert info["counts"]["by_source"]["fashion_mnist"] > N / 2


def test_planted_noise_is_what_the_table_says(pool):
    out, info, gt, samples = pool
    by_uid = {s.uid: s for s in samples}
    g = gt.set_index("uid")
    clean = g[g["noise"].isna()]
    assert (clean["caption"] == clean["clean_caption"]).all()
    for uid in clean.index:
        img, _ = decode_image(by_uid[uid].image)
        assert img.size == (by_uid[uid].meta["width"], by_uid[uid].meta["height"])
    for uid, row in g[g["noise"] == "exact_duplicate"].iterrows():
        original = by_uid[row["noise_of"]]
        assert by_uid[uid].image == original.image and by_uid[uid].caption == original.caption
        assert pd.isna(g.at[row["noise_of"], "noise"])
    for uid, row in g[g["noise"] == "near_duplicate"].iterrows():
        assert row["noise_of"] in by_uid and by_uid[uid].image != by_uid[row["noise_of"]].image
        assert decode_image(by_uid[uid].image)[0] is not None
    swapped = g[g["noise"] == "swapped_caption"]
    assert (swapped["caption"] != swapped["clean_caption"]).all()
    for uid, row in swapped.iterrows():  # each took its partner's clean caption; partners differ in label
        partner = g.loc[row["noise_detail"].split()[-1]]
        assert row["caption"] == partner["clean_caption"] and row["label"] != partner["label"]
    for kind in ("junk_caption", "non_english"):
        rows = g[g["noise"] == kind]
        assert (rows["caption"] != rows["clean_caption"]).all()
    for uid in g.index[g["noise"].isin(["corrupt_image", "truncated_image"])]:
        img, reason = decode_image(by_uid[uid].image)
        assert img is None and reason.split(":")[0] in ("unidentified_image", "broken_image")
    for uid in g.index[g["noise"] == "tiny_image"]:
        assert max(decode_image(by_uid[uid].image)[0].size) < 16
    for uid in g.index[g["noise"] == "extreme_aspect"]:
        w, h = decode_image(by_uid[uid].image)[0].size
        assert max(w, h) / min(w, h) >= 10


def test_trusted_is_clean_and_disjoint(pool):
    out, info, gt, samples = pool
    trusted = _samples(out / "trusted")
    assert len(trusted) == TRUSTED == info["counts"]["trusted"]
    assert not {s.uid for s in trusted} & set(gt["uid"])
    assert not {s.meta["url"].split("#")[0] for s in trusted} & {s.meta["url"].split("#")[0] for s in samples}
    assert all(s.caption and decode_image(s.image)[0] is not None for s in trusted)


def test_holdout_items_stay_out(pool):
    out, info, gt, samples = pool
    assert is_holdout("openclipart:food/apple.png", 0) == is_holdout("openclipart:food/apple.png", 0)
    share = np.mean([is_holdout(f"emoji:U+{i:04X}", 0) for i in range(0x1F300, 0x1F300 + 2000)])
    assert 0.07 < share < 0.13
    used = _samples(out / "trusted") + samples
    for s in used:
        if s.meta["source"] == "openclipart":
            rel = s.meta["url"].split("/png/", 1)[1].split("#")[0]
            assert not is_holdout(f"openclipart:{rel}", 0)
        elif s.meta["source"] == "emoji":
            assert not is_holdout(s.meta["url"].split("#")[0], 0)


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L").resize((28, 28)), np.float32).ravel()


def test_eval_task_is_held_out_except_planted_copies(pool):
    out, info, gt, samples = pool
    task = Path(info["paths"]["eval"])
    assert task == out / "eval" / info["eval_task"]
    classes = (task / "classnames.txt").read_text().splitlines()
    templates = (task / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert len(classes) == 10 and 6 <= len(templates) <= 10 and all("{c}" in t for t in templates)
    n_shards = int((task / "test" / "nshards.txt").read_text())
    images, labels = [], []
    for i in range(n_shards):
        with tarfile.open(task / "test" / f"{i}.tar") as t:
            for m in t.getmembers():
                data = t.extractfile(m).read()
                labels.append(int(data)) if m.name.endswith(".cls") else images.append(data)
    assert len(images) == len(labels) == (10_000 if info["data"] == "real" else 2000)
    assert set(labels) == set(range(10))
    if info["data"] == "real":
        assert classes[:2] == ["t-shirt", "trouser"] and n_shards == 10
        test_x, test_y = src.fmnist("test")
        for i in (0, 4321, 9999):
            assert labels[i] == test_y[i]
            written = np.asarray(Image.open(io.BytesIO(images[i])))
            assert np.array_equal(written, np.asarray(src.fmnist_image(test_x[i])))
        urls = {s.meta["url"] for s in samples if s.meta["source"] == "fashion_mnist"}
        eval_copies = set(gt.loc[gt["noise"] == "eval_copy", "noise_of"])
        assert {u.replace("fashion-mnist:test/", "fashion_mnist_test:") for u in urls if ":test/" in u} == eval_copies
    readable = [s for s in samples if decode_image(s.image)[0] is not None]
    a = np.stack([_pixels(s.image) for s in readable])
    b = np.stack([_pixels(x) for x in images])
    dist = (a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T  # squared L2, pool x eval
    near = np.sqrt(np.maximum(dist.min(1), 0) / a.shape[1]) < 3  # RMS grey-level difference
    hits = {s.uid for s, hit in zip(readable, near) if hit}
    assert hits == set(gt.loc[gt["noise"] == "eval_copy", "uid"])


def test_deterministic_and_skips_a_matching_rebuild(pool, tmp_path, capsys):
    out, info, gt, samples = pool
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert build_pool(out, N, **ARGS) == info
    assert "pool up to date" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert json.loads((out / "pool.json").read_text()) == info
    again = build_pool(tmp_path / "again", N, **ARGS)
    assert _digest(tmp_path / "again") == _digest(out)
    assert {k: v for k, v in again.items() if k != "paths"} == {k: v for k, v in info.items() if k != "paths"}
    build_pool(tmp_path / "other", N, **{**ARGS, "seed": 1})
    assert _digest(tmp_path / "other" / "shards") != _digest(out / "shards")
    assert not (tmp_path / "again.tmp").exists()


def test_synthetic_fallback(tmp_path):
    info = build_pool(tmp_path / "syn", 300, n_trusted=50, samples_per_shard=100, data="synthetic")
    assert info["data"] == "synthetic" and info["eval_task"] == "synthetic_shapes"
    assert info["counts"]["by_source"] == {"synthetic": 300}
    assert all(v >= 1 for v in info["noise_counts"].values()) and set(info["noise_counts"]) == set(FRACTIONS)
    assert len(_samples(tmp_path / "syn" / "shards")) == 300 and len(_samples(tmp_path / "syn" / "trusted")) == 50
    task = tmp_path / "syn" / "eval" / "synthetic_shapes"
    assert (task / "classnames.txt").read_text().split()[0] == "circle"
    assert int((task / "test" / "nshards.txt").read_text()) == 2


def test_missing_real_data_and_bad_arguments(tmp_path, monkeypatch, capsys):
    if src.available()["fashion_mnist"]:  # more than the real data holds: a clear error, no half-built folder
        with pytest.raises(ValueError, match="real items"):
            build_pool(tmp_path / "big", 200_000, data="real")
        assert not (tmp_path / "big.tmp").exists() and not (tmp_path / "big").exists()
    monkeypatch.setattr(src, "FMNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        pool_build.resolve_data("real")
    assert pool_build.resolve_data("auto") == "synthetic"
    assert "SYNTHETIC" in capsys.readouterr().err
    with pytest.raises(ValueError, match="data must be"):
        build_pool(tmp_path / "x", 100, data="web")
    with pytest.raises(ValueError, match="samples_per_shard"):
        build_pool(tmp_path / "x", 100, samples_per_shard=20_000)
