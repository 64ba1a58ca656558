"""What a run leaves in its folder: images, frames, the GIF, per-step losses, summary, checkpoint."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import pickle
import secrets
import shutil
import socket
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from stylelab.engine.images import save_png, write_gif
from stylelab.errors import StyleLabError, first_line
from stylelab.run_folder import (
    CHECKPOINT_FILE,
    EVAL_FILE,
    GIF_FILE,
    LOCK_FILE,
    LOSSES_FILE,
    RUN_FILES,
    RUN_ID_FILE,
    SUMMARY_FILE,
    SYNTHESIS_KEY,
    Status,
    read_rows,
    read_summary,
)
from stylelab.run_folder import CONFIG_FILE as CONFIG_FILE  # re-exported, as before
from stylelab.run_folder import FINAL_IMAGE as FINAL_IMAGE
from stylelab.run_folder import NOT_STARTED as NOT_STARTED

try:
    import fcntl
except ImportError:  # Windows: run folders are not locked
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
_held_locks: dict[Path, int] = {}  # run folder -> file descriptor of its lock, in this process


class RunFolderError(StyleLabError):
    """A run folder is in use by another run, or already holds one."""


class CheckpointError(StyleLabError):
    """checkpoint.pt cannot be read, or is not this run's."""


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


def was_interrupted(run_dir: Path) -> bool:
    """The folder holds a checkpoint of a run that was interrupted (not finished or failed)."""
    if not (run_dir / CHECKPOINT_FILE).exists():
        return False
    return read_summary(run_dir)["status"] == Status.INTERRUPTED


def unlock(*folders: str | Path) -> None:
    """Release these run folders if this process holds them (a job has ended)."""
    for folder in folders:
        fd = _held_locks.pop(Path(folder).resolve(), None)
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock


class RunFolder:
    """The files of one run, all under `root`."""

    def __init__(self, root: str | Path, folder_key: str = "hydra.run.dir"):
        self.root = Path(root).expanduser()  # resume=~/... as typed
        self.folder_key = folder_key  # the key that picks this folder, for messages
        self.frames_dir = self.root / "frames"
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def losses_path(self) -> Path:
        return self.root / LOSSES_FILE

    @property
    def checkpoint_path(self) -> Path:
        return self.root / CHECKPOINT_FILE

    @property
    def run_id_path(self) -> Path:
        return self.root / RUN_ID_FILE

    def run_id(self) -> str | None:
        """The id of the run this folder holds; None for a run from before ids (or none)."""
        try:
            return self.run_id_path.read_text().strip() or None
        except (FileNotFoundError, IsADirectoryError):
            return None

    def start_run_id(self, new: bool) -> str | None:
        """The run's id: a fresh one (written) for a `new` run, else the folder's (None for a
        run from before ids, which stays without one)."""
        if not new:
            return self.run_id()
        run_id = secrets.token_hex(8)
        tmp = self.run_id_path.with_name(RUN_ID_FILE + ".tmp")
        tmp.write_text(run_id + "\n")
        tmp.replace(self.run_id_path)
        return run_id

    def save_image(self, name: str, image: torch.Tensor | np.ndarray) -> Path:
        return save_png(image, self.root / name)

    def save_frame(self, step: int, image: np.ndarray) -> Path:
        return save_png(image, self.frames_dir / f"step_{step:06d}.png")

    @property
    def eval_path(self) -> Path:
        return self.root / EVAL_FILE

    def append_losses(self, rows: list[dict[str, float]]) -> None:
        _append_rows(self.losses_path, rows)

    def append_eval(self, rows: list[dict[str, float]]) -> None:
        _append_rows(self.eval_path, rows)

    def read_losses(self) -> list[dict[str, Any]]:
        return read_rows(self.losses_path)

    def read_eval(self) -> list[dict[str, Any]]:
        return read_rows(self.eval_path)

    def truncate_losses(self, before_step: int) -> None:
        """Drop loss and evaluation rows at or after `before_step` (they will be recomputed
        after a resume)."""
        for path in (self.losses_path, self.eval_path):
            if path.exists() or path == self.losses_path:
                rows = [row for row in read_rows(path) if row["step"] < before_step]
                path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def write_gif(self, final: np.ndarray, seconds_per_frame: float) -> Path:
        """Every frame (earlier stages' smaller ones scaled up to the final size) and `final`."""
        size = (final.shape[1], final.shape[0])
        frames = []
        for path in sorted(self.frames_dir.glob("*.png")):
            with Image.open(path) as opened:
                frame = opened.convert("RGB")
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

    def load_checkpoint(self, mmap: bool = False) -> dict[str, Any] | None:
        """The checkpoint's tensors and plain data (never code: weights_only), None if absent.

        `mmap=True` reads only the structure now (a cheap check of a large checkpoint).
        """
        if not self.checkpoint_path.exists():
            return None
        try:
            state = torch.load(
                self.checkpoint_path, map_location="cpu", weights_only=True, mmap=mmap
            )
        except pickle.UnpicklingError as error:
            raise CheckpointError(_unreadable(self.checkpoint_path, error)) from None
        except (PermissionError, IsADirectoryError) as error:
            raise CheckpointError(
                f"cannot read {self.checkpoint_path}: {error.strerror or error}"
            ) from None
        except (EOFError, OSError, RuntimeError, ValueError, zipfile.BadZipFile) as error:
            detail = error.strerror if isinstance(error, OSError) else None  # mmap: truncated
            raise CheckpointError(
                f"{self.checkpoint_path} is empty, truncated or corrupt "
                f"({detail or first_line(error)}): restore it from a backup, or start a new run"
            ) from None
        if not isinstance(state, dict) or not isinstance(state.get(SYNTHESIS_KEY), dict):
            raise CheckpointError(
                f"{self.checkpoint_path} is not a stylelab checkpoint (no synthesis state): "
                "restore this run's checkpoint, or start a new run"
            )
        return state

    def lock(self) -> None:
        """Hold this folder for this process (until `unlock` or exit); fails if another holds it."""
        key = self.root.resolve()
        if key in _held_locks or fcntl is None:
            return
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunFolderError(
                f"{self.root} is in use by another run ({holder}): wait for it to end, or give "
                f"this run another folder (leave {self.folder_key} unset for a new one)"
            ) from None
        except OSError as error:  # a file system without locks: run unguarded
            os.close(fd)
            log.warning("cannot lock %s (%s): nothing stops another run using it", self.root, error)
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        _held_locks[key] = fd

    def unlock(self) -> None:
        unlock(self.root)

    def read_summary(self) -> dict[str, Any]:
        """The run's summary.json (`stylelab.run_folder.read_summary`: killed if none)."""
        return read_summary(self.root)

    def earlier_run(self) -> str | None:
        """How an earlier run here ended (a `Status` word: killed where it left no summary);
        None if no run was here."""
        if not any((self.root / name).exists() for name in RUN_FILES):
            return None
        return str(self.read_summary()["status"])

    def check_fresh(self) -> None:
        """Refuse to start a new run where an earlier one left its files."""
        earlier = self.earlier_run()
        if earlier in (None, NOT_STARTED):  # a run that never took a step may start here anew
            return
        article = "an" if earlier[0] in "aeiou" else "a"
        more = " steps=<more>" if earlier == Status.FINISHED else ""
        resume = (
            f"continue it with resume={self.root}{more}, or "
            if self.checkpoint_path.exists()
            else ""
        )
        raise RunFolderError(
            f"{self.root} already holds {article} {earlier} run: {resume}start a new run in "
            f"another folder (leave {self.folder_key} unset for a new one)"
        )


def _append_rows(path: Path, rows: list[dict[str, float]]) -> None:
    """Append JSON lines, synced; on a full disk no half row stays at the end (resume reads
    every line)."""
    size = path.stat().st_size if path.exists() else 0
    try:
        with path.open("a") as file:
            for row in rows:
                file.write(json.dumps({k: _json_value(v) for k, v in row.items()}) + "\n")
            file.flush()
            os.fsync(file.fileno())
    except OSError:
        with contextlib.suppress(OSError):
            os.truncate(path, size)
        raise


def _unreadable(path: Path, error: pickle.UnpicklingError) -> str:
    if "weights only load failed" in str(error).lower():
        return (
            f"{path} holds objects other than tensors and plain data: not loaded, as that could "
            "run code; use a checkpoint stylelab wrote, or start a new run"
        )
    return f"{path} is corrupt ({first_line(error)}): restore it from a backup, or start a new run"
