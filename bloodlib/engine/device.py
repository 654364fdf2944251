"""The device-dependent training settings, decided in one place.

CUDA-only branches (autocast dtype, gradient scaling, channels-last memory, pinned host
memory) are read from a :class:`DevicePlan` instead of being tested for in every loop, so
they can be unit-tested on a machine without a GPU by asking for a plan for
``torch.device("cuda")``::

    p = device_plan("cuda", amp="auto", channels_last="auto")
    p.amp_dtype        # bfloat16 where the GPU supports it, else float16
    p.grad_scaler()    # a GradScaler for float16, else None
    with p.autocast(): ...
    DataLoader(ds, **p.loader_kwargs())
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager, Optional

import torch


def amp_dtype(amp: Any, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype: on CUDA "auto"/True -> bf16 if supported else fp16; on the CPU only
    when asked for explicitly with ``amp="bf16"`` (fast on CPUs with AVX512-BF16/AMX)."""
    if device.type == "cpu" and amp == "bf16":
        return torch.bfloat16
    if device.type != "cuda" or amp in (False, None, "off"):
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


@dataclass(frozen=True)
class DevicePlan:
    """What a training or evaluation loop does differently on this device."""

    device: torch.device
    amp_dtype: Optional[torch.dtype]
    channels_last: bool
    pin_memory: bool

    def autocast(self) -> ContextManager:
        """Autocast to :attr:`amp_dtype`, or nothing."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> Optional[torch.amp.GradScaler]:
        """A gradient scaler for float16 autocast on CUDA (bfloat16 needs none)."""
        if self.amp_dtype == torch.float16 and self.device.type == "cuda":
            return torch.amp.GradScaler("cuda")
        return None

    def loader_kwargs(self) -> dict[str, Any]:
        """DataLoader arguments for this device (pinned memory on CUDA)."""
        return {"pin_memory": self.pin_memory}


def device_plan(device: Any, amp: Any = "auto", channels_last: Any = "auto") -> DevicePlan:
    """The plan for ``device``: ``amp`` as in :func:`amp_dtype`; ``channels_last`` "auto"
    = on CUDA only, True on any device."""
    device = torch.device(device)
    use_cl = channels_last is True or (channels_last == "auto" and device.type == "cuda")
    return DevicePlan(device, amp_dtype(amp, device), bool(use_cl), device.type == "cuda")
