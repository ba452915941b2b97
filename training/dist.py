"""torch.distributed set-up from torchrun's environment; a single process needs nothing."""
from __future__ import annotations

import os

import torch


def setup() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises the process group when run under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    local = int(os.environ["LOCAL_RANK"])
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        torch.distributed.init_process_group(backend)
    return torch.distributed.get_rank(), world, local


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
