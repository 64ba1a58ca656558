"""Pre-flight resource checks: is there memory for a run, and can its folder be written?"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import torch

from stylelab.components import optimizer_of
from stylelab.config import Config
from stylelab.engine.optimizers import OptimizerMaker, loose_maker
from stylelab.errors import StyleLabError

MEMINFO = Path("/proc/meminfo")


class ResourceError(StyleLabError):
    """Not enough memory or disk, or a folder that cannot be written."""


def memory_estimate_gib(pixels: int, history_size: int, optimizer: str | OptimizerMaker) -> float:
    """Rough need: VGG activations kept for backward (~1.6 KB/pixel fp32) + the image-sized
    copies the optimiser keeps (its kind's `memory_copies`; by name: with `history_size`)."""
    if isinstance(optimizer, str):
        optimizer = loose_maker(optimizer, history_size=history_size)
    activations = pixels * 1600
    return (activations + pixels * 3 * 4 * optimizer.memory_copies()) / 2**30


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory on `device`: CUDA's free memory, Linux's MemAvailable; None if unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            for line in MEMINFO.read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
        except (OSError, ValueError, IndexError):
            return None
    return None  # mps and others: nothing reliable to ask


def check_memory(cfg: Config, device: torch.device, pixels: int) -> None:
    """Refuse a run whose estimated memory need exceeds what `device` has free."""
    available = available_memory_bytes(device)
    need = memory_estimate_gib(pixels, cfg.optim.history_size, optimizer_of(cfg.optim))
    if available is None or need * 2**30 <= available:
        return
    raise ResourceError(
        f"not enough memory on {device} for image_size={cfg.image_size}: needs roughly "
        f"{need:.1f} GiB, {available / 2**30:.1f} GiB free; lower image_size, or use "
        "optim.history_size=10, optim=adam or precision=bf16"
    )


def check_writable(folder: str | Path) -> None:
    """Create `folder` and write a byte in it, or raise one line on why that is impossible."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise ResourceError(describe_os_error(error, folder)) from None


def describe_os_error(error: OSError, where: str | Path | None = None) -> str:
    """One line for a failed file operation, with what to do about the common causes."""
    target = error.filename or where or "the run folder"
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        advice = "free some space, or set hydra.run.dir (hydra.sweep.dir) to another disk"
    elif error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "set hydra.run.dir (hydra.sweep.dir) to a folder you can write"
    elif error.errno == errno.ENOENT:
        advice = "check the path; set hydra.run.dir to a folder on a mounted disk"
    else:
        advice = "check the disk, or set hydra.run.dir to a folder on another disk"
    return f"could not write {target} ({reason}): {advice}"
