"""Choosing the compute device."""

from __future__ import annotations

import torch

from stylelab.errors import DeviceError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str) -> torch.device:
    """Turn `auto|cpu|cuda|cuda:N|mps` into an available `torch.device`."""
    name = str(name).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device '{name}': use {DEVICE_CHOICES}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device '{name}' asked for but CUDA is not available on this machine: "
                "use device=cpu or device=auto"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"device '{name}' does not exist: this machine has {count} CUDA device(s) "
                f"(cuda:0..cuda:{count - 1})"
            )
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(
                f"device '{name}' asked for but MPS is not available: use device=auto"
            )
        return device
    raise DeviceError(f"unsupported device '{name}': use {DEVICE_CHOICES}")
