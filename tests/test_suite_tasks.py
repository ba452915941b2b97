"""The suite's further tasks (app/sample_pool/tasks_extra.py): registry, disjoint splits with the
declared classes, nothing shared with the pool, validation copies, decontamination folder, a tiny model."""
import hashlib
from pathlib import Path

import pytest

from app.sample_pool import extra_sources as xs
from app.sample_pool.tasks_extra import BUILDERS, train_folders, write_extra
from schemas.tasks import BUILTIN, EXTRA, GROUPS, REGISTRY_VERSION, VALIDATION
from shardio.evaltask import iter_split

SOURCE = {"rendered": "fonts", "icon": "icons", "emoji": "symbola", "object": "symbola", "flag": "flags"}


def _needs(name: str) -> list[str]:
    need = [SOURCE[name.split("_")[0]]]
    return need + ["wordnet"] if name in ("rendered_sentiment", "rendered_word_topics") else need


def _pixels(im) -> bytes:
    return hashlib.sha256(im.convert("RGB").tobytes() + repr(im.size).encode()).digest()


def _read(root: Path, split: str):
    return [(_pixels(im), s) for _, im, s in iter_split(root, split)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("extra")
    info = write_extra(out / "eval", out / "val", scale=0.05)
    return out, info


def test_registry_lists_the_tasks_with_datacomps_groups():
    assert len(EXTRA) >= 10 and REGISTRY_VERSION >= 2
    assert {t.folder for t in EXTRA} == set(BUILDERS)
    assert all(t in BUILTIN for t in EXTRA) and all(t.group in GROUPS for t in BUILTIN)
    assert {t.group for t in BUILTIN} == set(GROUPS)  # every DataComp group has tasks
    assert len({t.folder for t in BUILTIN}) == len(BUILTIN) == len({t.key for t in BUILTIN})
    shifts = [t for t in BUILTIN if t.group == "ImageNet dist. shifts"]
    assert [t.folder for t in BUILTIN if t.group == "ImageNet"] == ["fashion_mnist"] and len(shifts) == 5
    val = {t.folder: t for t in VALIDATION}
    for t in EXTRA:  # a validation copy of every task, scored the same way
        assert val[t.folder].key == f"val/{t.folder}" and (val[t.folder].group, val[t.folder].metric) == (t.group, t.metric)
    assert not {t.key for t in VALIDATION} & {t.key for t in BUILTIN}


def test_only_tasks_without_their_source_are_skipped(built):
    out, info = built
    status = xs.status()
    for name in BUILDERS:
        if all(status[s] for s in _needs(name)):
            assert name in info["tasks"], info["skipped"].get(name)
        else:
            assert name in info["skipped"]
    assert set(info["tasks"]) | set(info["skipped"]) == set(BUILDERS)


def test_splits_are_disjoint_with_the_declared_classes(built):
    out, info = built
    if not info["tasks"]:
        pytest.skip("no source of the further tasks is installed")
    kinds = {t.folder: t.kind for t in EXTRA}
    for name, sizes in info["tasks"].items():
        root = out / "eval" / name
        parts = {"test": _read(root, "test"), "train": _read(root, "train")}
        if sizes["val"]:
            parts["val"] = _read(out / "val" / name, "test")
        assert {s: len(v) for s, v in parts.items()} == {s: sizes[s] for s in parts}, name
        hashes = {s: {h for h, _ in v} for s, v in parts.items()}
        assert not hashes["test"] & hashes["train"], name
        assert not hashes.get("val", set()) & (hashes["test"] | hashes["train"]), name
        if kinds[name] == "retrieval":
            assert all(s["txt"].decode().strip() for v in parts.values() for _, s in v)
            continue
        classes = (root / "classnames.txt").read_text().splitlines()
        assert len(classes) == sizes["classes"] == len(set(classes)) >= 2, name
        labels = {s: [int(x["cls"]) for _, x in v] for s, v in parts.items()}
        assert set(labels["test"]) == set(range(len(classes))), name  # every class is tested
        assert all(0 <= y < len(classes) for v in labels.values() for y in v), name
        assert set(labels["train"]) <= set(range(len(classes)))


def test_fonts_and_items_never_cross_splits():
    f = xs.fonts()
    assert not set(f["test"]) & (set(f["train"]) | set(f["val"])) and not set(f["train"]) & set(f["val"])
    designs = {s: {xs.FAMILY_DESIGN[__import__("PIL.ImageFont").ImageFont.truetype(p, 12).getname()[0]] for p in v}
               for s, v in f.items()}
    assert all(designs[s] <= set(xs.FONT_SPLIT[s]) for s in designs)
    if (xs.WORDNET_DIR / "data.adj").is_file():
        words = xs.sentiment_words()
        assert words["good"] == "positive" and words["bad"] == "negative"
        assert xs.topic_words().get("mosquito") == "animal" and "dog" not in xs.topic_words()  # dog: also a person, food


def test_missing_source_is_skipped_and_named(tmp_path, monkeypatch):
    monkeypatch.setattr(xs, "SYMBOLA", tmp_path / "absent.ttf")
    info = write_extra(tmp_path / "eval", tmp_path / "val", scale=0.05, only=["emoji_groups", "object_counts"])
    assert info["tasks"] == {} and set(info["skipped"]) == {"emoji_groups", "object_counts"}
    assert "fonts-symbola" in info["skipped"]["emoji_groups"]
    assert not (tmp_path / "eval" / "emoji_groups").exists()


def test_pool_shares_no_image_with_the_tasks_and_decontamination_reads_them(tmp_path):
    """A real pool build: its eval/ folder holds the tasks (test + train), val/ their validation
    copies; no pool or trusted image equals any of their images; decontaminate's folder scan finds them."""
    from app.sample_pool import build_pool
    from pipeline.decontam import task_folders
    from pipeline.ingest import read_shard
    from shardio.decode import decode_image

    info = build_pool(tmp_path / "pool", 300, seed=0, samples_per_shard=100, n_trusted=100)
    suite = info["suite"]
    assert set(suite["tasks"]) | set(suite["skipped"]) == set(BUILDERS)
    if info["data"] == "synthetic":
        assert suite["tasks"] == {}
        return
    written = set(suite["tasks"])
    ev = tmp_path / "pool" / "eval"
    assert {Path(p).name for p in train_folders(ev)} == written  # NormSim targets: train splits only
    assert written <= {p.name for p in task_folders([str(ev)])}
    pool = set()
    for folder in ("shards", "trusted"):
        for shard in sorted((tmp_path / "pool" / folder).glob("*.tar")):
            for s in read_shard(shard):
                im, _ = decode_image(s.image) if s.image is not None else (None, None)
                if im is not None:
                    pool.add(_pixels(im))
    assert len(pool) > 300
    for name in written:
        for root, split in ((ev / name, "test"), (ev / name, "train"), (tmp_path / "pool" / "val" / name, "test")):
            if (root / split / "nshards.txt").is_file():
                assert not {h for h, _ in _read(root, split)} & pool, (name, split)
    assert all((tmp_path / "pool" / "val" / n / "test" / "nshards.txt").is_file()
               for n, s in suite["tasks"].items() if s["val"])


def test_synthetic_pool_says_the_tasks_were_skipped(tmp_path):
    from app.sample_pool import build_pool

    info = build_pool(tmp_path / "syn", 200, n_trusted=20, samples_per_shard=100, data="synthetic")
    assert info["suite"]["tasks"] == {} and set(info["suite"]["skipped"]) == set(BUILDERS)


def test_tiny_model_scores_every_task_with_a_probe(built, tmp_path):
    from training.evalsuite import run_suite

    out, info = built
    if not info["tasks"]:
        pytest.skip("no source of the further tasks is installed")
    keys = [t.key for t in EXTRA if t.folder in info["tasks"]]
    s = run_suite("curate-tiny", out / "eval", "builtin", results=tmp_path / "r.jsonl", only=keys, few_shot=1)
    rows = {r["task"]: r for r in s["rows"] if r["task"] in keys}
    assert all(r["status"] == "ok" and 0 <= r["main"] <= 1 for r in rows.values())
    kinds = {t.key: t.kind for t in EXTRA}
    assert all((r["few_shot"] is not None) == (kinds[k] == "classification") for k, r in rows.items())
    assert s["tasks_covered"] == len(keys)
    assert {g for g, v in s["groups"].items() if v["tasks"]} == {t.group for t in EXTRA if t.key in keys}
