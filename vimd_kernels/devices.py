"""What the launch planners of the GPU backends read off the device."""
from __future__ import annotations

import functools

import torch

INTERPRETER_SMS = 4  # multiprocessors the planners assume for CPU tensors (Triton's interpreter, the emulator)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def device_sms(t: torch.Tensor) -> int:
    """Streaming multiprocessors of the GPU that holds ``t``; INTERPRETER_SMS for a CPU tensor."""
    return _sm_count(t.device.index) if t.is_cuda else INTERPRETER_SMS
