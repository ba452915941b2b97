"""negCLIPLoss, NormSim and the score mix (arXiv 2405.19547; FLYT's mixing): each against a direct
computation (torch's cross-entropy, numpy's norms), on memory-mapped shard files as on arrays; the same
keep decisions on a DataComp metadata pool and on shards holding the same samples; annotation on Dask
gives the same outputs as in process."""
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import pipeline.embeddings as embeddings
import pipeline.filters.neg_clip_loss as ncl
import pipeline.filters.norm_sim as ns
from pipeline.config import load_config
from pipeline.embeddings import Shards
from pipeline.filters.mix import rank_mix, soft_cap
from pipeline.filters.neg_clip_loss import neg_clip_loss
from pipeline.filters.norm_sim import norm_sim, proxy_select
from pipeline.run import run_curation
from fixtures.shardmaker import make_pool, uid


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def contrastive_score(img, txt, tau):
    """-tau * CLIP's loss of each pair in one batch: the mean of torch's cross-entropies both ways."""
    logits = torch.from_numpy(unit(img).astype(np.float64) @ unit(txt).astype(np.float64).T) / tau
    labels = torch.arange(len(img))
    ce = torch.nn.functional.cross_entropy
    return (-tau * 0.5 * (ce(logits, labels, reduction="none") + ce(logits.T, labels, reduction="none"))).numpy()


def pairs(n=48, d=16, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n, d)).astype(np.float32)
    return img, (img + 0.8 * rng.normal(size=(n, d))).astype(np.float32)


def shard_view(tmp_path, x, name, cuts=(5, 5, 17, 31)):
    """``x`` split into per-shard float16 .npy files (an empty one among them), as a view."""
    paths = []
    for i, part in enumerate(np.split(x, list(cuts))):
        paths.append(tmp_path / f"{name}{i}.npy")
        np.save(paths[-1], part.astype(np.float16))
    return Shards(paths)


def test_neg_clip_loss_of_one_batch_is_minus_tau_times_the_contrastive_loss():
    img, txt = pairs()
    for tau in (0.01, 0.07):
        score, clip = neg_clip_loss(img, txt, np.ones(len(img), bool), batch_size=len(img), tau=tau)
        assert np.allclose(score, contrastive_score(img, txt, tau), atol=2e-6)
        assert np.allclose(clip, (unit(img) * unit(txt)).sum(1), atol=1e-6)


def test_neg_clip_loss_averages_seeded_random_batches_and_reads_shard_files_out_of_core(tmp_path, monkeypatch):
    img, txt = pairs(n=50)
    ok = np.ones(50, bool)
    ok[[3, 40]] = False  # not candidates: never in a batch
    img[7] = 0.0  # no usable embedding
    iv, tv = shard_view(tmp_path, img, "img"), shard_view(tmp_path, txt, "txt")
    img16, txt16 = iv.load(), tv.load()  # what the files hold
    rows = np.flatnonzero(ok & (np.abs(img16).max(1) > 0))
    # the batching written again: 3 repeats, a seeded permutation split into equal batches of <= 16
    rng, want = np.random.default_rng(5), np.zeros(len(rows))
    for _ in range(3):
        for b in np.array_split(rng.permutation(len(rows)), -(-len(rows) // 16)):
            want[b] += contrastive_score(img16[rows[b]], txt16[rows[b]], 0.01)
    monkeypatch.setattr(ncl, "SIM_FLOATS", 40)  # a few image rows against the batch at a time
    monkeypatch.setattr(embeddings, "CHUNK_BYTES", 200)
    score, _ = neg_clip_loss(iv, tv, ok, batch_size=16, repeats=3, seed=5)
    assert np.isnan(score[[3, 7, 40]]).all() and np.isfinite(np.delete(score, [3, 7, 40])).all()
    assert np.allclose(score[rows], want / 3, atol=2e-6)
    again, _ = neg_clip_loss(img16, txt16, ok, batch_size=16, repeats=3, seed=5)
    assert np.allclose(again, score, atol=1e-6, equal_nan=True)


def test_neg_clip_loss_draws_batches_inside_windows_of_consecutive_rows(tmp_path, monkeypatch):
    img, txt = pairs(n=100)
    iv, tv = shard_view(tmp_path, img, "img", cuts=(30, 61)), shard_view(tmp_path, txt, "txt", cuts=(30, 61))
    img16, txt16 = iv.load(), tv.load()
    monkeypatch.setattr(ncl, "WINDOW_BYTES", 40 * 16 * 4)  # 40 rows of float16 image + text: 3 windows of 33-34
    assert [len(w) for w in ncl.windows(100, 16, 16 * 4)] == [34, 33, 33]
    rng, want = np.random.default_rng(2), np.zeros(100)
    for w in ncl.windows(100, 16, 16 * 4):  # a window read once, its K batchings one after another
        for _ in range(2):
            for b in np.array_split(rng.permutation(len(w)), 3):
                want[w[b]] += contrastive_score(img16[w[b]], txt16[w[b]], 0.01)
    score, _ = neg_clip_loss(iv, tv, np.ones(100, bool), batch_size=16, repeats=2, seed=2)
    assert np.allclose(score, want / 2, atol=2e-6)


def test_boilerplate_pairs_top_the_clip_score_and_drop_by_neg_clip_loss():
    """9 boilerplate pairs (images and captions all near one direction) have CLIP scores in the top 30%,
    but each matches the other 8 as well as its own: negCLIPLoss puts exactly them at the bottom."""
    rng = np.random.default_rng(0)
    img = unit(rng.normal(size=(40, 32)))
    txt = unit(img + 0.5 * unit(rng.normal(size=(40, 32))))
    common, g = unit(rng.normal(size=(1, 32))), np.arange(31, 40)
    img[g] = unit(common + 0.25 * unit(rng.normal(size=(9, 32))))
    txt[g] = unit(common + 0.25 * unit(rng.normal(size=(9, 32))))
    score, clip = neg_clip_loss(img.astype(np.float32), txt.astype(np.float32), np.ones(40, bool), batch_size=40)
    assert set(g) <= set(np.argsort(-clip)[:12])
    assert set(np.argsort(score)[:9]) == set(g)


@pytest.mark.parametrize("p", [2, 3, np.inf])
def test_norm_sim_is_the_norm_of_the_similarities_to_the_targets(tmp_path, monkeypatch, p):
    rng = np.random.default_rng(2)
    x, targets = rng.normal(size=(50, 12)).astype(np.float32), rng.normal(size=(9, 12)).astype(np.float32)
    v = shard_view(tmp_path, x, "x")
    x16 = v.load()
    rows = np.array([0, 4, 5, 20, 33, 49])
    brute = np.linalg.norm(unit(x16[rows]) @ unit(targets).T, ord=p, axis=1)
    monkeypatch.setattr(ns, "SIM_FLOATS", 20)
    monkeypatch.setattr(embeddings, "CHUNK_BYTES", 100)
    assert np.allclose(norm_sim(v, rows, targets, p), brute, atol=1e-5)


def test_norm_sim_2d_is_the_authors_iteration_written_again(tmp_path):
    rng = np.random.default_rng(3)
    x = unit(rng.normal(size=(60, 8)) + np.array([[2.0] + [0] * 7]) * (rng.uniform(size=(60, 1)) > 0.5))
    x = x.astype(np.float32)
    cand = np.arange(5, 60)  # the pool's rows 0..4 only seed the first target
    kept, last = proxy_select(shard_view(tmp_path, x, "x"), cand, np.arange(60), goal=20, iterations=4)
    x16 = np.concatenate([np.load(tmp_path / f"x{i}.npy") for i in range(5)]).astype(np.float32)
    target, now = unit(x16), cand  # brute force: every similarity, the target set itself
    for it in range(4):
        score = np.linalg.norm(unit(x16[now]) @ target.T, axis=1)
        size = 20 if it == 3 else max(20, len(now) - 9)  # ceil((55 - 20) / 4) = 9 a step
        now = np.sort(now[np.argsort(-score, kind="stable")[:size]])
        target = unit(x16[now])
    assert list(kept) == list(now) and len(kept) == 20 and np.isfinite(last).all()


def test_rank_mix_and_soft_cap_sampling():
    a = np.array([0.1, 0.5, np.nan, 0.3, 0.3, 0.9])
    b = np.array([3.0, 1.0, 2.0, 2.0, 5.0, 4.0])
    mix = rank_mix([a, b], [1.0, 3.0])
    ra = pd.Series(a).drop(2).rank() / 5
    rb = pd.Series(b).drop(2).rank() / 5
    assert np.isnan(mix[2]) and np.allclose(np.delete(mix, 2), ((ra + 3 * rb) / 4).to_numpy())
    rng = np.random.default_rng(4)
    m = np.where(rng.uniform(size=400) < 0.05, np.nan, rng.uniform(size=400))
    c = soft_cap(m, 300, temperature=0.1, penalty=1.0, cap=2, rounds=10, seed=9)
    assert c.sum() == 300 and c.max() <= 2 and (c[np.isnan(m)] == 0).all()
    assert np.array_equal(c, soft_cap(m, 300, 0.1, 1.0, 2, 10, seed=9))
    top, bottom = m >= np.nanquantile(m, 0.8), m <= np.nanquantile(m, 0.2)
    assert c[top].mean() > 1.5 and c[bottom].mean() < 0.2


def test_norm_sim_within_an_earlier_filter_keeps_its_top_share_of_the_whole_pool(tmp_path):
    """The paper's "negCLIPLoss, then NormSim": candidates are the rows the earlier instance kept, the
    fraction counts over the whole usable pool (DataComp's cutoff: the (n+1)-th highest kept too)."""
    from types import SimpleNamespace

    from pipeline.filters.base import Context, Result
    from pipeline.filters.mix import Mix
    from pipeline.filters.norm_sim import NormSim

    rng = np.random.default_rng(6)
    x, targets = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=(5, 8)).astype(np.float32)
    x[9] = np.nan  # unusable
    earlier = np.zeros(40, bool)
    earlier[rng.choice(40, 15, replace=False)] = True  # the earlier filter failed these
    ctx = Context(pd.DataFrame({"uid": range(40)}), np.ones(40, bool),
                  SimpleNamespace(image=lambda column: x), SimpleNamespace(vectors=SimpleNamespace(backend="auto")))
    ctx.done["first"] = Result({"": earlier})
    np.save(tmp_path / "t.npy", targets)
    r = NormSim(type="norm_sim", targets=[str(tmp_path / "t.npy")], p="inf", fraction=0.25, within="first").compute(ctx)
    cand = np.flatnonzero(~earlier & np.isfinite(x).all(1))
    brute = np.abs(unit(x[cand]) @ unit(targets).T).max(1)
    want = cand[np.argsort(-brute)[:int(39 * 0.25) + 1]]
    assert set(np.flatnonzero(~r.fails[""])) == set(want)
    assert np.isnan(r.columns["score"][earlier]).all()
    with pytest.raises(ValueError, match="not an earlier filter"):
        NormSim(type="norm_sim", targets=["t.npy"], fraction=0.2, within="nope").compute(ctx)
    with pytest.raises(ValueError, match="neither a pool column nor an output of an earlier filter"):
        Mix(type="mix", scores=["uid", "first.score"], fraction=0.5).compute(ctx)


def test_degenerate_inputs_score_nothing_or_the_pair_alone():
    img, txt = pairs(n=3)
    bad = np.full((3, 16), np.nan, np.float32)
    assert np.isnan(neg_clip_loss(bad, txt, np.ones(3, bool))[0]).all()
    one, _ = neg_clip_loss(img, txt, np.array([False, True, False]))
    assert abs(one[1]) < 1e-6 and np.isnan(one[[0, 2]]).all()  # a batch of one: its own pair is all of R
    assert len(norm_sim(img, np.array([], np.int64), img, np.inf)) == 0
    kept, last = proxy_select(img, np.array([], np.int64), np.arange(3), goal=0, iterations=3)
    assert len(kept) == 0 and len(last) == 0
    assert np.isnan(rank_mix([np.full(4, np.nan), np.ones(4)], [1, 1])).all()
    assert soft_cap(np.full(4, np.nan), 3, 0.1, 1.0, 2, 5, seed=0).sum() == 0


def test_configs_say_what_is_wrong():
    with pytest.raises(ValueError, match="exactly one of"):
        load_config({"clip": [{"precomputed": "l14"}], "filters": [{"type": "neg_clip_loss"}]})
    with pytest.raises(ValueError, match="NormSim_2-D"):
        load_config({"clip": [{"precomputed": "l14"}], "filters": [{"type": "norm_sim", "targets": ["pool"],
                                                                    "p": "inf", "fraction": 0.3}]})
    with pytest.raises(ValueError, match="mix weights"):
        load_config({"filters": [{"type": "mix", "scores": ["a", "b"], "weights": [1], "fraction": 0.3}]})
    with pytest.raises(ValueError, match="needs a 'model'"):  # image targets need the scorer's model
        load_config({"clip": [{"precomputed": "l14"}], "filters": [{"type": "norm_sim", "targets": ["/imgs"],
                                                                    "fraction": 0.3}]})
    cfg = load_config("mix-negclip-normsim")
    assert [f.type for f in cfg.filters] == ["neg_clip_loss", "norm_sim", "mix"]


# ----------------------------------------------------------------- whole runs: metadata, shards, Dask

N, PER = 60, 20


@pytest.fixture(scope="module")
def same_pool(tmp_path_factory):
    """One pool in two forms: DataComp metadata (parquet + npz) and shards with the same sidecars."""
    root = tmp_path_factory.mktemp("methods")
    make_pool(root / "shards", n=N, per_shard=PER)
    rng = np.random.default_rng(0)
    img = unit(rng.normal(size=(N, 16)))
    txt = unit(img + 0.9 * rng.normal(size=(N, 16)))
    (root / "metadata").mkdir()
    for s in range(N // PER):
        ids = range(PER * s, PER * s + PER)
        t = pa.table({"uid": [uid(i) for i in ids], "url": [f"https://example.com/{i}.jpg" for i in ids],
                      "text": ["a square"] * PER, "original_width": [40] * PER, "original_height": [40] * PER,
                      "clip_l14_similarity_score": (img[ids.start:ids.stop] * txt[ids.start:ids.stop]).sum(1)})
        for where in (root / "metadata" / f"{s:08x}cafe", root / "shards" / f"{s:05d}"):
            pq.write_table(t, where.with_suffix(".parquet"))
            np.savez(where.with_suffix(".npz"), l14_img=img[ids.start:ids.stop].astype(np.float16),
                     l14_txt=txt[ids.start:ids.stop].astype(np.float16))
    np.save(root / "targets.npy", img[[2, 11, 30]].astype(np.float32) + 0.05)
    return root


def methods_config(root, scorer):
    return {"clip": [scorer], "filters": [
        {"type": "neg_clip_loss", "fraction": 1.0, "batch_size": 16, "repeats": 2, "name": "ncl"},
        {"type": "neg_clip_loss", "fraction": 0.5, "batch_size": 16, "repeats": 2},
        {"type": "norm_sim", "p": "inf", "targets": [str(root / "targets.npy")], "fraction": 0.6},
        {"type": "norm_sim", "targets": ["pool"], "fraction": 0.3, "within": "ncl", "iterations": 3},
        {"type": "mix", "scores": ["ncl.score", "norm_sim[pinf,top0.6].score"], "weights": [2, 1],
         "fraction": 0.4, "name": "mix"}]}


def decisions(out):
    df = pd.read_parquet(out / "metadata.parquet").set_index("uid").sort_index()
    cols = ["keep", "ncl.score", "norm_sim[pinf,top0.6].score", "mix.score"]
    return df, df[cols]


def test_metadata_pool_and_shards_keep_the_same_samples(same_pool, tmp_path):
    cfg = methods_config(same_pool, {"precomputed": "l14"})
    m_meta = run_curation(str(same_pool / "metadata"), tmp_path / "meta", cfg, progress=False)
    m_shards = run_curation(str(same_pool / "shards"), tmp_path / "shards", cfg, progress=False)
    a, da = decisions(tmp_path / "meta")
    b, db = decisions(tmp_path / "shards")
    assert m_meta["samples_in"] == m_shards["samples_in"] == N
    pd.testing.assert_frame_equal(da, db)
    assert (a["drop_reasons"].map(list) == b["drop_reasons"].map(list)).all()
    # the rules, from the written columns: negCLIPLoss top half, NormSim top 60%, the mix over both
    s = a["neg_clip_loss[top0.5].score"].to_numpy()
    assert (a["drop_reasons"].map(lambda r: "neg_clip_loss[top0.5]" in list(r)) == (s < np.sort(s)[::-1][30])).all()
    ns_kept = ~a["drop_reasons"].map(lambda r: "norm_sim[pinf,top0.6]" in list(r))
    assert ns_kept.sum() == 37 and (a["ncl.score"] == a["neg_clip_loss[top0.5].score"]).all()
    d2 = ~a["drop_reasons"].map(lambda r: "norm_sim[2D,top0.3]" in list(r))
    assert d2.sum() == 18
    assert 0 < m_meta["kept"] < N and m_meta["kept"] == m_shards["kept"]


@pytest.mark.slow
def test_annotation_on_dask_gives_the_same_decisions(same_pool, tmp_path):
    """Dask runs the per-shard part (decode, embed, score); the global steps run where the run is
    decided, in the calling process: the embeddings and every decision are the same as in process."""
    from distributed import LocalCluster

    pool = tmp_path / "pool"
    pool.mkdir()
    for p in (same_pool / "shards").glob("*.tar"):
        shutil.copy(p, pool / p.name)
    cfg = methods_config(same_pool, {"model": "curate-tiny", "batch_size": 16})
    cfg["filters"][2]["targets"] = [str(pool / "00000.tar")]  # images: embedded by the scorer
    run_curation(str(pool), tmp_path / "one", cfg, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        m = run_curation(str(pool), tmp_path / "dask", cfg, progress=False, dask_address=cluster.scheduler_address)
    assert m["run"]["shards_annotated"] == 3
    for sid in ("00000", "00001", "00002"):
        for part in ("img", "txt"):
            assert np.array_equal(np.load(tmp_path / "one" / "embeddings" / "clip_score" / f"{sid}.{part}.npy"),
                                  np.load(tmp_path / "dask" / "embeddings" / "clip_score" / f"{sid}.{part}.npy"))
    pd.testing.assert_frame_equal(decisions(tmp_path / "one")[1], decisions(tmp_path / "dask")[1])
    assert (tmp_path / "one" / "uids.npy").read_bytes() == (tmp_path / "dask" / "uids.npy").read_bytes()


def test_eval_task_targets_are_train_splits_never_test(tmp_path):
    """NormSim / image-based targets from evaluation tasks: their train split; a test split never."""
    from pipeline.targets import iter_images
    from shardio.evaltask import write_task
    from fixtures.shardmaker import image_bytes

    both, only_test = tmp_path / "suite" / "both", tmp_path / "suite" / "only_test"
    write_task(both, ["red", "blue"], ["a {c}"], [(image_bytes("red", seed=1), 0)], split="test")
    write_task(both, ["red", "blue"], ["a {c}"], [(image_bytes("blue", seed=2), 1), (image_bytes("blue", seed=3), 1)],
               split="train")
    write_task(only_test, ["red"], ["a {c}"], [(image_bytes("red", seed=4), 0)], split="test")
    assert len(list(iter_images([str(both)]))) == 2  # the train split's two images
    assert len(list(iter_images([str(tmp_path / "suite")]))) == 2  # the suite: only_test left out
    with pytest.raises(ValueError, match="without a train split"):
        list(iter_images([str(only_test)]))
