"""Device choice, seeding and a record of the software and machine in use."""

from __future__ import annotations

import os
import platform
import random
import sys
from importlib import metadata
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily so version/machine records stay cheap
    import torch

_REPORTED_PACKAGES = ("torch", "torchvision", "numpy", "ultralytics", "pycocotools",
                      "scikit-learn", "opencv-python-headless", "albumentations", "bloodlib")


def get_device(preference: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else Apple MPS, else CPU.

    Asking for ``"cuda"`` on a machine without it raises a clear error instead of
    silently running on the CPU.
    """
    import torch

    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DEVICE='cuda' was requested but no CUDA GPU is visible; "
                           "use DEVICE='auto' or 'cpu'.")
    return device


def seed_everything(seed: int = 0, deterministic: bool = False) -> int:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return seed


def package_versions(names: tuple[str, ...] = _REPORTED_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape results (absent ones omitted)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def total_memory_gb() -> float | None:
    """Physical memory of this machine in GiB (None where the OS does not say)."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return round(pages * page_size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def cpu_model() -> str:
    """The processor's name (``/proc/cpuinfo``'s model name on Linux), or "" if unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


def cpu_facts() -> dict[str, Any]:
    """What decides CPU training speed: model name, the vector instructions torch uses
    (``AVX2``, ``AVX512``...) and native bfloat16. One 2-core machine with AMX trained
    the PBC ResNet-18 at 253 img/s in bfloat16, an AVX2-only one at 59-74 img/s."""
    import torch

    return {"cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_bf16": cpu_has_bf16()}


def environment_info(device: torch.device | None = None) -> dict[str, Any]:
    """Versions, device and machine facts, as recorded in every results JSON."""
    import torch

    device = device or get_device()
    info: dict[str, Any] = {
        "device": str(device),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": total_memory_gb(),
        "executable": sys.executable,
        "versions": package_versions(),
        **cpu_facts(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
