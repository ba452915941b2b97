"""A head over a scorer's image embeddings (pipeline/stages/head.py) writes a score a threshold filter
reads: a tiny MLP is trained here to tell planted striped images from coloured squares, saved as
safetensors, and a curation with it drops exactly the planted samples. Nothing is downloaded."""
import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pipeline.clip_stage import get_scorer
from pipeline.config import load_config
from pipeline.run import plan, run_curation
from pipeline.stages.head import apply, load_layers
from schemas.config import ClipModel
from shardio.shards import ShardWriter
from fixtures.shardmaker import COLOURS, uid

TINY = ClipModel(model="curate-tiny")
PLANTED = {3, 11, 17, 26, 30, 38}


def square(colour: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.array(COLOURS[colour])[None, None] + rng.integers(-20, 20, (40, 40, 3)), 0, 255).astype(np.uint8)


def stripes(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    period = int(rng.integers(3, 7))
    band = (np.arange(40) // period) % 2 * 255
    arr = np.repeat(np.repeat(band[None, :, None], 40, 0), 3, 2) if seed % 2 else np.repeat(
        np.repeat(band[:, None, None], 40, 1), 3, 2)
    return np.clip(arr + rng.integers(-20, 20, (40, 40, 3)), 0, 255).astype(np.uint8)


def picture(i: int, seed: int) -> np.ndarray:
    return stripes(seed) if i in PLANTED else square(list(COLOURS)[i % 4], seed)


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_pool(out) -> None:
    with ShardWriter(out, 20) as w:
        for i in range(40):
            w.write(f"{i:09d}", jpeg(picture(i, i)), "jpg", f"a picture {i}", {"uid": uid(i)})


def train_head(path, seed: int = 0) -> None:
    """A 128-16-1 MLP on curate-tiny's image embeddings of other draws of both classes (wanted: 1)."""
    rng = np.random.default_rng(seed)
    idx = [int(i) for i in rng.integers(0, 40, 200)] + sorted(PLANTED) * 20
    ims = [Image.open(io.BytesIO(jpeg(picture(i, 10_000 + k)))).convert("RGB") for k, i in enumerate(idx)]
    x = torch.from_numpy(get_scorer(TINY.model_dump_json()).embed_images(ims))
    x = x / x.norm(dim=1, keepdim=True)
    y = torch.tensor([0.0 if i in PLANTED else 1.0 for i in idx])
    torch.manual_seed(seed)
    layers = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(layers.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(layers(x)[:, 0], y)
        loss.backward()
        opt.step()
    save_file({k: v.contiguous() for k, v in layers.state_dict().items()}, str(path))  # 0.weight, 2.weight, ...


def test_head_and_threshold_drop_exactly_the_planted_images(tmp_path):
    write_pool(tmp_path / "pool")
    train_head(tmp_path / "stripes.safetensors")
    cfg = {"clip": [{"model": "curate-tiny"}],
           "stages": [{"type": "head", "name": "wanted", "weights": str(tmp_path / "stripes.safetensors"),
                       "sigmoid": True}],
           "filters": [{"type": "threshold", "column": "wanted", "min": 0.5}]}
    m = run_curation(str(tmp_path / "pool"), tmp_path / "out", cfg, progress=False)
    df = pd.read_parquet(tmp_path / "out" / "metadata.parquet")
    dropped = set(df.loc[~df["keep"], "uid"])
    assert dropped == {uid(i) for i in PLANTED}
    assert set(df.loc[~df["keep"], "drop_reason"]) == {"threshold[wanted>=0.5]"}
    assert m["dropped_by_reason"] == {"threshold[wanted>=0.5]": len(PLANTED)}
    assert str(df["wanted"].dtype) == "float32" and df["wanted"].between(0, 1).all()

    # the head's cache key holds its weights and its scorer's key: new weights rerun the head alone
    m2 = run_curation(str(tmp_path / "pool"), tmp_path / "out", cfg, progress=False)
    assert m2["run"]["stage_runs"] == 0
    train_head(tmp_path / "stripes.safetensors", seed=1)
    m3 = run_curation(str(tmp_path / "pool"), tmp_path / "out", cfg, progress=False)
    assert m3["run"]["stage_runs"] == 2 and set(m3["dropped_by_reason"]) == {"threshold[wanted>=0.5]"}


def test_linear_npz_head_matches_its_formula(tmp_path):
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(1, 8)).astype(np.float32), np.array([0.25], np.float32)
    np.savez(tmp_path / "lin.npz", weight=w, bias=b)
    x = rng.normal(size=(5, 8)).astype(np.float32)
    x[2] = 0  # no embedding: NaN
    got = apply(load_layers(tmp_path / "lin.npz"), x, sigmoid=False)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    want = unit @ w[0] + b[0]
    assert np.isnan(got[2]) and np.allclose(np.delete(got, 2), np.delete(want, 2), atol=1e-6)


def test_bad_head_weights_are_named_before_any_work(tmp_path):
    np.savez(tmp_path / "two.npz", weight=np.zeros((2, 8)), bias=np.zeros(2))
    np.savez(tmp_path / "odd.npz", **{"layers.0.weight": np.zeros((4, 8)), "layers.1.weight": np.zeros((1, 5))})
    np.savez(tmp_path / "none.npz", w=np.zeros(3))
    (tmp_path / "h.pt").write_bytes(b"x")
    for name, msg in [("missing.npz", "do not exist"), ("two.npz", "2 outputs, not 1"), ("odd.npz", "do not chain"),
                      ("none.npz", "hold no 'weight'"), ("h.pt", ".npz or .safetensors")]:
        cfg = {"clip": [{"model": "curate-tiny"}],
               "stages": [{"type": "head", "name": "aes", "weights": str(tmp_path / name)}]}
        with pytest.raises(ValueError, match=msg):
            plan(str(tmp_path), tmp_path / "out", load_config(cfg))


def test_head_config_errors_name_the_field():
    with pytest.raises(ValueError, match="no stage writes it"):
        load_config({"clip": [{"model": "curate-tiny"}], "filters": [{"type": "threshold", "column": "aes", "min": 1}]})
    with pytest.raises(ValueError, match="no clip scorer writes it"):
        load_config({"stages": [{"type": "head", "name": "aes", "weights": "w.npz"}]})
    with pytest.raises(ValueError, match="is taken"):
        load_config({"clip": [{"model": "curate-tiny"}],
                     "stages": [{"type": "head", "name": "clip_score", "weights": "w"}]})
