"""Process-group helpers: torchrun's WORLD_SIZE / RANK / LOCAL_RANK, and batches to the device."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> bool:
    """torchrun sets WORLD_SIZE / RANK: join the group (gloo on CPU, nccl on CUDA). True when this
    call created the group (and so must destroy it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return True
    return False


def local_cuda_device() -> torch.device:
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def to_device(batch, device) -> list:
    return [b.to(device, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch]
