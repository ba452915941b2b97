"""DataComp's row-wise baselines on planted samples: basic, exact dedup, text-based; every sample
accounted for."""
import pandas as pd
import pytest

from pipeline.decide import decide, summarize
from pipeline.run import run_curation
from pipeline.config import load_config
from fixtures.shardmaker import make_pool, uid

PLANT = {3: "corrupt", 5: "dup", 10: "dup", 12: "german", 20: "short"}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("f")
    make_pool(tmp / "pool", n=40, per_shard=20, plant=PLANT)
    cfg = {"filters": [{"type": "basic", "min_side": 30}, {"type": "exact_dedup"},
                       {"type": "text_based", "classnames": ["red square", "blue square"]}]}
    m = run_curation(str(tmp / "pool"), tmp / "out", cfg, progress=False)
    return m, pd.read_parquet(tmp / "out" / "metadata.parquet").set_index("uid")


def test_each_planted_sample_gets_its_reason(table):
    m, df = table
    assert df.loc[uid(3), "drop_reason"] == "format"
    assert df.loc[uid(5), "drop_reason"] == "exact_dedup" and df.loc[uid(10), "drop_reason"] == "exact_dedup"
    assert df.loc[uid(4), "keep"]  # the original of 5 (red) stays
    assert df.loc[uid(12), "drop_reason"] == "basic:language" and df.loc[uid(12), "caption_lang"] == "de"
    assert list(df.loc[uid(20), "drop_reasons"]) == ["basic:caption_words", "basic:caption_chars", "text_based"]
    assert set(df.index[df["drop_reasons"].map(lambda r: "exact_dedup" in r)]) == {uid(5), uid(10)}


def test_text_based_keeps_exactly_the_named_classes(table):
    m, df = table
    named = df["caption"].isin(["a red square", "a blue square"])
    failing = df["drop_reasons"].map(lambda r: "text_based" in list(r))
    usable = df["ingest_error"].isna()
    assert (failing == (~named & usable)).all() and (~df.loc[~named, "keep"]).all()  # filters judge usable rows only
    assert named.sum() == 20 - 2  # 12 (german) and 20 (short) were red / blue squares


def test_kept_and_dropped_counts_are_the_planted_ones(table):
    m, df = table
    assert m["samples_in"] == 40 == len(df)
    # 20 red/blue captions, less german (12) and short (20), less the duplicate (5); 10 is a duplicate of
    # a green square and 3 (corrupt) is yellow
    assert m["kept"] == int(df["keep"].sum()) == 17
    assert m["dropped_by_reason"] == {"format": 1, "exact_dedup": 2, "basic:language": 1, "basic:caption_words": 1,
                                      "text_based": 18}


def test_datacomp_default_min_side_drops_small_images(table):
    m, df = table
    out, _, _ = decide(df.reset_index(), load_config({"filters": [{"type": "basic"}]}))
    usable = out["ingest_error"].isna()
    assert (out.loc[usable, "drop_reasons"].map(lambda r: "basic:min_side" in r)).all()  # 40 px < 200 px
    s = summarize(out)
    assert s["kept"] == 0 and s["dropped"] == 40


def test_bad_filter_config_is_explained():
    with pytest.raises(ValueError, match="max_aspect"):
        load_config({"filters": [{"type": "basic", "max_aspect": 0.5}]})
    with pytest.raises(ValueError, match="type"):
        load_config({"filters": [{"type": "semantic_magic"}]})


def test_shipped_configs_validate():
    from pathlib import Path

    paths = sorted(Path(__file__).parents[1].glob("pipeline/presets/**/*.yaml"))
    assert len(paths) >= 4
    for p in paths:
        load_config(p)


def test_decontaminate_drops_exactly_the_eval_copies(tmp_path):
    from fixtures.shardmaker import make_task

    copies = {7: "evalcopy", 22: "evalcopy", 31: "evalcopy"}
    make_pool(tmp_path / "pool", n=40, per_shard=20, plant={**copies, 2: "corrupt"})
    make_task(tmp_path / "eval" / "squares", per_class=10)
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out",
                     # these squares are flat colour + noise: JPEG changes a larger share of what
                     # structure they have than on real photos, hence a looser threshold than the default
                     {"filters": [{"type": "decontaminate", "eval_dirs": [str(tmp_path / "eval")], "max_rms": 0.8}]},
                     progress=False)
    df = pd.read_parquet(tmp_path / "out" / "metadata.parquet").set_index("uid")
    assert set(df.index[df["drop_reason"] == "decontaminate"]) == {uid(i) for i in copies}
    assert df.loc[uid(7), "decontaminate.copy_of"] == "squares/s0000007"
    assert m["dropped_by_reason"] == {"format": 1, "decontaminate": 3} and m["kept"] == 36
    with pytest.raises(FileNotFoundError, match="no evaluation task"):
        run_curation(str(tmp_path / "pool"), tmp_path / "out2",
                     {"filters": [{"type": "decontaminate", "eval_dirs": [str(tmp_path)]}]}, progress=False)
