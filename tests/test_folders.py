"""Every command that writes a folder of shards is accepted, by that folder's own path, by every
command that reads shards (they all resolve patterns with shardio.shards.expand)."""
from pathlib import Path

import numpy as np

from pipeline.reshard import reshard
from pipeline.run import run_curation
from shardio.shards import expand
from fixtures.shardmaker import make_pool


def _real(paths):
    return [str(Path(p).resolve()) for p in paths]


def test_curated_output_resharded_output_and_pool_folders_chain(tmp_path):
    make_pool(tmp_path / "pool", n=30, per_shard=10)
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", {"filters": []}, progress=False)
    out = tmp_path / "out"
    assert _real(expand(out)) == _real(expand(out / "shards")) == _real(expand(out / "current" / "shards"))
    assert len(expand(out)) >= 1
    # the curated output folder is a pool for the next run and for reshard, by its own path
    m2 = run_curation(str(out), tmp_path / "again", {"filters": []}, progress=False)
    assert m2["kept"] == m["kept"] == 30
    r = reshard(str(out / "uids.npy"), str(out), tmp_path / "resharded", 7)
    assert r["written"] == 30
    uids = np.load(out / "uids.npy")
    assert len(uids) == 30
    assert _real(expand(tmp_path / "resharded")) == _real(expand(tmp_path / "resharded" / "shards"))
    m3 = run_curation(str(tmp_path / "resharded"), tmp_path / "third", {"filters": []}, progress=False)
    assert m3["kept"] == 30


def test_folder_holding_shards_beside_other_outputs(tmp_path):
    """build-pool (shards/, trusted/, eval/), build-interleaved and interleave (shards/ + parquet/json)."""
    make_pool(tmp_path / "built" / "shards", n=10, per_shard=5)
    make_pool(tmp_path / "built" / "trusted", n=10, per_shard=5)
    (tmp_path / "built" / "info.json").write_text("{}")
    assert _real(expand(tmp_path / "built")) == _real(expand(tmp_path / "built" / "shards"))
    assert all("/trusted/" not in p for p in expand(tmp_path / "built"))
