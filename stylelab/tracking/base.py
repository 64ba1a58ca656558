"""The tracking interface the runner talks to."""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


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
        """One row of scalars at `step`, keyed by their logged names (`loss/total`, `stage`)."""

    def log_image(
        self, key: str, image: np.ndarray, step: int | None = None, caption: str = ""
    ) -> None:
        """A uint8 (H, W, 3) image; `step=None` for one-off images (inputs)."""

    def flush(self) -> None:
        """Return once everything logged so far has been handed on (before a checkpoint)."""

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


class BackgroundTracker(Tracker):
    """Forwards `log_metrics`/`log_image` to `inner` from one worker thread, in order, so the
    synthesis never waits for the tracker (W&B at default settings: +58% loop time inline,
    -0.4% in the background, measured on an H100; benchmarks/RESULTS.md)."""

    def __init__(self, inner: Tracker):
        self.inner = inner
        self.queue: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None

    @property
    def run_id(self) -> str | None:  # type: ignore[override]
        return self.inner.run_id

    def start(self, info: RunInfo) -> None:
        self.inner.start(info)
        self.thread = threading.Thread(target=self._work, name="tracker", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            method, args = item
            try:
                method(*args)
            except Exception as error:  # a tracker problem never stops the synthesis
                log.warning("tracker call failed: %s", error)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.queue.put((self.inner.log_metrics, (step, metrics)))

    def log_image(
        self, key: str, image: np.ndarray, step: int | None = None, caption: str = ""
    ) -> None:
        self.queue.put((self.inner.log_image, (key, image, step, caption)))

    def flush(self) -> None:
        if self.thread is not None:
            done = threading.Event()
            self.queue.put((done.set, ()))
            done.wait()
        self.inner.flush()

    def finish(self, exit_code, summary, final_image=None, gif_path=None, inputs=None) -> None:
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None
        self.inner.finish(exit_code, summary, final_image, gif_path, inputs)
