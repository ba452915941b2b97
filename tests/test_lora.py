"""LoRA fine-tuning: only adapters learn, the base stays put, the saved merge is base + (alpha/r) B A."""
import pytest
import torch

from fixtures.shardmaker import make_pool
from training.lora import Adapter, FinetuneConfig, add_lora, finetune
from training.model import is_checkpoint_dir, load_clip, save_checkpoint_dir


def _batch(clip, n=8):
    torch.manual_seed(1)
    return torch.randn(n, 3, 32, 32), clip.tokenizer([f"a photo number {i}" for i in range(n)])


def test_only_adapter_parameters_receive_gradients():
    import open_clip

    clip = load_clip("curate-tiny")
    model = add_lora(clip.model, rank=4, alpha=8)
    images, tokens = _batch(clip)
    img, txt, scale = model(images, tokens)[:3]
    open_clip.ClipLoss()(img, txt, scale).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    lora = {n for n, _ in model.named_parameters() if n.endswith((".0.A", ".0.B"))}
    assert with_grad == lora
    # both towers x 2 blocks x (fused q/k/v, out_proj, c_fc, c_proj) x (A, B)
    assert len(lora) == 2 * 2 * 4 * 2
    assert all(not p.requires_grad for n, p in model.named_parameters() if n not in lora)


def _plain(key: str) -> str:
    """The plain open_clip name of a parametrized weight's key (``X.parametrizations.W.original`` / ``.0.A``)."""
    module, rest = key.split(".parametrizations.")
    return f"{module}.{rest.split('.')[0]}"


def test_lora_finetune_keeps_the_base_and_saves_base_plus_ba(tmp_path):
    make_pool(tmp_path / "pool", n=64, per_shard=32)
    torch.manual_seed(0)
    base = load_clip("curate-tiny")
    base_dir = save_checkpoint_dir(tmp_path / "base", base.model, base.model_cfg, {})
    base_state = {k: v.clone() for k, v in base.model.state_dict().items()}
    cfg = FinetuneConfig(model=str(base_dir), train_data=str(tmp_path / "pool"), out_dir=str(tmp_path / "ft"),
                         samples_seen=16 * 5, batch_size=16, lora=4, alpha=8, lr=5e-2, workers=0, checkpoints=1)
    r = finetune(cfg)
    assert r["trainable_params"] < 0.05 * r["total_params"] and r["peak_rss_mb"] > 0

    state = torch.load(tmp_path / "ft" / "checkpoints" / "state_latest.pt", weights_only=True)["model"]
    adapters = [k for k in state if k.endswith(".0.A")]
    assert len(adapters) == 16
    for k, v in state.items():  # every base weight is bit for bit where it started
        if not k.endswith((".0.A", ".0.B")):
            assert torch.equal(v, base_state[_plain(k) if ".parametrizations." in k else k]), k
    expected = {k: v.clone() for k, v in base_state.items()}
    moved = 0
    for a in adapters:
        b = a[:-1] + "B"
        moved += int(state[b].abs().max() > 0)
        expected[_plain(a)] += (8 / 4) * state[b] @ state[a]
    assert moved == len(adapters)  # B started at zero; training moved every one

    merged = load_clip(r["checkpoint"])
    assert is_checkpoint_dir(r["checkpoint"])
    ref = load_clip("curate-tiny")
    ref.model.load_state_dict(expected)
    images, tokens = _batch(ref)
    for m in (merged.model, ref.model, base.model):
        m.eval()
    with torch.no_grad():
        got = merged.model.encode_image(images), merged.model.encode_text(tokens)
        want = ref.model.encode_image(images), ref.model.encode_text(tokens)
        before = base.model.encode_image(images)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got[0], before, atol=1e-3)


def test_full_finetune_trains_everything_and_weights_files_load(tmp_path):
    make_pool(tmp_path / "pool", n=32, per_shard=32)
    torch.manual_seed(0)
    src = load_clip("curate-tiny")
    torch.save(src.model.state_dict(), tmp_path / "w.pt")
    cfg = FinetuneConfig(model="curate-tiny", weights=str(tmp_path / "w.pt"), train_data=str(tmp_path / "pool"),
                         out_dir=str(tmp_path / "ft"), samples_seen=32, batch_size=16, lora=0, workers=0)
    torch.manual_seed(5)  # another init: the weights file must replace it
    wrapped = Adapter(cfg).wrap(load_clip("curate-tiny").model)
    assert all(torch.equal(a, b) for a, b in zip(wrapped.state_dict().values(), src.model.state_dict().values()))
    r = finetune(cfg)
    assert r["trainable_share"] == 1.0 and r["lora"] == 0
    tuned = load_clip(r["checkpoint"])
    assert not torch.equal(tuned.model.visual.conv1.weight, src.model.visual.conv1.weight)
    with pytest.raises(FileNotFoundError):
        Adapter(cfg.model_copy(update={"weights": str(tmp_path / "none.pt")})).wrap(src.model)
