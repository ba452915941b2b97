"""A checkpoint folder is open_clip's ``local-dir`` layout: these two files (open_clip's names)."""
from pathlib import Path

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"  # the project's model presets (curate-tiny)
