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


DEVICES = "auto, cpu, cuda or cuda:<index>"


def device_spec_ok(spec) -> bool:
    """``spec`` has one of the forms of DEVICES."""
    return isinstance(spec, str) and (spec in ("auto", "cpu", "cuda")
                                      or (spec.startswith("cuda:") and spec[5:].isdigit()))


def parse_device(spec, what: str) -> torch.device:
    """The device ``spec`` (one of DEVICES; auto is cuda when a GPU is available) names, or a
    UserError naming ``what`` (the option or config key it came from)."""
    if not device_spec_ok(spec):
        raise UserError(f"{what} must be {DEVICES}, got {spec!r}")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{what} = {spec}, but no CUDA GPU is available")
    return torch.device(spec)


def device_type(spec: str) -> str:
    """``train.device`` -> "cpu" or "cuda"."""
    return parse_device(spec, "config 'train.device'").type


def resolve_device(spec: str) -> torch.device:
    """This process's device for ``train.device``: under torchrun each rank takes cuda:LOCAL_RANK."""
    device = parse_device(spec, "config 'train.device'")
    if device.type == "cuda" and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init_distributed(spec: str) -> bool:
    """torchrun sets WORLD_SIZE / RANK: join the group (gloo on CPU, nccl on CUDA). True when this
    call created the group (and so must destroy it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        cuda = device_type(spec) == "cuda"
        # torchrun keeps one store across the restarts of a worker group: the group's keys get the
        # attempt as a prefix, so a restarted group never reads the addresses of the dead one
        store, rank, world = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("nccl" if cuda else "gloo", store=dist.PrefixStore(f"vimd/attempt{attempt}", store),
                                rank=rank, world_size=world)
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return True
    return False


def to_device(batch, device) -> list:
    return [b.to(device, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch]
