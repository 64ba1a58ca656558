"""What a run leaves in its folder: images, frames, the GIF, per-step losses, summary, checkpoint."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from stylelab.engine.images import save_png, write_gif

LOSSES_FILE = "losses.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
FINAL_IMAGE = "final.png"
GIF_FILE = "synthesis.gif"


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(
            json.dumps({k: _json_value(v) for k, v in data.items()}, indent=2, default=str)
        )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (full disk) leaves no half file behind


class RunFolder:
    """The files of one run, all under `root`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.frames_dir = self.root / "frames"
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def losses_path(self) -> Path:
        return self.root / LOSSES_FILE

    @property
    def checkpoint_path(self) -> Path:
        return self.root / CHECKPOINT_FILE

    def save_image(self, name: str, image: torch.Tensor | np.ndarray) -> Path:
        return save_png(image, self.root / name)

    def save_frame(self, step: int, image: np.ndarray) -> Path:
        return save_png(image, self.frames_dir / f"step_{step:06d}.png")

    def append_losses(self, rows: list[dict[str, float]]) -> None:
        size = self.losses_path.stat().st_size if self.losses_path.exists() else 0
        try:
            with self.losses_path.open("a") as file:
                for row in rows:
                    file.write(json.dumps({k: _json_value(v) for k, v in row.items()}) + "\n")
                file.flush()
                os.fsync(file.fileno())
        except OSError:  # a full disk: no half row at the end (resume reads every line)
            with contextlib.suppress(OSError):
                os.truncate(self.losses_path, size)
            raise

    def read_losses(self) -> list[dict[str, Any]]:
        if not self.losses_path.exists():
            return []
        return [
            json.loads(line) for line in self.losses_path.read_text().splitlines() if line.strip()
        ]

    def truncate_losses(self, before_step: int) -> None:
        """Drop rows at or after `before_step` (they will be recomputed after a resume)."""
        rows = [row for row in self.read_losses() if row["step"] < before_step]
        self.losses_path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def write_gif(self, final: np.ndarray, seconds_per_frame: float) -> Path:
        """Every frame (earlier stages' smaller ones scaled up to the final size) and `final`."""
        size = (final.shape[1], final.shape[0])
        frames = []
        for path in sorted(self.frames_dir.glob("*.png")):
            with Image.open(path) as frame:
                frame = frame.convert("RGB")
                if frame.size != size:
                    frame = frame.resize(size, Image.Resampling.BICUBIC)
                frames.append(np.asarray(frame))
        return write_gif([*frames, final], self.root / GIF_FILE, seconds_per_frame)

    def write_summary(self, summary: dict[str, Any]) -> Path:
        path = self.root / SUMMARY_FILE
        write_json(path, summary)
        return path

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        tmp = self.checkpoint_path.with_name(CHECKPOINT_FILE + ".tmp")
        try:
            with tmp.open("wb") as file:  # closed on failure: an open file keeps its disk space
                torch.save(state, file)
            tmp.replace(self.checkpoint_path)
        except RuntimeError as error:  # torch reports a full disk as "unexpected pos ..."
            full = shutil.disk_usage(self.root).free < 1 << 20
            raise OSError(
                errno.ENOSPC if full else errno.EIO,
                os.strerror(errno.ENOSPC)
                if full
                else f"torch.save failed: {str(error).splitlines()[0]}",
                str(tmp),
            ) from None
        finally:
            tmp.unlink(missing_ok=True)  # the previous checkpoint stays whole
        return self.checkpoint_path

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
