"""torchvision compatibility for CPU-only torch.

The registry's torchvision 0.28.0 is a CUDA build. Beside the CPU build of torch 2.13.0 its
compiled extension cannot load, and its Python side then fails on import with
``RuntimeError: operator torchvision::nms does not exist`` (so do ``open_clip`` and ``timm``).
``ensure_torchvision()`` runs before the first torchvision import and, only when the extension
cannot load, declares the two op schemas torchvision registers fake kernels for. Transforms,
models and open_clip then work; compiled ops (nms, io.decode_jpeg) stay unavailable, so images
are decoded with Pillow everywhere in this project.
"""
from __future__ import annotations

import importlib.util
import sys

_done = False
_lib = None  # keep the Library object alive, or its definitions are dropped


def _extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # nothing to patch
    import glob
    import os

    import torch

    for location in spec.submodule_search_locations:
        for path in glob.glob(os.path.join(location, "_C*.so")):
            try:
                torch.ops.load_library(path)
                return True
            except (OSError, RuntimeError):
                return False
    return False


def ensure_torchvision() -> bool:
    """Make ``import torchvision`` work; return True when the shim was needed."""
    global _done, _lib
    if _done or "torchvision" in sys.modules:
        _done = True
        return False
    _done = True
    if _extension_loads():
        return False
    import torch

    _lib = torch.library.Library("torchvision", "DEF")
    _lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return True
