"""open_clip models from names, JSON configs or checkpoint folders, fully offline.

A checkpoint written by this project is an open_clip ``local-dir`` folder: ``open_clip_config.json``
(``model_cfg``, ``preprocess_cfg`` and our ``curate`` block) beside ``open_clip_model.safetensors``.
So ``open_clip.create_model_and_transforms("local-dir:PATH")`` loads it anywhere.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from shardio.compat import ensure_torchvision

ensure_torchvision()
import open_clip  # noqa: E402
import torch  # noqa: E402

from schemas.checkpoint import CONFIG_FILE, WEIGHTS_FILE  # noqa: E402
from shardio import storage  # noqa: E402
from shardio.models import local_copy, open_clip_name  # noqa: E402
from schemas.checkpoint import MODEL_CONFIG_DIR as CONFIG_DIR  # noqa: E402

open_clip.add_model_config(CONFIG_DIR)


@dataclass
class Clip:
    model: torch.nn.Module
    preprocess_train: Callable
    preprocess_val: Callable
    tokenizer: Callable
    name: str  # open_clip model name or "local-dir:PATH"
    model_cfg: dict[str, Any]


def is_checkpoint_dir(path: str | Path) -> bool:
    """A checkpoint folder (local, or a URL: then read from its local copy, shardio/models.py)."""
    if storage.is_url(path):
        return storage.is_file(storage.join(str(path), CONFIG_FILE))
    return (Path(path) / CONFIG_FILE).is_file()


def resolve_name(model: str) -> str:
    """Turn a model spec into an open_clip name: built-in/preset name, JSON config, or folder."""
    return open_clip_name(model)


def load_clip(model: str, checkpoint: str | None = None, device: str = "cpu",
              precision: str = "fp32") -> Clip:
    """Create an open_clip model; ``checkpoint`` is a weights file (local or a URL) for a named model."""
    name = resolve_name(model)
    if checkpoint is not None:
        checkpoint = local_copy(checkpoint, "weights file")
        if name.startswith("local-dir:"):
            raise ValueError("give either a checkpoint folder as the model or a weights file, not both")
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint file {checkpoint} does not exist")
    m, pre_train, pre_val = open_clip.create_model_and_transforms(
        name, pretrained=checkpoint, device=device, precision=precision, pretrained_text=False,
    )
    if name.startswith("local-dir:"):
        model_cfg = json.loads((Path(name[10:]) / CONFIG_FILE).read_text())["model_cfg"]
    else:
        model_cfg = open_clip.get_model_config(name)
    return Clip(m, pre_train, pre_val, open_clip.get_tokenizer(name), name, model_cfg)


def load_for_eval(checkpoint: str, weights: str | None = None, device: str = "auto") -> tuple[Clip, str]:
    """A model ready to evaluate (eval mode, on ``device``, 'auto' picked): every evaluation loads this way."""
    from shardio.device import pick_device

    device = pick_device(device)
    clip = load_clip(checkpoint, weights, device=device)
    clip.model.eval()
    return clip, device


def save_checkpoint_dir(path: str | Path, model: torch.nn.Module, model_cfg: dict,
                        info: dict[str, Any]) -> Path:
    """Write an open_clip local-dir checkpoint atomically (temp folder, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    save_file(state, str(tmp / WEIGHTS_FILE))
    visual = unwrap(model).visual
    pre = {"size": visual.image_size if hasattr(visual, "image_size") else model_cfg["vision_cfg"]["image_size"],
           "mean": list(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN),
           "std": list(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)}
    cfg = {"model_cfg": model_cfg, "preprocess_cfg": pre, "curate": info}
    (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
    if path.exists():
        import shutil

        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)
    return path


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(local_copy(str(path))) / CONFIG_FILE).read_text()).get("curate", {})


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP / compile wrapper."""
    return model.module if hasattr(model, "module") else model
