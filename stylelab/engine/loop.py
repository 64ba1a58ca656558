"""A synthesis and its runs: the plan (`Synthesis`) and the state of one run of it (`RunState`).

A run goes through the stages of a schedule, one `Synthesizer` each. Its loop is
`stylelab.engine.batch.run_batch`, for one job (`Synthesis.run`) or several in lockstep.
Observers receive the run's state at each stage change and at the end, and the frames, loss rows
(read back from the device every `flush_every` steps, never per step), non-finite losses and
checkpoints. The run folder, the tracker, the progress bar and the NaN guard are observers; the
loop knows none of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from stylelab.engine.cuda_graph import StepPath, combined
from stylelab.engine.images import tensor_to_uint8
from stylelab.engine.objective import Objective
from stylelab.engine.optimizers import OptimizerMaker, optimizer_maker
from stylelab.engine.options import check_choice
from stylelab.engine.schedule import Stage
from stylelab.engine.synthesis import KEEPS, TRIAL, Synthesizer, check_ema, upsample

Row = dict[str, float]
# size -> (content, [styles]) on the device, resized for a stage of that size
StageImages = Callable[[int], tuple[torch.Tensor, list[torch.Tensor]]]
# (content, [styles]) -> the first stage's starting image
StartImage = Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor]
# (content, [styles]) -> the images the objective and the start image see (e.g. colour-matched)
Prepare = Callable[[torch.Tensor, list[torch.Tensor]], tuple[torch.Tensor, list[torch.Tensor]]]
# (image, the stage's content as `stage_images` gave it) -> what frames and the result show
Present = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (prepared content, [styles]) -> per style a mask in the synthesis frame, and per style a mask
# (or None) in its own frame; either list may be None (no masks). See `terms.StyleTerm`.
StageMasks = Callable[
    [torch.Tensor, list[torch.Tensor]],
    tuple[list[torch.Tensor] | None, list[torch.Tensor | None] | None],
]


def evaluated(row: Row) -> float:
    """The total of the point a row's step evaluated (a line search logs its iterate's as
    `total` and the point's as `trial/total`)."""
    return row.get(TRIAL, row["total"])


@dataclass
class OptimSettings:
    """How each stage's `Synthesizer` optimises (see its docstring): `optimizer` builds each
    stage's optimiser (a registered kind with its options; default L-BFGS with a line search)."""

    optimizer: OptimizerMaker = field(default_factory=lambda: optimizer_maker("lbfgs"))
    precision: str = "fp32"
    ema: float = 0.0
    keep: str = "best"  # best | last: which iterate a stage hands on and the run returns
    cuda_graph: bool | None = None
    batch_invariant: bool = False  # convolutions that round alike in any batch (CPU, slower)

    def __post_init__(self) -> None:
        check_ema(self.ema)
        check_choice("keep", self.keep, KEEPS)

    @property
    def name(self) -> str:
        return self.optimizer.name


FRAMES_PER_RUN = 30  # frames a run shows when `image_every` is not given


def frame_interval(total_steps: int) -> int:
    """Steps between frames by default: about FRAMES_PER_RUN frames (every step of a run of
    that many steps or fewer; every 10th of 300 steps)."""
    return max(1, math.ceil(total_steps / FRAMES_PER_RUN))


@dataclass
class LoopSettings:
    image_every: int | None = None  # steps between frames (None: `frame_interval` of the run)
    flush_every: int = 10  # steps between reading losses back from the device
    checkpoint_every: int = 0  # steps between checkpoints (0: only when stopped)


@dataclass
class Result:
    status: str  # finished | interrupted
    step: int  # global steps done
    image: torch.Tensor  # the output image (Synthesizer.output_image, through `present`)
    last_row: Row
    best_step: int | None  # global step of the lowest total in the last stage
    best_total: float
    evaluations: int  # in this process (a resumed run counts from where it resumed)
    seconds: float
    stopped_early: str | None = None  # why the last stage ended before its steps ran out
    step_path: StepPath | None = None  # how the steps ran (None: no step ran)


class Observer:
    """Receives what the loop does; every method is optional."""

    def on_stage(self, run: RunState, stage: Stage) -> None:
        """A stage begins (also the first, and the one a resumed run continues)."""

    def on_frame(self, step: int, image: np.ndarray) -> None:
        """The displayed image (uint8, H x W x 3) before evaluation `step`."""

    def on_losses(self, rows: list[Row]) -> None:
        """Finite loss rows in step order: `step`, `stage`, `size` and the objective's names."""

    def on_nonfinite(self, row: Row) -> None:
        """The first row whose evaluated total is NaN or infinite (it and the rows after it are
        dropped)."""

    def on_checkpoint(self, state: dict[str, Any]) -> None:
        """The full state after every row so far was given to `on_losses`."""

    def on_end(self, run: RunState, result: Result) -> None:
        """The run finished or was stopped."""


class LossBuffer:
    """Collects per-step loss tensors on the device and reads them back in one transfer."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.values: list[torch.Tensor] = []
        self.keys: list[str] | None = None

    def add(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        if self.keys is None:
            self.keys = list(terms)
        self.steps.append(step)
        self.values.append(torch.stack([terms[key].float() for key in self.keys]))

    def flush(self) -> list[Row]:
        if not self.values or self.keys is None:  # keys are set with the first values
            return []
        table = torch.stack(self.values).cpu().tolist()
        rows = [
            {"step": step, **dict(zip(self.keys, row, strict=True))}
            for step, row in zip(self.steps, table, strict=True)
        ]
        self.steps, self.values = [], []
        return rows


@dataclass
class Synthesis:
    """The plan of a synthesis: an objective, the images it is built from per stage, a schedule
    and optimiser settings. It holds no run's state: each run starts a fresh `RunState`, so a
    plan runs again with the same result.

    Optional hooks: `prepare` turns each stage's images into what the objective sees (colour
    matching, luminance only), `stage_masks` gives the styles' spatial masks per stage, and
    `present` turns the synthesised image into what frames and the result show (e.g. the
    synthesised luminance with the content's colours).
    """

    objective: Objective
    stage_images: StageImages
    start_image: StartImage
    stages: Sequence[Stage]
    optim: OptimSettings = field(default_factory=OptimSettings)
    loop: LoopSettings = field(default_factory=LoopSettings)
    blend: Sequence[float] | None = None
    prepare: Prepare | None = None
    present: Present | None = None
    stage_masks: StageMasks | None = None
    # The latest run's state (`start`), for inspection; the plan itself never reads it.
    state: RunState | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def total_steps(self) -> int:
        return self.stages[-1].end

    def start(self, observers: Sequence[Observer] = ()) -> RunState:
        """A fresh run of this plan, reporting to `observers` (also kept as `state`)."""
        self.state = RunState(self, observers)
        return self.state

    def run(
        self,
        observers: Sequence[Observer] = (),
        should_stop: Callable[[], bool] = lambda: False,
        resume: dict[str, Any] | None = None,
    ) -> Result:
        """Run every stage (from `resume`, a `RunState.state_dict()`, if given) as a batch of
        one; stops early, with a checkpoint, once `should_stop()` is true between two steps."""
        from stylelab.engine.batch import BatchJob  # batch imports this module

        return BatchJob(self, observers, should_stop, resume).run()

    def stage_targets(self, size: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Set the objective's targets for a stage of `size`; returns the stage's content as
        `stage_images` gives it, and the content and styles after `prepare`."""
        raw, styles = self.stage_images(size)
        content, styles = self.prepare(raw, styles) if self.prepare is not None else (raw, styles)
        masks, style_masks = (
            self.stage_masks(content, styles) if self.stage_masks is not None else (None, None)
        )
        self.objective.set_targets(content, styles, self.blend, masks, style_masks)
        return raw, content, styles

    def synthesizer(
        self, stage: Stage, image: torch.Tensor, previous: Synthesizer | None
    ) -> Synthesizer:
        """The `Synthesizer` of `stage`, from `image` (`previous`: the stage before's)."""
        o = self.optim
        return Synthesizer(
            self.objective, image, o.optimizer, precision=o.precision, cuda_graph=o.cuda_graph,
            ema=o.ema, first_step=stage.first_step, previous=previous,
            batch_invariant=o.batch_invariant,
        )  # fmt: skip

    # Stepping by hand (tests, benchmarks): stage 0 starts a fresh run state, later ones go on.

    def enter_stage(self, index: int, resume: dict[str, Any] | None = None) -> Synthesizer:
        """`RunState.enter_stage` of the latest run (a fresh one for stage 0)."""
        state = self.state if self.state is not None and index > 0 else self.start()
        return state.enter_stage(index, resume)

    def set_stage_targets(self, size: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`RunState.set_stage_targets` of the latest run (a fresh one if none)."""
        return (self.state or self.start()).set_stage_targets(size)

    @property
    def synth(self) -> Synthesizer | None:
        """The latest run's current `Synthesizer`."""
        return self.state.synth if self.state is not None else None

    @property
    def stage_content(self) -> torch.Tensor | None:
        """The latest run's current stage's content, before `prepare`."""
        return self.state.stage_content if self.state is not None else None


class RunState:
    """One run of a `Synthesis`: its current stage and `Synthesizer`, the loss rows not yet read
    back, the last row, why it ends early, how its steps ran, and its observers.

    Observers receive it (`on_stage`, `on_end`) and may call `finish_early`. The loop
    (`stylelab.engine.batch.run_batch`) calls `start_stage`, `use_step`, `before_step`,
    `after_step` and `end`.
    """

    def __init__(self, synthesis: Synthesis, observers: Sequence[Observer] = ()):
        self.synthesis = synthesis
        self.observers = list(observers)
        self.stage_index = 0  # the current stage's (once `synth` is set)
        self.synth: Synthesizer | None = None  # the current stage's
        self.stage_content: torch.Tensor | None = None  # the current stage's, before `prepare`
        self.stop_reason: str | None = None  # set by `finish_early`
        self.buffer = LossBuffer()
        self.last_row: Row = {}
        self.started = time.perf_counter()
        self.first_step: int | None = None  # the global step this run started at
        self.stepper: Any = None  # what runs the steps now (a `step_path`), see `use_step`
        self.step_from = 0  # the global step it took over at
        self.paths: list[StepPath] = []  # of the step functions that ran steps before it

    @property
    def stage(self) -> Stage:
        return self.synthesis.stages[self.stage_index]

    @property
    def step(self) -> int:
        """Global steps done."""
        return self.current.step_count

    @property
    def total_steps(self) -> int:
        return self.synthesis.total_steps

    @property
    def current(self) -> Synthesizer:
        """`synth`, once a stage was entered."""
        assert self.synth is not None, "no stage entered yet"
        return self.synth

    def finish_early(self, reason: str) -> None:
        """Called by an observer: end the run (in its last stage) after the current step."""
        if self.stage_index == len(self.synthesis.stages) - 1:
            self.stop_reason = reason

    def state_dict(self, with_optimizer: bool = True) -> dict[str, Any]:
        return {"stage": self.stage_index, "synthesis": self.current.state_dict(with_optimizer)}

    def set_stage_targets(self, size: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Set the objective's targets for a stage of `size`; returns its prepared images."""
        self.stage_content, content, styles = self.synthesis.stage_targets(size)
        return content, styles

    def enter_stage(self, index: int, resume: dict[str, Any] | None = None) -> Synthesizer:
        """Set the targets and make the Synthesizer of stage `index` (the current one), from
        the start image or the previous stage's output, or from `resume`."""
        plan, previous = self.synthesis, self.synth
        stage = plan.stages[index]
        content, styles = self.set_stage_targets(stage.size)
        if previous is None:
            image = plan.start_image(content, styles)
        else:
            size = (content.shape[-2], content.shape[-1])
            image = upsample(previous.output_image(plan.optim.keep), size)
        self.synth = plan.synthesizer(stage, image, previous)
        self.stage_index = index
        if resume is not None:
            self.synth.load_state_dict(resume["synthesis"])
        return self.synth

    def presented(self, image: torch.Tensor) -> torch.Tensor:
        """`image` as frames and the result show it (through `present`, if set)."""
        if self.synthesis.present is None or self.stage_content is None:
            return image
        return self.synthesis.present(image, self.stage_content)

    def notify(self, method: str, *args: Any) -> None:
        for observer in self.observers:
            getattr(observer, method)(*args)

    def start_stage(self, index: int, resume: dict[str, Any] | None = None) -> None:
        """Enter stage `index` (from `resume`, a `state_dict()`, if given) and tell observers."""
        self.enter_stage(index, resume)
        if self.first_step is None:
            self.first_step = self.step
        self.notify("on_stage", self, self.stage)

    def use_step(self, stepper: Any) -> None:
        """The next steps run through `stepper` (anything with a `step_path`); the result
        records how each one that ran steps ran."""
        self.paths = self.step_paths()
        self.stepper, self.step_from = stepper, self.step

    def step_paths(self) -> list[StepPath]:
        """The paths of the step functions that ran steps so far (a batch that ran out of
        memory before its first step, a stage of no steps: none)."""
        ran = self.stepper is not None and self.step > self.step_from
        return [*self.paths, *([self.stepper.step_path] if ran else [])]

    def stage_done(self) -> bool:
        """The current stage's steps are done, or an observer ended the run early."""
        return self.step >= self.stage.end or self.stop_reason is not None

    def before_step(self) -> None:
        """A frame, every `image_every` steps."""
        step = self.step
        if step % (self.synthesis.loop.image_every or frame_interval(self.total_steps)) == 0:
            frame = self.presented(self.current.display_image)
            self.notify("on_frame", step, tensor_to_uint8(frame))

    def after_step(self, terms: dict[str, torch.Tensor], stop: bool) -> bool:
        """Buffer the step's `terms`, flush and checkpoint when due; with `stop` (decided by the
        caller: a batch decides once for all its jobs) checkpoint and return False. Observers'
        errors (a non-finite loss) propagate."""
        loop, step, stage = self.synthesis.loop, self.step, self.stage
        self.buffer.add(step - 1, terms)
        if step % loop.flush_every == 0 or step == stage.end or stop:
            self.flush(stage)
        if stop:
            self.notify("on_checkpoint", self.state_dict())
            return False
        if loop.checkpoint_every and step % loop.checkpoint_every == 0:
            self.notify("on_checkpoint", self.state_dict())
        return True

    def flush(self, stage: Stage) -> None:
        rows = [
            {"step": row.pop("step"), "stage": self.stage_index, "size": stage.size, **row}
            for row in self.buffer.flush()
        ]
        bad = next((i for i, row in enumerate(rows) if not math.isfinite(evaluated(row))), None)
        good = rows if bad is None else rows[:bad]
        if good:
            self.notify("on_losses", good)
            self.last_row = good[-1]
        if bad is not None:
            self.notify("on_nonfinite", rows[bad])

    def end(self, status: str) -> Result:
        synth, stage = self.current, self.stage
        best_index, best_total = int(synth.best.index), float(synth.best.total)
        result = Result(
            status=status,
            step=synth.step_count,
            image=self.presented(synth.output_image(self.synthesis.optim.keep)),
            last_row=self.last_row,
            best_step=stage.first_step + best_index if best_index >= 0 else None,
            best_total=best_total,
            evaluations=synth.step_count - (self.first_step or 0),
            seconds=time.perf_counter() - self.started,
            stopped_early=self.stop_reason,
            step_path=combined(self.step_paths()),
        )
        self.notify("on_end", self, result)
        return result
