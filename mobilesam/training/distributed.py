"""Process-group set-up shared by the cache and training commands under ``torchrun``."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """``(rank, world, device)`` from torchrun's environment (1 process without it).

    ``device``: ``"auto"`` (CUDA if available), ``"cuda"`` or ``"cpu"``. With several
    processes it initialises the default group: NCCL on GPU, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device if device not in ("auto", "cuda") else "cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, world, dev
