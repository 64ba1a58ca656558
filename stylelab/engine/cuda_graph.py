"""Replay a fixed-shape step as one CUDA graph, after a few eager warm-up calls.

`StepPath` says how a run's steps ran: captured as a CUDA graph, or eager and why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from stylelab.errors import first_line

log = logging.getLogger(__name__)

WARMUP = 3  # eager calls before the capture


@dataclass(frozen=True)
class StepPath:
    """How steps ran: `cuda_graph` (with the capture's seconds) or `eager` (with the reason)."""

    path: str  # cuda_graph | eager
    reason: str | None = None  # eager only: cpu, mps, disabled by config, capture failed: ...
    capture_seconds: float | None = None  # cuda_graph only

    def describe(self) -> str:
        """One line for the log."""
        if self.path == "eager":
            return f"eager ({self.reason})"
        if self.capture_seconds is None:
            return f"cuda_graph (captured after {WARMUP} eager warm-up steps)"
        return f"cuda_graph (captured in {self.capture_seconds:.3f} s)"

    def record(self) -> dict[str, str | float | None]:
        """The summary's keys: `step_path`, `step_path_reason`, `capture_seconds`."""
        return {
            "step_path": self.path,
            "step_path_reason": self.reason,
            "capture_seconds": self.capture_seconds,
        }


def eager_reason(device: torch.device, enabled: bool | None = None) -> str | None:
    """Why steps on `device` run eagerly (`enabled`: the config's switch, None for on), or None
    where they are captured as a CUDA graph."""
    if device.type != "cuda":
        return device.type
    if enabled is False:
        return "disabled by config"
    return None


def planned_path(device: torch.device, enabled: bool | None = None) -> StepPath:
    """The path before any step ran: eager with its reason, or a graph to be captured."""
    reason = eager_reason(device, enabled)
    return StepPath("eager", reason) if reason else StepPath("cuda_graph")


def combined(paths: Iterable[StepPath]) -> StepPath | None:
    """One path for several step functions (a pyramid's stages, a job's batches): the first
    eager one's reason, else a graph with the captures' seconds summed; None for none."""
    paths = list(paths)
    if not paths:
        return None
    eager = next((path for path in paths if path.path == "eager"), None)
    if eager is not None:
        return eager
    return StepPath("cuda_graph", None, sum(path.capture_seconds or 0.0 for path in paths))


class GraphedStep:
    """Calls `fn` (no arguments, returns one tensor) eagerly `warmup` times, then captures it.

    Every call is a real step: warm-up calls run `fn` on a side stream (as CUDA graph capture
    requires), the capture call records `fn` and replays it once. `fn` must read and write its
    state in place (same tensors every call) and must not synchronise with the host. Replays
    return a copy of the captured output, so callers may keep it. If capture fails, the step
    falls back to eager calls with a warning (`path` says so, with the error's first line).
    """

    def __init__(self, fn: Callable[[], torch.Tensor], warmup: int = WARMUP):
        self.fn, self.warmup = fn, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: torch.Tensor | None = None
        self.calls = 0
        self.failed = False
        self.error: str | None = None  # the first line of the capture's error
        self._side: torch.cuda.Stream | None = None
        self.capture_seconds = 0.0

    @property
    def captured(self) -> bool:
        return self.graph is not None

    @property
    def path(self) -> StepPath:
        """How the calls so far ran."""
        if self.graph is not None:
            return StepPath("cuda_graph", None, self.capture_seconds)
        if self.failed:
            return StepPath("eager", f"capture failed: {self.error}")
        return StepPath("eager", f"ended before the capture ({self.warmup} eager warm-up steps)")

    def reset(self) -> None:
        """Forget the graph (e.g. after state tensors were replaced); warm up and capture again."""
        self.graph, self.output, self.calls = None, None, 0

    def __call__(self) -> torch.Tensor:
        if self.graph is not None:
            self.graph.replay()
            assert self.output is not None
            return self.output.clone()
        if self.failed or self.calls < self.warmup:
            self.calls += 1
            return self._eager()
        return self._capture()

    def _eager(self) -> torch.Tensor:
        current = torch.cuda.current_stream()
        side = self._side = self._side or torch.cuda.Stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            output = self.fn()
        current.wait_stream(side)
        output.record_stream(current)
        return output

    def _capture(self) -> torch.Tensor:
        started = time.perf_counter()
        try:
            self.graph, self.output = self._record()
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as error:
            self.error = first_line(error)
            log.warning("CUDA graph capture failed (%s); running eagerly", self.error)
            self.failed = True
            return self._eager()
        output = self()
        self._synchronize()
        self.capture_seconds = time.perf_counter() - started
        return output

    def _record(self) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture one call of `fn`: the graph and its output tensor."""
        self._synchronize()
        torch.cuda.empty_cache()  # the warm-up's cached blocks would otherwise double the memory
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                output = self.fn()
        except RuntimeError:
            self._synchronize()
            raise
        return graph, output

    def _synchronize(self) -> None:
        torch.cuda.synchronize()
