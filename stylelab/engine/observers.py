"""Observers the engine ships: a progress bar and a guard against non-finite losses."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from stylelab.engine.loop import Observer, Result, Row, RunState, evaluated
from stylelab.engine.schedule import Stage
from stylelab.errors import DivergenceError

ROW_FIELDS = ("step", "stage", "size")


class ProgressBar(Observer):
    """A tqdm bar over all steps of all stages, with the latest loss of each kind."""

    def __init__(self, description: str = "synthesis") -> None:
        self.bar: tqdm | None = None
        self.description = description

    def on_stage(self, run: RunState, stage: Stage) -> None:
        if self.bar is None:
            self.bar = tqdm(
                total=run.total_steps, initial=run.step, desc=self.description,
                unit="step", dynamic_ncols=True, file=sys.stderr, disable=None,
            )  # fmt: skip
        if len(run.synthesis.stages) > 1:
            self.bar.set_description(
                f"{self.description}: stage {run.stage_index + 1}, {stage.size} px"
            )

    def on_losses(self, rows: list[Row]) -> None:
        if self.bar is None:
            return
        self.bar.update(len(rows))
        last = rows[-1]
        kinds = [key for key in last if "/" not in key and key not in ROW_FIELDS]
        self.bar.set_postfix({key: f"{last[key]:.4g}" for key in kinds}, refresh=False)

    def on_end(self, run: RunState, result: Result) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class NonFiniteGuard(Observer):
    """Stops the run at the first NaN or infinite loss, keeping the last finite image.

    `save(image)` writes that image somewhere and returns where; the error names the step and
    the file.
    """

    def __init__(self, save: Callable[[torch.Tensor], Path]):
        self.save = save
        self.run: RunState | None = None
        self.last_finite: torch.Tensor | None = None

    def on_stage(self, run: RunState, stage: Stage) -> None:
        self.run = run
        self.last_finite = run.current.display_image.detach().clone()

    def on_losses(self, rows: list[Row]) -> None:
        synth = self.run.synth if self.run is not None else None
        # The image now is finite-born only if every evaluation so far had a finite loss.
        if synth is not None and rows[-1]["step"] == synth.step_count - 1:
            self.last_finite = synth.display_image.detach().clone()

    def on_nonfinite(self, row: Row) -> None:
        assert self.last_finite is not None and self.run is not None
        path = self.save(self.run.presented(self.last_finite))
        raise DivergenceError(
            f"the loss became {evaluated(row)} at step {row['step']}: the last finite image is in "
            f"{path}; lower optim.lr or the loss weights, or use precision=fp32"
        )


class ConvergenceStop(Observer):
    """Ends the run (in its last stage) once the best total improved by less than `tolerance`
    (relative) over the last `window` evaluations."""

    def __init__(self, tolerance: float, window: int):
        self.tolerance, self.window = tolerance, window
        self.run: RunState | None = None
        self.best: list[tuple[int, float]] = []  # (step, best total so far) in the last stage

    def on_stage(self, run: RunState, stage: Stage) -> None:
        self.run, self.best = run, []

    def on_losses(self, rows: list[Row]) -> None:
        for row in rows:
            best = min(row["total"], self.best[-1][1]) if self.best else row["total"]
            self.best.append((int(row["step"]), best))
        step, now = self.best[-1]
        earlier = [value for s, value in self.best if s <= step - self.window]
        if not earlier or self.run is None:
            return
        change = (earlier[-1] - now) / max(abs(earlier[-1]), 1e-30)
        if change < self.tolerance:
            self.run.finish_early(
                f"converged: the best total fell by {change:.2%} over the last {self.window} "
                f"evaluations (optim.tolerance={self.tolerance:g})"
            )
