"""Model specs as open_clip names, shared by the scorer (pipeline/) and training: an open_clip name,
a project preset (schemas/model_configs), a JSON model config, or a checkpoint folder in open_clip's
``local-dir`` layout. Offline: nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

from schemas.checkpoint import CONFIG_FILE, DEMO_SCORER, MODEL_CONFIG_DIR, demo_scorer_path
from shardio.compat import ensure_torchvision


def open_clip_name(model: str, what: str = "model") -> str:
    """The open_clip name for a spec; a clear error naming ``what`` (model, scorer) otherwise."""
    ensure_torchvision()
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    if model.startswith("local-dir:"):
        return model
    p = Path(model)
    if p.is_dir():
        if not (p / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{what} {p} is a folder without {CONFIG_FILE}: not a checkpoint folder")
        return f"local-dir:{p.resolve()}"
    if p.suffix == ".json":
        if not p.is_file():
            raise FileNotFoundError(f"{what} config {p} does not exist")
        open_clip.add_model_config(p)
        return p.stem
    if open_clip.get_model_config(model) is None:
        if model in (DEMO_SCORER, demo_scorer_path()):
            raise FileNotFoundError(f"{what} {model!r} is the filtering network `curate demo` trains, and "
                                    f"{demo_scorer_path()} does not exist yet: run `bash scripts/demo.sh` (or "
                                    "`curate demo`) first, or name another scorer in the config's clip.model")
        hint = " (a checkpoint folder that does not exist?)" if ("/" in model or model.startswith(".")) else ""
        presets = ", ".join(sorted(x.stem for x in MODEL_CONFIG_DIR.glob("*.json")))
        raise ValueError(f"unknown {what} {model!r}: give an open_clip name (e.g. ViT-B-32), a project preset "
                         f"({presets}), a JSON model config, or a checkpoint folder{hint}")
    return model
