"""Observers that record a synthesis: into the run folder and into the tracker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from stylelab.engine.images import tensor_to_uint8
from stylelab.engine.loop import Observer, Result, Row, RunState
from stylelab.engine.observers import ROW_FIELDS
from stylelab.outputs import RunFolder
from stylelab.run_folder import FINAL_IMAGE, Status
from stylelab.tracking import Tracker


class RunFolderRecorder(Observer):
    """Frames, `losses.jsonl`, checkpoints (with `extra`: tracker run id, config), the final
    image and, when the run finishes, the GIF and a checkpoint without optimiser state."""

    def __init__(
        self,
        folder: RunFolder,
        extra: dict[str, Any] | Callable[[], dict[str, Any]],
        seconds_per_frame: float,
    ):
        """`extra`: or a function giving it at each checkpoint (a tracker run id not known yet)."""
        self.folder, self.extra, self.seconds_per_frame = folder, extra, seconds_per_frame
        self.final: np.ndarray | None = None

    def on_frame(self, step: int, image: np.ndarray) -> None:
        self.folder.save_frame(step, image)

    def on_losses(self, rows: list[Row]) -> None:
        self.folder.append_losses(rows)

    def on_checkpoint(self, state: dict[str, Any]) -> None:
        extra = self.extra() if callable(self.extra) else self.extra
        self.folder.save_checkpoint({**state, **extra})

    def on_end(self, run: RunState, result: Result) -> None:
        self.final = tensor_to_uint8(result.image)
        self.folder.save_image(FINAL_IMAGE, self.final)
        if result.status == Status.FINISHED:
            self.folder.write_gif(self.final, self.seconds_per_frame)
            self.on_checkpoint(run.state_dict(with_optimizer=False))


class TrackerRecorder(Observer):
    """Loss rows (`loss/<name>`, plus `stage` and `size`, plus what `extra(step)` gives for the
    row's step: `eval/*` with `eval.every`) and frames to the tracker."""

    def __init__(self, tracker: Tracker, extra: Callable[[int], dict[str, Any]] | None = None):
        self.tracker, self.extra = tracker, extra

    def on_frame(self, step: int, image: np.ndarray) -> None:
        self.tracker.log_image("synthesis", image, step=step)

    def on_losses(self, rows: list[Row]) -> None:
        for row in rows:
            metrics = {
                (key if key in ROW_FIELDS else f"loss/{key}"): value
                for key, value in row.items()
                if key != "step"
            }
            if self.extra is not None:
                metrics.update(self.extra(int(row["step"])))
            self.tracker.log_metrics(int(row["step"]), metrics)

    def on_checkpoint(self, state: dict[str, Any]) -> None:
        self.tracker.flush()
