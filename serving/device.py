"""Which device renders, and what the GPU looks like (for `/system_info`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("sadtalker.serving")


class DeviceUnavailable(RuntimeError):
    """CUDA is required but missing; the message says how to opt in to CPU."""


def _cuda_available() -> bool:
    import torch  # lazy: `import service` must stay cheap for BentoML's arbiter process

    return bool(torch.cuda.is_available())


def select_device(allow_cpu: bool, *, cuda_available: Callable[[], bool] = _cuda_available) -> str:
    """'cuda' when a GPU is usable; 'cpu' only with the explicit opt-in; else DeviceUnavailable."""
    if cuda_available():
        return "cuda"
    if allow_cpu:
        log.warning("CUDA is not available: rendering on CPU because SADTALKER_ALLOW_CPU=1 (dev/CI only, slow)")
        return "cpu"
    raise DeviceUnavailable(
        "CUDA GPU not available (torch.cuda.is_available() is False): SadTalker needs an NVIDIA GPU in production; "
        "check the driver / CUDA_VISIBLE_DEVICES / container GPU access, or set SADTALKER_ALLOW_CPU=1 to run on "
        "CPU for development (very slow)"
    )


@dataclass(frozen=True)
class GpuInfo:
    name: str | None = None
    total_bytes: int | None = None
    free_bytes: int | None = None


def gpu_info(device: str) -> GpuInfo:
    if not device.startswith("cuda"):
        return GpuInfo()
    import torch

    index = torch.device(device).index or 0
    free, total = torch.cuda.mem_get_info(index)
    return GpuInfo(name=torch.cuda.get_device_name(index), total_bytes=int(total), free_bytes=int(free))
