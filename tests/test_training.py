"""Trainer and zero-shot evaluation on tiny real shards: learning, resume, bad samples, metrics."""
import json
import math

import pytest
import torch

from fixtures.shardmaker import make_pool, make_task, uid
from training.model import checkpoint_info, is_checkpoint_dir
from training.train import TrainConfig, lr_at, train
from training.zeroshot import append_result, evaluate_zeroshot, metrics


def cfg(tmp_path, data, **kw):
    base = dict(train_data=str(data), out_dir=str(tmp_path / "run"), samples_seen=64 * 40, batch_size=64,
                workers=0, lr=5e-3, warmup=5, log_every=5)
    return TrainConfig(**{**base, **kw})


def test_learns_colours_zero_shot_and_scores_as_a_filter(tmp_path):
    make_pool(tmp_path / "pool", n=200, per_shard=50)
    task = make_task(tmp_path / "task", per_class=10)
    r = train(cfg(tmp_path, tmp_path / "pool"))
    assert r["steps"] == 40 and r["samples_seen"] == 2560
    assert is_checkpoint_dir(r["checkpoint"])
    assert checkpoint_info(r["checkpoint"])["train"]["samples_seen"] == 2560
    ev = evaluate_zeroshot(r["checkpoint"], task)
    assert ev["n"] == 40
    assert ev["metrics"]["acc1"] >= 0.9
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == list(range(5, 41, 5))
    assert rows[-1]["loss"] < 0.85 * rows[0]["loss"] < 0.85 * math.log(64)  # chance level is ln(batch)
    append_result(tmp_path / "res.jsonl", ev)
    append_result(tmp_path / "res.jsonl", ev)
    assert len((tmp_path / "res.jsonl").read_text().splitlines()) == 2

    # the data-filtering-network recipe: the model trained on clean pairs scores a pool; the
    # planted mismatched captions get the 10 lowest scores, and DataComp's rule at 75% (keep the
    # int(40 * .75) + 1 = 31 at or above the threshold) drops 9 of them and nothing else
    from pipeline.run import run_curation

    swapped = {i: "swapped" for i in range(3, 40, 4)}
    make_pool(tmp_path / "noisy", n=40, per_shard=20, plant=swapped)
    m = run_curation(str(tmp_path / "noisy"), tmp_path / "cur", {"clip": [{"model": r["checkpoint"]}],
                     "filters": [{"type": "clip_score", "fraction": 0.75}]}, progress=False)
    meta = __import__("pandas").read_parquet(tmp_path / "cur" / "metadata.parquet")
    assert set(meta.nsmallest(10, "clip_score")["uid"]) == {uid(i) for i in swapped}
    assert set(meta.loc[~meta["keep"], "uid"]) < {uid(i) for i in swapped} and m["dropped"] == 9


def test_bad_samples_are_counted_and_skipped(tmp_path):
    make_pool(tmp_path / "pool", n=40, per_shard=40, plant={3: "corrupt", 7: "truncated", 9: "empty"})
    r = train(cfg(tmp_path, tmp_path / "pool", samples_seen=16 * 8, batch_size=16, lr=1e-3))
    assert r["steps"] == 8
    # 128 samples drawn with shard resampling over one 40-sample shard: every pass meets all three.
    assert set(r["bad_samples"]) == {"format", "decode"}  # garbage bytes; truncated and empty images
    assert json.loads((tmp_path / "run" / "result.json").read_text())["bad_samples"] == r["bad_samples"]


def test_a_resumed_run_counts_the_bad_samples_and_seconds_of_the_whole_run(tmp_path):
    make_pool(tmp_path / "pool", n=40, per_shard=40, plant={3: "corrupt", 7: "truncated", 9: "empty"})
    c = cfg(tmp_path, tmp_path / "pool", samples_seen=16 * 8, batch_size=16, lr=1e-3, checkpoints=2, log_every=1)
    crashed = train(c.model_copy(update={"max_steps": 6}))  # state saved at step 4
    at_state = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[3])
    assert at_state["step"] == 4 and sum(at_state["bad_samples"].values()) >= 3
    r = train(c)
    assert r["resumed_from_step"] == 4 and r["steps"] == 8
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    totals = [sum(x["bad_samples"].values()) for x in rows]
    assert [x["step"] for x in rows] == list(range(1, 9)) and totals == sorted(totals)  # never back to 0
    assert r["bad_samples"] == rows[-1]["bad_samples"]
    for k, v in at_state["bad_samples"].items():
        assert r["bad_samples"][k] >= v
    assert r["train_seconds"] > 0 and crashed["train_seconds"] > 0


def test_the_loader_stops_with_a_clear_error_when_its_shards_vanish(tmp_path):
    from open_clip import get_tokenizer
    from training.data import train_loader

    make_pool(tmp_path / "pool", n=20, per_shard=10)
    tars = sorted((tmp_path / "pool").rglob("*.tar"))
    assert len(tars) == 2

    def preprocess(img):
        return torch.zeros(3, 8, 8)

    loader = train_loader([str(t) for t in tars], preprocess, get_tokenizer("RN50"), batch_size=4, workers=0,
                          shuffle=10)
    tars[0].unlink()  # one of two gone: the other still feeds batches
    batches = iter(loader)
    assert next(batches)[0].shape[0] == 4
    tars[1].unlink()  # all gone: an error naming the cause, not an endless loop
    with pytest.raises(RuntimeError, match="were the shards moved or deleted"):
        for _ in range(10_000):
            next(batches)


def test_resume_after_crash_reaches_the_same_step(tmp_path):
    make_pool(tmp_path / "pool", n=100, per_shard=50)
    c = cfg(tmp_path, tmp_path / "pool", samples_seen=32 * 20, batch_size=32, checkpoints=4, log_every=1)
    crashed = train(c.model_copy(update={"max_steps": 13}))
    assert crashed["steps"] == 13 and "checkpoint" not in crashed
    r = train(c)
    assert r["resumed_from_step"] == 10 and r["steps"] == 20 and "checkpoint" in r
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))
    with pytest.raises(ValueError, match="different run"):
        train(c.model_copy(update={"samples_seen": 32 * 30}))
    # the same run again: nothing trains, and its saved result and checkpoint stay as they were
    saved = (tmp_path / "run" / "result.json").read_bytes()
    final = {p.name: p.read_bytes() for p in (tmp_path / "run" / "final").iterdir()}
    again = train(c)
    assert again == json.loads(saved) and again["train_seconds"] > 0 and math.isfinite(again["final_loss"])
    assert (tmp_path / "run" / "result.json").read_bytes() == saved
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "final").iterdir()} == final


def test_siglip_trains_resumes_and_its_checkpoint_loads_with_the_bias(tmp_path):
    from training.model import load_clip

    make_pool(tmp_path / "pool", n=64, per_shard=32)
    c = cfg(tmp_path, tmp_path / "pool", samples_seen=16 * 6, batch_size=16, loss="siglip", checkpoints=3,
            log_every=1, lr=1e-3)
    assert "checkpoint" not in train(c.model_copy(update={"max_steps": 3}))
    r = train(c)
    assert r["resumed_from_step"] == 2 and r["steps"] == 6 and math.isfinite(r["final_loss"])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["logit_scale"] == pytest.approx(10, rel=0.05)  # SigLIP's initial temperature
    bias = float(load_clip(r["checkpoint"]).model.logit_bias.detach())
    assert -11 < bias < -9 and bias != -10  # trained from -10


def test_config_is_validated(tmp_path):
    with pytest.raises(ValueError, match="smaller than one batch"):
        TrainConfig(train_data="x", out_dir="y", samples_seen=10, batch_size=64)
    with pytest.raises(ValueError):
        TrainConfig(train_data="x", out_dir="y", samples_seen=100, batch_sise=4)


def test_lr_schedule_warmup_then_cosine():
    c = TrainConfig(train_data="x", out_dir="y", samples_seen=1000, batch_size=10, lr=1.0, warmup=10)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0) and lr_at(55, c) == pytest.approx(0.5)
    assert lr_at(99, c) < 0.01


def test_metrics_match_hand_computed():
    logits = torch.tensor([[3.0, 1, 0], [0, 2, 1], [0, 3, 1], [1, 0, 2]])
    target = torch.tensor([0, 2, 1, 0])
    m = metrics(logits, target, 3)
    assert m["acc1"] == pytest.approx(0.5)  # rows 0 and 2 right
    assert m["acc5"] == pytest.approx(1.0)  # top-k capped at 3 classes
    assert m["mean_per_class_recall"] == pytest.approx((0.5 + 1 + 0) / 3)


def test_missing_task_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="classnames.txt"):
        evaluate_zeroshot("curate-tiny", tmp_path)


def test_fast_transform_matches_open_clip_transform():
    import random

    from PIL import Image

    from fixtures.shardmaker import image_bytes
    from training.model import load_clip
    from training.transforms import fast_train_transform

    pre = load_clip("curate-tiny").preprocess_train
    fast = fast_train_transform(pre)
    assert fast is not None and fast.size == 32
    im = Image.open(__import__("io").BytesIO(image_bytes("blue", size=(64, 48)))).convert("RGB")
    fast.scale, fast.log_ratio = (1.0, 1.0), (0.0, 0.0)  # deterministic crop: the largest centred square
    pre.transforms[0].scale, pre.transforms[0].ratio = (1.0, 1.0), (1.0, 1.0)
    ours = fast.batch([fast.image(im, random.Random(0))])[0]
    box = fast.crop_box(64, 48, random.Random(0))
    assert box[3] - box[1] == 48 and box[2] - box[0] == 48
    ref = pre(im.crop(box))  # same crop, open_clip's resize + ToTensor + Normalize
    diff = (ours - ref).abs() * 0.28 * 255  # in grey levels (at most)
    assert diff.max() <= 2.2 and diff.mean() < 0.1  # PIL's one-call crop + resize rounds a few pixels apart


def test_gradient_accumulation_equals_the_full_batch_gradient():
    import contextlib

    import open_clip

    from training.model import load_clip
    from training.train import forward_backward

    torch.manual_seed(0)
    model = load_clip("curate-tiny").model.eval()  # eval: no dropout, same function both ways
    images, tokens = torch.randn(16, 3, 32, 32), torch.randint(1, 1000, (16, 12))
    grads = []
    for accum in (1, 4):
        model.zero_grad()
        forward_backward(model, open_clip.ClipLoss(), images, tokens, accum, contextlib.nullcontext())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4), n


def test_presets_fill_and_explicit_fields_win():
    c = TrainConfig(preset="small", train_data="x", out_dir="y")
    assert (c.model, c.batch_size, c.lr, c.warmup, c.samples_seen) == ("ViT-B-32", 4096, 5e-4, 500, 12_800_000)
    assert c.grad_checkpointing and c.checkpoints == 5
    c = TrainConfig(preset="cpu-tiny", train_data="x", out_dir="y", batch_size=128)
    assert c.batch_size == 128 and c.model == "curate-tiny" and c.samples_seen == 120_000
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig(preset="huge", train_data="x", out_dir="y")
    with pytest.raises(ValueError, match="must divide"):
        TrainConfig(train_data="x", out_dir="y", samples_seen=1000, batch_size=100, accum_steps=3)


def test_torchrun_ddp_two_processes_on_cpu(tmp_path):
    """Two ranks (gloo): local loss + gather-with-grad, one checkpoint written by rank 0."""
    import subprocess
    import sys

    make_pool(tmp_path / "pool", n=100, per_shard=50)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "app.cli", "train", "--data", str(tmp_path / "pool"), "--out", str(tmp_path / "run"),
           "--samples-seen", "256", "--batch-size", "32", "--workers", "0", "--lr", "1e-3"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 8 and result["samples_seen"] == 256
    assert is_checkpoint_dir(tmp_path / "run" / "final")


def test_linear_probe_separates_colours_from_k_shots(tmp_path):
    from training.probe import k_shot, linear_probe

    task = make_task(tmp_path / "task", per_class=12)
    r = linear_probe("curate-tiny", task, k=4)  # random init: colour still separates linearly
    assert r["n_train"] == 16 and r["n"] == 32 and r["l2"] in (1e-4, 1e-3, 1e-2, 1e-1)
    assert r["metrics"]["acc1"] >= 0.9
    sel = k_shot(torch.tensor([0, 1, 0, 1, 0, 1, 2]), 2, 0)
    assert torch.bincount(torch.tensor([0, 1, 0, 1, 0, 1, 2])[sel]).tolist() == [2, 2, 1]


def test_fast_val_transform_gives_open_clip_pixels():
    """The batched eval transform (used by the CLIP stage) equals open_clip's, any image shape."""
    import numpy as np
    import torch
    from PIL import Image

    from training.model import load_clip
    from training.transforms import fast_val_transform

    pre = load_clip("curate-tiny").preprocess_val
    fast = fast_val_transform(pre)
    assert fast is not None and fast.size == 32
    rng = np.random.default_rng(0)
    shapes = [(64, 64), (5, 64), (64, 5), (128, 77), (77, 128), (32, 32), (33, 31), (1, 1), (300, 200)]
    ims = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in shapes]
    ims.append(Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8)))  # grey: converted to RGB
    assert torch.allclose(fast(ims), torch.stack([pre(im) for im in ims]), atol=1e-5)
    assert fast_val_transform(lambda im: im) is None  # any other transform: no fast path


def test_cli_offers_exactly_the_trainer_losses():
    import typing

    from app.cli_train import LOSSES

    assert LOSSES == list(typing.get_args(TrainConfig.model_fields["loss"].annotation))


def test_training_modules_log_share_no_private_names_and_keep_functions_short():
    """training/ logs (no print), no module imports another's ``_``-private names, no function over 80 lines."""
    import ast
    from pathlib import Path

    found = []
    for path in sorted((Path(__file__).parents[1] / "training").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                found.append(f"{path.name}:{node.lineno} prints")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("training"):
                found += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                found.append(f"{path.name}:{node.lineno} {node.name} is {node.end_lineno - node.lineno + 1} lines")
    assert found == []
