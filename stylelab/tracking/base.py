"""The tracking interface the runner talks to."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class RunInfo:
    """What a tracker needs to open a run."""

    config: dict[str, Any]
    run_dir: Path
    name: str
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    resume_id: str | None = None  # continue this tracker run (from a checkpoint)
    swept: dict[str, Any] = field(default_factory=dict)  # the keys a sweep varies, for tables


class Tracker:
    """Receives a run's metrics and images. Every method is optional to override."""

    run_id: str | None = None

    def start(self, info: RunInfo) -> None:
        """Open the run."""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """One row of scalars at `step`."""

    def log_image(
        self, key: str, image: np.ndarray, step: int | None = None, caption: str = ""
    ) -> None:
        """A uint8 (H, W, 3) image; `step=None` for one-off images (inputs)."""

    def finish(
        self,
        exit_code: int,
        summary: dict[str, Any],
        final_image: np.ndarray | None = None,
        gif_path: Path | None = None,
        inputs: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Close the run; always called, with a non-zero exit code when the run failed."""


class NullTracker(Tracker):
    """Tracks nothing (`logger=none`)."""


class MultiTracker(Tracker):
    """Fans every call out to several trackers."""

    def __init__(self, *trackers: Tracker):
        self.trackers = list(trackers)

    def start(self, info: RunInfo) -> None:
        for tracker in self.trackers:
            tracker.start(info)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for tracker in self.trackers:
            tracker.log_metrics(step, metrics)

    def log_image(
        self, key: str, image: np.ndarray, step: int | None = None, caption: str = ""
    ) -> None:
        for tracker in self.trackers:
            tracker.log_image(key, image, step, caption)

    def finish(self, exit_code, summary, final_image=None, gif_path=None, inputs=None) -> None:
        for tracker in self.trackers:
            tracker.finish(exit_code, summary, final_image, gif_path, inputs)
