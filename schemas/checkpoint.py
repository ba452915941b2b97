"""A checkpoint folder is open_clip's ``local-dir`` layout: these two files (open_clip's names)."""
from pathlib import Path

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"  # the project's model presets (curate-tiny)

# Where `curate demo` writes its filtering network (the DFN recipe: a CLIP trained on the trusted split),
# and the scorer name that stands for it in configs (`clip: [{model: demo-scorer}]`). The demo, the
# presets and the Prefect deployments all read these two names.
DEMO_ROOT = "runs/demo"
DEMO_SCORER_DIR = "dfn"
DEMO_SCORER = "demo-scorer"


def demo_scorer_path(root: str = DEMO_ROOT) -> str:
    return f"{root}/{DEMO_SCORER_DIR}/final"
