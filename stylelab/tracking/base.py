"""The tracking interface the runner talks to."""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stylelab.errors import StyleLabError

log = logging.getLogger(__name__)


class TrackerError(StyleLabError):
    """The tracker cannot be set up, or lost records it was given (e.g. a full disk)."""


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


@dataclass(frozen=True)
class InputFile:
    """A file a run read its content, a style, a mask or its start image from."""

    source: str  # as configured: a path, skimage:<name> or a URL
    path: Path  # the file read (a URL's cached download)
    sha256: str


class Tracker:
    """Receives a run's metrics and images. Every method is optional to override.

    A tracker never stops the synthesis by itself: a record it cannot write is kept in `error`
    and raised as `TrackerError` by the next `flush()`, or by `finish(0, ...)`.
    """

    run_id: str | None = None
    error: TrackerError | None = None  # the first write failure, until raised
    # `start` may run on another thread: `BackgroundTracker` then returns at once (a tracker
    # whose start must see stop signals, which only the main thread receives, says False).
    starts_in_background: bool = False

    def start(self, info: RunInfo) -> None:
        """Open the run."""

    def start_soon(self, info: RunInfo) -> None:
        """Open the run, returning before it is open where the tracker can (a batch's jobs
        need not wait for each other's W&B starts: `BackgroundTracker`)."""
        self.start(info)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """One row of scalars at `step`, keyed by their logged names (`loss/total`, `stage`)."""

    def log_image(
        self, key: str, image: np.ndarray, step: int | None = None, caption: str = ""
    ) -> None:
        """A uint8 (H, W, 3) image; `step=None` for one-off images (inputs)."""

    def log_inputs(self, inputs: dict[str, InputFile]) -> None:
        """The run's input files by role (`content`, `style`, `mask_2`, ...)."""

    def log_checkpoint(self, files: list[Path], step: int) -> None:
        """A complete checkpoint (with the files to resume from) saved at `step`; the files
        may change once this returns."""

    def log_result(self, files: list[Path], metadata: dict[str, Any], aliases: list[str]) -> None:
        """A finished run's result files, with its final metrics as `metadata`."""

    def flush(self) -> None:
        """Return once everything logged so far is written; call before each checkpoint.

        Raises `TrackerError` if a record was lost (then the run must fail, not checkpoint).
        """
        raise_error(self)

    def finish(
        self,
        exit_code: int,
        summary: dict[str, Any],
        final_image: np.ndarray | None = None,
        gif_path: Path | None = None,
        inputs: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Close the run; always called, with a non-zero exit code when the run failed.

        With exit code 0, raises `TrackerError` if a record was lost; otherwise only logs it.
        """
        report_at_finish(self, exit_code)


def raise_error(tracker: Tracker) -> None:
    """Raise the tracker's recorded failure once (later calls find it cleared)."""
    error, tracker.error = tracker.error, None
    if error is not None:
        raise error


def record_error(tracker: Tracker, message: str) -> None:
    """Keep the first failure of `tracker` (one line) to raise later; warn now."""
    log.warning("%s", message)
    if tracker.error is None:
        tracker.error = TrackerError(message)


def report_at_finish(tracker: Tracker, exit_code: int) -> None:
    """At `finish`: raise the failure of a run that otherwise succeeded; log it for a failed run."""
    if exit_code == 0:
        raise_error(tracker)
    elif tracker.error is not None:
        log.error("%s", tracker.error)
        tracker.error = None


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
        self.began = threading.Event()  # `inner` started (or failed to)
        self.began.set()

    @property
    def run_id(self) -> str | None:  # type: ignore[override]
        self.began.wait()
        return self.inner.run_id

    def start(self, info: RunInfo) -> None:
        self.inner.start(info)
        self.thread = threading.Thread(target=self._work, name="tracker", daemon=True)
        self.thread.start()

    def start_soon(self, info: RunInfo) -> None:
        """Start `inner` on the worker if it `starts_in_background`: the job goes on setting
        up, what it logs meanwhile waits in the queue, `run_id` waits for the start, and a
        failed start is raised by the next `flush` or `finish`. Else as `start`."""
        if not self.inner.starts_in_background:
            self.start(info)
            return
        self.began.clear()
        self.queue.put((self.start_run, (info,)))
        self.thread = threading.Thread(target=self._work, name="tracker", daemon=True)
        self.thread.start()

    def start_run(self, info: RunInfo) -> None:
        try:
            self.inner.start(info)
        finally:
            self.began.set()

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            method, args = item
            try:
                method(*args)
            except TrackerError as error:  # from inner.flush: already logged
                self.error = self.error or error
            except Exception as error:  # kept for flush/finish; the synthesis goes on
                name = getattr(method, "__name__", "call")
                record_error(self, f"tracker {name} failed: {str(error).splitlines()[0]}")

    def _pending_error(self) -> None:
        """Move the inner tracker's failure here, so it is raised once."""
        if self.inner.error is not None:
            if self.error is None:
                self.error = self.inner.error
            self.inner.error = None

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.queue.put((self.inner.log_metrics, (step, metrics)))

    def log_image(
        self, key: str, image: np.ndarray, step: int | None = None, caption: str = ""
    ) -> None:
        self.queue.put((self.inner.log_image, (key, image, step, caption)))

    def log_inputs(self, inputs: dict[str, InputFile]) -> None:
        self.queue.put((self.inner.log_inputs, (inputs,)))

    def log_result(self, files: list[Path], metadata: dict[str, Any], aliases: list[str]) -> None:
        self.queue.put((self.inner.log_result, (files, metadata, aliases)))

    def log_checkpoint(self, files: list[Path], step: int) -> None:
        """Returns once `inner` has taken the files (they change at the next checkpoint)."""
        if not self._call_and_wait(self.inner.log_checkpoint, files, step):
            self.inner.log_checkpoint(files, step)

    def _call_and_wait(self, method: Any, *args: Any) -> bool:
        """Run `method` on the worker after everything queued; False if there is no worker."""
        if self.thread is None or not self.thread.is_alive():
            return False
        done = threading.Event()
        self.queue.put((method, args))
        self.queue.put((done.set, ()))
        done.wait()
        return True

    def flush(self) -> None:
        """Wait until the worker has handed everything queued to `inner`, then flush `inner`."""
        if not self._call_and_wait(self.inner.flush):
            try:
                self.inner.flush()
            except TrackerError as error:
                self.error = self.error or error
        self._pending_error()
        raise_error(self)

    def finish(self, exit_code, summary, final_image=None, gif_path=None, inputs=None) -> None:
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None
        self._pending_error()
        try:
            self.inner.finish(exit_code, summary, final_image, gif_path, inputs)
        except TrackerError as error:
            self.error = self.error or error
        self._pending_error()
        report_at_finish(self, exit_code)
