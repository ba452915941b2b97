"""Filters are plug-ins: one file adds one (pipeline/filters/caption_length.py and this test are all
that adding it took); instances never collide, even two of one type over two scorers."""
import json

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.filters import registry
from pipeline.run import run_curation
from shardio.shards import ShardWriter
from fixtures.shardmaker import image_bytes, uid


def test_every_filter_module_registers_and_declares_its_contract():
    reg = registry()
    assert {"clip_score", "basic", "exact_dedup", "near_dedup", "semantic_dedup", "caption_length"} <= set(reg)
    from pathlib import Path

    import pipeline.filters as pf

    modules = {p.stem for p in Path(pf.__file__).parent.glob("*.py")} - {"__init__", "base"}
    assert {cls.__module__.rsplit(".", 1)[-1] for cls in reg.values()} == modules  # one filter per module
    for cls in reg.values():
        assert all(kind in ("string", "float32", "int32", "int64", "bool") for kind in cls.outputs.values())


def test_caption_length_drops_exactly_the_planted_captions(tmp_path):
    captions = {0: "x", 1: "a red square", 2: " ".join(["word"] * 61), 3: "a blue square with a thin border"}
    with ShardWriter(tmp_path / "pool", 10) as w:
        for i, cap in captions.items():
            w.write(f"{i:04d}", image_bytes("red", seed=i), "jpg", cap, {"uid": uid(i)})
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out",
                     {"filters": [{"type": "caption_length", "min_words": 2, "max_words": 60}]}, progress=False)
    df = pd.read_parquet(tmp_path / "out" / "metadata.parquet").set_index("uid")
    reasons = {u: r if isinstance(r, str) else None for u, r in df["drop_reason"].items()}
    assert reasons == {uid(0): "caption_length[2,60]:too_short", uid(1): None,
                                           uid(2): "caption_length[2,60]:too_long", uid(3): None}
    assert df["caption_length[2,60].words"].tolist() == [1, 3, 61, 7]
    assert m["filters"]["caption_length[2,60]"]["reasons"] == ["caption_length[2,60]:too_short",
                                                              "caption_length[2,60]:too_long"]


def test_two_score_filters_over_two_scorers_keep_their_own_reasons_thresholds_and_columns(tmp_path):
    from schemas.checkpoint import MODEL_CONFIG_DIR

    other = json.loads((MODEL_CONFIG_DIR / "curate-tiny.json").read_text())
    other["embed_dim"] = 48  # another model: other weights, other scores
    (tmp_path / "tiny-b.json").write_text(json.dumps(other))
    with ShardWriter(tmp_path / "pool", 20) as w:
        for i in range(40):
            colour = ["red", "green", "blue", "yellow"][i % 4]
            w.write(f"{i:04d}", image_bytes(colour, seed=i), "jpg", f"a {colour} square", {"uid": uid(i)})
    cfg = {"clip": [{"model": "curate-tiny", "batch_size": 16},
                    {"model": str(tmp_path / "tiny-b.json"), "column": "clip_score_b", "batch_size": 16}],
           "filters": [{"type": "clip_score", "fraction": 0.5},
                       {"type": "clip_score", "column": "clip_score_b", "fraction": 0.5},
                       {"type": "semantic_dedup", "clusters": 2, "eps": 0.3},
                       {"type": "semantic_dedup", "column": "clip_score_b", "clusters": 2, "eps": 0.3}]}
    names = [f.instance for f in load_config(cfg).filters]
    assert names == ["clip_score[top0.5]", "clip_score[b,top0.5]", "semantic_dedup[eps0.3]", "semantic_dedup[b,eps0.3]"]
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", cfg, progress=False)
    df = pd.read_parquet(tmp_path / "out" / "metadata.parquet")
    a, b = df["clip_score"].to_numpy(), df["clip_score_b"].to_numpy()
    assert not np.allclose(a, b)
    for name, col in (("clip_score[top0.5]", a), ("clip_score[b,top0.5]", b)):
        t = m["thresholds"][name]
        assert t == pytest.approx(np.sort(col)[::-1][20])  # each over its own scorer's column
        fails = df["drop_reasons"].map(lambda r, n=name: n in list(r)).to_numpy()
        assert (fails == (col < t)).all()
    assert m["thresholds"]["clip_score[top0.5]"] != m["thresholds"]["clip_score[b,top0.5]"]
    assert {"semantic_dedup[eps0.3].cluster", "semantic_dedup[b,eps0.3].cluster"} <= set(df.columns)
