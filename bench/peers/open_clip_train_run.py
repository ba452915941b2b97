"""Run open_clip's own trainer (open_clip_train.main) with our model configs registered.

    PYTHONPATH=bench/.peer/wds python bench/peers/open_clip_train_run.py --model curate-tiny ...

open_clip_train's webdataset reader needs webdataset 0.2.86 (the version its requirements pin);
bench/trainer.py installs that into bench/.peer/wds and puts it first on the path for this process
only, so the project's own webdataset stays as pinned. With ``CURATE_PEAK_MEMORY_FILE`` set, the peak
GPU memory of the run is written there as JSON when the process exits (bench/gpu.py reads it).
"""
import atexit
import json
import os
import sys
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

from shardio.compat import ensure_torchvision  # noqa: E402

ensure_torchvision()
import open_clip  # noqa: E402

open_clip.add_model_config(Path(__file__).resolve().parents[2] / "schemas" / "model_configs")

from open_clip_train.main import main  # noqa: E402


def _peak_memory(path: str) -> None:
    import torch

    if torch.cuda.is_available():
        peak = {"max_memory_allocated_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                "max_memory_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 3)}
        Path(path).write_text(json.dumps(peak))


if os.environ.get("CURATE_PEAK_MEMORY_FILE"):
    atexit.register(_peak_memory, os.environ["CURATE_PEAK_MEMORY_FILE"])

if __name__ == "__main__":
    main(sys.argv[1:])
