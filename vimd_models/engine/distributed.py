"""Process-group helpers: torchrun's WORLD_SIZE / RANK / LOCAL_RANK, and batches to the device."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..errors import UserError


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def device_type(spec: str) -> str:
    """``train.device`` (auto | cpu | cuda | cuda:i) -> "cpu" or "cuda"; auto is cuda when a GPU
    is available."""
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if spec == "auto" else spec.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"config 'train.device' = {spec} but no CUDA GPU is available")
    return kind


def resolve_device(spec: str) -> torch.device:
    """This process's device for ``train.device``: under torchrun each rank takes cuda:LOCAL_RANK."""
    kind = device_type(spec)
    if kind == "cuda" and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(kind if spec == "auto" else spec)


def init_distributed(spec: str) -> bool:
    """torchrun sets WORLD_SIZE / RANK: join the group (gloo on CPU, nccl on CUDA). True when this
    call created the group (and so must destroy it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        cuda = device_type(spec) == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return True
    return False


def to_device(batch, device) -> list:
    return [b.to(device, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch]
