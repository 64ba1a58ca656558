"""Replay a fixed-shape step as one CUDA graph, after a few eager warm-up calls."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


class GraphedStep:
    """Calls `fn` (no arguments, returns one tensor) eagerly `warmup` times, then captures it.

    Every call is a real step: warm-up calls run `fn` on a side stream (as CUDA graph capture
    requires), the capture call records `fn` and replays it once. `fn` must read and write its
    state in place (same tensors every call) and must not synchronise with the host. Replays
    return a copy of the captured output, so callers may keep it. If capture fails, the step
    falls back to eager calls with a warning.
    """

    def __init__(self, fn: Callable[[], torch.Tensor], warmup: int = 3):
        self.fn, self.warmup = fn, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: torch.Tensor | None = None
        self.calls = 0
        self.failed = False
        self._side: torch.cuda.Stream | None = None
        self.capture_seconds = 0.0

    @property
    def captured(self) -> bool:
        return self.graph is not None

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
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the warm-up's cached blocks would otherwise double the memory
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                output = self.fn()
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as error:
            log.warning(
                "CUDA graph capture failed (%s); running eagerly", str(error).splitlines()[0]
            )
            self.failed = True
            torch.cuda.synchronize()
            return self._eager()
        self.graph, self.output = graph, output
        output = self()
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - started
        return output
