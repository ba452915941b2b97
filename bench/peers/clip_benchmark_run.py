"""Run CLIP_benchmark's CLI (`clip_benchmark eval ...`) with our model configs registered.

    PYTHONPATH=bench/.peer/cb:bench/.peer/wds python bench/peers/clip_benchmark_run.py eval ...

CLIP_benchmark 1.6.2 needs numpy < 2.3 for its accuracy code and webdataset 0.2.x for its reader;
bench/eval.py installs those into bench/.peer/ and puts them first on this process's path only.
"""
import sys
from pathlib import Path

sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

from shardio.compat import ensure_torchvision  # noqa: E402

ensure_torchvision()
import open_clip  # noqa: E402

open_clip.add_model_config(Path(__file__).resolve().parents[2] / "schemas" / "model_configs")

from clip_benchmark.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.argv = ["clip_benchmark"] + sys.argv[1:]
    main()
