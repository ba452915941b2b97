"""Per-shard stages are plug-ins (pipeline/stages/): one stage per module, every declared column
written, the work folder's layout owned by pipeline/workdir.py (shard ids may hold '/')."""
import ast
import importlib
import pkgutil
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline
import pipeline.annotate as annotate
import pipeline.stages as stages
from pipeline.config import load_config
from pipeline.decide import load_columns
from pipeline.stages.head import HeadConfig
from pipeline.workdir import WorkDir, check_id
from schemas.config import ClipModel
from fixtures.shardmaker import make_pool, uid

TINY = ClipModel(model="curate-tiny", batch_size=8)
B32 = ClipModel(precomputed="b32", column="clip_score_b32")


def test_every_stage_module_registers_one_stage():
    reg = stages.registry()
    for mod in pkgutil.iter_modules(stages.__path__):
        if mod.name == "base":
            continue
        m = importlib.import_module(f"pipeline.stages.{mod.name}")
        mine = [c for c in vars(m).values() if isinstance(c, type) and issubclass(c, stages.Stage)
                and c.__module__ == m.__name__ and c.name]
        assert len(mine) == 1, f"{mod.name}: {mine}"
        assert reg[mine[0].name] is mine[0] and mine[0].version >= 1


def linear_head(path: Path, dim: int = 128) -> str:
    np.savez(path, weight=np.random.default_rng(0).normal(size=(1, dim)).astype(np.float32), bias=np.zeros(1))
    return str(path)


def datacomp_sidecars(shard: Path, n_listed_extra: int = 1) -> None:
    """DataComp-style b32 scores and embeddings beside an img2dataset shard (one extra listed row)."""
    t = pq.read_table(shard.with_suffix(".parquet")).to_pandas()
    extra = [{"uid": uid(900 + i)} for i in range(n_listed_extra)]
    uids = list(t["uid"].dropna()) + [e["uid"] for e in extra]
    rng = np.random.default_rng(1)
    pq.write_table(pa.table({"uid": uids, "clip_b32_similarity_score": rng.uniform(0, 0.4, len(uids))}),
                   shard.with_suffix(".parquet"))
    emb = rng.normal(size=(len(uids), 16)).astype(np.float16)
    np.savez(shard.with_suffix(".npz"), b32_img=emb, b32_txt=emb)


def written(work: WorkDir, st, sid: str) -> set[str]:
    return set(pq.read_schema(work.columns(st.folder, sid)).names) - {"row"} - ({"uid"} - set(st.out_columns()))


def test_every_declared_column_is_written_tar_and_metadata(tmp_path):
    make_pool(tmp_path / "pool", n=12, per_shard=12, plant={3: "corrupt"})
    shard = tmp_path / "pool" / "00000.tar"
    datacomp_sidecars(shard)
    head = HeadConfig(type="head", name="aesthetic", weights=linear_head(tmp_path / "h.npz"))
    r = annotate.annotate_shard(shard, tmp_path / "run", [TINY, B32], True, [head])
    planned = stages.plan([TINY, B32], True, [head])
    assert {type(s).name for s in planned} == set(stages.registry())  # the test covers every stage
    assert r["ran"] == [s.folder for s in planned] and r["rows"] == 12
    work = WorkDir(tmp_path / "run")
    for st in planned:
        assert written(work, st, "00000") == set(st.out_columns()), st.folder
    assert np.load(work.thumbs("00000")).shape == (12, 32, 32)
    assert np.load(work.pool_scores("clip_score_b32", "00000")).shape == (13,)  # every listed row
    score = pq.read_table(work.columns("aesthetic", "00000")).column("aesthetic").to_numpy(zero_copy_only=False)
    assert np.isnan(score[3]) and np.isfinite(np.delete(score, 3)).all()  # undecodable: no embedding, no score

    # a metadata-only pool (DataComp's parquet + npz): ingest, language id, the precomputed column, the head
    meta = tmp_path / "md" / "abcd.parquet"
    meta.parent.mkdir()
    pq.write_table(pa.table({"uid": [uid(i) for i in range(5)], "text": ["a red square"] * 5,
                             "clip_b32_similarity_score": np.linspace(0, 0.4, 5)}), meta)
    emb = np.random.default_rng(2).normal(size=(5, 128)).astype(np.float16)
    np.savez(meta.with_suffix(".npz"), b32_img=emb, b32_txt=emb)
    head_md = HeadConfig(type="head", name="aesthetic", column="clip_score_b32",
                         weights=linear_head(tmp_path / "h.npz"))
    r = annotate.annotate_shard(meta, tmp_path / "run", [B32], True, [head_md])
    planned = stages.plan([B32], True, [head_md], metadata=True)
    assert r["ran"] == [s.folder for s in planned] == ["ingest", "lang", "clip_score_b32", "aesthetic"]
    for st in planned:
        assert written(work, st, "abcd") == set(st.out_columns()), st.folder
    assert work.npz_pointer("clip_score_b32", "abcd").is_file()  # read in place, not copied


def test_a_stage_writing_an_undeclared_column_is_refused(tmp_path, monkeypatch):
    from pipeline.stages.lang import Lang

    make_pool(tmp_path / "pool", n=4, per_shard=4)
    real = Lang.finish
    monkeypatch.setattr(Lang, "finish", lambda self, src: real(self, src).append_column("extra", pa.array([1] * 4)))
    with pytest.raises(RuntimeError, match=r"stage 'lang' wrote columns .*undeclared \['extra'\]"):
        annotate.annotate_shard(tmp_path / "pool" / "00000.tar", tmp_path / "run", [], True)


def test_work_folder_handles_shard_ids_with_folders(tmp_path):
    make_pool(tmp_path / "pool", n=8, per_shard=4)
    work = WorkDir(tmp_path / "run")
    sids = ["part-a/00000", "part-b/00000"]  # the same file name in two folders of a pool
    for sid, name in zip(sids, ["00000.tar", "00001.tar"]):
        r = annotate.annotate_shard(tmp_path / "pool" / name, work.root, [TINY], True, sid=sid)
        assert r["shard"] == sid and r["ran"] == ["ingest", "thumbs", "lang", "clip_score"]
    want = tmp_path / "run" / "columns" / "ingest" / "part-a" / "00000.parquet"
    assert work.columns("ingest", "part-a/00000") == want
    assert work.embeddings("clip_score", "part-b/00000", "img").is_file() and work.thumbs("part-a/00000").is_file()
    cfg = load_config({"clip": [{"model": "curate-tiny"}], "languages": True})
    df = load_columns(work.root, sids, cfg)
    assert df["uid"].tolist() == [uid(i) for i in range(8)] and df["clip_score"].notna().all()
    for bad in ["", "/abs", "a/../b", "a//b", "./a", "a/", "x\x00"]:
        with pytest.raises(ValueError, match="shard id"):
            check_id(bad)
    with pytest.raises(ValueError):
        work.columns("a/b", "00000")  # a stage name is one folder


def test_nothing_else_builds_work_folder_paths():
    """Only pipeline/workdir.py spells the layout: no ``/ "columns"`` (or embeddings, thumbs, global)."""
    pattern = re.compile(r'/\s*"(columns|embeddings|thumbs|global)"|"(columns|embeddings|thumbs)/')
    root = Path(pipeline.__file__).parent
    offenders = []
    for py in root.rglob("*.py"):
        if py.name == "workdir.py":
            continue
        src = py.read_text()
        for node in ast.walk(ast.parse(src)):
            seg = ast.get_source_segment(src, node) if isinstance(node, ast.BinOp) else None
            if seg and pattern.search(seg):
                offenders.append(f"{py.relative_to(root)}: {seg}")
        spelled = re.finditer(r'"(columns|embeddings|thumbs)/', src)
        offenders += [f"{py.relative_to(root)}: {m.group()}" for m in spelled]
    assert not offenders, offenders


def test_load_columns_nulls_a_stage_the_config_does_not_run(tmp_path):
    make_pool(tmp_path / "pool", n=4, per_shard=4)
    annotate.annotate_shard(tmp_path / "pool" / "00000.tar", tmp_path / "run", [], True)
    df = load_columns(tmp_path / "run", ["00000"], load_config({}))
    assert df["caption_lang"].isna().all()  # written, but this config does not read it
    df = load_columns(tmp_path / "run", ["00000"], load_config({"languages": True}))
    assert df["caption_lang"].eq("en").all()
