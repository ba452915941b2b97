"""The caption-language stage runs only when a filter reads it (or the config asks), in its own file, so
a later run that needs it adds it to a work folder without decoding again."""
import pandas as pd

from pipeline.ingest import caption_languages, read_shard
from pipeline.run import run_curation
from fixtures.shardmaker import make_pool
from tests.test_metadata_fast import write_pool

BASIC = {"filters": [{"type": "basic", "min_side": 24, "min_words": 0, "min_chars": 0}]}


def _metadata(out):
    return pd.read_parquet(out / "metadata.parquet").set_index("uid")


def test_languages_only_when_read_and_added_later_without_a_decode(tmp_path):
    planted = make_pool(tmp_path / "pool", n=50, plant={3: "german", 7: "german", 11: "corrupt"})
    work = tmp_path / "work"
    m = run_curation(str(tmp_path / "pool"), tmp_path / "plain", {}, progress=False, work=work)
    meta = _metadata(tmp_path / "plain")
    assert meta["caption_lang"].isna().all() and meta["caption_lang_score"].isna().all()
    assert not (work / "columns" / "lang").exists() and m["kept"] == 49

    m = run_curation(str(tmp_path / "pool"), tmp_path / "basic", BASIC, progress=False, work=work)
    assert m["run"]["stage_runs"] == m["run"]["shards_annotated"] == 2  # the language stage alone, per shard
    meta = _metadata(tmp_path / "basic")
    samples = [s for shard in sorted((tmp_path / "pool").glob("*.tar")) for s in read_shard(shard)]
    want = dict(zip([s.uid for s in samples], caption_languages([s.caption_full for s in samples])))
    assert meta["caption_lang"].to_dict() == {u: lang for u, (lang, _) in want.items()}
    german = {s.uid for i, s in enumerate(samples) if i in planted and planted[i] == "german"}
    assert set(meta.index[meta["drop_reasons"].map(lambda r: "basic:language" in list(r))]) == german

    m = run_curation(str(tmp_path / "pool"), tmp_path / "asked", {"languages": True}, progress=False, work=work)
    assert m["run"]["stage_runs"] == 0  # cached
    assert _metadata(tmp_path / "asked")["caption_lang"].to_dict() == meta["caption_lang"].to_dict()


def test_metadata_pools_too(tmp_path):
    write_pool(tmp_path / "pool")
    work = tmp_path / "work"
    plain = run_curation(str(tmp_path / "pool"), tmp_path / "plain", {}, progress=False, work=work)
    assert _metadata(tmp_path / "plain")["caption_lang"].isna().all()
    assert plain["run"]["read_in_place"] and plain["run"]["stage_runs"] == 0  # columns alone: nothing cached
    m = run_curation(str(tmp_path / "pool"), tmp_path / "lang", {"languages": True}, progress=False, work=work)
    assert m["run"]["stage_runs"] == 4 and not m["run"]["read_in_place"]  # ingest + language id, 2 shards
    again = run_curation(str(tmp_path / "pool"), tmp_path / "again", {"languages": True}, progress=False, work=work)
    assert again["run"]["stage_runs"] == 0
    langs = _metadata(tmp_path / "lang")["caption_lang"]
    assert langs.notna().sum() == 14 and set(langs.dropna()) >= {"en", "fr", "de"}  # 6 of 20 captions are blank
