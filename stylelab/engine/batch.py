"""Several syntheses at once: one VGG forward and backward over a batch of their images.

Each job keeps its own objective (weights, layers, targets), optimiser, best iterate, averaged
image and observers; only the encoder is shared, run once over the (K, 3, H, W) batch for the
union of the jobs' layers. The gradient of the sum of the jobs' totals with respect to image k
is the gradient of job k's total alone, so each job takes the steps it takes when run by itself
(up to the float rounding of a batched convolution).

`run_batch` is the one stage loop: it drives the jobs in lockstep, and a single run is a batch
of one (`Synthesis.run`), which steps through its own `Synthesizer.step`. A job that fails (a
non-finite loss, an observer's error) or ends early leaves the batch and the others go on; out of
memory splits the batch in half and retries each half from where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from stylelab.engine.cuda_graph import GraphedStep, StepPath, planned_path
from stylelab.engine.features import VGGFeatures
from stylelab.engine.loop import Observer, Result, RunState, Synthesis
from stylelab.engine.optimizers import batched_optimizer
from stylelab.engine.stacked import StackedObjective, stacked_loss
from stylelab.engine.synthesis import Synthesizer

log = logging.getLogger(__name__)

Outcome = Result | BaseException


@dataclass
class BatchJob:
    """One synthesis with what `Synthesis.run` takes: observers, a stop flag, a checkpoint."""

    synthesis: Synthesis
    observers: Sequence[Observer] = ()
    should_stop: Callable[[], bool] = field(default=lambda: False)
    resume: dict[str, Any] | None = None
    key: tuple = ()  # jobs with equal keys can share a batch (set by whoever groups them)

    def run(self) -> Result:
        """This job alone: `run_batch` of one; raises the exception that ended it."""
        (outcome,) = run_batch([self])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def shared_encoder(encoders: Sequence[VGGFeatures]) -> VGGFeatures:
    """One encoder over the same modules for the union of the encoders' layers.

    The encoders must share their convolutions (one loaded VGG) and their pooling.
    """
    deepest = max(encoders, key=lambda encoder: encoder.layers[-1])
    convolutions = [m for m in deepest.net if isinstance(m, torch.nn.Conv2d)]
    pooling = [
        type(m) for m in deepest.net if isinstance(m, torch.nn.MaxPool2d | torch.nn.AvgPool2d)
    ]
    for encoder in encoders:
        own = [m for m in encoder.net if isinstance(m, torch.nn.Conv2d)]
        if any(a is not b for a, b in zip(own, convolutions, strict=False)):
            raise ValueError("jobs in one batch must share one VGG (the same loaded weights)")
        pools = [
            type(m) for m in encoder.net if isinstance(m, torch.nn.MaxPool2d | torch.nn.AvgPool2d)
        ]
        if pools != pooling[: len(pools)]:
            raise ValueError("jobs in one batch must use the same pooling")
    layers = sorted({layer for encoder in encoders for layer in encoder.layers})
    union = VGGFeatures(deepest.net, layers)
    return union.to(device=deepest.mean.device)


class BatchedStep:
    """One evaluation and update of every synthesizer in `synths` through one encoder pass.

    On CUDA (unless `cuda_graph=False`) the whole batched step is replayed as one CUDA graph
    after three eager warm-up steps, as a single `Synthesizer` does.
    """

    def __init__(
        self,
        synths: Sequence[Synthesizer],
        encoder: VGGFeatures,
        cuda_graph: bool | None = None,
        vectorised: bool | None = None,
    ):
        if not synths:
            raise ValueError("a batch needs at least one synthesis")
        shapes = {tuple(s.image.shape) for s in synths}
        if len(shapes) > 1:
            raise ValueError(f"images of one batch must have one shape, not {sorted(shapes)}")
        if len({(s.precision, s.batch_invariant) for s in synths}) > 1:
            raise ValueError("jobs in one batch must use one precision and batch_invariant")
        self.synths, self.encoder = list(synths), encoder
        self.sizes: list[int] = []
        self.planned = planned_path(self.synths[0].image.device, cuda_graph)
        if vectorised is None:  # batch_invariant: each job's own arithmetic, bit for bit
            vectorised = not self.synths[0].batch_invariant
        self.vectorised = vectorised
        self.objective = StackedObjective([s.loss for s in synths]) if self.vectorised else None
        self.optimizer = None
        if self.vectorised:
            self.optimizer = batched_optimizer([s.optimizer for s in self.synths])
        if self.optimizer is not None:  # each job's image is now its row of the batch's
            for synth in self.synths:
                synth.image = synth.optimizer.param
        self.graph = GraphedStep(self._step) if self.planned.path == "cuda_graph" else None

    @property
    def step_path(self) -> StepPath:
        """How this batch's steps ran: captured, or eager and why."""
        return self.graph.path if self.graph is not None else self.planned

    def _step(self) -> torch.Tensor:
        first = self.synths[0]
        if self.objective is None:
            results, grad = first.differentiate(self._batch(), self._each_job)
            rows = [
                s.update({key: value.detach() for key, value in result.items()}, grad[k : k + 1])
                for k, (s, result) in enumerate(zip(self.synths, results, strict=True))
            ]
        else:
            loss = stacked_loss(self.objective, self.encoder)
            matrix, grad = first.differentiate(self._batch(), loss)
            rows = self._update(self.objective.rows(matrix.detach()), grad)
        self.sizes = [len(row) for row in rows]
        return torch.cat(rows)

    def _batch(self) -> torch.Tensor:
        """The (K, 3, H, W) images: the batched optimiser's own, or the jobs' joined."""
        if self.optimizer is not None:
            return self.optimizer.param
        return torch.cat([s.image for s in self.synths])

    def _each_job(self, batch: torch.Tensor) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        """Each job's objective on its slice of the batch's features, one after another."""
        return self.evaluate_each(self.encoder(batch), batch)

    def evaluate_each(
        self, features: dict[int, torch.Tensor], batch: torch.Tensor
    ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        """Each job's terms from the batch's `features`, and the sum of the jobs' totals."""
        results = [
            s.loss.evaluate(
                {layer: features[layer][k : k + 1] for layer in s.loss.encoder.layers},
                batch[k : k + 1],
            )
            for k, s in enumerate(self.synths)
        ]
        return results, torch.stack([result["total"].float() for result in results]).sum()

    def _update(self, evaluated: list[torch.Tensor], grad: torch.Tensor) -> list[torch.Tensor]:
        """Every job's update from its stacked terms: one batched L-BFGS or Adam step, or each
        job's own optimiser (mixed optimisers, or settings that differ within the batch)."""
        assert self.objective is not None
        for synth, names in zip(self.synths, self.objective.names, strict=True):
            synth.keys = list(names)
        pairs = list(zip(self.synths, evaluated, strict=True))
        totals = [row[synth.keys.index("total")] for synth, row in pairs]
        for synth, row in pairs:
            synth.before_update(row)
        if self.optimizer is not None:
            self.optimizer.step(grad, torch.stack(totals))
        else:
            for k, (synth, total) in enumerate(zip(self.synths, totals, strict=True)):
                synth.optimizer.step(grad[k : k + 1], total)
        return [synth.after_update(row) for synth, row in pairs]

    def __call__(self) -> list[dict[str, torch.Tensor]]:
        """Step every job once; each job's evaluated terms (on the device, not read back)."""
        values = self.graph() if self.graph is not None else self._step()
        return [s.record(row) for s, row in zip(self.synths, values.split(self.sizes), strict=True)]


class _Alone:
    """A batch of one job: its own `Synthesizer.step`, the path of a single run, bit for bit."""

    def __init__(self, synth: Synthesizer):
        self.synth = synth

    @property
    def step_path(self) -> StepPath:
        return self.synth.step_path

    def __call__(self) -> list[dict[str, torch.Tensor]]:
        return [self.synth.step()]


def stepper(synths: Sequence[Synthesizer], cuda_graph: bool | None) -> _Alone | BatchedStep:
    """What steps `synths` together: one alone steps through its own `Synthesizer.step` (whose
    CUDA graph follows its `optim.cuda_graph`), several through one `BatchedStep`."""
    if len(synths) == 1:
        return _Alone(synths[0])
    return BatchedStep(synths, shared_encoder([s.loss.encoder for s in synths]), cuda_graph)


class _Member:
    """A job's place in `run_batch`: its run and, once known, its outcome."""

    def __init__(self, job: BatchJob):
        self.job = job
        self.run: RunState = job.synthesis.start(job.observers)
        self.outcome: Outcome | None = None

    @property
    def start(self) -> tuple[int, int]:
        """The stage and global step it starts from."""
        resume = self.job.resume
        return (int(resume.get("stage", 0)), int(resume["synthesis"]["step"])) if resume else (0, 0)

    def fail(self, error: BaseException) -> None:
        if isinstance(error, KeyboardInterrupt | SystemExit):
            raise error
        self.outcome = error

    def advance(self) -> None:
        """Enter the first (or checkpoint's) stage, the next one, or end the finished job."""
        run = self.run
        if run.synth is None:
            index, resume = self.start[0], self.job.resume
        elif run.stage_index + 1 < len(run.synthesis.stages) and run.stop_reason is None:
            index, resume = run.stage_index + 1, None
        else:
            self.outcome = run.end("finished")
            return
        try:
            run.start_stage(index, resume)
        except Exception as error:
            self.fail(error)


def run_batch(jobs: Sequence[BatchJob], cuda_graph: bool | None = None) -> list[Outcome]:
    """Run `jobs` in one batch: each job's `Result`, or the exception that ended it.

    The jobs must have the same stages (sizes and steps), image shapes, device and precision,
    and one VGG (see `shared_encoder`); resumed jobs must resume from the same step.
    `cuda_graph` overrides the jobs' `optim.cuda_graph` for batches of more than one.
    """
    members = [_Member(job) for job in jobs]
    if len({m.start for m in members}) > 1:
        raise ValueError("resumed jobs of one batch must continue from the same step")
    _drive(members, cuda_graph)
    outcomes = [m.outcome for m in members]
    assert all(outcome is not None for outcome in outcomes), "every job ends with an outcome"
    return outcomes  # type: ignore[return-value]


def _drive(members: list[_Member], cuda_graph: bool | None) -> None:
    try:
        _lockstep(members, cuda_graph)
    except torch.OutOfMemoryError as error:
        active = [m for m in members if m.outcome is None]
        if len(active) <= 1:
            for member in active:
                member.fail(error)
            return
        half = len(active) // 2
        log.warning(
            "out of memory with a batch of %d images: retrying as batches of %d and %d",
            len(active), half, len(active) - half,
        )  # fmt: skip
        del error
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _drive(active[:half], cuda_graph)
        _drive(active[half:], cuda_graph)


def _lockstep(members: list[_Member], cuda_graph: bool | None) -> None:
    """The stage loop: every job that has steps left in its stage steps once, together."""
    while active := [m for m in members if m.outcome is None]:
        for member in active:
            if member.run.synth is None or member.run.stage_done():
                member.advance()
        active = [m for m in active if m.outcome is None and not m.run.stage_done()]
        if not active:
            continue
        enabled = active[0].job.synthesis.optim.cuda_graph if cuda_graph is None else cuda_graph
        step = stepper([m.run.current for m in active], enabled)
        for member in active:  # each job's result records how its batches ran
            member.run.use_step(step)
        while active and not any(m.outcome is not None or m.run.stage_done() for m in active):
            for member in active:
                try:
                    member.run.before_step()
                except Exception as error:
                    member.fail(error)
            if any(m.outcome is not None for m in active):
                break
            results = step()
            # One decision for the whole batch: a stop request arriving while the jobs are
            # asked one by one would otherwise stop some a step before the others.
            stop = any(member.job.should_stop() for member in active)
            for member, terms in zip(active, results, strict=True):
                try:
                    if not member.run.after_step(terms, stop):
                        member.outcome = member.run.end("interrupted")
                except Exception as error:
                    member.fail(error)
