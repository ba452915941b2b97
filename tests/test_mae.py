"""MAE: the loss reads masked patches only, the encoder sees visible ones only, a tiny run learns,
resumes, and saves an image-only checkpoint the probes read."""
import json

import pytest
import torch

from fixtures.shardmaker import make_pool, make_task
from training.knn import image_probes, is_image_only
from training.mae import MAEConfig, MAEModel, masked_patch_loss, patchify, pretrain, random_masking
from training.model import load_clip


def _cfg(**kw):
    return MAEConfig(train_data="x", out_dir="y", samples_seen=64, batch_size=16, **kw)


def test_loss_is_the_masked_patches_mean_squared_error_only():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 6, 5), torch.randn(2, 6, 5)
    mask = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1.0]])
    by_hand = sum(float(((pred[b, i] - target[b, i]) ** 2).mean()) for b in range(2) for i in range(6)
                  if mask[b, i]) / 5
    assert float(masked_patch_loss(pred, target, mask, norm_pix=False)) == pytest.approx(by_hand, rel=1e-6)
    for norm_pix in (False, True):
        base = masked_patch_loss(pred, target, mask, norm_pix)
        visible, masked = target.clone(), target.clone()
        visible[0, 1] = torch.randn(5) * 3  # a visible patch's target: another pattern
        visible[1, 0] = -visible[1, 0] * 3
        masked[0, 2] = torch.randn(5) * 3  # a masked patch's target
        assert torch.equal(masked_patch_loss(pred, visible, mask, norm_pix), base)
        assert not torch.allclose(masked_patch_loss(pred, masked, mask, norm_pix), base)


def test_masking_keeps_a_quarter_and_the_encoder_sees_only_visible_patches():
    torch.manual_seed(0)
    clip = load_clip("curate-tiny")  # 32 px, 8 px patches: 16 patches, 4 visible
    model = MAEModel(clip.model.visual, _cfg()).eval()
    images = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    keep, mask, restore = random_masking(noise, 0.75)
    assert keep.shape == (2, 4) and mask.sum(1).tolist() == [12, 12]
    assert all(mask[b, keep[b]].sum() == 0 for b in range(2))
    with torch.no_grad():
        latent = model.encode_visible(images, keep)
    assert latent.shape == (2, 1 + 4, 128)

    masked_patch = int(mask[0].nonzero()[0])  # change the pixels of one masked patch of image 0
    row, col = divmod(masked_patch, 4)
    edited, pattern = images.clone(), torch.randn(3, 8, 8) * 2
    edited[0, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] = pattern
    assert torch.equal(patchify(edited, 8)[0, masked_patch], pattern.permute(1, 2, 0).reshape(-1))
    seen = edited.clone()  # and, as a control, one visible patch
    row, col = divmod(int(keep[0, 0]), 4)
    seen[0, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] += 3.0
    with torch.no_grad():
        assert torch.allclose(model.encode_visible(edited, keep), latent, atol=1e-6)  # the encoder never saw it
        assert (model.encode_visible(seen, keep)[0] - latent[0]).abs().max() > 0.01
        assert float(model(edited, noise)) != float(model(images, noise))  # but it is a target

    pred = model.decode(latent, restore).detach().requires_grad_(True)
    masked_patch_loss(pred, patchify(images, 8), mask).backward()
    grad_norm = pred.grad.norm(dim=-1)  # the loss only pulls on masked patches' predictions
    assert torch.all(grad_norm[mask == 0] == 0) and torch.all(grad_norm[mask == 1] > 0)


def test_mae_learns_resumes_and_saves_an_image_tower_the_probes_read(tmp_path):
    make_pool(tmp_path / "pool", n=64, per_shard=32)
    task = make_task(tmp_path / "task", per_class=6)
    # coloured squares with pixel noise: per-patch normalised targets are the noise alone, so the
    # raw-pixel loss is the one a few steps can lower (the colour is predictable from visible patches)
    cfg = MAEConfig(train_data=str(tmp_path / "pool"), out_dir=str(tmp_path / "run"), samples_seen=16 * 24,
                    batch_size=16, workers=0, checkpoints=3, log_every=1, lr=2e-3, warmup=2, norm_pix_loss=False)
    crashed = pretrain(cfg.model_copy(update={"max_steps": 10}))
    assert crashed["steps"] == 10 and "checkpoint" not in crashed
    r = pretrain(cfg)
    assert r["objective"] == "mae" and r["resumed_from_step"] == 8 and r["steps"] == 24
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == list(range(1, 25))
    first, last = sum(x["loss"] for x in rows[:4]) / 4, sum(x["loss"] for x in rows[-4:]) / 4
    assert last < 0.5 * first, (first, last)

    assert is_image_only(r["checkpoint"])
    trained = load_clip(r["checkpoint"])
    torch.manual_seed(cfg.seed)
    init = load_clip("curate-tiny")  # the same seed draws the same initial weights
    assert not torch.equal(init.model.visual.conv1.weight, trained.model.visual.conv1.weight)
    assert torch.equal(init.model.token_embedding.weight, trained.model.token_embedding.weight)
    assert not any("decoder" in k for k in trained.model.state_dict())
    trained.model.eval()
    p = image_probes(trained, task, shots=2, neighbours=3)
    assert p["n"] == 16 and 0 <= p["knn"]["acc1"] <= 1 and 0 <= p["linear"]["acc1"] <= 1
    with pytest.raises(ValueError, match="different run"):  # another objective's state is not resumed
        from training.ssl import SSLConfig, pretrain as ssl_pretrain

        ssl_pretrain(SSLConfig(**{k: v for k, v in cfg.model_dump().items() if k in SSLConfig.model_fields
                                  and k not in ("objective", "crop_min", "wd", "beta2")}))


def test_cli_trains_mae_and_probe_reads_it(tmp_path, capsys):
    from app.cli import main

    make_pool(tmp_path / "pool", n=32, per_shard=32)
    task = make_task(tmp_path / "task", per_class=4)
    main(["train", "--data", str(tmp_path / "pool"), "--out", str(tmp_path / "run"), "--objective", "mae",
          "--samples-seen", "32", "--batch-size", "16", "--workers", "0"])
    assert json.loads((tmp_path / "run" / "result.json").read_text())["objective"] == "mae"
    capsys.readouterr()
    main(["probe", "--checkpoint", str(tmp_path / "run" / "final"), "--task", str(task), "--shots", "2"])
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"linear", "knn"} and "zero_shot" not in out


def test_config_checks():
    with pytest.raises(ValueError, match="own loss"):
        _cfg(loss="siglip")
    with pytest.raises(ValueError):
        _cfg(mask_ratio=1.0)
    with pytest.raises(ValueError, match="plain ViT"):
        MAEModel(torch.nn.Linear(3, 3), _cfg())
