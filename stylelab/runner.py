"""One style-transfer run from a `Config`: wiring, not work.

config -> images -> objective -> schedule -> observers (run folder, tracker, progress bar,
non-finite guard) -> `Synthesis.run` -> summary. Free of Hydra and W&B: the CLI (`stylelab.run`)
builds the config and the tracker and calls `run_synthesis`.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any, TypeVar

import torch

from stylelab.config import Config, mask_sources, style_sources, validate
from stylelab.engine.batch import BatchJob
from stylelab.engine.cuda_graph import planned_path
from stylelab.engine.images import long_side_size
from stylelab.engine.loop import Result
from stylelab.engine.observers import ConvergenceStop, NonFiniteGuard, ProgressBar
from stylelab.engine.synthesis import TRIAL
from stylelab.errors import StyleLabError
from stylelab.evaluating import EvalRecorder, build_evaluator, evaluate_saved
from stylelab.factory import Built, Shared, build_synthesis, vgg_key
from stylelab.lineage import CheckpointLogger, digests, input_files, log_result
from stylelab.outputs import RunFolder
from stylelab.recording import RunFolderRecorder, TrackerRecorder
from stylelab.resources import check_memory, memory_estimate_gib
from stylelab.run_folder import (
    FINAL_IMAGE,
    TRACKER_RUN_ID_KEY,
    Status,
    checkpoint_extra,
    checkpoint_stage,
    checkpoint_step,
)
from stylelab.signals import Interrupted, NotStarted, stop_on_signals
from stylelab.tracking import RunInfo, Tracker

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


@dataclass(frozen=True)
class Launch:
    """How a launcher runs its jobs, given to each: with a progress bar of its own (a batching
    launcher shows one per batch instead), what the sweep's jobs share (`factory.Shared`:
    VGGs, decoded and resized inputs; None: the job loads its own) and whether its tracker run
    may still be starting when its synthesis is set up (`Tracker.start_soon`)."""

    progress_bar: bool = True
    shared: Shared | None = None
    start_tracker_soon: bool = False


ALONE = Launch()  # a run on its own


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def out_of_memory(cfg: Config) -> StyleLabError:
    need = memory_estimate_gib(cfg.image_size**2, cfg.optim.history_size, cfg.optim.name)
    return StyleLabError(
        f"out of memory on {cfg.device} at image_size={cfg.image_size} (needs roughly {need:.1f} GiB "
        "for a square image): lower image_size, or use optim.history_size=10, optim=adam or precision=bf16"
    )


T = TypeVar("T")
# A job in steps: it yields its ready synthesis once and is sent the `Result` (or thrown the
# exception that ended it); it returns what the job returns.
JobSteps = Generator[BatchJob, Result, T]


def drive(job: JobSteps[T]) -> T:
    """Run a job's synthesis on its own (every launcher but the batching one)."""
    outcome: Result | BaseException | None = None
    while True:
        try:
            if isinstance(outcome, BaseException):
                request = job.throw(outcome)
            else:  # next(job): the first resume sends None, which JobSteps' send type excludes
                request = next(job) if outcome is None else job.send(outcome)
        except StopIteration as stop:
            return stop.value
        try:
            outcome = request.run()
        except BaseException as error:  # handed back to the job, which reports and re-raises
            outcome = error


def run_synthesis(
    cfg: Config, run_dir: str | Path, tracker: Tracker, info: RunInfo, launch: Launch = ALONE
) -> dict[str, Any]:
    """Run one synthesis into `run_dir`, reporting to `tracker`; returns the summary.

    The tracker run is always finished: exit code 0 on success, 1 on failure, 128+signal
    when interrupted. Raises `StyleLabError` for bad input, `DivergenceError` for a NaN/inf loss
    and `Interrupted` after SIGINT/SIGTERM/SIGUSR2 (with a checkpoint saved in `run_dir`). A
    launcher that stops before the synthesis runs throws it `NotStarted`: the summary of a new
    run then says "not started" (a later run may use the folder afresh).
    """
    return drive(synthesis_steps(cfg, run_dir, tracker, info, launch))


def synthesis_steps(
    cfg: Config,
    run_dir: str | Path,
    tracker: Tracker,
    info: RunInfo,
    launch: Launch = ALONE,
    checked: bool = False,
) -> JobSteps[dict[str, Any]]:
    """`run_synthesis` in steps (see `JobSteps`): everything before the synthesis runs, then,
    with its result, everything after. The batching launcher runs many of these in one batch.
    `checked`: `cfg` already passed `config.validate` (the CLI's preflight), not run again."""
    folder = RunFolder(run_dir)
    checkpoint = folder.load_checkpoint() if cfg.resume else None
    if cfg.resume and checkpoint is None:
        raise StyleLabError(
            f"resume={cfg.resume}: no checkpoint found there; give a run folder with checkpoint.pt"
        )
    # A run that never took a step (NOT_STARTED) continues its tracker run, as a resumed one does.
    earlier = folder.read_summary() if checkpoint is None else {}
    unused = (
        earlier.get(TRACKER_RUN_ID_KEY) if earlier.get("status") == Status.NOT_STARTED else None
    )
    info.resume_id = info.resume_id or (checkpoint or {}).get(TRACKER_RUN_ID_KEY) or unused
    run_id = folder.start_run_id(new=checkpoint is None)  # checked against it on resume
    known: dict[str, Any] = {}  # what the summary of a failed or interrupted run can say too
    # From here on a signal only sets a flag: the loop checkpoints at its next step.
    with stop_on_signals() as received:
        (tracker.start_soon if launch.start_tracker_soon else tracker.start)(info)
        started = time.perf_counter()
        try:
            if not checked:
                validate(cfg)
            try:
                return (
                    yield from _synthesize(
                        cfg, folder, tracker, checkpoint, received, run_id, known, launch
                    )
                )
            except torch.OutOfMemoryError:
                raise out_of_memory(cfg) from None
        except NotStarted as error:  # never stepped: a resumed run keeps its summary
            summary: dict[str, Any] = {
                "status": Status.NOT_STARTED,
                "error": str(error),
                "tracker_run_id": tracker.run_id,
            }
            if checkpoint is None:
                folder.write_summary(summary)
            tracker.finish(error.exit_code, summary)
            raise
        except BaseException as error:
            interrupted = isinstance(error, Interrupted | KeyboardInterrupt)
            exit_code = (
                getattr(error, "exit_code", EXIT_INTERRUPTED) if interrupted else EXIT_FAILED
            )
            summary = {
                "status": Status.INTERRUPTED if interrupted else Status.FAILED,
                "error": str(error) or type(error).__name__,
                "seconds": time.perf_counter() - started,
                **known,
            }
            if interrupted:  # a forced stop (KeyboardInterrupt: signal repeated) saves none
                summary["checkpoint"] = (
                    isinstance(error, Interrupted) or folder.checkpoint_path.exists()
                )
            folder.write_summary(summary)
            tracker.finish(exit_code, summary)
            raise


def _synthesize(
    cfg: Config,
    folder: RunFolder,
    tracker: Tracker,
    checkpoint: dict | None,
    received: list[int],
    run_id: str | None,
    known: dict[str, Any],
    launch: Launch,
) -> JobSteps[dict[str, Any]]:
    built = build_synthesis(cfg, shared=launch.shared)
    synthesis = built.synthesis
    width, height = built.images.sizes(synthesis.stages[-1].size)[0]
    check_memory(cfg, built.device, width * height)  # before the images are made at that size
    describe(built, cfg)
    if checkpoint is not None:
        log.info("resuming from step %d of %d (%s)", checkpoint_step(checkpoint),
                 synthesis.total_steps, folder.checkpoint_path)  # fmt: skip
        folder.truncate_losses(before_step=checkpoint_step(checkpoint))
    inputs = built.inputs()
    files = input_files(cfg)
    known["inputs"] = digests(files)
    tracker.log_inputs(files)
    if checkpoint is None:
        masks = mask_sources(cfg.pair.style_masks) or []
        # str(m): the config check leaves no null among the synthesis-frame masks
        captions = [cfg.pair.content, *style_sources(cfg), *(str(m) for m in masks)]
        for (key, image), caption in zip(inputs.items(), captions, strict=True):
            folder.save_image(f"{key}.png", image)
            tracker.log_image(key, image, caption=caption)
    config = asdict(cfg)
    recorder = RunFolderRecorder(  # the tracker's run id once known (its start may still run)
        folder,
        lambda: checkpoint_extra(run_id, tracker.run_id, config),
        cfg.log.gif_seconds_per_frame,
    )
    guard = NonFiniteGuard(lambda image: folder.save_image(FINAL_IMAGE, image))
    evaluator = cache(partial(build_evaluator, cfg, built.device, built.images.sources, built.vgg))
    every = EvalRecorder(cfg.eval.every, evaluator, folder) if cfg.eval.every else None
    tracked = TrackerRecorder(tracker, every.pop if every else None)
    observers = [guard, *([every] if every else []), tracked, recorder]
    observers.append(CheckpointLogger(tracker, folder))  # after the recorder saved it
    if launch.progress_bar:
        observers.append(ProgressBar())
    if cfg.optim.tolerance:
        observers.append(ConvergenceStop(cfg.optim.tolerance, cfg.optim.window))
    result = yield BatchJob(
        synthesis, observers, lambda: bool(received), checkpoint, batch_key(cfg, built, checkpoint)
    )
    if result.status == Status.INTERRUPTED:
        raise Interrupted(received[0], result.step)
    if result.stopped_early:
        log.info("stopped early at step %d of %d: %s", result.step, synthesis.total_steps,
                 result.stopped_early)  # fmt: skip
    summary = {**summarize(result, built, cfg, folder), **known}
    summary.update(evaluate_saved(evaluator, folder.root / FINAL_IMAGE))
    folder.write_summary(summary)
    log_result(tracker, folder, summary, cfg.keep)
    gif = folder.root / "synthesis.gif"
    tracker.finish(EXIT_OK, summary, final_image=recorder.final, gif_path=gif, inputs=inputs)
    return summary


def batch_key(cfg: Config, built: Built, checkpoint: dict | None) -> tuple:
    """Jobs with equal keys can run in one batch: the same image shapes at every stage, stages,
    optimiser kind, numerics, device, VGG and (resumed) starting point."""
    stages = built.synthesis.stages
    content = built.images.sources.content.size  # (width, height) as loaded, before resizing
    shapes = [long_side_size(*content, stage.size) for stage in stages]
    start = (checkpoint_stage(checkpoint), checkpoint_step(checkpoint)) if checkpoint else (0, 0)
    return (
        tuple((stage.size, stage.steps) for stage in stages), tuple(shapes), cfg.optim.name,
        built.precision, cfg.batch_invariant, str(built.device), vgg_key(cfg), start,
        cfg.optim.cuda_graph,
    )  # fmt: skip


def describe(built: Built, cfg: Config) -> None:
    """Log the sizes, device, precision, step path, stages and the memory estimate."""
    synthesis = built.synthesis
    content, styles = built.images(synthesis.stages[-1].size)
    pixels = content.shape[-1] * content.shape[-2]
    log.info(
        "content %dx%d, style %s, device %s (%s), estimated memory %.1f GiB",
        content.shape[-1], content.shape[-2],
        ", ".join(f"{s.shape[-1]}x{s.shape[-2]}" for s in styles),
        built.device, built.precision,
        memory_estimate_gib(pixels, cfg.optim.history_size, cfg.optim.name),
    )  # fmt: skip
    log.info("step path: %s", planned_path(built.device, cfg.optim.cuda_graph).describe())
    if len(synthesis.stages) > 1:
        log.info("stages: %s", ", ".join(f"{s.size} px x {s.steps}" for s in synthesis.stages))


def summarize(result: Result, built: Built, cfg: Config, folder: RunFolder) -> dict[str, Any]:
    """summary.json: the kept iterate's losses as `final/*`, timing, memory, device, weights."""
    row = result.last_row
    if cfg.keep == "best" and not cfg.optim.ema and result.best_step is not None:
        row = next((r for r in folder.read_losses() if r["step"] == result.best_step), row)
    seconds = result.seconds
    return {
        "status": Status.FINISHED,
        **{f"final/{k}": v for k, v in row.items() if k not in ("step", "stage", "size", TRIAL)},
        "steps": result.step,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "kept": "ema" if cfg.optim.ema else cfg.keep,
        "seconds": seconds,
        "evaluations_per_second": result.evaluations / seconds if seconds > 0 else float("nan"),
        "peak_memory_mib": peak_memory_mib(built.device),
        "device": str(built.device),
        "precision": built.precision,
        "weights": cfg.model.weights,
        "content_size": list(result.image.shape[-2:]),
        **(result.step_path or planned_path(built.device, cfg.optim.cuda_graph)).record(),
    }
