"""SimCLR / MoCo pretraining: the losses and MoCo's updates by hand, augmentations, the loop, the probes."""
import json
import math

import pytest
import torch

from fixtures.shardmaker import make_pool, make_task
from training.knn import image_probes, is_image_only, knn_logits
from training.ssl import (SSLConfig, SSLModel, TwoViews, Augment, enqueue, gaussian_blur, momentum_at,
                          momentum_update, moco_v2_loss, nt_xent, pretrain)


def test_nt_xent_equals_the_hand_computed_value_on_4_samples():
    torch.manual_seed(0)
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    tau = 0.5
    views = [list(map(float, v)) for v in torch.cat([z1, z2])]

    def cos(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        return dot / math.sqrt(sum(x * x for x in a)) / math.sqrt(sum(y * y for y in b))

    total = 0.0
    for i in range(8):
        pos = (i + 4) % 8
        denom = sum(math.exp(cos(views[i], views[k]) / tau) for k in range(8) if k != i)
        total += -math.log(math.exp(cos(views[i], views[pos]) / tau) / denom)
    assert float(nt_xent(z1, z2, tau)) == pytest.approx(total / 8, rel=1e-5)


def test_moco_v2_loss_is_cross_entropy_with_the_positive_first():
    q, k, queue = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    # cosines: positive 0, negatives 1 and -1
    expected = -math.log(math.exp(0 / 0.2) / (math.exp(0 / 0.2) + math.exp(1 / 0.2) + math.exp(-1 / 0.2)))
    assert float(moco_v2_loss(q, k, queue, 0.2)) == pytest.approx(expected, rel=1e-6)


def test_queue_update_overwrites_the_oldest_keys_and_wraps():
    queue = torch.arange(15, dtype=torch.float32).view(3, 5).clone()
    before = queue.clone()
    ptr = torch.tensor([3])
    keys = -torch.arange(1, 13, dtype=torch.float32).view(4, 3)  # 4 keys of dim 3
    enqueue(queue, ptr, keys)
    assert int(ptr[0]) == (3 + 4) % 5
    for j, col in enumerate([3, 4, 0, 1]):
        assert torch.equal(queue[:, col], keys[j])
    assert torch.equal(queue[:, 2], before[:, 2])


def test_momentum_update_is_exact():
    torch.manual_seed(0)
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with torch.no_grad():  # small integers: m * k + (1 - m) * q is exact in float32
        for p in list(online.parameters()) + list(target.parameters()):
            p.copy_(torch.randint(-8, 9, p.shape).float())
    q0 = [p.clone() for p in online.parameters()]
    k0 = [p.clone() for p in target.parameters()]
    momentum_update(online, target, 0.75)
    for q, k, new, same in zip(q0, k0, target.parameters(), online.parameters()):
        assert torch.equal(new, 0.75 * k + 0.25 * q)
        assert torch.equal(same, q)


def test_moco_v2_step_enqueues_the_updated_key_encoders_keys():
    cfg = SSLConfig(train_data="x", out_dir="y", samples_seen=8, batch_size=4, objective="moco", queue_size=8)
    torch.manual_seed(0)
    enc = torch.nn.Linear(6, 5)
    m = SSLModel(enc, 5, cfg)
    with torch.no_grad():
        enc.weight.add_(1.0)  # the query encoder moves away from its copy
    k_before = m.key_encoder.weight.clone()
    x1, x2 = torch.randn(4, 6), torch.randn(4, 6)
    loss = m(x1, x2, momentum=0.9)
    loss.backward()
    assert torch.allclose(m.key_encoder.weight, 0.9 * k_before + 0.1 * enc.weight.detach())
    keys = torch.nn.functional.normalize(m.key_projector(m.key_encoder(x2)), dim=1)
    assert torch.allclose(m.queue[:, :4], keys.T.detach()) and int(m.queue_ptr[0]) == 4
    assert m.key_encoder.weight.grad is None and enc.weight.grad is not None
    assert momentum_at(0, cfg) == 0.99 and momentum_at(1, cfg) == 0.99


def test_moco_v3_momentum_ramps_to_one():
    cfg = SSLConfig(train_data="x", out_dir="y", samples_seen=400, batch_size=4, objective="moco", moco_version=3,
                    momentum=0.9)
    assert momentum_at(0, cfg) == pytest.approx(0.9)
    assert momentum_at(50, cfg) == pytest.approx(0.95)
    assert momentum_at(100, cfg) == pytest.approx(1.0)


def test_augmentations():
    from PIL import Image

    im = Image.new("RGB", (40, 20), (200, 10, 10))
    v = TwoViews(16)(im)
    assert v.shape == (2, 16, 16, 3) and v.dtype == torch.uint8
    x = Augment(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(torch.stack([v[0]] * 64))
    assert x.shape == (64, 3, 16, 16)
    per_sample = x.flatten(1).mean(1)
    assert per_sample.std() > 0.01  # parameters differ per sample
    flat = torch.full((2, 3, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(flat, 3, torch.tensor([0.5, 2.0])), flat)


def test_knn_vote():
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    train_y = torch.tensor([0, 0, 1])
    votes = knn_logits(train_x, train_y, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), 2, k=1)
    assert votes.argmax(1).tolist() == [1, 0]
    assert float(votes[0, 1]) == pytest.approx(math.exp(1 / 0.07))


@pytest.mark.parametrize("objective,version", [("simclr", 2), ("moco", 2)])  # v3: the CLI test
def test_pretrain_resumes_saves_an_image_tower_and_probes(tmp_path, objective, version):
    from training.model import load_clip

    make_pool(tmp_path / "pool", n=64, per_shard=32)
    task = make_task(tmp_path / "task", per_class=6)
    cfg = SSLConfig(train_data=str(tmp_path / "pool"), out_dir=str(tmp_path / "run"), samples_seen=16 * 6,
                    batch_size=16, objective=objective, moco_version=version, queue_size=32, workers=0,
                    checkpoints=3, log_every=1, lr=1e-3)
    crashed = pretrain(cfg.model_copy(update={"max_steps": 3}))
    assert crashed["steps"] == 3 and "checkpoint" not in crashed
    r = pretrain(cfg)
    assert r["resumed_from_step"] == 2 and r["steps"] == 6 and math.isfinite(r["final_loss"])
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))
    assert is_image_only(r["checkpoint"])
    trained = load_clip(r["checkpoint"])
    torch.manual_seed(cfg.seed)
    init = load_clip("curate-tiny")  # the same seed draws the same initial weights
    assert not torch.equal(init.model.visual.conv1.weight, trained.model.visual.conv1.weight)
    assert torch.equal(init.model.token_embedding.weight, trained.model.token_embedding.weight)
    if objective == "simclr":  # the probes read any of them alike
        trained.model.eval()
        p = image_probes(trained, task, shots=2, neighbours=3)
        assert p["n"] == 16 and 0 <= p["knn"]["acc1"] <= 1 and 0 <= p["linear"]["acc1"] <= 1
    other = "simclr" if objective == "moco" else "moco"
    with pytest.raises(ValueError, match="different run"):
        pretrain(cfg.model_copy(update={"objective": other}))


def test_config_rejects_clip_only_options():
    with pytest.raises(ValueError, match="own loss"):
        SSLConfig(train_data="x", out_dir="y", samples_seen=64, batch_size=8, loss="siglip")
    with pytest.raises(ValueError, match="queue_size"):
        SSLConfig(train_data="x", out_dir="y", samples_seen=64, batch_size=16, objective="moco", queue_size=8)


def test_cli_trains_an_objective_and_eval_probes_image_only_checkpoints(tmp_path, capsys):
    from app.cli import main

    make_pool(tmp_path / "pool", n=32, per_shard=32)
    task = make_task(tmp_path / "eval" / "fashion_mnist", per_class=4)  # a builtin suite task's folder name
    main(["train", "--data", str(tmp_path / "pool"), "--out", str(tmp_path / "run"), "--objective", "moco",
          "--moco-version", "3", "--samples-seen", "32", "--batch-size", "16", "--workers", "0"])
    assert json.loads((tmp_path / "run" / "result.json").read_text())["objective"] == "moco3"
    capsys.readouterr()
    main(["eval", "--checkpoint", str(tmp_path / "run" / "final"), "--task", str(task), "--few-shot", "2"])
    out = capsys.readouterr().out
    assert "image-only" in out and '"knn"' in out and '"linear"' in out
    main(["probe", "--checkpoint", str(tmp_path / "run" / "final"), "--suite", "builtin", "--data-root",
          str(tmp_path / "eval"), "--shots", "2", "--results", str(tmp_path / "probe.jsonl")])
    rows = [json.loads(x) for x in (tmp_path / "probe.jsonl").read_text().splitlines()]
    assert [r["task"] for r in rows] == ["builtin/fashion_mnist"] and "zero_shot" not in rows[0]
    assert '"mean_knn"' in capsys.readouterr().out
    with pytest.raises(SystemExit):  # SSL options without an SSL objective
        main(["train", "--data", str(tmp_path / "pool"), "--out", str(tmp_path / "r2"), "--queue-size", "64",
              "--samples-seen", "32"])
