"""Sweep jobs in two halves, for the launchers that run several jobs as one batch.

`JobHalves.open` sets a job up as Hydra's `run_job` does (its folder, `.hydra` files, log,
callbacks) and runs `stylelab.run.job_steps` up to its synthesis (`Job.request`, a `BatchJob`);
`stylelab.engine.batch.run_batch` runs the syntheses of several jobs together; `JobHalves.close`
hands each job its outcome (it writes its results, finishes its W&B run) and returns its
`JobReturn`. `Batcher` owns the open -> group -> run -> close sequence of the launchers that use
them: `hydra/launcher=batched` and packed SLURM tasks (`hydra.launcher.jobs_per_task`). After a
stop signal no batch starts: `not_started` ends each of its jobs without a step (summary status
"not started"; a re-run starts it afresh). The jobs of one `JobHalves` share one
`stylelab.factory.Shared` (VGG, decoded inputs), show no progress bar of their own (`announce`
gives each batch one) and do not wait for their W&B runs to start (`Tracker.start_soon`): all
passed to each job (`stylelab.runner.Launch`).

Hydra's API used: `HydraConfig`, `JobRuntime`, `configure_log`, `env_override` and `JobReturn`
(public modules, `hydra.core`). `hydra.core.utils.run_job` itself cannot be reused, since it runs
the whole task function in one call; `JobHalves.open` and `close` are its two halves.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, env_override
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from stylelab.engine.batch import BatchJob, Outcome, run_batch
from stylelab.engine.observers import ProgressBar
from stylelab.factory import Shared
from stylelab.runner import Launch
from stylelab.signals import NotStarted

log = logging.getLogger(__name__)


class Job:
    """A sweep job between its two halves: set up, waiting for its batch, then reported.

    (Plain classes here: Hydra's plugin scan loads this module in a way dataclasses cannot.)
    """

    def __init__(self, num: int, config: DictConfig, result: JobReturn):
        self.num, self.config, self.result = num, config, result
        self.steps: Any = None  # stylelab.runner.JobSteps[float]
        self.request: BatchJob | None = None  # its synthesis, until it has run
        self.outcome: Any = None
        self.done = False


class JobHalves:
    """Opens and closes the jobs of one sweep (`sweep_config`) in this process."""

    def __init__(
        self, hydra_context: HydraContext, sweep_config: DictConfig, task_function: TaskFunction
    ):
        self.hydra_context, self.sweep_config = hydra_context, sweep_config
        self.task_function = task_function
        # One bar per batch instead of one per job; W&B runs start while the batch is set up.
        self.launch = Launch(progress_bar=False, shared=Shared(), start_tracker_soon=True)

    def open(self, config: DictConfig) -> Job:
        """Set the job of `config` (its sweep config, `hydra.job.num` and `id` set) up as
        Hydra's `run_job` does, then run it to its synthesis."""
        num = int(config.hydra.job.num)
        HydraConfig.instance().set_config(config)
        output_dir = os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(output_dir)
        HydraConfig.instance().set_config(config)
        result = JobReturn()
        task_cfg = copy.deepcopy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
        assert isinstance(hydra_cfg, DictConfig)  # as Hydra's run_job: set just above
        result.cfg, result.hydra_cfg = task_cfg, hydra_cfg
        result.overrides = OmegaConf.to_container(config.hydra.overrides.task)
        result.working_dir = os.getcwd()
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        configure_log(config.hydra.job_logging, config.hydra.verbose)
        if config.hydra.output_subdir is not None:
            hydra_output = Path(config.hydra.runtime.output_dir) / str(config.hydra.output_subdir)
            hydra_output.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(task_cfg, hydra_output / "config.yaml")
            OmegaConf.save(result.hydra_cfg, hydra_output / "hydra.yaml")
            OmegaConf.save(config.hydra.overrides.task, hydra_output / "overrides.yaml")
        from stylelab.run import job_steps

        job = Job(num, config, result)
        try:
            with env_override(hydra_cfg.hydra.job.env_set):
                self.hydra_context.callbacks.on_job_start(
                    config=config, task_function=self.task_function
                )
                job.steps = job_steps(task_cfg, self.launch)
                advance(job, None)
        finally:
            self._sweep_logging()
        return job

    def close(self, job: Job) -> JobReturn:
        """The job's second half (its results, W&B finish, return value), in its Hydra context."""
        HydraConfig.instance().set_config(job.config)
        configure_log(job.config.hydra.job_logging, job.config.hydra.verbose)
        assert job.result.hydra_cfg is not None  # set by open()
        try:
            with env_override(job.result.hydra_cfg.hydra.job.env_set):
                while not job.done:
                    if job.request is not None and job.outcome is None:  # a second synthesis
                        job.outcome = outcome_of(job.request)
                    outcome, job.outcome = job.outcome, None
                    advance(job, outcome)
            job.result.task_name = JobRuntime.instance().get("name")
            for handler in logging.getLogger().handlers:
                handler.flush()
            self.hydra_context.callbacks.on_job_end(config=job.config, job_return=job.result)
            return job.result
        finally:
            self._sweep_logging()

    def _sweep_logging(self) -> None:
        configure_log(self.sweep_config.hydra.hydra_logging, self.sweep_config.hydra.verbose)


class Batcher:
    """The open -> group -> run -> close sequence of a launcher that batches jobs: `open` sets a
    job up (`halves`), closes it at once if it ended there (a bad config), else adds it to its
    group (`place`, e.g. a device, and its batch key); a group that reaches `size` jobs goes to
    `run(place, batch)`, which runs and closes them; `finish` hands on the groups not full
    (after a stop signal they do not start: their jobs end as never started and are closed).
    `started(num)`: told of each job once it is set up (`SweepJobs.started`)."""

    def __init__(
        self,
        halves: JobHalves,
        run: Callable[[Hashable, list[Job]], None],
        close: Callable[[Job], object],
        size: int | None = None,
        started: Callable[[int], None] | None = None,
    ):
        self.halves, self.run, self.close, self.size = halves, run, close, size
        self.started = started
        self.pending: dict[tuple[Hashable, Hashable], list[Job]] = {}

    def open(self, config: DictConfig, place: Hashable = None) -> Job:
        job = self.halves.open(config)
        if self.started is not None:
            self.started(job.num)
        if job.request is None:
            self.close(job)
            return job
        key = (place, job.request.key)
        self.pending.setdefault(key, []).append(job)
        if len(self.pending[key]) == self.size:
            self.run(place, self.pending.pop(key))
        return job

    def finish(self, received: list[int]) -> None:
        """Hand on every group not yet full, in the order they began; none after a signal."""
        pending, self.pending = self.pending, {}
        for (place, _), batch in pending.items():
            if received:
                not_started(batch, received[0])
                for job in batch:
                    self.close(job)
            else:
                self.run(place, batch)


def advance(job: Job, outcome: Outcome | None) -> None:
    """Send the job its synthesis's outcome: it yields its synthesis or ends."""
    try:
        if isinstance(outcome, BaseException):
            job.request = job.steps.throw(outcome)
        else:
            job.request = job.steps.send(outcome)
    except StopIteration as stop:
        job.request, job.done = None, True
        job.result.return_value, job.result.status = stop.value, JobStatus.COMPLETED
    except Exception as error:  # as run_job: the sweep goes on, the job reports FAILED
        job.request, job.done = None, True
        job.result.return_value, job.result.status = error, JobStatus.FAILED


def announce(batch: Sequence[Job], where: str = "") -> None:
    """Log the batch's jobs and give it one progress bar (on its first job) instead of one per
    job; `where`: e.g. " on cuda:1"."""
    log.info("batch of %d: jobs %s", len(batch), ", ".join(f"#{job.num}" for job in batch))
    first = batch[0].request
    assert first is not None
    first.observers = [*first.observers, ProgressBar(f"batch of {len(batch)}{where}")]


def run_together(batch: Sequence[Job]) -> None:
    """Run the jobs' syntheses as one batch; each job gets its outcome."""
    try:
        outcomes = run_batch([job.request for job in batch])  # type: ignore[misc]
    except Exception as error:  # the batch as a whole could not run: each job says why
        outcomes = [error] * len(batch)
    for job, outcome in zip(batch, outcomes, strict=True):
        job.outcome = outcome


def not_started(batch: Sequence[Job], signum: int) -> None:
    """A stop signal came first: the batch does not run, and each job ends as never started."""
    log.info("batch of %d: jobs %s not started", len(batch), ", ".join(f"#{j.num}" for j in batch))
    for job in batch:
        job.outcome = NotStarted(signum)


def outcome_of(request: BatchJob) -> Outcome:
    try:
        return request.run()
    except Exception as error:
        return error
