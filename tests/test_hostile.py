"""No sample lost on hostile input: every sample found is kept or dropped with its real cause, every
broken shard is named, listed-but-not-downloaded rows are counted, and kills at any point lose nothing."""
import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.faults import POINTS
from pipeline.publish import NotPublished, checksums, published
from pipeline.run import run_curation
from shardio.shards import iter_tar_samples
from fixtures.hostile import make_corpus, run_cli

CONFIG = {"clip": [{"model": "curate-tiny", "batch_size": 16}], "filters": []}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    c = make_corpus(tmp_path_factory.mktemp("hostile"))
    m = run_curation(str(c.root / "pool"), c.root / "out", CONFIG, progress=False)
    return c, m, pd.read_parquet(c.root / "out" / "metadata.parquet")


def test_corpus_covers_at_least_30_kinds(hostile):
    c, _, _ = hostile
    assert len(c.kinds) >= 30


def test_every_sample_becomes_exactly_what_it_should(hostile):
    c, m, meta = hostile
    got: dict = {}
    for shard, key, reason in zip(meta["shard"], meta["key"], meta["drop_reason"]):
        got.setdefault((shard, key), []).append(reason if isinstance(reason, str) else None)
    assert got == c.expect
    assert m["samples_in"] == c.samples == len(meta)
    expect_reasons = pd.Series([o for v in c.expect.values() for o in v if o is not None]).value_counts().to_dict()
    assert m["dropped_by_reason"] == expect_reasons
    assert m["kept"] == sum(o is None for v in c.expect.values() for o in v)


def test_shard_problems_are_named_and_listings_counted(hostile):
    c, m, _ = hostile
    broken = {Path(b["shard"]).name: b["error"] for b in m["broken_shards"]}
    assert set(broken) == set(c.broken)
    assert all(broken[s].startswith(prefix) for s, prefix in c.broken.items())
    assert m["listed_not_downloaded"] == c.not_downloaded
    assert [Path(e["shard"]).name.split(".")[0] for e in m["sidecar_errors"]] == c.sidecar_errors
    assert m["skipped_members"] == c.skipped


def test_export_holds_the_kept_samples_with_long_captions_cut(hostile):
    c, m, meta = hostile
    out = [s for p in m["output_shards"] for s in iter_tar_samples(p)]
    assert len(out) == m["kept"]
    long = meta.set_index(["shard", "key"]).loc[c.long_caption_key]
    assert long["caption_chars"] == 1_000_000 and len(long["caption"]) == 4096
    assert max(len(s.get("txt", b"")) for s in out) == 4096
    keys = [s["__key__"] for s in out]
    assert len(keys) == len(set(keys)) and not any(k.startswith(("/", "..")) or "/../" in k for k in keys)


def kill_and_rerun(tmp_path, points) -> None:
    """For each point: publish an old output, kill a new run there, check what a reader sees, rerun and
    compare with an uninterrupted run, byte for byte."""
    from fixtures.shardmaker import make_pool

    make_pool(tmp_path / "pool", n=60, per_shard=10, plant={3: "corrupt", 8: "dup"})
    old = tmp_path / "old.yaml"
    old.write_text(json.dumps({"filters": []}))
    new = tmp_path / "new.yaml"
    new.write_text(json.dumps({"filters": [{"type": "exact_dedup"}, {"type": "basic", "min_side": 30}]}))
    assert run_cli(tmp_path / "pool", tmp_path / "clean", new).returncode == 0
    want = checksums(tmp_path / "clean")
    for point in points:
        out = tmp_path / point.replace(":", "_")
        assert run_cli(tmp_path / "pool", out, old).returncode == 0
        before = checksums(out)
        r = run_cli(tmp_path / "pool", out, new, kill=point)
        assert r.returncode == -9, (point, r.stderr[-2000:])
        seen = checksums(out)  # a reader sees the previous complete output, or the new one once switched
        assert seen == (want if point == "publish:switched" else before), point
        assert run_cli(tmp_path / "pool", out, new).returncode == 0
        assert checksums(out) == want, point


def test_kills_mid_export_and_between_publish_steps_lose_nothing(tmp_path):
    kill_and_rerun(tmp_path, ["export:mid", "publish:renamed"])


@pytest.mark.slow
def test_a_kill_at_any_point_loses_nothing_and_shows_no_mix(tmp_path):
    kill_and_rerun(tmp_path, POINTS)


def test_a_reader_refuses_an_output_that_never_completed(tmp_path):
    from fixtures.shardmaker import make_pool

    make_pool(tmp_path / "pool", n=20, per_shard=10)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("filters: []\n")
    assert run_cli(tmp_path / "pool", tmp_path / "out", cfg, kill="publish:staged").returncode == -9
    with pytest.raises(NotPublished, match="no complete curation output"):
        published(tmp_path / "out")


def test_the_prefect_flow_gives_the_same_output_on_the_corpus(hostile, prefect_server):
    import json as _json

    from flows.curate import curate

    c, _, _ = hostile
    cfg = c.root / "cfg.json"
    cfg.write_text(_json.dumps(CONFIG))
    curate(pool=str(c.root / "pool"), out=str(c.root / "flow"), config=str(cfg))
    assert checksums(c.root / "flow") == checksums(c.root / "out")
